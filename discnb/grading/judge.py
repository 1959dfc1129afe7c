"""The pattern judge: does a generated tile show the pattern its mask asks for? (beyond the paper,
which shows pictures; used by notebooks 02-04 to compare SD, SD-SC and SD-DISC).

The judge is a real-only CarcinoNet (:mod:`discnb.grading.carcinonet`), frozen: ``judge(tiles,
masks)`` segments generated tiles and scores the segmentation against the guiding masks (IoU per
class, their mean, pixel agreement). It is its own artifact, trained once by notebook 01 right
after the first stage (:func:`train_judge`, stored in ``outputs/<profile>/judge/``) and read by
every later notebook with :func:`load_judge`.

With ``input: first_stage`` it learns from real tiles passed through the first stage (encode,
quantise, decode: :func:`first_stage_view`), the image domain every generator's tiles live in,
since they all share its decoder. A judge trained on untouched tiles would also penalise what the
first stage loses (on CPU-trained first stages most of the fine texture), which says nothing about
whether a generator follows the mask.

Realism (also beyond the paper): no ImageNet Inception weights can be downloaded here, so
FID/KID use the judge encoder's features (:meth:`Judge.features`: its two deepest levels,
global-average-pooled) with :func:`discnb.grading.metrics.kid`. Numbers are comparable only with
the same judge.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from discnb import LABELS
from discnb.core.io import atomic_dir, fingerprint, write_json
from discnb.core.train import pick_device, process_state
from discnb.generative import autoencoder as ae
from discnb.grading.carcinonet import load_model, predict, save_model, to_chw, train_carcinonet
from discnb.grading.metrics import confusion, metrics_from_confusion

RECIPE_KEYS = {"input": ("real", "first_stage"),
               "model": ("encoder", "encoder_width", "encoder_path", "decoder_channels", "pool_grids"),
               "train": ("steps", "batch", "lr", "weight_decay", "warmup_steps", "ema_decay", "validate_every",
                         "focal_gamma", "dice_weight", "jitter", "crop")}
VERSION = 1  # bump when the judge's training changes: a stored judge of another version is retrained
RUN_WHERE = "notebooks/01_train_ldm.ipynb"


def judge_scores(pred: np.ndarray, masks: np.ndarray) -> dict:
    """How well a segmentation follows the guiding masks: per-class IoU (NaN for a class in
    neither), their mean, pixel agreement, and per-class recall (share of the asked-for pixels
    drawn as that class)."""
    cm = confusion(masks, pred)
    m = metrics_from_confusion(cm)
    return {"iou": dict(zip(LABELS, m["iou"].tolist())), "mean_iou": m["mean_iou"],
            "pixel_agreement": m["pixel_accuracy"], "recall": dict(zip(LABELS, m["recall"].tolist())),
            "n_tiles": int(len(masks)), "confusion": cm.tolist()}


@torch.no_grad()
def encoder_features(model, imgs: np.ndarray, batch_size: int = 64, device="cpu") -> np.ndarray:
    """(N,H,W,3) uint8 -> (N, D) features from a CarcinoNet's encoder (two deepest levels, GAP)."""
    model = model.eval().to(device)
    out = []
    for s in range(0, len(imgs), batch_size):
        feats = model.encoder(model.normalise(to_chw(imgs[s:s + batch_size]).to(device)))
        out.append(torch.cat([F.adaptive_avg_pool2d(f, 1).flatten(1) for f in feats[-2:]], 1).float().cpu())
    return torch.cat(out).numpy()


@dataclass
class Judge:
    """The frozen real-only CarcinoNet as a pattern judge: ``judge(tiles, masks) -> dict``;
    ``segment(tiles)`` its label maps; ``features(tiles)`` its encoder features (for KID)."""
    segment: Callable[[np.ndarray], np.ndarray]
    info: dict = field(default_factory=dict)
    model: nn.Module | None = None
    device: str = "cpu"

    def __call__(self, tiles: np.ndarray, masks: np.ndarray) -> dict:
        tiles, masks = np.asarray(tiles), np.asarray(masks)
        if tiles.shape[:3] != masks.shape:
            raise ValueError(f"tiles {tiles.shape} and masks {masks.shape} do not match")
        return judge_scores(self.segment(tiles), masks)

    def features(self, tiles: np.ndarray, batch_size: int = 64) -> np.ndarray:
        if self.model is None:
            raise ValueError("this judge has no model (a stub segmenter): no encoder features")
        return encoder_features(self.model, np.asarray(tiles), batch_size, self.device)


