#!/usr/bin/env python3
"""PyTorch's training throughput on the CIFAR-10 tutorial's Net, for comparison with dspp.

Same model, loss and optimizer as benchmarks/bench_train.cpp: forward, cross-entropy,
backward and AdamW (lr 1e-3, betas (0.8, 0.999), eps 1e-8, weight decay 3e-7) on a fixed
synthetic batch. Prints one line per (batch, threads) with images/s; threads are pinned
(OMP_PROC_BIND) as MACHINE.md advises. Run through benchmarks/run_train_comparison.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "cifar10"))
from pytorch_net import Net  # noqa: E402


def images_per_second(batch, seconds, mode):
    net = Net()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.8, 0.999), eps=1e-8, weight_decay=3e-7)
    criterion = nn.CrossEntropyLoss()
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(net(x), y)
        loss.backward()
        optimizer.step()

    def infer_step():
        with torch.no_grad():
            net(x)

    step = train_step if mode == "train" else infer_step
    for _ in range(20):
        step()
    best = 0.0
    for _ in range(3):  # best of three windows, as noisy machines need
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            step()
            steps += 1
        best = max(best, steps * batch / (time.perf_counter() - start))
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(f"torch {torch.__version__}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batches:
            ips = images_per_second(batch, args.seconds, "train")
            print(f"pytorch train batch={batch} threads={threads} images/s={ips:.0f}", flush=True)
        ips = images_per_second(256, args.seconds, "infer")
        print(f"pytorch inference batch=256 threads={threads} images/s={ips:.0f}", flush=True)


if __name__ == "__main__":
    main()
