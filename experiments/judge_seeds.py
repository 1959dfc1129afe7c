"""How much of ``real_on_recon`` is the judge's seed? (docs/first-stage.md, "The judge over seeds")

Trains the real-tile judge of notebook 01's recipe (the ``judge`` of ``--params``, with ``input: real``) with several
seeds, and with ``--ceiling`` the first-stage judge too (the same recipe on the reconstructions), then scores each
first stage of ``--first-stage`` (diffusers VQModel folders) the three ways of ``judge.json``: ``real_on_real``,
``real_on_recon``, ``recon_on_recon`` (the ceiling) and ``chance``. Prints one row per (first stage, seed) and the
mean and std over seeds; writes the rows to ``--out``/judge_seeds.json. A judge's training is bit-identical for one
thread count, not across thread counts, so seed 0 matches the stored ``judge.json`` only at the thread count it was
trained with.

    python experiments/judge_seeds.py --seeds 0 1 2 --first-stage weights/demo/SD/vqvae --ceiling

Relative paths are read from the repository root.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import yaml

from discnb.core import paths
from discnb.generative import autoencoder as ae
from discnb.grading import judge as jg
from discnb.data import prepared
from discnb.pipelines import train_ldm


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--first-stage", nargs="+", default=["weights/demo/SD/vqvae"], help="VQModel folders to score")
    ap.add_argument("--ceiling", action="store_true", help="also train the first-stage judge per seed and first stage")
    ap.add_argument("--data", default="outputs/demo/data", help="notebook 00's data folder")
    ap.add_argument("--params", default="params/demo/01_train_ldm.yaml", help="notebook 01's parameters: judge recipe, val_fold")
    ap.add_argument("--judge-steps", type=int, default=None, help="override the recipe's training steps (smoke runs)")
    ap.add_argument("--judge-batch", type=int, default=None, help="override the recipe's batch size (smoke runs)")
    ap.add_argument("--out", default="outputs/experiments/judge_seeds")
    return ap.parse_args(argv)


def summary(rows: list[dict], first_stage: str) -> dict:
    """Per score: the values over seeds for one first stage, with the ratio real_on_recon / real_on_real and GG5."""
    sel = [r for r in rows if r["first_stage"] == first_stage]
    cols = {k: [r[k]["mean_iou"] for r in sel] for k in ("real_on_real", "real_on_recon", "recon_on_recon", "chance")
            if k in sel[0]}
    cols["ratio"] = list(np.array(cols["real_on_recon"]) / np.array(cols["real_on_real"]))
    cols["real_on_recon GG5"] = [r["real_on_recon"]["iou"]["GG5"] for r in sel]
    return cols


def main(argv=None) -> list[dict]:
    a = parse_args(argv)
    base = yaml.safe_load(paths.resolve(a.params).read_text())
    recipe = {k: v for k, v in base["judge"].items() if k != "seed"}  # the seeds are this script's
    over = {k: v for k, v in (("steps", a.judge_steps), ("batch", a.judge_batch)) if v is not None}
    recipe["train"] = {**recipe["train"], **over}
    out = paths.resolve(a.out)
    out.mkdir(parents=True, exist_ok=True)
    D = prepared.split_tiles(paths.resolve(a.data), int(base["val_fold"]), progress=False)
    V = D["val"]
    recons = {f: ae.reconstruct(ae.load_vq(paths.resolve(f)), V["imgs"]) for f in a.first_stage}
    rows = []
    for s in a.seeds:
        real = jg.train_judge(D, {**recipe, "input": "real"}, out / f"real-seed{s}", seed=s, progress=False)
        for f, rec in recons.items():
            fs = jg.train_judge(D, {**recipe, "input": "first_stage"},
                                out / f"fs-{f.strip('/').replace('/', '_')}-seed{s}",
                                seed=s, first_stage=paths.resolve(f), progress=False) if a.ceiling else None
            r = {"first_stage": f, "seed": s, **train_ldm.judge_three_ways(real, fs, rec, V["masks"])}
            rows.append(r)
            print(json.dumps({k: v["mean_iou"] if isinstance(v, dict) else v for k, v in r.items()}), flush=True)
            (out / "judge_seeds.json").write_text(json.dumps(rows, indent=1))
    for f in a.first_stage:
        for k, v in summary(rows, f).items():
            v = np.array(v)
            print(f"{f}  {k}: {v.mean():.3f} +- {v.std(ddof=1) if len(v) > 1 else 0:.3f}  ({' '.join(f'{x:.3f}' for x in v)})")
    return rows


if __name__ == "__main__":
    main()
