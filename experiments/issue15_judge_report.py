"""Issue 15: the judges three ways (judge.json) for a notebook-01 folder made with the demo recipe and a given
number of first-stage steps, e.g. outputs/exp15/long/ldm (the one-off 2000-step first stage). Reuses a stored
judge of the same signature and trains the other one. Run with DISCNB_FIGURES=<folder> so that judge.json and
the curves go there, not to the committed results/demo/.

    DISCNB_FIGURES=outputs/exp15/figs python experiments/issue15_judge_report.py --ldm-dir outputs/exp15/long/ldm --ae-steps 2000
"""
import argparse
import json
import os

from _demo01 import demo_params_01
from discnb.pipelines import train_ldm

ap = argparse.ArgumentParser()
ap.add_argument("--ldm-dir", required=True)
ap.add_argument("--ae-steps", type=int, default=2000)
a = ap.parse_args()
assert os.environ.get("DISCNB_FIGURES"), "set DISCNB_FIGURES: a one-off run must not write results/demo/"
P = demo_params_01(a.ldm_dir, ae_steps=a.ae_steps)
judges = train_ldm.train_judges(P, progress=False)
rep = train_ldm.judge_report(P, judges)
train_ldm.judge_figure(P)
print(json.dumps({k: rep[k]["mean_iou"] for k in ("real_on_real", "real_on_recon", "recon_on_recon", "chance")}))
print(train_ldm.judge_report_table(rep).round(3).to_string())
