"""Issue 15's SD ablation (one lever at a time): SD of the demo recipe (params/demo/01_train_ldm.yaml) on a
given first stage, trained with or without classifier-free guidance on the mask (sd.cond_drop) and
min-SNR-gamma (sd.snr_gamma), then judged on the three mask sets of discnb.grading.adherence at
several guidance scales. Not a notebook stage: a measurement whose table goes to docs/demo-results.md.

    python experiments/issue15_sd_levers.py NAME --first-stage DIR --judge DIR [--cond-drop 0.15] [--snr-gamma 5]
        [--scales 1 2 3] [--steps 2400] [--out outputs/exp15/levers]
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _demo01 import demo_params_01
from discnb.core import layout, paths
from discnb.data import shapes
from discnb.generative import ldm
from discnb.generative.sampling import SDGenerator
from discnb.grading import adherence
from discnb.grading import judge as jg
from discnb.pipelines import train_ldm
from discnb.generative import ldm_training

ap = argparse.ArgumentParser()
ap.add_argument("name")
ap.add_argument("--first-stage", required=True)
ap.add_argument("--judge", required=True)
ap.add_argument("--cond-drop", type=float, default=0.0)
ap.add_argument("--snr-gamma", type=float, default=0.0)
ap.add_argument("--scales", type=float, nargs="+", default=[1.0])
ap.add_argument("--steps", type=int, default=2400)
ap.add_argument("--sample-steps", type=int, default=50)
ap.add_argument("--n-multi", type=int, default=128)
ap.add_argument("--n-other", type=int, default=64)
ap.add_argument("--out", default="outputs/exp15/levers")
a = ap.parse_args()
out = paths.resolve(a.out) / a.name
P = demo_params_01(out / "ldm", first_stage=a.first_stage, cond_drop=a.cond_drop, snr_gamma=a.snr_gamma,
                   sd_steps=a.steps)
split = ldm_training.load_split(P, progress=False)
vq, info = train_ldm.first_stage(P, split, progress=False)
t0 = time.time()
res = train_ldm.train_sd(P, split, vq, info, progress=False)
train_s = time.time() - t0
model = ldm.MaskLDM.from_pretrained(out / "ldm" / "sd" / "best")
judge = jg.load_judge(a.judge)
ceiling = judge.info["real"]["mean_iou"]
maps = shapes.load_library(layout.of(P).data / "shape_maps.npz")["maps"]
size = split["image_size"]
maps = np.stack([shapes.resize_mask(m, size) for m in maps])
sets = adherence.mask_sets(maps, ldm_training.held_out(split)["masks"], a.n_multi, a.n_other, a.n_other, 0,
                           model.unet.config.sample_size)
rows = []
for s in a.scales:
    gen = SDGenerator(model, vq, steps=a.sample_steps, batch_size=64, guidance_scale=s)
    for name, masks in sets.items():
        gen.nfe = 0
        t1 = time.perf_counter()
        tiles = gen.generate(masks, list(range(len(masks))))
        sec = (time.perf_counter() - t1) / len(masks)
        r = adherence.row(a.name, name, 0, len(masks), adherence.score(judge, tiles, masks), ceiling, sec,
                          gen.nfe / len(masks))
        rows.append({**r, "cond_drop": a.cond_drop, "snr_gamma": a.snr_gamma, "guidance_scale": s,
                     "sd_steps": a.steps, "train_s": round(train_s), "best_val_loss": res["sd"]["best_val_loss"]})
        print(json.dumps(rows[-1]), flush=True)
        np.savez_compressed(out / f"tiles_{name}_g{s:g}.npz", tiles=tiles[:16], masks=masks[:16])
pd.DataFrame(rows).to_csv(out / "adherence.csv", index=False)
