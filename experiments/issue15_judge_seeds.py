"""Issue 15: how much of ``real_on_recon`` is the judge's seed? Trains the real-tile judge of notebook 01's demo
recipe (``params/demo/01_train_ldm.yaml``'s ``judge`` with ``input: real``) with several seeds, and with
``--ceiling`` the first-stage judge too (the same recipe on the reconstructions), then scores each first stage of
``--first-stage`` (diffusers VQModel folders, e.g. ``weights/demo/SD/vqvae``) the three ways of ``judge.json``.
Prints one row per (first stage, seed) and the mean and std over seeds; writes them to ``--out``/judge_seeds.json.
Seed 0 is notebook 01's own judge: its ``real_on_real`` must equal the stored one (``judge-real/judge.json``).

    python experiments/issue15_judge_seeds.py --seeds 0 1 2 --first-stage weights/demo/SD/vqvae --ceiling
"""
import argparse
import json
import time

import numpy as np
import yaml

from discnb.core import paths
from discnb.generative import autoencoder as ae
from discnb.grading import adherence
from discnb.grading import judge as jg
from discnb.pipelines import prep

ap = argparse.ArgumentParser()
ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
ap.add_argument("--first-stage", nargs="+", required=True)
ap.add_argument("--ceiling", action="store_true", help="also train the first-stage judge per seed and first stage")
ap.add_argument("--data", default="outputs/demo/data")
ap.add_argument("--out", default="outputs/exp18/judge_seeds")
a = ap.parse_args()
base = yaml.safe_load(open(paths.REPO / "params/demo/01_train_ldm.yaml"))
base["judge"].pop("seed")  # the seeds are this script's
out = paths.resolve(a.out)
out.mkdir(parents=True, exist_ok=True)
D = prep.split_tiles(paths.resolve(a.data), int(base["val_fold"]), progress=False)
V = D["val"]
recons = {f: ae.reconstruct(ae.load_vq(paths.resolve(f)), V["imgs"]) for f in a.first_stage}
rows = []
for s in a.seeds:
    t0 = time.time()
    real = jg.train_judge(D, {**base["judge"], "input": "real"}, out / f"real-seed{s}", seed=s, progress=False)
    t_real = time.time() - t0
    for f, rec in recons.items():
        on_recon = real(rec, V["masks"])
        # judge_real_s is about 0 where a stored judge of the same signature was reused
        r = {"first_stage": f, "seed": s, "judge_real_s": round(t_real), "real_on_real": real.info["real"]["mean_iou"],
             "real_on_recon": on_recon["mean_iou"], "real_on_recon_iou": on_recon["iou"]}
        r["ratio"] = r["real_on_recon"] / r["real_on_real"]
        if a.ceiling:
            tag = f.strip("/").replace("/", "_")
            fs = jg.train_judge(D, {**base["judge"], "input": "first_stage"}, out / f"fs-{tag}-seed{s}", seed=s,
                                first_stage=paths.resolve(f), progress=False)
            r["recon_on_recon"] = fs.info["real"]["mean_iou"]
            r["recon_on_recon_iou"] = fs.info["real"]["iou"]
            r["chance"] = fs(rec, V["masks"][adherence.chance_order(len(V["masks"]), 0)])["mean_iou"]
        rows.append(r)
        print(json.dumps(r), flush=True)
        (out / "judge_seeds.json").write_text(json.dumps(rows, indent=1))
for f in a.first_stage:
    sel = [r for r in rows if r["first_stage"] == f]
    for k in ("real_on_real", "real_on_recon", "ratio", "recon_on_recon", "chance"):
        if k in sel[0]:
            v = np.array([r[k] for r in sel])
            print(f"{f}  {k}: {v.mean():.3f} +- {v.std(ddof=1) if len(v) > 1 else 0:.3f}  ({' '.join(f'{x:.3f}' for x in v)})")
    gg5 = np.array([r["real_on_recon_iou"]["GG5"] for r in sel])
    print(f"{f}  real_on_recon GG5: {gg5.mean():.3f} +- {gg5.std(ddof=1) if len(gg5) > 1 else 0:.3f}")
