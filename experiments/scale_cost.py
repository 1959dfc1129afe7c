"""What the demo's models cost at 64 px (a 16x16 latent grid) and at 128 px (32x32), whole tiles or crops
(docs/cost.md, "64 px vs 128 px").

Times, in one process on the threads given, a training step (forward, backward, AdamW) of the demo's first stage
(VQ f = 4, channels 32/64/64, batch 16), its pattern judge / CarcinoNet (ResNet-18 width 16, batch 16, + 16
synthetic tiles for CarcinoNet at lambda > 0 is twice this) and its SD (U-Net 32/64/96, cross-attention at the two
lower levels, mask concatenated, tau tokens of 8 px, batch 16), and SD's sampling per tile (DPM-Solver++ 20 and
DDIM-50 with classifier-free guidance, batch 32, the decoder included). Crops: the first stage and the judge on 64-px
windows of 128-px tiles, SD on 16x16 latent windows of the 32x32 grid. Untrained weights: the cost of a step does not
depend on them.

    OMP_WAIT_POLICY=PASSIVE python experiments/scale_cost.py --threads 2 --out results/demo/scale_cost.csv
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
import torch.nn.functional as F

from discnb.data.augment import random_crop
from discnb.generative import autoencoder as ae
from discnb.generative import ldm
from discnb.generative.ldm_training import ldm_batch_loss
from discnb.generative.sampling import denoise
from discnb.grading.carcinonet import build_model

UNET = {"channels": [32, 64, 96], "attention": [False, True, True], "layers_per_block": 1, "head_channels": 32,
        "transformer_layers": 1, "context_dim": 64, "tau_channels": [32, 64], "concat_mask": True,
        "prediction": "v", "condition": "pixel", "cond_drop": 0.15, "guidance_scale": 3.0}
JUDGE = {"encoder": "resnet18", "encoder_width": 16, "encoder_path": "", "decoder_channels": 32, "pool_grids": [1, 2, 3]}


def timed(step, n: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def train_step(model, loss_fn, make_batch):
    opt = torch.optim.AdamW(model.parameters(), 1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model, make_batch()).backward()
        opt.step()
    return step


def first_stage(tile: int, crop: int, n: int, batch: int = 16) -> float:
    torch.manual_seed(0)
    vq = ae.build_vq([32, 64, 64], 1, 512)
    x = torch.rand(batch, 3, tile, tile) * 2 - 1
    return timed(train_step(vq, ae.vq_loss, lambda: random_crop({"x": x}, ("x",), crop)), n)


def judge(tile: int, crop: int, n: int, batch: int = 16) -> float:
    torch.manual_seed(0)
    m = build_model(JUDGE)
    x, y = torch.rand(batch, 3, tile, tile), torch.randint(0, 4, (batch, tile, tile))

    def batch():
        return random_crop({"image": x, "mask": y}, ("image", "mask"), crop)
    return timed(train_step(m, lambda m, b: F.cross_entropy(m(b["image"]), b["mask"].long()), batch), n)


def sd_model(tile: int) -> ldm.MaskLDM:
    torch.manual_seed(0)
    return ldm.MaskLDM.from_config({**UNET, "token_side": tile // 8}, tile, tile // 4)


def sd(tile: int, crop: int, n: int, batch: int = 16) -> float:
    m = sd_model(tile)
    g = tile // 4
    z, mask = torch.randn(batch, 3, g, g), torch.randint(0, 4, (batch, tile, tile), dtype=torch.uint8)
    slide = torch.zeros(batch, 2, dtype=torch.long)
    loss = ldm_batch_loss("pixel", ldm.noise_scheduler().alphas_cumprod)
    return timed(train_step(m, loss, lambda: random_crop({"z": z, "mask": mask, "slide": slide}, ("z", "mask"), crop, 2)), n)


@torch.no_grad()
def sampling(tile: int, steps: int, scheduler: str, batch: int = 32) -> float:
    m = sd_model(tile).eval()
    vq = ae.build_vq([32, 64, 64], 1, 512).eval()
    cond = ldm.make_condition(torch.randint(0, 4, (batch, tile, tile)))

    def run():
        z = denoise(m, torch.randn(batch, 3, tile // 4, tile // 4), cond, steps, scheduler)
        vq.decode(z, force_not_quantize=False)
    return timed(run, 1, warmup=1) / batch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="timed training steps per row")
    ap.add_argument("--batch", type=int, default=16, help="training batch (the demo's 16)")
    ap.add_argument("--sample-batch", type=int, default=32, help="tiles per sampling batch (the demo's 32)")
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []

    def add(model, setting, what, seconds):
        rows.append({"model": model, "setting": setting, "measure": what, "seconds": round(seconds, 4)})
        print(f"{model:12s} {setting:28s} {what:24s} {seconds:.4f} s", flush=True)
    for tile, crop, name in ((64, 0, "64 px (today)"), (128, 0, "128 px whole"), (128, 64, "128 px, 64-px crops")):
        add("first stage", name, f"train step, batch {a.batch}", first_stage(tile, crop, a.steps, a.batch))
        add("judge", name, f"train step, batch {a.batch}", judge(tile, crop, a.steps, a.batch))
    for tile, crop, name in ((64, 0, "64 px (16x16 grid, today)"), (128, 0, "128 px (32x32 grid) whole"),
                             (128, 16, "128 px, 16x16 latent crops")):
        add("SD", name, f"train step, batch {a.batch}", sd(tile, crop, a.steps, a.batch))
    for tile, name in ((64, "64 px (16x16 grid)"), (128, "128 px (32x32 grid)")):
        add("SD", name, "sample per tile, DPM++ 20 + CFG", sampling(tile, 20, "dpm++", a.sample_batch))
        add("SD", name, "sample per tile, DDIM 50 + CFG", sampling(tile, 50, "ddim", a.sample_batch))
    df = pd.DataFrame(rows)
    if a.out:
        df.to_csv(a.out, index=False)
    print(df.to_string(index=False))
    return df


if __name__ == "__main__":
    main()