def judge_from_model(model: nn.Module, info: dict | None = None, batch_size: int = 32, device="cpu") -> Judge:
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Judge(lambda tiles: predict(model, tiles, batch_size, device), info or {}, model, str(device))


def load_judge(folder: str | Path, device: str = "cpu", batch_size: int = 32) -> Judge:
    """The judge stored by :func:`train_judge` in ``folder`` (``model/`` + ``judge.json``)."""
    folder = Path(folder)
    if not (folder / "judge.json").exists() or not (folder / "model").exists():
        raise FileNotFoundError(f"{folder}: no pattern judge; run {RUN_WHERE} for this profile first "
                                "(it trains the judge after the first stage)")
    return judge_from_model(load_model(folder / "model"), json.loads((folder / "judge.json").read_text()),
                            batch_size, pick_device(device))


# ================================================================================== training
def check_recipe(recipe: dict) -> dict:
    """The judge's recipe with exactly the keys of :data:`RECIPE_KEYS` (a mistyped key is an error)."""
    if set(recipe) != set(RECIPE_KEYS):
        raise ValueError(f"judge recipe: keys {sorted(recipe)}, expected {sorted(RECIPE_KEYS)}")
    if recipe["input"] not in RECIPE_KEYS["input"]:
        raise ValueError(f"judge recipe: input must be 'real' or 'first_stage', got {recipe['input']!r}")
    train = {"crop": 0} | dict(recipe["train"])  # crop (beyond the paper) may be left out: whole tiles
    for part, keys in (("model", recipe["model"]), ("train", train)):
        if set(keys) != set(RECIPE_KEYS[part]):
            raise ValueError(f"judge recipe: {part} keys {sorted(recipe[part])}, expected {sorted(RECIPE_KEYS[part])}")
    return {"input": recipe["input"], "model": dict(recipe["model"]), "train": train}


def first_stage_view(imgs: np.ndarray, first_stage) -> np.ndarray:
    """Tiles passed through the first stage (its folder, or the loaded VQModel): encode, quantise,
    decode, uint8: the domain every generated tile lives in."""
    vq = ae.load_vq(first_stage) if isinstance(first_stage, (str, Path)) else first_stage
    return ae.reconstruct(vq, imgs)


def kid_reference(judge: Judge, imgs: np.ndarray, first_stage) -> np.ndarray:
    """The judge-encoder features of KID's reference set: real tiles passed through the first stage
    (``first_stage``: its folder or a loaded VQModel) that every generator decodes with. Against
    untouched real tiles, the first stage's own loss (blur, lost nuclei) dominates the distance and
    every generator scores alike; against reconstructions, a generator that drew real-looking
    latents scores about 0."""
    return judge.features(first_stage_view(imgs, first_stage))


def tiles_fingerprint(D: dict, splits=("train", "val")) -> str:
    """A hash of the tile size and the bytes of the tiles and masks of ``splits``."""
    return fingerprint(D["image_size"], *(part for name in splits for key in ("imgs", "masks")
                                          for part in (f"{name}/{key}", np.ascontiguousarray(D[name][key]).tobytes())))


