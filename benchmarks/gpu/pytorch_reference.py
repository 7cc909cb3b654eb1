"""PyTorch's figures for the rows of bench_gpu, on the same card in the same run
(scripts/gpu-check): device-to-device copy bandwidth, torch.optim.Adam(fused=True) over a
64 M-element fp32 parameter, torch.matmul in bf16 / fp16 / fp32 / TF32 at 4096^3, and the
CIFAR example's Net training at batch 16 (forward, CrossEntropyLoss, backward, Adam), fp32.
Each figure: median of 5 runs of N launches, timed with CUDA events, after a warm-up.
Prints the same Markdown table as bench_gpu; exits 77 without torch or a GPU."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "cifar10"))

try:
    import torch
except ImportError:
    print("skipped: no torch")
    sys.exit(77)
if not torch.cuda.is_available():
    print("skipped: no CUDA device")
    sys.exit(77)


def median_ms(body, iterations):
    body()
    torch.cuda.synchronize()
    runs = []
    for _ in range(5):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iterations):
            body()
        stop.record()
        stop.synchronize()
        runs.append(start.elapsed_time(stop) / iterations)
    return sorted(runs)[2]


rows = []
src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
dst = torch.empty_like(src)
copy_gbs = 2 * src.numel() / median_ms(lambda: dst.copy_(src), 10) / 1e6
rows.append(("device-to-device copy", copy_gbs, "GB/s", "read + write"))

n = 1 << 26
p = torch.nn.Parameter(torch.zeros(n, device="cuda"))
p.grad = torch.zeros_like(p)
adam = torch.optim.Adam([p], lr=1e-3, fused=True)
adam_gbs = 28 * n / median_ms(adam.step, 20) / 1e6
rows.append(("torch fused Adam, fp32", adam_gbs, "GB/s", f"{100 * adam_gbs / copy_gbs:.0f} % of the copy"))

for dtype, name, tf32 in ((torch.bfloat16, "bf16", False), (torch.float16, "fp16", False),
                          (torch.float32, "fp32", False), (torch.float32, "TF32", True)):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a = torch.rand(4096, 4096, device="cuda").mul_(2).sub_(1).to(dtype)  # random, as bench_gpu's
    b = torch.rand(4096, 4096, device="cuda").mul_(2).sub_(1).to(dtype)
    ms = median_ms(lambda: torch.matmul(a, b), 10)
    rows.append((f"torch.matmul {name} 4096^3", 2 * 4096 ** 3 / ms / 1e9, "TFLOP/s", ""))

torch.backends.cuda.matmul.allow_tf32 = False

from pytorch_net import Net  # noqa: E402  (the example's Net, after the torch check)

net = Net().cuda()
optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
criterion = torch.nn.CrossEntropyLoss()
images = torch.rand(16, 3, 32, 32, device="cuda").mul_(2).sub_(1)
labels = torch.zeros(16, dtype=torch.long, device="cuda")


def train_step():
    optimizer.zero_grad()
    criterion(net(images), labels).backward()
    optimizer.step()


rows.append(("torch CIFAR Net train step, batch 16, fp32", 16 / median_ms(train_step, 50) * 1e3, "images/s",
             "forward, loss, backward, Adam"))

print(f"device: {torch.cuda.get_device_name()} (torch {torch.__version__})")
print("| figure | value | unit | note |\n|---|---|---|---|")
for name, value, unit, note in rows:
    print(f"| {name} | {value:.1f} | {unit} | {note} |")
