"""CarcinoNet, pixel-level Gleason grading (paper Sec. 2.4): the model, its loss, its augmentation
and one training run on given tiles.

CarcinoNet (Lokhande et al., EMBC 2020; no official code): a ResNet encoder (ResNet-50 in the
paper profile; any timm backbone, built offline with ``pretrained=False`` or loaded from a local
state dict), a pyramid pooling module over grids {1, 2, 3} on the deepest features, and a
U-Net-style decoder whose skip connections are *summed*; 4 output classes (NC, GG3, GG4, GG5);
focal loss (gamma 2) + Dice loss. Deviation: the cosine-restart schedule of the unofficial code
is not used; :func:`discnb.core.train.fit` has warm-up + constant lr.

Training with synthetic tiles follows Eq. 4 (:mod:`discnb.grading.eq4`): every batch holds
``batch`` real tiles and as many synthetic ones, and a synthetic tile's label map is the mask
that guided its generation. lambda = 0 *is* the real-only baseline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from discnb import K
from discnb.core import paths
from discnb.core.io import load_state_dict
from discnb.core.train import FitConfig, TensorData, fit
from discnb.data.augment import dihedral, random_crop
from discnb.grading.eq4 import check_lam, eq4

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ===================================================================================== model
class ConvBNReLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int = 3):
        super().__init__(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: average-pool to g x g for each grid g, 1x1 conv, upsample, concat
    with the input, fuse. The pooled branches use no BatchNorm (a 1x1 map of batch 1 has no
    batch statistics)."""

    def __init__(self, c_in: int, c_out: int, grids=(1, 2, 3)):
        super().__init__()
        self.grids = tuple(int(g) for g in grids)
        c_branch = max(1, c_in // max(1, len(self.grids)))
        self.branches = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(g), nn.Conv2d(c_in, c_branch, 1),
                                                    nn.ReLU(inplace=True)) for g in self.grids)
        self.fuse = ConvBNReLU(c_in + c_branch * len(self.grids), c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(b(x), size=size, mode="bilinear", align_corners=False) for b in self.branches]
        return self.fuse(torch.cat([x, *pooled], 1))


