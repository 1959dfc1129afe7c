"""Issue 15: does weighting Eq. 1 towards GG3 pixels make SD draw GG3? A trained SD (an issue15_sd_levers.py
folder) is trained on for ``--more`` steps twice from the same checkpoint: with each latent pixel's squared error
weighted 1 + (w - 1) x (its GG3 share), and with w = 1 (the control, plain Eq. 1); validation stays plain Eq. 1.
Both are judged at guidance 3, DDIM-50, on the multi- and single-label masks of discnb.grading.adherence, and their
Eq. 1 loss on pure held-out GG3 / GG4 tiles under the GG3 and GG4 masks is compared (the GG3-vs-GG4 gap).

    python experiments/issue15_gg3_weight.py --from outputs/exp15/levers/cfg-long --first-stage DIR --judge DIR
        --weight 4 --more 1500
"""
import argparse
import json
import shutil

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from _demo01 import demo_params_01
from discnb.core import layout, paths
from discnb.core.train import TensorData, fit
from discnb.data import shapes
from discnb.generative import autoencoder as ae
from discnb.generative import ldm
from discnb.generative.sampling import SDGenerator
from discnb.grading import adherence
from discnb.grading import judge as jg
from discnb.pipelines import train_ldm
from discnb.data.augment import dihedral
from discnb.generative import ldm_training

ap = argparse.ArgumentParser()
ap.add_argument("--from", dest="src", required=True)
ap.add_argument("--first-stage", required=True)
ap.add_argument("--judge", required=True)
ap.add_argument("--weight", type=float, default=4.0)
ap.add_argument("--start", type=int, default=6000)
ap.add_argument("--more", type=int, default=1500)
ap.add_argument("--out", default="outputs/exp15/gg3w")
ap.add_argument("--n-multi", type=int, default=128)
ap.add_argument("--n-single", type=int, default=64)
a = ap.parse_args()
src, root = paths.resolve(a.src), paths.resolve(a.out)
judge = jg.load_judge(paths.resolve(a.judge))
ceiling = judge.info["real"]["mean_iou"]
AC = ldm.noise_scheduler().alphas_cumprod


def weighted_eq1(w3: float):
    """Eq. 1 (v-MSE here), each latent pixel's error weighted 1 + (w3 - 1) x GG3 share; plain for validation."""
    def loss(model, batch, generator=None):
        cond = ldm.make_condition(batch["mask"], "pixel").to(batch["z"].device)
        if generator is not None or w3 == 1.0:
            return ldm.ldm_loss(model, {"z": batch["z"], "cond": cond}, AC, generator)
        net = getattr(model, "module", model)
        z0 = batch["z"]
        B = len(z0)
        noise = torch.randn_like(z0)
        t = torch.randint(0, len(AC), (B,))
        ab = AC[t].view(B, 1, 1, 1).to(z0.dtype)
        z_t = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
        err = (model(z_t, t, ldm.drop_condition(cond, net.cond_drop), raw=True).float()
               - net.target(z0, noise, t).float()) ** 2
        w = 1 + (w3 - 1) * F.adaptive_avg_pool2d(cond[:, 1:2], z0.shape[-2:])
        return (err * w).mean() / w.mean()
    return loss


rows = []
for name, w3 in (("plain", 1.0), (f"gg3x{a.weight:g}", a.weight)):
    out = root / name
    P = demo_params_01(out / "ldm", first_stage=a.first_stage, cond_drop=0.15, sd_steps=a.start + a.more)
    if not (out / "ldm" / "sd").exists():
        (out / "ldm" / "sd").mkdir(parents=True)
        ck = src / "ldm" / "sd" / f"checkpoint-{a.start}"
        shutil.copytree(ck, out / "ldm" / "sd" / ck.name)
        shutil.copy2(src / "ldm" / "sd" / "metrics.csv", out / "ldm" / "sd" / "metrics.csv")
    split = ldm_training.load_split(P, progress=False)
    vq, _ = train_ldm.first_stage(P, split, progress=False)
    z, scale = ldm_training.encode_split(vq, split, None)
    size = split["image_size"]
    model = train_ldm.ck.build_model(P, size, z["train"].shape[-1], scale)

    def tensors(k):
        return {"z": z[k], "mask": torch.from_numpy(split[k]["masks"]), "slide": torch.from_numpy(split[k]["slide"])}
    tr = TensorData(tensors("train"), augment=lambda b: dihedral(b, ("z", "mask")))
    res = fit(model, weighted_eq1(w3), tr, ldm_training.fit_config(P, out / "ldm" / "sd", P.sd, f"SD {name}",
                                                                 ldm_training.ldm_signature(P, size), False),
              val=TensorData(tensors("val")), save_fn=lambda m, d: m.save_pretrained(d))
    sd = ldm.MaskLDM.from_pretrained(out / "ldm" / "sd" / "final").eval()
    # the GG3-vs-GG4 gap on pure held-out tiles (same t and noise for both masks)
    ho = ldm_training.held_out(split)
    gap = {}
    for k, lab in ((1, "GG3"), (2, "GG4")):
        idx = np.flatnonzero((ho["masks"] == k).all((1, 2)))[:48]
        z0 = ae.encode(vq, ho["imgs"][idx]) * sd.latent_scale
        ls = {}
        for j, mlab in ((1, "GG3"), (2, "GG4")):
            cond = ldm.make_condition(torch.full((len(idx), size, size), j, dtype=torch.long))
            with torch.no_grad():
                ls[mlab] = float(ldm.ldm_loss(sd, {"z": z0, "cond": cond}, AC, torch.Generator().manual_seed(0)))
        gap[f"{lab}_tiles_loss_GG3_mask"], gap[f"{lab}_tiles_loss_GG4_mask"] = ls["GG3"], ls["GG4"]
    maps = np.stack([shapes.resize_mask(m, size) for m in shapes.load_library(layout.of(P).data / "shape_maps.npz")["maps"]])
    sets = adherence.mask_sets(maps, ho["masks"], a.n_multi, a.n_single, 4, 0, sd.unet.config.sample_size)
    gen = SDGenerator(sd, vq, steps=50, batch_size=64, guidance_scale=3.0)
    for mset in ("multi", "single"):
        tiles = gen.generate(sets[mset], list(range(len(sets[mset]))))
        r = adherence.row(name, mset, 0, len(tiles), adherence.score(judge, tiles, sets[mset]), ceiling, 0.0, 100)
        rows.append({**r, "gg3_weight": w3, "steps": a.start + a.more, "best_val_loss": res["best_val_loss"], **gap})
        print(json.dumps(rows[-1]), flush=True)
    pd.DataFrame(rows).to_csv(root / "gg3_weight.csv", index=False)
print(pd.DataFrame(rows)[["model", "masks", "mean_iou", "iou_NC", "iou_GG3", "iou_GG4", "iou_GG5", "normalized"]]
      .round(3).to_string())
