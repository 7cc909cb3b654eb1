#!/usr/bin/env python3
"""safetensors written by dspp open in PyTorch, and PyTorch's open in dspp.

Usage: safetensors_interop.py BINARY WORK_DIR. Exits 77 (skipped) without torch/safetensors.
1. dspp saves its initial CIFAR Net weights; `safetensors.torch.load_file` reads them and
   the tutorial's Net loads them with strict=True (names, shapes, dtype all match).
2. PyTorch saves a freshly initialised Net; dspp starts from it (--init-weights), trains 0
   epochs and saves again: the tensors come back bit-identical.
3. The same Net saved by PyTorch in bf16 and in fp16 loads too, each value widened exactly.
"""
import subprocess
import sys
from pathlib import Path

try:
    import torch
    from safetensors.torch import load_file, save_file
except ImportError as e:
    print(f"skipped: {e}")
    sys.exit(77)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "cifar10"))
from pytorch_net import Net  # noqa: E402


def run(binary, *args):
    subprocess.run([binary, "--dataset", "synthetic", "--epochs", "0", *args], check=True, capture_output=True)


def main():
    binary, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    ours = work / "dspp_init.safetensors"
    run(binary, "--save-weights", str(ours))
    state = load_file(str(ours))
    net = Net()
    net.load_state_dict(state, strict=True)
    assert all(t.dtype == torch.float32 for t in state.values())
    bound = 1 / (3 * 5 * 5) ** 0.5  # dspp's kaiming-uniform bound for conv1
    assert state["conv1.weight"].abs().max() <= bound

    theirs = work / "torch_init.safetensors"
    save_file(Net().state_dict(), str(theirs))
    back = work / "roundtrip.safetensors"
    run(binary, "--init-weights", str(theirs), "--save-weights", str(back))
    a, b = load_file(str(theirs)), load_file(str(back))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name

    for dtype in (torch.bfloat16, torch.float16):
        narrow = work / f"torch_{str(dtype).split('.')[-1]}.safetensors"
        save_file({name: t.to(dtype) for name, t in a.items()}, str(narrow))
        widened = work / "widened.safetensors"
        run(binary, "--init-weights", str(narrow), "--save-weights", str(widened))
        c = load_file(str(widened))
        for name in a:
            assert torch.equal(c[name], a[name].to(dtype).float()), (dtype, name)
    print(f"ok: {len(state)} tensors both ways, and from bf16 and fp16")


if __name__ == "__main__":
    main()