def train_judge(D: dict, recipe: dict, out: str | Path, *, seed: int, first_stage: str | Path | None = None,
                device: str = "cpu", mixed_precision: str = "no", checkpoint_every: int = 200,
                checkpoints_total_limit: int = 1, resume: str = "latest", eval_batch: int = 32,
                progress: bool = True) -> Judge:
    """Train the pattern judge once and store it in ``out`` (``model/``, ``judge.json``, and fit's
    folder ``run-<hash of the signature>/``, resumable); a stored judge of the same signature (recipe, seed, tiles, first stage) is
    loaded instead.

    ``D``: {"image_size", "train"/"val"(/"test"): {"imgs" (N,H,W,3) uint8, "masks" (N,H,W) uint8}},
    tiles with a mask only. ``recipe``: {"input": "real" | "first_stage", "model": CarcinoNet's
    dict, "train": its training dict} (:data:`RECIPE_KEYS`). With ``input: first_stage`` the tiles
    go through the first stage saved in folder ``first_stage`` before training and scoring.

    ``judge.json`` holds the signature, the judge's own scores on the validation tiles (the test
    split when there is none) in its input domain (``real``) and, for ``first_stage``, on the
    untouched tiles (``real_tiles``), and fit's summary.
    """
    R = check_recipe(recipe)
    if R["input"] == "first_stage" and first_stage is None:
        raise ValueError("judge recipe input 'first_stage' needs the first stage's folder (first_stage=...)")
    out = Path(out)
    # train.crop only when on: judges trained on whole tiles keep their signature
    sig_recipe = R | {"train": {k: v for k, v in R["train"].items() if k != "crop" or v}}
    sig = {"kind": "judge", "version": VERSION, **sig_recipe, "seed": int(seed), "mixed_precision": mixed_precision,
           "image_size": int(D["image_size"]), "tiles": tiles_fingerprint(D),
           "first_stage": fingerprint(Path(first_stage)) if R["input"] == "first_stage" else None}
    meta = out / "judge.json"
    if meta.exists() and json.loads(meta.read_text()).get("signature") == sig and (out / "model").exists():
        return load_judge(out, device, eval_batch)
    on = "val" if len(D["val"]["imgs"]) else "test"
    if on not in D:
        raise ValueError("the judge is scored on validation tiles, or on the test split when there are none: D has neither")
    vq = ae.load_vq(first_stage) if R["input"] == "first_stage" else None
    view = {n: D[n]["imgs"] if vq is None else first_stage_view(D[n]["imgs"], vq) for n in ("train", "val", "test") if n in D}
    run = out / f"run-{fingerprint(sig, n=8)}"  # a resumable run of this signature only
    summary = train_carcinonet(run, R, (view["train"], D["train"]["masks"]), (view["val"], D["val"]["masks"]),
                               int(seed), signature=sig, mixed_precision=mixed_precision, cpu=device == "cpu",
                               checkpoint_every=checkpoint_every, checkpoints_total_limit=checkpoints_total_limit,
                               resume=resume, desc=f"pattern judge seed {seed}", progress=progress)
    model = load_model(run / "best")
    j = judge_from_model(model, {}, eval_batch, pick_device(device))
    info = {"signature": sig, "input": R["input"], "seed": int(seed),
            "scored_on": on if R["input"] == "real" else f"{on}, through the first stage",
            "real": j(view[on], D[on]["masks"]), "fit": summary}
    if R["input"] == "first_stage":
        info["real_tiles"] = j(D[on]["imgs"], D[on]["masks"])
    state = process_state(device == "cpu")
    if state.is_main_process:  # under `accelerate launch` every process trained the same DDP model: one writes
        atomic_dir(lambda d: save_model(model, d), out / "model")
        write_json(meta, info)
        for stale in out.glob("run-*"):  # runs of judges no longer stored here
            if stale != run:
                shutil.rmtree(stale, ignore_errors=True)
    state.wait_for_everyone()
    j.info = info
    return j


# =================================================================================== reports
def judge_self_rows(judge: Judge) -> dict:
    """The judge's own accuracy rows: on its input domain, and on untouched real tiles if different."""
    rows = {f"real ({judge.info['scored_on']})": judge.info["real"]}
    if "real_tiles" in judge.info:
        rows["real (untouched tiles)"] = judge.info["real_tiles"]
    return rows


def judge_table(results: dict[str, dict]) -> pd.DataFrame:
    """Rows: what was judged (real validation tiles, each generator); columns: IoU per class, mean, agreement."""
    return pd.DataFrame.from_dict({name: {**{f"IoU {k}": v for k, v in r["iou"].items()}, "mean IoU": r["mean_iou"],
                                          "pixel agreement": r["pixel_agreement"], "tiles": r["n_tiles"]}
                                   for name, r in results.items()}, orient="index")
