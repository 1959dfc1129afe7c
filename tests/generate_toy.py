"""Tiny sharded generation runs as their own processes (for tests/test_multiprocess_generation.py).

    python tests/generate_toy.py disc OUT [--kill-rank R --kill-at N]
    python tests/generate_toy.py tileset OUT [--kill-rank R --kill-at N]
    python -m accelerate.commands.launch --config_file params/accelerate/cpu_2proc.yaml tests/generate_toy.py disc OUT
    python tests/generate_toy.py carcinonet PARAMS [--log DIR]
    python tests/generate_toy.py mil PARAMS [--kill-rank R --kill-at N] [--log DIR]

``disc``: 7 sets of separated latents in shards of 2 (4 shards) from a tiny random pixel-conditioned
SD (DDIM, 2 steps). ``tileset``: the 12 slides of a 3-per-grade plan (2-5 tiles each, 32 px) from the
same SD, in groups of ``batch_tiles`` 4. Both run on the CPU.

``--kill-rank R --kill-at N``: process R SIGKILLs itself at the start of its N-th unit (DISC shard or
slide group), i.e. after its first N - 1 units were written and recorded: a real kill at a known
point, not a timed one (under ``accelerate launch`` the launcher then stops the other process too).
Prints the generation's summary as JSON on the main process. Tests call :func:`generate` in-process for
the one-process runs (one torch thread, as here).

``carcinonet`` / ``mil``: notebook 04's / 05's command (``discnb.pipelines.<stage>.main``) on the
parameter file PARAMS. For 04 the generator ``SD`` is a colour-from-mask fake and the pattern judge a
stub (:func:`carcinonet_fakes`); its checks are off (3 training steps). ``--kill-rank R --kill-at N``
(mil): process R SIGKILLs itself as it starts its N-th run. ``--log DIR``: every process lists the
files it writes through the stage module's ``write_json`` / ``atomic_file``, ``plots.save`` and the
parameters record in ``DIR/writes.rank-K.txt`` (who wrote what). :func:`stage` runs them in-process.
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
    from discnb.generative import tileset_plan as tp
    from discnb.pipelines import tilesets as ts
    from test_tilesets import make_library, real_frame
    gen = tiny_sd(batch_size=4)
    gen.generate = killer(gen.generate, procs.rank, kill_rank, kill_at)
    plan = tp.make_plan(real_frame({0: 0, 1: 0, 2: 0, 3: 0}), 3, 5)
    return ts.generate_tileset(out, gen, "tiny-sd", plan, make_library(), image_size=32, min_tiles=2,
                               max_tiles=5, batch_tiles=4, generator_name="SD", progress=False)


# ------------------------------------------------------------------------------ notebooks 04 and 05
def stub_judge():
    """A pattern judge that calls every pixel NC (notebook 01's judge is not trained here)."""
    from discnb.grading import judge as jg
    return jg.Judge(lambda tiles: np.zeros(np.asarray(tiles).shape[:3], np.uint8),
                    {"scored_on": "val", "real": {"pixel_agreement": 1.0}})


def carcinonet_fakes(setitem, setattr_):
    """Notebook 04 without notebook 01: generator ``SD`` = a colour-from-mask fake (batch-independent,
    seeded per tile), the judge a stub. ``setitem``/``setattr_``: monkeypatch's, or plain ones."""
    from discnb.pipelines import train_carcinonet as cn
    from test_tilesets import register_fake
    register_fake(["SD"], setitem=setitem)
    setattr_(cn, "load_judge", lambda P: stub_judge())


class _Patches:
    """setitem / setattr that remember what to restore."""

    def __init__(self):
        self.undo = []

    def setitem(self, d, k, v):
        self.undo.append((d.__setitem__, k, d[k]) if k in d else (lambda k_, _=None: d.pop(k_), k, None))
        d[k] = v

    def setattr(self, obj, name, v):
        self.undo.append((lambda n, old: setattr(obj, n, old), name, getattr(obj, name)))
        setattr(obj, name, v)

    def restore(self):
        for fn, k, v in reversed(self.undo):
            fn(k, v)


def log_writes(patch: _Patches, module, log_dir: str, rank: int) -> None:
    """Append every file written through ``module.write_json`` / ``module.atomic_file``,
    ``plots.save`` and ``notebook.record`` to ``log_dir/writes.rank-<rank>.txt``."""
    from pathlib import Path

    from discnb import plots
    from discnb.core import notebook
    log = Path(log_dir) / f"writes.rank-{rank}.txt"
    log.parent.mkdir(parents=True, exist_ok=True)

    def wrap(fn, where):
        def wrapped(*a, **k):
            with log.open("a") as f:
                f.writelines(f"{Path(p).resolve()}\n" for p in where(*a, **k))
            return fn(*a, **k)
        return wrapped
    patch.setattr(module, "write_json", wrap(module.write_json, lambda path, *a, **k: [path]))
    patch.setattr(module, "atomic_file", wrap(module.atomic_file, lambda path, *a, **k: [path]))
    patch.setattr(plots, "save", wrap(plots.save, lambda fig, path, *a, **k: [path]))
    patch.setattr(notebook, "record", wrap(notebook.record, lambda out, *a, **k: [Path(out) / "params.resolved.yaml",
                                                                                 Path(out) / "provenance.json"]))


def stage(what: str, params_file: str, kill_rank: int = -1, kill_at: int = 0, log: str = "") -> int:
    """Notebook 04's or 05's command on ``params_file`` (this process's part under ``accelerate launch``)."""
    procs = shards.processes(cpu=True)
    patch = _Patches()
    try:
        if what == "carcinonet":
            from discnb.pipelines import train_carcinonet as module
            carcinonet_fakes(patch.setitem, patch.setattr)
            argv = ["--params", params_file, "--no-progress", "--no-checks"]
        else:
            from discnb.pipelines import transmil_sweep as module
            patch.setattr(module, "run_one", killer(module.run_one, procs.rank, kill_rank, kill_at))
            argv = ["--params", params_file, "--no-progress"]
        if log:
            log_writes(patch, module, log, procs.rank)
        return module.main(argv)
    finally:
        patch.restore()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("disc", "tileset", "carcinonet", "mil"))
    ap.add_argument("out", help="the output folder (disc, tileset) or the parameter file (carcinonet, mil)")
    ap.add_argument("--kill-rank", type=int, default=-1)
    ap.add_argument("--kill-at", type=int, default=0)
    ap.add_argument("--log", default="")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.what in ("carcinonet", "mil"):
        raise SystemExit(stage(a.what, a.out, a.kill_rank, a.kill_at, a.log))
    res = generate(a.what, a.out, a.kill_rank, a.kill_at)
    if shards.processes(cpu=True).is_main:
        print(json.dumps(res, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)), flush=True)


if __name__ == "__main__":
    main()
