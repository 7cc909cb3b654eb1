"""PyTorch's figures for the rows of bench_gpu and bench_gpu_train, on the same card in the
same run (scripts/gpu-check): device-to-device copy bandwidth, torch.optim.Adam(fused=True)
over a 64 M-element fp32 parameter, torch.matmul in bf16 (4096^3 and 8192^3, the card's
measured peak) / fp16 / fp32 / TF32 at 4096^3, and the CIFAR example's Net training at batch
16, fp32, in two forms:
- the step alone on data already on the GPU (forward, CrossEntropyLoss, backward, fused
  Adam), bench_gpu's "CIFAR Net train step" row;
- the step as DeepSpeed's cifar10_deepspeed.py runs it, bench_gpu_train's engine row: the
  batch copied up from host memory, the loss read back (loss.item()), gradients clipped to
  norm 1.0, fused Adam (DeepSpeed's own Adam on a GPU is a fused one); host wall time.
Strict fp32 as dspp's (no TF32 in matmul or cuDNN). Each kernel figure: median of 5 runs of
N launches, timed with CUDA events, after a warm-up. Each row is printed as it is measured,
so a failure late in the run keeps the figures before it. Exits 77 without torch or a GPU."""
import os
import sys
import time

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


def row(name, value, unit, note=""):
    print(f"| {name} | {value:.1f} | {unit} | {note} |", flush=True)


def warm_up(seconds, body):
    """An idle card runs at a low clock: keep it busy before the first timed figure."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(20):
            body()
        torch.cuda.synchronize()


def use_tf32(on):
    """fp32 matmuls and convolutions in TF32 or in full fp32 (torch >= 2.9's setting where it
    exists: the older allow_tf32 flags are deprecated there)."""
    try:
        torch.backends.cuda.matmul.fp32_precision = "tf32" if on else "ieee"
        torch.backends.cudnn.conv.fp32_precision = "tf32" if on else "ieee"
    except (AttributeError, RuntimeError, ValueError):
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


use_tf32(False)
# fp32 accumulation in bf16 / fp16 matmuls, as cuBLASLt's in dspp.
torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
print(f"device: {torch.cuda.get_device_name()} (torch {torch.__version__})")
print("| figure | value | unit | note |\n|---|---|---|---|", flush=True)

src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
dst = torch.empty_like(src)
warm_up(0.3, lambda: dst.copy_(src))
copy_gbs = 2 * src.numel() / median_ms(lambda: dst.copy_(src), 10) / 1e6
row("device-to-device copy", copy_gbs, "GB/s", "read + write")

n = 1 << 26
p = torch.nn.Parameter(torch.rand(n, device="cuda"))
p.grad = torch.rand_like(p)
adam = torch.optim.Adam([p], lr=1e-3, fused=True)
adam_gbs = 28 * n / median_ms(adam.step, 20) / 1e6
row("torch fused Adam, fp32", adam_gbs, "GB/s", f"{100 * adam_gbs / copy_gbs:.0f} % of the copy")
del p, adam, src, dst

for dtype, name, size, tf32 in ((torch.bfloat16, "bf16", 4096, False), (torch.bfloat16, "bf16", 8192, False),
                                (torch.float16, "fp16", 4096, False), (torch.float32, "fp32", 4096, False),
                                (torch.float32, "TF32", 4096, True)):
    use_tf32(tf32)
    a = torch.rand(size, size, device="cuda").mul_(2).sub_(1).to(dtype)  # random, as bench_gpu's
    b = torch.rand(size, size, device="cuda").mul_(2).sub_(1).to(dtype)
    ms = median_ms(lambda: torch.matmul(a, b), 10)
    row(f"torch.matmul {name} {size}^3", 2 * size ** 3 / ms / 1e9, "TFLOP/s", "the card's peak" if size == 8192 else "")
use_tf32(False)

from pytorch_net import Net  # noqa: E402  (the example's Net, after the torch check)

batch = 16
net = Net().cuda()
optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.8, 0.999), eps=1e-8, weight_decay=3e-7, fused=True)
criterion = torch.nn.CrossEntropyLoss()
images = torch.rand(batch, 3, 32, 32, device="cuda").mul_(2).sub_(1)
labels = torch.zeros(batch, dtype=torch.long, device="cuda")


def train_step():
    optimizer.zero_grad()
    criterion(net(images), labels).backward()
    optimizer.step()


row(f"torch CIFAR Net train step, batch {batch}, fp32", batch / median_ms(train_step, 50) * 1e3, "images/s",
    "data on the GPU: forward, loss, backward, fused Adam")

# As the DeepSpeed example's loop runs, from batches ready in host memory.
host_images = torch.rand(64, batch, 3, 32, 32).mul_(2).sub_(1)
host_labels = torch.randint(0, 10, (64, batch))


def example_step(s):
    inputs, targets = host_images[s % 64].to("cuda"), host_labels[s % 64].to("cuda")
    optimizer.zero_grad()
    loss = criterion(net(inputs), targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    optimizer.step()
    return loss.item()


for s in range(20):
    example_step(s)
torch.cuda.synchronize()
start = time.perf_counter()
steps = 200
for s in range(steps):
    example_step(s)
torch.cuda.synchronize()
row(f"torch CIFAR Net training as the example, batch {batch}, fp32", batch * steps / (time.perf_counter() - start),
    "images/s", "upload, forward, loss.item(), backward, clip 1.0, fused Adam; host wall time")
