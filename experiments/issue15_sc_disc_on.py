"""Issue 15: notebook 02 (DISC data, SD-DISC / CoTrain fine-tuning, the adherence comparison) on an SD trained by
experiments/issue15_sd_levers.py, with the demo's notebook-02 parameters. Writes the notebook-01 files notebook 02
reads (params.resolved.yaml; the judge folder is linked from --judge) and runs discnb.pipelines.sc_disc.run.

    DISCNB_FIGURES=outputs/exp15/figs python experiments/issue15_sc_disc_on.py outputs/exp15/levers/cfg --first-stage DIR
        --judge DIR --cond-drop 0.15 --guidance-scale 2
"""
import argparse
import os

import yaml

from _demo01 import demo_params_01
from discnb.core import params, paths
from discnb.pipelines import sc_disc
from discnb.grading import comparison

ap = argparse.ArgumentParser()
ap.add_argument("run")
ap.add_argument("--first-stage", required=True)
ap.add_argument("--judge", required=True)
ap.add_argument("--cond-drop", type=float, default=0.0)
ap.add_argument("--snr-gamma", type=float, default=0.0)
ap.add_argument("--guidance-scale", type=float, default=1.0)
ap.add_argument("--steps", type=int, default=2400)
ap.add_argument("--models", nargs="+", default=None, help="notebook 02's models (default: the demo's)")
ap.add_argument("--ranking-masks", type=int, default=None, help="adherence.ranking_masks (default: the demo's)")
a = ap.parse_args()
assert os.environ.get("DISCNB_FIGURES"), "set DISCNB_FIGURES: a one-off run must not write figures/ or results/demo/"
run = paths.resolve(a.run)
P01 = demo_params_01(run / "ldm", first_stage=a.first_stage, cond_drop=a.cond_drop, snr_gamma=a.snr_gamma,
                     sd_steps=a.steps, guidance_scale=a.guidance_scale)
(run / "ldm" / "params.resolved.yaml").write_text(yaml.safe_dump(dict(P01)))
if not (run / "judge").exists():
    (run / "judge").symlink_to(paths.resolve(a.judge))
D02 = yaml.safe_load(open(paths.REPO / "params/demo/02_sc_disc.yaml"))
over = {"ldm_dir": str(run / "ldm")}
if a.models:
    over["models"] = a.models
if a.ranking_masks is not None:
    over["adherence"] = {**D02["adherence"], "ranking_masks": a.ranking_masks}
P02 = params.validate("02_sc_disc", D02 | over)
res = sc_disc.run(P02, progress=False, checks=False)
print(sc_disc.adherence_summary(res["comparison"]["adherence"]).to_string())
print(sc_disc.ranking_table(res["comparison"]["adherence"], res["comparison"]["ranking"]).to_string())
print(comparison.table(res["summary"], P02.models).to_string())
