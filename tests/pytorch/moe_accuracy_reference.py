"""PyTorch reference for the CIFAR example's --moe run on Fashion-MNIST: the dense Net against
DeepSpeed's top-1 MoE, re-implemented from deepspeed/moe/sharded_moe.py (SPEC §10).

Gating as top1gating: softmax gates, RSample = argmax(logits + Gumbel) in training only,
C = ceil(S/E·cf) floored at min_capacity, random token selection (top-C of mask·U(0,1), also in
eval), combine weight = the raw softmax probability, dropped tokens -> 0. l_aux is computed but
not added to the loss, as in the example. --groups 2 gates each half of a batch of 16 on its own
(two ranks of 8 tokens). It shows how much top-1 MoE loses to token dropping at the example's
settings (benchmarks/RESULTS.md, "MoE accuracy"); dspp's port loses the same.

    /usr/bin/python3 tests/pytorch/moe_accuracy_reference.py --moe --noisy RSample [--groups 2] [--seed S]
"""
import argparse, copy, gzip, math, struct, sys, time
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)
torch.set_num_interop_threads(1)


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    nd = data[3]
    dims = struct.unpack(">" + "I" * nd, data[4:4 + 4 * nd])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims)


def load(split):
    d = "/usr/share/datasets/fashion-mnist/"
    x = read_idx(d + f"{split}-images-idx3-ubyte.gz").astype(np.float32)
    y = read_idx(d + f"{split}-labels-idx1-ubyte.gz").astype(np.int64)
    x = (x / 255.0 - 0.5) / 0.5  # ToTensor + Normalize(0.5, 0.5), as the C++ loader
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)


class Stats:
    def __init__(self):
        self.tokens = 0; self.dropped = 0; self.counts = None

    def add(self, S, dropped, counts):
        self.tokens += S; self.dropped += dropped
        self.counts = counts.clone() if self.counts is None else self.counts + counts


class Top1MoE(nn.Module):
    def __init__(self, expert, E, min_capacity, noisy, cf=1.0, eval_cf=1.0, use_rts=True, groups=1):
        super().__init__()
        self.wg = nn.Linear(84, E, bias=False)
        self.experts = nn.ModuleList([copy.deepcopy(expert) for _ in range(E)])
        self.E, self.min_capacity, self.noisy = E, min_capacity, noisy
        self.cf, self.eval_cf, self.use_rts = cf, eval_cf, use_rts
        self.groups = groups  # >1 simulates that many ranks (gating/capacity per local micro batch)
        self.stats = Stats(); self.train_stats = Stats()

    def gate_and_run(self, x):
        S, E = x.shape[0], self.E
        logits = x.float() @ self.wg.weight.float().t()
        gates = F.softmax(logits, dim=1)
        cf = self.cf if self.training else self.eval_cf
        C = int(math.ceil(S / E * cf))
        if C < self.min_capacity:
            C = self.min_capacity
        if self.training and self.noisy == "RSample":
            u = torch.rand_like(logits).clamp_min(1e-20)
            e = (-torch.log(u)).clamp_min(1e-20)
            g = -torch.log(e)  # Gumbel(0,1) = -log(-log U)
            idx = torch.argmax(logits + g, dim=1)
        else:
            idx = torch.argmax(gates, dim=1)
        mask1 = F.one_hot(idx, E).to(x.dtype)
        counts = mask1.sum(0).detach()
        me = gates.mean(0); ce = mask1.mean(0)
        l_aux = (me * ce).sum() * E  # not used in the loss (the example discards it)
        rand = mask1 * torch.rand_like(mask1) if self.use_rts else mask1
        k = min(C, S)
        top_idx = torch.topk(rand, k=k, dim=0)[1]
        keep = torch.zeros_like(mask1).scatter_(0, top_idx, 1)
        mask1 = mask1 * keep
        locations1 = torch.cumsum(mask1, dim=0) - 1
        gates1 = (gates * mask1).sum(1)  # raw softmax prob of chosen expert (0 if dropped)
        loc1 = (locations1 * mask1).sum(1).long()
        combine = gates1[:, None, None] * mask1[:, :, None] * F.one_hot(loc1, C).to(x.dtype)[:, None, :]  # [S,E,C]
        dispatch = combine.bool().to(x.dtype)
        disp = torch.einsum("sec,sm->ecm", dispatch, x)
        out_e = torch.stack([self.experts[e](disp[e]) for e in range(E)])  # [E,C,M]
        out = torch.einsum("sec,ecm->sm", combine, out_e)
        dropped = int(S - mask1.sum().item())
        (self.stats if not self.training else self.train_stats).add(S, dropped, counts)
        return out, l_aux

    def forward(self, x):
        if self.groups == 1 or not self.training:
            return self.gate_and_run(x)[0]
        outs = [self.gate_and_run(c)[0] for c in x.chunk(self.groups)]
        return torch.cat(outs)


