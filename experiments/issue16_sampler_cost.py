"""Can the demo's downstream tile sets (notebooks 03-04, DDIM-50) be drawn with fewer U-Net evaluations? SD-DISC of
``weights/demo`` on held-out multi-label masks, same seeds, judged by the shipped judge, per sampler: mean IoU and
seconds per tile, measured in one run.

    python experiments/issue16_sampler_cost.py [--n 64] [--out outputs/exp16/sampler.json]
"""
import argparse
import json
import time

import numpy as np

from discnb.core import paths
from discnb.core.io import write_json
from discnb.data.shapes import most_labels_first
from discnb.generative import checkpoints
from discnb.generative.pipeline import load_pipeline
from discnb.grading import judge as jg
from discnb.pipelines import train_ldm

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=64)
ap.add_argument("--model", default="weights/demo/SD-DISC")
ap.add_argument("--out", default="outputs/exp16/sampler.json")
ap.add_argument("--settings", default="ddim:50,dpm++:20,dpm++:25,ddim:25")
a = ap.parse_args()
split = train_ldm.load_split(checkpoints.ldm_params(paths.output_dir("demo") / "ldm"), progress=False)
masks = train_ldm.held_out(split)["masks"]
masks = masks[np.sort(most_labels_first(masks, a.n, 0))]
masks = masks[[len(np.unique(m)) > 1 for m in masks]]
pipe, judge = load_pipeline(paths.resolve(a.model)), jg.load_judge(paths.resolve("weights/demo/judge"))
seeds, rep = list(range(len(masks))), {"n_masks": len(masks), "model": a.model, "runs": []}
for s in a.settings.split(","):
    name, steps = s.split(":")
    gen = pipe.generator(num_inference_steps=int(steps), batch_size=32, scheduler=name)
    t0 = time.perf_counter()
    tiles = gen.generate(masks, seeds)
    sec = (time.perf_counter() - t0) / len(masks)
    sc = judge(tiles, masks)
    rep["runs"].append({"scheduler": name, "steps": int(steps), "mean_iou": sc["mean_iou"], "iou": sc["iou"],
                        "sec_per_tile": sec})
    print(rep["runs"][-1], flush=True)
paths.resolve(a.out).parent.mkdir(parents=True, exist_ok=True)
write_json(paths.resolve(a.out), rep)
