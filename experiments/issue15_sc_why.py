"""Issue 15: why SD-SC scores below SD on multi-label masks (docs/demo-results.md, "Why SD-SC loses").

On a trained SD (an experiments/issue15_sd_levers.py folder) and the 2000-step first stage, the same multi-label
masks and seeds are drawn by SD and by SD-SC variants that change one thing each:

- ``SC``: the paper's SC (fusion at t = 0 only), the SD's guidance scale in every branch;
- ``SC-step``: fusion after every denoising step (the project page's drawing);
- ``SC-g1``: no guidance in the constant-mask branches (scale 1);
- ``SC-allK``: all K branches (the paper's K = 4), not only the labels present.

Each is judged (the first-stage judge: the ceiling's) overall and split by distance to a label boundary (pixels
at most ``--band`` px from another label vs the rest), to see whether SC loses at the seams Eq. 2 cuts.

    python experiments/issue15_sc_why.py outputs/exp15/levers/cfg --first-stage outputs/exp15/long/ldm/autoencoder/best
        --judge outputs/exp15/long/judge --n 64 --guidance-scale 3
"""
import argparse
import json
import time

import numpy as np
import pandas as pd
from scipy import ndimage

from _demo01 import demo_params_01
from discnb import K, LABELS
from discnb.core import layout, paths
from discnb.data import shapes
from discnb.generative import ldm
from discnb.generative.disc import SCGenerator
from discnb.generative.sampling import SDGenerator
from discnb.grading import adherence
from discnb.grading import judge as jg
from discnb.grading.judge import judge_scores
from discnb.pipelines import train_ldm
from discnb.generative import ldm_training

ap = argparse.ArgumentParser()
ap.add_argument("run")
ap.add_argument("--first-stage", required=True)
ap.add_argument("--judge", required=True)
ap.add_argument("--n", type=int, default=64)
ap.add_argument("--guidance-scale", type=float, default=3.0)
ap.add_argument("--sample-steps", type=int, default=50)
ap.add_argument("--band", type=int, default=4, help="px: the boundary band at the tile's resolution")
ap.add_argument("--variants", nargs="+", default=["SD", "SC", "SC-step", "SC-g1", "SC-allK"])
a = ap.parse_args()
run = paths.resolve(a.run)
P = demo_params_01(run / "ldm", first_stage=a.first_stage)
split = ldm_training.load_split(P, progress=False)
vq, _ = train_ldm.first_stage(P, split, progress=False)
model = ldm.MaskLDM.from_pretrained(run / "ldm" / "sd" / "best")
judge = jg.load_judge(paths.resolve(a.judge))
size = split["image_size"]
maps = np.stack([shapes.resize_mask(m, size) for m in shapes.load_library(layout.of(P).data / "shape_maps.npz")["maps"]])
masks = adherence.mask_sets(maps, ldm_training.held_out(split)["masks"], a.n, K, K, 0,
                            model.unet.config.sample_size)["multi"]
# boundary band: pixels within `band` px of a pixel of another label
near = np.zeros(masks.shape, bool)
for k in range(K):
    region = masks == k
    near |= region & ndimage.binary_dilation(~region, iterations=a.band, axes=(1, 2))
print(f"{len(masks)} multi-label masks; {near.mean():.1%} of pixels within {a.band} px of a boundary", flush=True)


def make(name):
    kw = dict(steps=a.sample_steps, batch_size=32, guidance_scale=a.guidance_scale)
    if name == "SD":
        return SDGenerator(model, vq, **kw)
    if name == "SC-g1":
        kw["guidance_scale"] = 1.0
    return SCGenerator(model, vq, fuse_every_step=name == "SC-step", all_labels=name == "SC-allK", **kw)


rows = []
out = run / "sc_why"
out.mkdir(exist_ok=True)
for name in a.variants:
    gen = make(name)
    t0 = time.perf_counter()
    tiles = gen.generate(masks, list(range(len(masks))))
    sec = (time.perf_counter() - t0) / len(masks)
    pred = judge.segment(tiles)
    r = {"variant": name, "n_masks": len(masks), "mean_iou": judge_scores(pred, masks)["mean_iou"]}
    r |= {f"iou_{lab}": v for lab, v in judge_scores(pred, masks)["iou"].items()}
    r["acc_boundary"] = float((pred == masks)[near].mean())
    r["acc_interior"] = float((pred == masks)[~near].mean())
    r["chance_mean_iou"] = adherence.score(judge, tiles, masks)["chance_mean_iou"]
    r["sec_per_tile"], r["unet_evals_per_tile"] = sec, gen.nfe / len(masks)
    rows.append(r)
    print(json.dumps(r), flush=True)
    np.savez_compressed(out / f"{name}.npz", tiles=tiles, masks=masks, pred=pred)
    pd.DataFrame(rows).to_csv(out / "sc_why.csv", index=False)
print(pd.DataFrame(rows).round(3).to_string())
