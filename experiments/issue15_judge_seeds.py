"""Issue 15: how much of ``real_on_recon`` is the judge's seed? Trains the real-tile judge of notebook 01's demo
recipe (``params/demo/01_train_ldm.yaml``'s ``judge`` with ``input: real``) with several seeds, and with
``--ceiling`` the first-stage judge too (the same recipe on the reconstructions), then scores each first stage of
``--first-stage`` (diffusers VQModel folders, e.g. ``weights/demo/SD/vqvae``) the three ways of ``judge.json``.
Prints one row per (first stage, seed) and the mean and std over seeds; writes them to ``--out``/judge_seeds.json.
Seed 0 has notebook 01's signature; its scores match the stored ``judge-real/judge.json`` only at the same thread
count (training is bit-identical per thread count, not across them: 0.788 here on one thread vs 0.792 stored).

    python experiments/issue15_judge_seeds.py --seeds 0 1 2 --first-stage weights/demo/SD/vqvae --ceiling
"""
import argparse
import json

import numpy as np
import yaml

from discnb.core import paths
from discnb.generative import autoencoder as ae
from discnb.grading import judge as jg
from discnb.pipelines import train_ldm
from discnb.data import prepared

ap = argparse.ArgumentParser()
ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
ap.add_argument("--first-stage", nargs="+", required=True)
ap.add_argument("--ceiling", action="store_true", help="also train the first-stage judge per seed and first stage")
ap.add_argument("--data", default="outputs/demo/data")
ap.add_argument("--out", default="outputs/exp18/judge_seeds")
a = ap.parse_args()
base = yaml.safe_load(open(paths.REPO / "params/demo/01_train_ldm.yaml"))
recipe = {k: v for k, v in base["judge"].items() if k != "seed"}  # the seeds are this script's
out = paths.resolve(a.out)
out.mkdir(parents=True, exist_ok=True)
D = prepared.split_tiles(paths.resolve(a.data), int(base["val_fold"]), progress=False)
V = D["val"]
recons = {f: ae.reconstruct(ae.load_vq(paths.resolve(f)), V["imgs"]) for f in a.first_stage}
rows = []
for s in a.seeds:
    real = jg.train_judge(D, {**recipe, "input": "real"}, out / f"real-seed{s}", seed=s, progress=False)
    for f, rec in recons.items():
        fs = jg.train_judge(D, {**recipe, "input": "first_stage"}, out / f"fs-{f.strip('/').replace('/', '_')}-seed{s}",
                            seed=s, first_stage=paths.resolve(f), progress=False) if a.ceiling else None
        r = {"first_stage": f, "seed": s, **train_ldm.judge_three_ways(real, fs, rec, V["masks"])}
        rows.append(r)
        print(json.dumps({k: v["mean_iou"] if isinstance(v, dict) else v for k, v in r.items()}), flush=True)
        (out / "judge_seeds.json").write_text(json.dumps(rows, indent=1))
for f in a.first_stage:
    sel = [r for r in rows if r["first_stage"] == f]
    cols = {k: [r[k]["mean_iou"] for r in sel] for k in ("real_on_real", "real_on_recon", "recon_on_recon", "chance")
            if k in sel[0]}
    cols["ratio"] = list(np.array(cols["real_on_recon"]) / np.array(cols["real_on_real"]))
    cols["real_on_recon GG5"] = [r["real_on_recon"]["iou"]["GG5"] for r in sel]
    for k, v in cols.items():
        v = np.array(v)
        print(f"{f}  {k}: {v.mean():.3f} +- {v.std(ddof=1) if len(v) > 1 else 0:.3f}  ({' '.join(f'{x:.3f}' for x in v)})")
