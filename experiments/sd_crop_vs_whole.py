"""SD trained on latent crops or on whole latent grids, at equal wall time: which follows its masks better on whole
tiles? (docs/demo-v3.md, "SD on crops or whole tiles")

Trains notebook 01's SD recipe (``--params``, its own first stage and data) twice with
:func:`discnb.pipelines.train_ldm.train_sd`: on ``--crop`` x ``--crop`` latent windows for ``--crop-steps`` steps and on
whole grids for ``--whole-steps`` steps (pick the two so that the wall times match: a whole 32x32 step costs 2.0x a
16x16 crop step, docs/cost.md), then samples both on the same multi-label masks of notebook 00's shape maps with
DPM-Solver++ 20 and scores them with notebook 01's adherence judge, with the interior columns (one latent cell from the
boundaries) for every seed. Writes ``--out``/crop_vs_whole.csv (one row per setting and seed) and prints the mean.

    python experiments/sd_crop_vs_whole.py --crop-steps 3000 --whole-steps 1500 --seeds 0 1 2

Relative paths are read from the repository root. Each training resumes from its checkpoints when run again.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import yaml

from discnb.core import params, paths
from discnb.data import shapes
from discnb.generative import autoencoder as ae
from discnb.generative import ldm_training
from discnb.generative.disc_pipeline import DISCPipeline
from discnb.grading import adherence
from discnb.grading import judge as jg
from discnb.pipelines import train_ldm


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params/demo/01_train_ldm.yaml", help="notebook 01's parameters (SD's recipe)")
    ap.add_argument("--data", default="outputs/demo/data", help="notebook 00's data folder")
    ap.add_argument("--first-stage", default="outputs/demo/ldm/autoencoder/best", help="a VQModel folder")
    ap.add_argument("--judge", default="outputs/demo/judge", help="notebook 01's adherence judge")
    ap.add_argument("--crop", type=int, default=16, help="latent window side of the crop setting")
    ap.add_argument("--crop-steps", type=int, default=3000)
    ap.add_argument("--whole-steps", type=int, default=1500)
    ap.add_argument("--n-masks", type=int, default=64)
    ap.add_argument("--masks", choices=["multi", "complex-real"], default="multi",
                    help="multi-label masks of notebook 00's shape maps, or the held-out masks with the most labels")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch", type=int, default=None, help="override the recipe's batch size (smoke runs)")
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--out", default="outputs/experiments/sd_crop_vs_whole")
    return ap.parse_args(argv)


def mask_set(a, split: dict, size: int, side: int) -> np.ndarray:
    """``--masks``: multi-label masks of notebook 00's shape maps, or the held-out masks with the most labels."""
    if a.masks == "multi":
        lib = shapes.load_library(paths.resolve(a.data) / "shape_maps.npz")
        maps = np.stack([shapes.resize_mask(m, size) for m in lib["maps"]])
        return adherence.multi_label_masks(maps, a.n_masks, 0, side)
    held = ldm_training.held_out(split)["masks"]
    return held[adherence.complex_choice(held, a.n_masks, 0)]


def main(argv=None) -> pd.DataFrame:
    a = parse_args(argv)
    out = paths.resolve(a.out)
    base = yaml.safe_load(paths.resolve(a.params).read_text())
    vq = ae.load_vq(paths.resolve(a.first_stage))
    judge = jg.load_judge(paths.resolve(a.judge))
    rows, split, masks = [], None, None
    for name, crop, steps in (("crop", a.crop, a.crop_steps), ("whole", 0, a.whole_steps)):
        P = params.validate("01_train_ldm", base | {
            "data_dir": str(paths.resolve(a.data)), "output_dir": str(out / name), "ablation_conditions": [],
            "autoencoder": base["autoencoder"] | {"path": str(paths.resolve(a.first_stage))},
            "sd": base["sd"] | {"steps": steps, "crop": crop} | ({"batch": a.batch} if a.batch else {})})
        split = split or ldm_training.load_split(P)
        t0 = time.perf_counter()
        result = train_ldm.train_sd(P, split, vq, {"source": a.first_stage})
        wall = time.perf_counter() - t0
        pipe = DISCPipeline.from_pretrained(out / name / "sd" / "best")
        size, side = pipe.image_size, int(result["latent_shape"][-1])
        masks = masks if masks is not None else mask_set(a, split, size, side)  # the same masks for both settings
        gen = pipe.sampler(num_inference_steps=a.sample_steps, scheduler="dpm++", batch_size=32)
        for seed in a.seeds:
            tiles = gen.generate(masks, [seed * 100_000 + i for i in range(len(masks))])
            s = adherence.score(judge, tiles, masks, seed, size // side)
            rows.append({"setting": name, "masks": a.masks, "crop": crop, "steps": steps, "train_wall_s": round(wall, 1),
                         "train_s_per_step": result["sd"].get("train_seconds", wall) / max(steps, 1), "seed": seed,
                         "mean_iou": s["mean_iou"], **{f"iou_{k}": v for k, v in s["iou"].items()},
                         "chance_mean_iou": s["chance_mean_iou"], "interior_mean_iou": s["interior_mean_iou"]})
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "crop_vs_whole.csv", index=False)
    print(df.groupby("setting")[["mean_iou", "interior_mean_iou", "iou_GG5", "chance_mean_iou", "train_wall_s"]].mean())
    return df


if __name__ == "__main__":
    main()
