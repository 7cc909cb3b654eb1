#!/usr/bin/env python3
"""safetensors written by dspp open in PyTorch, and PyTorch's open in dspp.

Usage: safetensors_interop.py BINARY WORK_DIR. Exits 77 (skipped) without torch/safetensors.
1. dspp saves its initial CIFAR Net weights; `safetensors.torch.load_file` reads them and
   the tutorial's Net loads them with strict=True (names, shapes, dtype all match).
2. PyTorch saves a freshly initialised Net; dspp starts from it (--init-weights), trains 0
   epochs and saves again: the tensors come back bit-identical.
"""
import subprocess
import sys
from pathlib import Path

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from safetensors.torch import load_file, save_file
except ImportError as e:
    print(f"skipped: {e}")
    sys.exit(77)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


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
    print(f"ok: {len(state)} tensors both ways")


if __name__ == "__main__":
    main()