def _encoder_kwargs(cfg: dict) -> dict:
    """width w > 0: a slim ResNet for CPU runs: stages (w, 2w, 4w, 8w) and a 3-conv stem of width w
    (timm's "deep" stem, which scales with w; the standard 7x7 stem always has 64 channels)."""
    w = int(cfg["encoder_width"])
    if w < 0 or w % 2:
        raise ValueError(f"encoder_width must be 0 (the backbone's own widths) or an even number > 0, got {w}")
    return {"channels": (w, 2 * w, 4 * w, 8 * w), "stem_type": "deep", "stem_width": w // 2} if w else {}


class CarcinoNet(nn.Module):
    """encoder (timm, ``features_only``) -> pyramid pooling -> decoder with summed skips -> 4 classes.

    The decoder climbs the encoder's feature levels (strides 32 -> 2): upsample, add the 1x1-projected
    skip, 3x3 conv-BN-ReLU; a 1x1 head on the stride-2 level gives logits, upsampled bilinearly to
    the input size.

    Input: (B,3,H,W) uint8 (0..255) or float in [0, 1]; normalised inside with ImageNet's
    mean/std (what a pretrained ResNet expects). Output: logits (B,K,H,W) at the input size, for
    any H, W (features are upsampled to each skip's own size).
    """

    def __init__(self, encoder: str = "resnet50", encoder_width: int = 0, encoder_path: str = "",
                 decoder_channels: int = 128, pool_grids=(1, 2, 3), num_classes: int = K):
        super().__init__()
        self.config = {"encoder": encoder, "encoder_width": int(encoder_width), "encoder_path": encoder_path,
                       "decoder_channels": int(decoder_channels), "pool_grids": [int(g) for g in pool_grids],
                       "num_classes": int(num_classes)}
        try:
            self.encoder = timm.create_model(encoder, pretrained=False, features_only=True,
                                             **_encoder_kwargs(self.config))
        except (RuntimeError, TypeError, ValueError) as e:  # unknown name, or a width the backbone lacks
            raise ValueError(f"cannot build encoder {encoder!r} (encoder_width {encoder_width}): {e}") from None
        if encoder_path:
            load_encoder_weights(self.encoder, paths.resolve(encoder_path))
        chs = self.encoder.feature_info.channels()
        d = int(decoder_channels)
        self.ppm = PyramidPooling(chs[-1], d, pool_grids)
        self.lateral = nn.ModuleList(nn.Conv2d(c, d, 1) for c in chs[:-1])
        self.blocks = nn.ModuleList(ConvBNReLU(d, d) for _ in chs[:-1])
        self.head = nn.Conv2d(d, num_classes, 1)  # on the finest skip level (stride 2), then upsampled
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (to_unit(x) - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        feats = self.encoder(self.normalise(x))
        h = self.ppm(feats[-1])
        for i in range(len(feats) - 2, -1, -1):  # deepest skip first
            h = F.interpolate(h, size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
            h = self.blocks[i](h + self.lateral[i](feats[i]))  # summed skip connection
        return F.interpolate(self.head(h), size=size, mode="bilinear", align_corners=False)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float 0..1; floats pass through."""
    return x.float().div(255) if x.dtype == torch.uint8 else x


def to_chw(imgs: np.ndarray) -> torch.Tensor:
    """(N,H,W,3) uint8 -> (N,3,H,W) uint8 tensor (kept as bytes; :func:`to_unit` scales)."""
    return torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).contiguous()


def load_encoder_weights(encoder: nn.Module, path: Path) -> None:
    """A local timm/torchvision-style ResNet state dict (safetensors or a weights-only torch file);
    the classifier (``fc.*``) is dropped, every encoder weight must be present."""
    sd = load_state_dict(path, hint="encoder_path names a state dict of the timm model, e.g. resnet50 ImageNet "
                                    "weights saved as .safetensors or .pth")
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    own = encoder.state_dict()
    missing = sorted(set(own) - set(sd))
    bad = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or bad:
        raise ValueError(f"{path} does not fit the encoder: {len(missing)} weight(s) missing (e.g. {missing[:3]}), "
                         f"{len(bad)} of another shape (e.g. {bad[:3]})")
    encoder.load_state_dict({k: sd[k] for k in own})


def build_model(cfg: dict) -> CarcinoNet:
    """A CarcinoNet from a ``model`` section (notebook 04's, the judge's) or a saved ``config.json``
    (:attr:`CarcinoNet.config`, which adds ``num_classes``)."""
    return CarcinoNet(**cfg)


def save_model(model: CarcinoNet, folder: str | Path) -> None:
    """``config.json`` + ``model.safetensors`` (what :func:`load_model` reads)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = dict(model.config, encoder_path="")  # the weights are in the file; the encoder path is not needed again
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))


def load_model(folder: str | Path) -> CarcinoNet:
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: not a saved CarcinoNet (no config.json); train it with "
                                "notebooks/04_carcinonet.ipynb (the pattern judge: notebooks/01_train_ldm.ipynb)")
    model = build_model(json.loads((folder / "config.json").read_text()))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, imgs: np.ndarray, batch_size: int = 32, device="cpu") -> np.ndarray:
    """Label maps (N,H,W) uint8 for tiles (N,H,W,3) uint8."""
    model = model.eval().to(device)
    out = np.empty(imgs.shape[:3], np.uint8)
    for s in range(0, len(imgs), batch_size):
        x = to_chw(imgs[s:s + batch_size]).to(device)
        out[s:s + batch_size] = model(x).argmax(1).to(torch.uint8).cpu().numpy()
    return out


# ==================================================================================== losses
def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Multi-class focal loss, mean over pixels: -(1 - p_t)^gamma log p_t."""
    logp = F.log_softmax(logits.float(), 1)
    logpt = logp.gather(1, target.long().unsqueeze(1)).squeeze(1)
    return (-(1 - logpt.exp()).pow(gamma) * logpt).mean()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean over classes of the soft Dice over the whole batch (a class absent from both
    prediction and target scores 1 thanks to the smoothing ``eps``)."""
    p = F.softmax(logits.float(), 1)
    y = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    inter, denom = (p * y).sum(dims), p.sum(dims) + y.sum(dims)
    return 1 - ((2 * inter + eps) / (denom + eps)).mean()


