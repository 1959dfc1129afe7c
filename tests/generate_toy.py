"""Tiny sharded generation runs as their own processes (for tests/test_multiprocess_generation.py).

    python tests/generate_toy.py disc OUT [--kill-rank R --kill-at N]
    python tests/generate_toy.py tileset OUT [--kill-rank R --kill-at N]
    python -m accelerate.commands.launch --config_file params/accelerate/cpu_2proc.yaml tests/generate_toy.py disc OUT

``disc``: 7 sets of separated latents in shards of 2 (4 shards) from a tiny random pixel-conditioned
SD (DDIM, 2 steps). ``tileset``: the 12 slides of a 3-per-grade plan (2-5 tiles each, 32 px) from the
same SD, in groups of ``batch_tiles`` 4. Both run on the CPU.

``--kill-rank R --kill-at N``: process R SIGKILLs itself at the start of its N-th unit (DISC shard or
slide group), i.e. after its first N - 1 units were written and recorded: a real kill at a known
point, not a timed one (under ``accelerate launch`` the launcher then stops the other process too).
Prints the generation's summary as JSON on the main process. Tests call :func:`generate` in-process for
the one-process runs (one torch thread, as here).
"""

from __future__ import annotations

import argparse
import json
import os
import signal

import numpy as np
import torch

from discnb.core import shards


def tiny_sd(batch_size: int = 4):
    from discnb.generative.sampling import SDGenerator
    from test_disc import tiny  # tests/ is this script's folder, so on sys.path
    model, vq = tiny()
    return SDGenerator(model, vq, steps=2, batch_size=batch_size, device="cpu")


def killer(fn, rank: int, kill_rank: int, kill_at: int):
    """``fn`` that SIGKILLs this process at its ``kill_at``-th call when ``rank == kill_rank``."""
    calls = {"n": 0}

    def wrapped(*a, **k):
        calls["n"] += 1
        if rank == kill_rank and calls["n"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*a, **k)
    return wrapped


def generate(what: str, out: str, kill_rank: int = -1, kill_at: int = 0) -> dict:
    """One run (this process's part of it under ``accelerate launch``); the summary."""
    procs = shards.processes(cpu=True)
    # imports by mode: the tile-set side (pipelines) takes seconds more to import
    if what == "disc":
        from discnb.generative import disc
        gen = tiny_sd(batch_size=8)  # 2 seeds x K branches per U-Net batch
        sep = disc.separated_latents
        disc.separated_latents = killer(sep, procs.rank, kill_rank, kill_at)
        try:
            res = disc.generate_disc_data(gen, out, n=7, seed=3, shard_size=2, fingerprint="tiny", progress=False)
        finally:
            disc.separated_latents = sep
        return {"shards": sorted(res["shards"], key=int)}
    from discnb.pipelines import tilesets as ts
    from test_tilesets import make_library, real_frame
    gen = tiny_sd(batch_size=4)
    gen.generate = killer(gen.generate, procs.rank, kill_rank, kill_at)
    plan = ts.make_plan(real_frame({0: 0, 1: 0, 2: 0, 3: 0}), 3, 5)
    return ts.generate_tileset(out, gen, "tiny-sd", plan, make_library(), image_size=32, min_tiles=2,
                               max_tiles=5, batch_tiles=4, generator_name="SD", progress=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("disc", "tileset"))
    ap.add_argument("out")
    ap.add_argument("--kill-rank", type=int, default=-1)
    ap.add_argument("--kill-at", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    res = generate(a.what, a.out, a.kill_rank, a.kill_at)
    if shards.processes(cpu=True).is_main:
        print(json.dumps(res, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)), flush=True)


if __name__ == "__main__":
    main()