class Net(nn.Module):
    def __init__(self, moe=None):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5); self.pool = nn.MaxPool2d(2, 2); self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(256, 120); self.fc2 = nn.Linear(120, 84)
        self.moe = moe is not None
        if self.moe:
            fc3 = nn.Linear(84, 84)
            self.moe_layer = Top1MoE(fc3, **moe)
            self.fc4 = nn.Linear(84, 10)
        else:
            self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x))); x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x)); x = F.relu(self.fc2(x))
        if self.moe:
            return self.fc4(self.moe_layer(x))
        return self.fc3(x)


def warmup_lr(step):  # applied optimizer step, 1-based; WarmupLR(min 0, max 1e-3, 1000, log)
    lbi = step - 2
    if lbi < 0:
        return 0.0
    W = 1000
    if lbi >= W:
        return 1e-3
    return 1e-3 * math.log(lbi + 1) / math.log(W)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--moe", action="store_true")
    p.add_argument("--noisy", default="None")
    p.add_argument("--min-capacity", type=int, default=0)
    p.add_argument("--groups", type=int, default=1)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=1138)
    p.add_argument("--batch", type=int, default=16)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    xtr, ytr = load("train"); xte, yte = load("t10k")
    moe = dict(E=2, min_capacity=a.min_capacity, noisy=a.noisy, groups=a.groups) if a.moe else None
    net = Net(moe)
    opt = torch.optim.AdamW(net.parameters(), lr=0.0, betas=(0.8, 0.999), eps=1e-8, weight_decay=3e-7)
    step = 0; t0 = time.time()
    for ep in range(a.epochs):
        net.train()
        perm = torch.randperm(len(xtr))
        run = 0.0
        for i in range(len(xtr) // a.batch):
            b = perm[i * a.batch:(i + 1) * a.batch]
            loss = F.cross_entropy(net(xtr[b]), ytr[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            step += 1
            for g in opt.param_groups:
                g["lr"] = warmup_lr(step)
            opt.step()
            run += loss.item()
            if i % 2000 == 1999:
                print(f"[{ep + 1}, {i + 1:5d}] loss: {run / 2000:.3f}", flush=True); run = 0.0
    net.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(xte), 4):
            correct += (net(xte[i:i + 4]).argmax(1) == yte[i:i + 4]).sum().item()
    acc = 100.0 * correct / len(xte)
    msg = f"RESULT moe={a.moe} noisy={a.noisy} minc={a.min_capacity} groups={a.groups} seed={a.seed} acc={acc:.2f}"
    if a.moe:
        s = net.moe_layer.stats
        t = net.moe_layer.train_stats
        msg += f" train_dropped={100.0 * t.dropped / t.tokens:.2f}%"
        msg += f" test_dropped={100.0 * s.dropped / s.tokens:.2f}% routed_per_expert={(s.counts / s.tokens).tolist()}"
    print(msg + f" time={time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