def seg_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, dice_weight: float = 1.0) -> torch.Tensor:
    """CarcinoNet's loss: focal (gamma 2) + Dice."""
    return focal_loss(logits, target, gamma) + dice_weight * dice_loss(logits, target)


def make_loss(lam: float = 0.0, gamma: float = 2.0, dice_weight: float = 1.0) -> Callable:
    """``loss(model, batch, generator=None)`` for :func:`discnb.core.train.fit`.

    A batch with ``syn_image``/``syn_mask`` (and lambda > 0) runs real and synthetic tiles in one
    forward pass and returns Eq. 4; otherwise (validation, lambda = 0) the real loss alone.
    """
    lam = check_lam(lam)

    def loss(model, batch, generator=None):
        x, y = batch["image"], batch["mask"]
        if lam > 0 and "syn_image" in batch:
            xs = batch["syn_image"]
            logits = model(torch.cat([to_unit(x), to_unit(xs)]))
            return eq4(seg_loss(logits[:len(x)], y, gamma, dice_weight),
                       seg_loss(logits[len(x):], batch["syn_mask"], gamma, dice_weight), lam)
        return seg_loss(model(x), y, gamma, dice_weight)
    return loss


# ============================================================================== augmentation
def color_jitter(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Mild per-tile saturation, contrast, brightness and per-channel (stain) shifts on float
    images in [0, 1], (B,3,H,W); factors uniform in 1 +- strength, shifts in +- strength/4."""
    if strength <= 0:
        return x
    B = len(x)

    def u(*shape):
        return (torch.rand(B, *shape) * 2 - 1).to(x.device) * strength
    grey = x.mean(1, keepdim=True)
    x = grey + (x - grey) * (1 + u(1, 1, 1))
    mean = x.mean((1, 2, 3), keepdim=True)
    x = mean + (x - mean) * (1 + u(1, 1, 1))
    x = x * (1 + u(1, 1, 1)) + u(3, 1, 1) / 4
    return x.clamp(0, 1)


def augment_fn(jitter: float, crop: int = 0) -> Callable[[dict], dict]:
    """Flips/90-degree rotations applied alike to tiles and masks, a random ``crop``-px window of both
    (0: the whole tile; beyond the paper, the demo's 2 cores: docs/cost.md), then colour jitter."""
    def aug(b: dict) -> dict:
        b = random_crop(dihedral(b, ("image", "mask")), ("image", "mask"), crop)
        b.pop("crop_offset", None)
        b["image"] = color_jitter(to_unit(b["image"]), jitter)
        return b
    return aug


class MixedData(TensorData):
    """Real tiles (the epoch order of :func:`fit`) and, drawn with each batch, as many synthetic
    tiles (uniformly at random from torch's RNG, which checkpoints save and restore), under the
    keys ``syn_image``/``syn_mask``. Validation reads ``tensors`` only: real tiles."""

    def __init__(self, real: dict[str, torch.Tensor], synth: dict[str, torch.Tensor],
                 augment: Callable[[dict], dict] | None = None):
        super().__init__(real, augment)
        if set(synth) != set(real):
            raise ValueError(f"synthetic tensors {sorted(synth)} must have the keys of the real ones {sorted(real)}")
        n = {len(v) for v in synth.values()}
        if len(n) != 1 or n == {0}:
            raise ValueError("synthetic tensors are empty or differ in length")
        self.synth = synth

    def batch(self, idx: torch.Tensor, device=None) -> dict:
        b = super().batch(idx)
        j = torch.randint(0, len(next(iter(self.synth.values()))), (len(idx),))
        s = {k: v[j] for k, v in self.synth.items()}
        if self.augment is not None:
            s = self.augment(s)
        b.update({f"syn_{k}": v for k, v in s.items()})
        return {k: v.to(device) for k, v in b.items()} if device is not None else b


# ================================================================================== training
def _tensors(tiles: tuple[np.ndarray, np.ndarray]) -> dict[str, torch.Tensor]:
    imgs, masks = tiles
    return {"image": to_chw(imgs), "mask": torch.from_numpy(np.ascontiguousarray(masks))}


def train_carcinonet(out: str | Path, recipe: dict, real: tuple[np.ndarray, np.ndarray],
                     val: tuple[np.ndarray, np.ndarray], seed: int, *, synth: tuple[np.ndarray, np.ndarray] | None = None,
                     lam: float = 0.0, signature: dict | None = None, mixed_precision: str = "no", cpu: bool = True,
                     checkpoint_every: int = 200, checkpoints_total_limit: int = 1, resume: str = "latest",
                     desc: str = "CarcinoNet", progress: bool = True) -> dict:
    """Train one CarcinoNet of ``recipe`` (``{"model": build_model's dict, "train": {steps, batch, lr,
    weight_decay, warmup_steps, ema_decay, validate_every, focal_gamma, dice_weight, jitter, crop}}``)
    with :func:`discnb.core.train.fit` in ``out`` (checkpoints, ``best/``, ``final/``, ``metrics.csv``).

    ``real``/``val``/``synth`` are (tiles (N,H,W,3) uint8, label maps (N,H,W) uint8). With
    lambda > 0 each batch adds as many synthetic tiles and the loss is Eq. 4; lambda = 0 trains on
    ``real`` alone (synthetic tiles are not even drawn). Seeded by ``seed`` (initial weights and
    fit's RNG). Returns fit's summary; the model of the lowest validation loss is in ``out/best``.
    """
    lam = check_lam(lam)
    if lam > 0 and synth is None:
        raise ValueError(f"lambda {lam} > 0 needs synthetic tiles")
    T = recipe["train"]
    torch.manual_seed(seed)  # the initial weights
    model = build_model(recipe["model"])
    aug = augment_fn(T["jitter"], T.get("crop", 0))
    tr = TensorData(_tensors(real), augment=aug) if lam == 0 else MixedData(_tensors(real), _tensors(synth), augment=aug)
    va = TensorData(_tensors(val))
    cfg = FitConfig(out_dir=str(out), max_steps=T["steps"], global_batch=T["batch"], lr=T["lr"],
                    weight_decay=T["weight_decay"], warmup_steps=T["warmup_steps"], ema_decay=T["ema_decay"],
                    mixed_precision=mixed_precision, cpu=cpu, checkpoint_every=checkpoint_every,
                    checkpoints_total_limit=checkpoints_total_limit, validate_every=T["validate_every"],
                    resume=resume or None, seed=seed, desc=desc, signature=signature or {}, progress=progress)
    return fit(model, make_loss(lam, T["focal_gamma"], T["dice_weight"]), tr, cfg, val=va, save_fn=save_model)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and number of seeds per (model, generator, lam, test_set, metric, label)."""
    keys = ["model", "generator", "lam", "test_set", "metric", "label"]
    g = df.groupby(keys, sort=False).value
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=0), "n_seeds": g.count()}).reset_index()


TABLE_COLUMNS = [("pixel_accuracy", "all"), ("iou", "mean"), ("dice", "mean"), ("precision", "GG3"),
                 ("precision", "GG4"), ("precision", "GG5"), ("iou", "GG3"), ("iou", "GG4"), ("iou", "GG5")]


def metric_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Rows (test set, generator, lambda), columns the headline metrics, cells 'mean ± std' over
    seeds (just the value with one seed)."""
    s = summary.assign(cell=["n/a" if not np.isfinite(m) else f"{m:.3f} ± {sd:.3f}" if n > 1 else f"{m:.3f}"
                             for m, sd, n in zip(summary["mean"], summary["std"], summary["n_seeds"])],
                       col=summary.metric + " " + summary.label)
    t = s.pivot_table(index=["test_set", "generator", "lam"], columns="col", values="cell", aggfunc="first", sort=False)
    cols = [f"{m} {lab}" for m, lab in TABLE_COLUMNS if f"{m} {lab}" in t.columns]
    return t[cols]


def load_fig8(path: str | Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
