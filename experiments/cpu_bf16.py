"""Does bf16 autocast speed up the demo's CPU training? (docs/cost.md, "bf16 on a CPU")

One training step (forward, backward, AdamW) of notebook 01's first stage and SD at the sizes of ``--ldm``'s
parameters, fp32 vs ``torch.autocast("cpu", torch.bfloat16)`` (what accelerate's ``mixed_precision: bf16`` does on a
CPU), alternated in rounds so that both see the same machine load. oneDNN uses bf16 kernels only on CPUs that have
them (``lscpu``: amx_bf16, avx512_bf16); elsewhere bf16 emulation is slower. Times only; what bf16 does to the
models' quality is not measured here.

    python experiments/cpu_bf16.py --rounds 2 --steps 5 --threads 1

Relative paths are read from the repository root; ``--ldm`` is a folder with notebook 01's
``params.resolved.yaml`` (the shipped ``weights/demo/state/ldm``, or ``outputs/<profile>/ldm``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from discnb.core import paths
from discnb.generative import autoencoder as ae
from discnb.generative import checkpoints
from discnb.generative import ldm_training


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ldm", default="weights/demo/state/ldm", help="a folder with notebook 01's params.resolved.yaml")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round and precision")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--out", default="outputs/experiments/cpu_bf16.json")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    P01 = checkpoints.ldm_params(paths.resolve(a.ldm))
    A, n, s = P01.autoencoder, a.batch, a.image_size
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, s, s, generator=g) * 2 - 1
    vq = ae.build_vq(A["channels"], A["layers_per_block"], A["n_embed"])
    sd = checkpoints.build_model(P01, s, s // 4, 1.0)
    sd.train()
    z = torch.randn(n, 3, s // 4, s // 4, generator=g)
    mask = torch.randint(0, 4, (n, s, s), generator=g).to(torch.uint8)
    sd_loss = ldm_training.ldm_batch_loss(P01.condition, sd.alphas_cumprod)
    jobs = {"first stage": (vq, lambda: ae.vq_loss(vq, {"x": x})),
            "SD": (sd, lambda: sd_loss(sd, {"z": z, "mask": mask, "slide": None}))}
    opts = {k: torch.optim.AdamW(m.parameters(), 1e-4) for k, (m, _) in jobs.items()}

    def step(name, bf16):
        ctx = torch.autocast("cpu", torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            loss = jobs[name][1]()
        opts[name].zero_grad()
        loss.float().backward()
        opts[name].step()

    times = {k: {"fp32": [], "bf16": []} for k in jobs}
    for name in jobs:
        for bf16 in (False, True):  # warm-up (oneDNN picks its kernels on the first calls)
            for _ in range(2):
                step(name, bf16)
    for _ in range(a.rounds):
        for name in jobs:
            for bf16 in (False, True):
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    step(name, bf16)
                times[name]["bf16" if bf16 else "fp32"].append((time.perf_counter() - t0) / a.steps)
    rep = {"threads": a.threads, "batch": n, "steps_per_round": a.steps, "rounds": a.rounds, "s_per_step": times,
           "speedup_bf16": {k: sum(v["fp32"]) / sum(v["bf16"]) for k, v in times.items()}}
    print(json.dumps(rep, indent=1))
    out = paths.resolve(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep, indent=1))
    return rep


if __name__ == "__main__":
    main()
