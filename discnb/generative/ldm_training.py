"""What notebooks 01 and 02 and the benchmark share to train and inspect SD (paper Sec. 2.1, Eq. 1):
notebook 00's tiles split in memory, their first-stage latents, Eq. 1 on a batch of them, the training
loop's settings from a params section, SD's signature, and the held-out inputs of SD's reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from discnb.core import layout
from discnb.core.train import FitConfig
from discnb.data import prepared
from discnb.data import sicap as data
from discnb.generative import autoencoder as ae
from discnb.generative import checkpoints as ck
from discnb.generative import ldm


def load_split(P, progress: bool = True) -> dict:
    """Tiles and masks of the training and validation split, in memory at the model's size."""
    ddir = layout.of(P).data
    size = prepared.prep_params(ddir)["image_size"]
    index = prepared.read_index(ddir)
    if not (index.split == "train").any():
        raise data.DataError(f"{ddir}/index.csv: the training split is empty (no official-train tiles)")
    parts = data.fold_split(index, P.val_fold)
    if len(parts["train"]) == 0:
        raise data.DataError(f"{ddir}/index.csv: the training split (official train minus fold {P.val_fold}) is empty")
    out = {"image_size": size}
    for name in ("train", "val"):
        imgs, masks = data.load_tiles(parts[name], size, progress=progress)
        out[name] = {"imgs": imgs, "masks": masks,
                     "slide": parts[name][["slide_primary_label", "slide_secondary_label"]].to_numpy(np.int64)}
    return out


def held_out(split: dict) -> dict:
    """The validation part of :func:`load_split` (the training part when there is no validation fold)."""
    return split["val"] if len(split["val"]["imgs"]) else split["train"]


# what a training section sets beyond steps and batch (notebook 01's ``sd``, notebook 02's ``finetune``)
FIT_KEYS = ("lr", "scale_lr", "grad_accum", "ema_decay", "weight_decay", "max_grad_norm")


def fit_config(P, out: Path, section: dict, desc: str, signature: dict, progress: bool = True) -> FitConfig:
    """The training loop's settings for one model: steps, batch and :data:`FIT_KEYS` from ``section``
    (notebook 01's ``autoencoder`` or ``sd``, notebook 02's ``finetune``), the rest from the stage's ``P``."""
    return FitConfig(out_dir=str(out), max_steps=section["steps"], global_batch=section["batch"],
                     **{k: section[k] for k in FIT_KEYS}, mixed_precision=P.mixed_precision, cpu=P.device == "cpu",
                     checkpoint_every=P.checkpoint_every, checkpoints_total_limit=P.checkpoints_total_limit,
                     resume=P.resume or None, seed=P.seed, desc=desc, signature=signature, progress=progress)


def encode_split(vq, split: dict, latent_scale: float | None = None) -> tuple[dict, float]:
    """Pre-quantisation latents of train/val tiles, scaled to unit std when ``latent_scale`` is None."""
    z = {k: ae.encode(vq, split[k]["imgs"]) for k in ("train", "val")}
    if latent_scale is None:
        latent_scale = float(1.0 / z["train"].std())
    return {k: v * latent_scale for k, v in z.items()}, latent_scale


def ldm_signature(P, image_size: int, condition: str | None = None) -> dict:
    """What makes a trained SD (or the ablation SD of ``condition``) the one notebook 01's ``P`` asks for."""
    sig = {"kind": "ldm", "condition": condition or P.condition, "unet": dict(P.unet), "image_size": image_size,
           "autoencoder": {k: v for k, v in P.autoencoder.items() if k in ("path", "channels", "layers_per_block", "n_embed")}}
    # only when on: SDs trained without classifier-free guidance, min-SNR or crops keep their signature
    return sig | {k: P.sd[k] for k in ("cond_drop", "snr_gamma", "crop") if P.sd.get(k)}


def ldm_batch_loss(condition: str, alphas_cumprod: torch.Tensor):
    """Eq. 1 on a batch of stored latents and masks (condition images are built on the fly)."""
    def loss(model, batch, generator=None):
        cond = ldm.make_condition(batch["mask"], condition, batch["slide"]).to(batch["z"].device)
        b = {"z": batch["z"], "cond": cond}
        if "crop_offset" in batch:  # a crop of the latents (sd.crop): its place in mask pixels
            b["offset"] = batch["crop_offset"] * (batch["mask"].shape[-1] // batch["z"].shape[-1])
        return ldm.ldm_loss(model, b, alphas_cumprod, generator)
    return loss


def report_inputs(P, which: str = "best") -> dict:
    """What notebook 01's reports share, loaded once: the held-out tiles (``src``), SD and its first
    stage (``model``, ``vq``; checkpoint ``which``). Pass it as ``inputs=`` to the report functions."""
    model, vq = ck.load_trained(P, which)
    return {"src": held_out(load_split(P, progress=False)), "model": model, "vq": vq, "which": which}


def inputs_of(P, inputs: dict | None, which: str) -> tuple:
    """(held-out tiles, SD, first stage) from :func:`report_inputs`'s ``inputs``, loaded when None."""
    if inputs is None:
        inputs = report_inputs(P, which)
    elif inputs["which"] != which:
        raise ValueError(f"inputs hold the {inputs['which']!r} SD, not {which!r}")
    return inputs["src"], inputs["model"], inputs["vq"]


def conditioning_report(P, n: int = 256, which: str = "best", inputs: dict | None = None,
                        models: dict | None = None):
    """:func:`discnb.generative.ldm.conditioning_gap` of SD (or of each of ``models``, name -> MaskLDM on SD's
    latents, e.g. the fine-tuned ones) on the same up to ``n`` validation latents, encoded once:
    does the noise prediction use the mask? (A relative gap near 0 means it ignores tau_theta.)"""
    src, model, vq = inputs_of(P, inputs, which)
    z = ae.encode(vq, src["imgs"][:n]) * model.latent_scale
    masks = torch.from_numpy(src["masks"][:n])
    return pd.DataFrame([{"model": name, **r} for name, m in (models or {"SD": model}).items()
                         for r in ldm.conditioning_gap(m, z, masks)])
