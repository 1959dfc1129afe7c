"""Issue 15: does a patch-GAN phase after the plain first stage keep what tells GG5 apart? (taming's
disc_start: reconstruction losses first, then the discriminator). Starts from a trained first stage (the
one-off 2000-step plain one), fine-tunes it as a VQGAN (taming's adaptive weight, no LPIPS) and scores each
milestone: PSNR, SSIM (pytorch-msssim) and the real-tile judge on the reconstructions (real_on_recon).

    python experiments/issue15_gan_finetune.py --first-stage DIR --judge-real DIR --steps 300 600 [--lr 2e-4]
"""
import argparse
import json
import time

import numpy as np

from discnb.core import paths
from discnb.core.train import FitConfig, TensorData, fit
from discnb.generative import autoencoder as ae
from discnb.grading import judge as jg
from discnb.pipelines import prep

ap = argparse.ArgumentParser()
ap.add_argument("--first-stage", required=True)
ap.add_argument("--judge-real", required=True)
ap.add_argument("--steps", type=int, nargs="+", required=True)
ap.add_argument("--lr", type=float, default=2e-4)
ap.add_argument("--disc-weight", type=float, default=0.75)
ap.add_argument("--out", default="outputs/exp15/gan")
a = ap.parse_args()
out = paths.resolve(a.out)
D = prep.split_tiles(paths.resolve("outputs/demo/data"), 1, progress=False)
tr = TensorData({"x": ae.pixels(D["train"]["imgs"])}, augment=lambda b: ae.dihedral(b, ("x",)), transform=ae.pixels_to_model)
va = TensorData({"x": ae.pixels(D["val"]["imgs"])}, transform=ae.pixels_to_model)
judge = jg.load_judge(a.judge_real)
res_f = out / "res.json"
res = json.loads(res_f.read_text()) if res_f.exists() else {}


def score(vq, name):
    rec = ae.reconstruct(vq, D["val"]["imgs"])
    j = judge(rec, D["val"]["masks"])
    res[name] = {"val_reconstruction": ae.reconstruction_metrics(vq, D["val"]["imgs"]), "real_on_recon": j["mean_iou"],
                 "real_on_recon_iou": j["iou"], "recon_std_per_class": [float(rec[D["val"]["masks"] == k].std()) for k in range(4)]}
    print(name, json.dumps(res[name]), flush=True)
    res_f.write_text(json.dumps(res, indent=1))


out.mkdir(parents=True, exist_ok=True)
if "start" not in res:
    score(ae.load_vq(a.first_stage), "start")
for steps in a.steps:
    if str(steps) in res:
        continue
    model = ae.VQGAN(ae.load_vq(a.first_stage), ae.PatchDiscriminator(64, 3))
    cfg = FitConfig(out_dir=str(out / "run"), max_steps=steps, global_batch=16, lr=a.lr, cpu=True, checkpoint_every=100,
                    checkpoints_total_limit=1, resume="latest", seed=0, desc="VQGAN phase", progress=False,
                    signature={"kind": "vqgan-phase", "from": str(a.first_stage), "lr": a.lr, "disc_weight": a.disc_weight},
                    max_grad_norm=1.0)
    t0 = time.time()
    fit(model, ae.vqgan_loss(a.disc_weight), tr, cfg, val=va, save_fn=lambda m, d: m.vq.save_pretrained(d))
    print("trained to", steps, "in", round(time.time() - t0), "s", flush=True)
    score(ae.load_vq(out / "run" / "final"), str(steps))
