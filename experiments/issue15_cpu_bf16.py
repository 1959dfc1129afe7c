"""Issue 15 (wall time): does bf16 autocast speed up the demo's CPU training? This machine's Xeon has AMX-BF16
(``lscpu``: amx_bf16, avx512_bf16), which oneDNN uses for bf16 convolutions and matmuls. One training step (forward,
backward, AdamW) of notebook 01's first stage and SD at the demo's sizes and batch 16, fp32 vs
``torch.autocast("cpu", torch.bfloat16)`` (what accelerate's ``mixed_precision: bf16`` does on a CPU), alternated in
rounds so that both see the same machine load. Times only; what bf16 does to the models' quality is not measured here.

    python experiments/issue15_cpu_bf16.py --ldm outputs/demo/ldm [--rounds 3 --steps 10 --threads 2]
"""
import argparse
import contextlib
import json
import time

import torch

from discnb.core import paths
from discnb.generative import autoencoder as ae
from discnb.generative import checkpoints
from discnb.generative import ldm_training

ap = argparse.ArgumentParser()
ap.add_argument("--ldm", default="outputs/demo/ldm")
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--out", default="outputs/exp15/cpu_bf16.json")
a = ap.parse_args()
torch.set_num_threads(a.threads)
P01 = checkpoints.ldm_params(paths.resolve(a.ldm))
A = P01.autoencoder
g = torch.Generator().manual_seed(0)
x = torch.rand(16, 3, 64, 64, generator=g) * 2 - 1
vq = ae.build_vq(A["channels"], A["layers_per_block"], A["n_embed"])
sd = checkpoints.build_model(P01, 64, 16, 1.0)
sd.train()
z = torch.randn(16, 3, 16, 16, generator=g)
mask = torch.randint(0, 4, (16, 64, 64), generator=g).to(torch.uint8)
sd_loss = ldm_training.ldm_batch_loss(P01.condition, sd.alphas_cumprod)
jobs = {"first stage": (vq, lambda: ae.vq_loss(vq, {"x": x})),
        "SD": (sd, lambda: sd_loss(sd, {"z": z, "mask": mask, "slide": None}))}
opts = {k: torch.optim.AdamW(m.parameters(), 1e-4) for k, (m, _) in jobs.items()}


def step(name, bf16):
    model, loss_fn = jobs[name]
    ctx = torch.autocast("cpu", torch.bfloat16) if bf16 else contextlib.nullcontext()
    with ctx:
        loss = loss_fn()
    opts[name].zero_grad()
    loss.float().backward()
    opts[name].step()


times = {k: {"fp32": [], "bf16": []} for k in jobs}
for name in jobs:
    for bf16 in (False, True):  # warm-up (oneDNN picks its kernels on the first calls)
        for _ in range(2):
            step(name, bf16)
for r in range(a.rounds):
    for name in jobs:
        for bf16 in (False, True):
            t0 = time.perf_counter()
            for _ in range(a.steps):
                step(name, bf16)
            times[name]["bf16" if bf16 else "fp32"].append((time.perf_counter() - t0) / a.steps)
rep = {"threads": a.threads, "batch": 16, "steps_per_round": a.steps, "rounds": a.rounds, "s_per_step": times,
       "speedup_bf16": {k: sum(v["fp32"]) / sum(v["bf16"]) for k, v in times.items()}}
print(json.dumps(rep, indent=1))
paths.resolve(a.out).parent.mkdir(parents=True, exist_ok=True)
paths.resolve(a.out).write_text(json.dumps(rep, indent=1))
