"""What fp16 storage of the pattern judge changes: fp32 vs fp16-rounded judge on notebook 02's Fig. 5 tiles.

    python experiments/issue16_judge_fp16.py outputs/demo
"""
import json
import sys

import numpy as np

from discnb.grading import judge as jg
from discnb.grading.carcinonet import predict
root = sys.argv[1]
j32 = jg.load_judge(f"{root}/judge")
z = np.load(f"{root}/disc/comparison_samples.npz")
masks = z["masks"]
j16 = jg.load_judge(f"{root}/judge")
for p in list(j16.model.parameters()) + list(j16.model.buffers()):
    if p.is_floating_point():
        p.data = p.data.half().float()
out = {}
for i, m in enumerate(z["models"]):
    t = z[f"tiles_{i}"]
    pa, pb = predict(j32.model, t), predict(j16.model, t)  # segment once; score the same label maps
    out[str(m)] = {"fp32": round(jg.judge_scores(pa, masks)["mean_iou"], 5),
                   "fp16": round(jg.judge_scores(pb, masks)["mean_iou"], 5), "pixels_differ": float((pa != pb).mean())}
print(json.dumps(out, indent=1))
