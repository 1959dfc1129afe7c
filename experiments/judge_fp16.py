"""What fp16 storage of the pattern judge changes (docs/reproducing.md, "The shipped weights").

The shipped judge (``weights/demo/judge``, stored in fp16 and loaded as float32) against the same judge with every
floating-point weight rounded to fp16 once more, on notebook 02's Fig. 5 tiles (``comparison_samples.npz``, shipped
in ``weights/demo/state/disc``): each model's mean IoU under both, and the share of pixels whose class changes. For
a judge saved in float32 (``outputs/<profile>/judge`` of a ``--train`` run) this measures what the export loses.

    python experiments/judge_fp16.py --judge outputs/demo/judge --samples outputs/demo/disc/comparison_samples.npz

Relative paths are read from the repository root.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from discnb.core import paths
from discnb.grading import judge as jg
from discnb.grading.carcinonet import predict


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--judge", default="weights/demo/judge")
    ap.add_argument("--samples", default="weights/demo/state/disc/comparison_samples.npz",
                    help="notebook 02's Fig. 5 tiles: masks, models, tiles_<i>")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    j32 = jg.load_judge(paths.resolve(a.judge))
    j16 = jg.load_judge(paths.resolve(a.judge))
    for p in list(j16.model.parameters()) + list(j16.model.buffers()):
        if p.is_floating_point():
            p.data = p.data.half().float()
    z = np.load(paths.resolve(a.samples))
    masks = z["masks"]
    out = {}
    for i, m in enumerate(z["models"]):
        t = z[f"tiles_{i}"]
        pa, pb = predict(j32.model, t), predict(j16.model, t)  # segment once; score the same label maps
        out[str(m)] = {"fp32": round(jg.judge_scores(pa, masks)["mean_iou"], 5),
                       "fp16": round(jg.judge_scores(pb, masks)["mean_iou"], 5),
                       "pixels_differ": float((pa != pb).mean())}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
