"""One or two CPU threads for the demo's small models? (docs/cost.md, "Threads")

Training steps of the demo's TransMIL (notebook 05: dim 32, 8 bags of 32 tiles of 128-d features per step) and
CarcinoNet (notebook 04: ResNet-18 width 16, 32 tiles of 64 px), each timed with ``torch.set_num_threads`` 2 and 1 in
one process. Notebook 05's sweep trains on one thread because of this measurement.

    OMP_WAIT_POLICY=PASSIVE python experiments/cpu_threads.py
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from discnb.grading.carcinonet import build_model
from discnb.grading.transmil import TransMIL, bce_loss


def transmil_steps(n: int = 100) -> float:
    torch.manual_seed(0)
    m = TransMIL(in_dim=128, dim=32, heads=8)
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    bags = [torch.randn(1, 32, 128) for _ in range(8)]
    t0 = time.perf_counter()
    for _ in range(n):
        opt.zero_grad()
        loss = sum(bce_loss(m(b).reshape(-1), torch.zeros(4)) for b in bags) / len(bags)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / n


def carcinonet_steps(n: int = 30) -> float:
    torch.manual_seed(0)
    m = build_model({"encoder": "resnet18", "encoder_width": 16, "decoder_channels": 32, "pool_grids": [1, 2, 3]})
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    x, y = torch.rand(32, 3, 64, 64), torch.randint(0, 4, (32, 64, 64))
    t0 = time.perf_counter()
    for _ in range(n):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    return (time.perf_counter() - t0) / n


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--transmil-steps", type=int, default=100)
    ap.add_argument("--carcinonet-steps", type=int, default=30)
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="thread counts to time, in this order")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    rep = {}
    for name, fn, n in (("TransMIL", transmil_steps, a.transmil_steps), ("CarcinoNet", carcinonet_steps, a.carcinonet_steps)):
        for threads in a.threads:
            torch.set_num_threads(threads)
            fn(min(3, n))  # warm-up
            rep[f"{name} {threads} thread(s) s/step"] = round(fn(n), 4)
        if {1, 2} <= set(a.threads):
            rep[f"{name} speed-up of 1 thread"] = round(rep[f"{name} 2 thread(s) s/step"] / rep[f"{name} 1 thread(s) s/step"], 2)
    print(json.dumps(rep, indent=1))
    return rep


if __name__ == "__main__":
    main()
