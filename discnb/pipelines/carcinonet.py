"""CarcinoNet, pixel-level Gleason grading, trained on real and synthetic tiles (paper Sec. 2.4).

CarcinoNet (Lokhande et al., EMBC 2020; no official code, see method-notes §6): a ResNet encoder
(ResNet-50 in the paper profile; any timm backbone, built offline with ``pretrained=False`` or
loaded from a local state dict), a pyramid pooling module over grids {1, 2, 3} on the deepest
features, and a U-Net-style decoder whose skip connections are *summed*; 4 output classes (NC, GG3,
GG4, GG5); focal loss (gamma 2) + Dice loss. The cosine-restart schedule of the unofficial code is
not used: :func:`discnb.core.train.fit` has warm-up + constant lr.

Training with synthetic tiles follows Eq. 4 with the balance weight lambda:

    L = (1 - lambda) L_real + lambda L_synth,     lambda in [0, 1)

every batch holds ``batch`` real tiles and as many synthetic ones, and a synthetic tile's label
map is the mask that guided its generation. lambda = 0 *is* the real-only baseline.

Synthetic tiles come from a generator NAME (registry :data:`GENERATORS`; "SD" = notebook 01's
model via :class:`discnb.generative.sampling.SDGenerator`) with ``generate(masks, seeds) -> uint8 tiles``.
Masks are shape maps from notebook 00's library with labels assigned to ranks by a seeded RNG; the
same masks and noise seeds serve every generator, and each generator's tiles are cached in an npz
keyed by a fingerprint of the generator's weights and the sampling settings.

The **pattern judge** is the real-only CarcinoNet, frozen: ``judge(tiles, masks)`` segments
generated tiles and scores the segmentation against the guiding masks (per-class IoU, mean,
pixel agreement). It is trained once per parameter set and stored in ``carcinonet/judge/``.

Every run is cached under ``carcinonet/runs/<model>-seed<s>-<hash of its signature>/`` and reused
when finished. One process only: ``python -m discnb.pipelines.carcinonet --params FILE`` runs the notebook's
pipeline from a terminal, but not under ``accelerate launch`` with several processes (generation,
evaluation and the judge are not split over processes).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from discnb import K, LABELS
from discnb.data import sicap as data
from discnb.core import paths
from discnb.pipelines import prep
from discnb.data import shapes
from discnb.generative.autoencoder import dihedral
from discnb.core.train import FitConfig, TensorData, atomic_save_dir, fit

NOTEBOOK = "04_carcinonet"
STAGE = "carcinonet"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCH_VERSION = 2  # bump when the code of the architecture changes: finished runs of another version are not reused


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
    w = int(cfg.get("encoder_width", 0) or 0)
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
        import timm
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = (to_unit(x) - self.mean) / self.std
        feats = self.encoder(x)
        h = self.ppm(feats[-1])
        for i in range(len(feats) - 2, -1, -1):  # deepest skip first
            h = F.interpolate(h, size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
            h = self.blocks[i](h + self.lateral[i](feats[i]))  # summed skip connection
        return F.interpolate(self.head(h), size=size, mode="bilinear", align_corners=False)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float 0..1; floats pass through."""
    return x.float().div(255) if x.dtype == torch.uint8 else x


def load_encoder_weights(encoder: nn.Module, path: Path) -> None:
    """A local timm/torchvision-style ResNet state dict (safetensors or a weights-only torch file);
    the classifier (``fc.*``) is dropped, every encoder weight must be present."""
    if not path.exists():
        raise FileNotFoundError(f"encoder_path {path}: no such file (a state dict of the timm model, e.g. "
                                "resnet50 ImageNet weights saved as .safetensors or .pth)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
                sd = sd[key]
    sd = {k.removeprefix("module."): v for k, v in sd.items() if not k.removeprefix("module.").startswith("fc.")}
    own = encoder.state_dict()
    missing = sorted(set(own) - set(sd))
    bad = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or bad:
        raise ValueError(f"{path} does not fit the encoder: {len(missing)} weight(s) missing (e.g. {missing[:3]}), "
                         f"{len(bad)} of another shape (e.g. {bad[:3]})")
    encoder.load_state_dict({k: sd[k] for k in own})


def build_model(cfg: dict) -> CarcinoNet:
    cfg = dict(cfg)
    return CarcinoNet(encoder=cfg["encoder"], encoder_width=cfg.get("encoder_width", 0),
                      encoder_path=cfg.get("encoder_path", ""), decoder_channels=cfg["decoder_channels"],
                      pool_grids=tuple(cfg.get("pool_grids", (1, 2, 3))), num_classes=cfg.get("num_classes", K))


def save_model(model: CarcinoNet, folder: str | Path) -> None:
    """``config.json`` + ``model.safetensors`` (what :func:`load_model` reads)."""
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = dict(model.config, encoder_path="")  # the weights are in the file; the encoder path is not needed again
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))


def load_model(folder: str | Path) -> CarcinoNet:
    from safetensors.torch import load_file
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: not a saved CarcinoNet (no config.json); train it with "
                                "notebooks/04_carcinonet.ipynb")
    model = build_model(json.loads((folder / "config.json").read_text()))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval()


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


def check_lam(lam) -> float:
    """The balance weight of Eq. 4 must be in [0, 1)."""
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
        raise ValueError(f"lambda (balance weight of Eq. 4) must be a number in [0, 1), got {lam!r}")
    if not 0 <= lam < 1:
        raise ValueError(f"lambda (balance weight of Eq. 4) must be in [0, 1), got {lam}: lambda = 1 would "
                         "ignore the real tiles; lambda = 0 is the real-only baseline")
    return float(lam)


def balance(l_real: torch.Tensor, l_synth: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 4: (1 - lambda) L_real + lambda L_synth."""
    return (1 - lam) * l_real + lam * l_synth


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
            return balance(seg_loss(logits[:len(x)], y, gamma, dice_weight),
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


def augment_fn(jitter: float) -> Callable[[dict], dict]:
    """Flips/90-degree rotations applied alike to tiles and masks, then colour jitter."""
    def aug(b: dict) -> dict:
        b = dihedral(b, ("image", "mask"))
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


# ====================================================================================== data
def data_dir(P) -> Path:
    return paths.param_dir(P, "data_dir", "data")


def ldm_dir(P) -> Path:
    return paths.param_dir(P, "ldm_dir", "ldm")


def out_dir(P) -> Path:
    return paths.param_dir(P, "output_dir", STAGE)


def to_chw(imgs: np.ndarray) -> torch.Tensor:
    """(N,H,W,3) uint8 -> (N,3,H,W) uint8 tensor (kept as bytes; :func:`to_unit` scales)."""
    return torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).contiguous()


def pixel_counts(masks: np.ndarray) -> np.ndarray:
    return np.bincount(np.asarray(masks).ravel(), minlength=K)[:K]


def load_data(P, progress: bool = True) -> dict:
    """Tiles and masks of train / val (fold ``val_fold``) / test / ood in memory at the model size
    (notebook 00's ``image_size``), plus ``pixels``: label pixel counts per split.

    Rows without a mask are left out (with a warning). A class with no pixel in a split gets a
    warning: the model cannot learn it (train) or its IoU/Dice are undefined (test sets).
    """
    from discnb.pipelines.train_ldm import prep_params
    ddir = data_dir(P)
    size = int(prep_params(ddir)["image_size"])
    index = prep.read_index(ddir)
    parts = data.fold_split(index, P.val_fold)
    if P.ood_split:
        if not (ddir / "ood_index.csv").exists():
            raise FileNotFoundError(f"{ddir / 'ood_index.csv'}: no out-of-distribution set for this profile (notebook 00 "
                                    "ran with ood_dataset empty?); set ood_split: \"\" or give notebook 00 an ood_dataset")
        ood = prep.read_index(ddir, stem="ood_index")
        if P.ood_split != "all":
            if P.ood_split not in set(ood.split):
                raise data.DataError(f"{ddir}/ood_index.csv has no {P.ood_split!r} rows (splits: {sorted(set(ood.split))}); "
                                     "set ood_split to 'all', 'test' or '' (none)")
            ood = ood[ood.split == P.ood_split]
        parts["ood"] = ood
    out: dict = {"image_size": size, "data_dir": str(ddir)}
    for name, frame in parts.items():
        no_mask = ~frame.mask_path.astype(bool)
        if no_mask.any():
            warnings.warn(f"{name} split: {int(no_mask.sum())} tile(s) without a mask left out (they cannot be graded "
                          f"pixel-wise), e.g. {frame.image_name[no_mask].iloc[0]}")
            frame = frame[~no_mask]
        imgs, masks = data.load_tiles(frame, size, progress=progress)
        out[name] = {"imgs": imgs, "masks": masks, "names": frame.image_name.to_numpy().astype(str)}
    if len(out["train"]["imgs"]) == 0:
        raise data.DataError(f"{ddir}/index.csv: no training tile with a mask (official train minus fold {P.val_fold})")
    if P.val_fold and len(out["val"]["imgs"]) == 0:
        raise data.DataError(f"{ddir}/index.csv: validation fold {P.val_fold} has no tile with a mask")
    counts = {n: pixel_counts(out[n]["masks"]) for n in parts}
    out["pixels"] = pd.DataFrame(counts, index=list(LABELS)).T.assign(tiles={n: len(out[n]["imgs"]) for n in parts})
    for name, c in counts.items():
        empty = [LABELS[i] for i in range(K) if c[i] == 0]
        if not empty or (name == "val" and not len(out["val"]["imgs"])):
            continue
        if name == "train":
            warnings.warn(f"the training split has no {empty} pixels: the real-only CarcinoNet cannot learn "
                          f"{'them' if len(empty) > 1 else 'it'} (synthetic tiles may supply them)")
        else:
            warnings.warn(f"the {name} split has no {empty} pixels: IoU/Dice of {empty} are undefined there "
                          "(NaN, left out of means)")
    return out


def data_fingerprint(D: dict) -> str:
    h = hashlib.sha1(str(D["image_size"]).encode())
    for name in ("train", "val"):
        h.update(name.encode())
        h.update("\n".join(D[name]["names"]).encode())
    if D.get("domain"):  # tiles passed through a first stage (see first_stage_view)
        h.update(D["domain"].encode())
    return h.hexdigest()[:16]


def first_stage(D: dict, ldir: Path) -> tuple:
    """Notebook 01's first stage for tiles of ``D`` (checked against its SD) and its domain key
    (a hash of its weights), without touching any tile."""
    from discnb.generative import autoencoder as ae
    P01 = ldm_params(ldir)
    check_ldm(ldir, P01, D["image_size"])
    folder = paths.resolve(P01.autoencoder["path"]) if P01.autoencoder["path"] else Path(ldir) / "autoencoder" / "best"
    h = hashlib.sha1(b"first_stage")
    hash_tree(h, folder)
    return folder, "first_stage:" + h.hexdigest()[:16]


def first_stage_view(D: dict, ldir: Path, progress: bool = True) -> dict:
    """``D`` with its train/val/test tiles passed through notebook 01's first stage (encode,
    quantise, decode): the image domain every generator's tiles live in, since they all share its
    decoder.

    A judge trained on these reads generated tiles on their own terms: a judge trained on real
    tiles also penalises what the first stage loses (on CPU-trained first stages, most of the fine
    texture), which says nothing about whether SD, SD-SC or SD-DISC follow the mask.
    """
    from discnb.generative import autoencoder as ae
    folder, domain = first_stage(D, ldir)
    vq = ae.load_vq(folder)
    out = dict(D)
    for name in [n for n in ("train", "val", "test") if n in D]:
        x = D[name]["imgs"]
        rec = ae.to_uint8(ae.decode(vq, ae.encode(vq, ae.to_tensor(x)))) if len(x) else x
        out[name] = {**D[name], "imgs": rec}
    out["domain"] = domain
    return out


# ================================================================================ generators
# The registry lives in discnb.generative.generators; these names stay importable from here.
from discnb.generative.generators import (GENERATORS, PLANNED, GeneratorContext, build_generator, check_ldm, hash_tree,  # noqa: E402,F401
                         ldm_params, register_generator)


def synthetic_masks(lib: dict, n: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` label masks from the shape-map library and one noise seed per tile.

    Each mask: a random shape map; random label weights; its ranks get distinct labels drawn by
    weighted choice without repetition (rank 0 = most pixels gets the first draw). A simple
    stand-in for the tile-set sampler (notebook 03); fixed ``seed`` -> the same masks and noise
    for every generator.
    """
    if len(lib["maps"]) == 0:
        raise ValueError("the shape-map library is empty")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(lib["maps"]), size=n, replace=n > len(lib["maps"]))
    masks = np.empty((n, size, size), np.uint8)
    for i, j in enumerate(picks):
        r = int(lib["n_ranks"][j])
        w = rng.random(K) + 1e-3
        labels = rng.choice(K, size=r, replace=False, p=w / w.sum())
        masks[i] = shapes.resize_mask(shapes.assign_labels(lib["maps"][j], labels), size)
    return masks, (np.int64(seed) * 1_000_003 + np.arange(n)).astype(np.int64)


def synthetic_tiles(P, name: str, image_size: int, progress: bool = True) -> dict:
    """Tiles of generator ``name`` for the fixed mask/noise plan, generated once and cached in
    ``carcinonet/synthetic/<name>-<key>.npz`` (atomic). Returns images, masks, seeds, meta."""
    S = P.synth
    ddir = data_dir(P)
    lib_path = ddir / "shape_maps.npz"
    lib = shapes.load_library(lib_path)
    h = hashlib.sha1(json.dumps([S["n_tiles"], S["seed"], image_size]).encode())
    hash_tree(h, lib_path)
    plan_key = h.hexdigest()[:16]
    device = "cuda" if torch.cuda.is_available() and P.device != "cpu" else "cpu"
    ctx = GeneratorContext(ldm_dir(P), image_size, S["steps"], S["scheduler"], S["batch_size"], device,
                           P.mixed_precision == "bf16")
    gen, gen_key = build_generator(name, ctx)
    key = hashlib.sha1(f"{gen_key}/{plan_key}".encode()).hexdigest()[:12]
    cache = out_dir(P) / "synthetic" / f"{name}-{key}.npz"
    if cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                got = {k: z[k] for k in ("images", "masks", "seeds")} | {"meta": json.loads(str(z["meta"]))}
            if got["images"].shape == (S["n_tiles"], image_size, image_size, 3):
                return got | {"path": str(cache), "cached": True}
        except (OSError, ValueError, KeyError) as e:
            warnings.warn(f"{cache}: unreadable tile cache ({e}); generating again")
    masks, seeds = synthetic_masks(lib, S["n_tiles"], S["seed"], image_size)
    import time
    t0 = time.perf_counter()
    imgs = gen.generate(masks, seeds.tolist())
    meta = {"generator": name, "generator_fingerprint": gen_key, "plan_fingerprint": plan_key, "n_tiles": S["n_tiles"],
            "seed": S["seed"], "steps": S["steps"], "scheduler": S["scheduler"], "device": device,
            "sec_per_tile": (time.perf_counter() - t0) / max(1, len(masks)), "ldm_dir": str(ctx.ldm_dir)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.stem + ".tmp.npz")
    np.savez_compressed(tmp, images=imgs, masks=masks, seeds=seeds, meta=np.array(json.dumps(meta)))
    tmp.replace(cache)
    return {"images": imgs, "masks": masks, "seeds": seeds, "meta": meta, "path": str(cache), "cached": False}


# ================================================================================== training
@dataclass
class RunSpec:
    generator: str | None
    lam: float
    seed: int

    @property
    def tag(self) -> str:
        return "real" if self.generator is None else f"{self.generator}-lam{self.lam:g}"


def spec(generator: str | None, lam: float, seed: int) -> RunSpec:
    """lambda = 0 is the real-only baseline whatever the generator (Eq. 4 ignores synthetic tiles)."""
    lam = check_lam(lam)
    return RunSpec(None, 0.0, int(seed)) if generator is None or lam == 0 else RunSpec(generator, lam, int(seed))


def run_signature(P, D: dict, s: RunSpec, synth_key: str | None) -> dict:
    """Everything that makes a trained run what it is (its folder name hashes it; a resume must match it)."""
    return {"kind": "carcinonet", "arch_version": ARCH_VERSION, "model": dict(P.model), "train": dict(P.train),
            "image_size": D["image_size"], "val_fold": P.val_fold, "data": data_fingerprint(D), "mixed_precision": P.mixed_precision,
            "generator": s.generator, "lam": s.lam, "synthetic": synth_key, "seed": s.seed}


def run_dir(P, sig: dict, s: RunSpec) -> Path:
    h = hashlib.sha1(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:8]
    return out_dir(P) / "runs" / f"{s.tag}-seed{s.seed}-{h}"


def train_run(P, D: dict, s: RunSpec, synth: dict | None = None, progress: bool = True) -> dict:
    """Train one CarcinoNet (real only, or real + synthetic with Eq. 4), or reuse a finished run
    with the same signature. Returns {dir, generator, lam, seed, fit}; the model is in ``dir/best``."""
    T = P.train
    if s.generator is not None and synth is None:
        raise ValueError(f"run {s.tag}: synthetic tiles of {s.generator!r} are needed")
    synth_key = None if s.generator is None else Path(synth["path"]).stem
    sig = run_signature(P, D, s, synth_key)
    rdir = run_dir(P, sig, s)
    done = rdir / "done.json"
    info = {"dir": str(rdir), "tag": s.tag, "generator": s.generator or "none", "lam": s.lam, "seed": s.seed}
    if done.exists() and json.loads(done.read_text()).get("signature") == sig and (rdir / "best").exists():
        return info | {"fit": json.loads(done.read_text())["fit"], "reused": True}
    torch.manual_seed(s.seed)  # the initial weights
    model = build_model(P.model)
    real = {"image": to_chw(D["train"]["imgs"]), "mask": torch.from_numpy(D["train"]["masks"])}
    aug = augment_fn(T["jitter"])
    if s.generator is None:
        tr = TensorData(real, augment=aug)
    else:
        tr = MixedData(real, {"image": to_chw(synth["images"]), "mask": torch.from_numpy(synth["masks"])}, augment=aug)
    va = TensorData({"image": to_chw(D["val"]["imgs"]), "mask": torch.from_numpy(D["val"]["masks"])})
    cfg = FitConfig(out_dir=str(rdir), max_steps=T["steps"], global_batch=T["batch"], lr=T["lr"],
                    weight_decay=T["weight_decay"], warmup_steps=T["warmup_steps"], ema_decay=T["ema_decay"],
                    mixed_precision=P.mixed_precision, cpu=P.device == "cpu", checkpoint_every=P.checkpoint_every,
                    checkpoints_total_limit=P.checkpoints_total_limit, validate_every=T["validate_every"],
                    resume=P.resume or None, seed=s.seed, desc=f"CarcinoNet {s.tag} seed {s.seed}",
                    signature=sig, progress=progress)
    summary = fit(model, make_loss(s.lam, T["focal_gamma"], T["dice_weight"]), tr, cfg, val=va, save_fn=save_model)
    prep.write_json(done, {"signature": sig, "fit": summary})
    return info | {"fit": summary, "reused": False}


def train_all(P, D: dict, synth: dict[str, dict], progress: bool = True) -> list[dict]:
    """The real-only baseline and every (generator, lambda) model, for every seed (cached runs reused)."""
    if not P.seeds:
        raise ValueError("seeds is empty: give at least one training seed")
    for lam in P.lams:
        check_lam(lam)
    specs = [spec(None, 0.0, sd) for sd in P.seeds]
    specs += [spec(g, lam, sd) for g in P.generators for lam in P.lams for sd in P.seeds if lam > 0]
    return [train_run(P, D, s, synth.get(s.generator), progress) for s in specs]


# ================================================================================ evaluation
def device_of(P) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and P.device != "cpu" else "cpu")


@torch.no_grad()
def predict(model: nn.Module, imgs: np.ndarray, batch_size: int = 32, device="cpu") -> np.ndarray:
    """Label maps (N,H,W) uint8 for tiles (N,H,W,3) uint8."""
    model = model.eval().to(device)
    out = np.empty(imgs.shape[:3], np.uint8)
    for s in range(0, len(imgs), batch_size):
        x = to_chw(imgs[s:s + batch_size]).to(device)
        out[s:s + batch_size] = model(x).argmax(1).to(torch.uint8).cpu().numpy()
    return out


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int = K) -> np.ndarray:
    """Pixel confusion matrix, rows = truth, columns = prediction."""
    t, p = np.asarray(y_true).ravel().astype(np.int64), np.asarray(y_pred).ravel().astype(np.int64)
    if t.shape != p.shape:
        raise ValueError(f"truth has {t.size} pixels, prediction {p.size}")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def _div(a, b) -> np.ndarray:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.divide(a, b, out=np.full(np.broadcast(a, b).shape, np.nan), where=b > 0)


def metrics_from_confusion(cm: np.ndarray) -> dict:
    """Per-class precision, recall, IoU, Dice (NaN where undefined), pixel accuracy, and the
    precision of positive Gleason predictions (NC omitted, as the paper's supplement)."""
    cm = np.asarray(cm, np.int64)
    tp = np.diag(cm).astype(float)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    out = {"precision": _div(tp, tp + fp), "recall": _div(tp, tp + fn), "iou": _div(tp, tp + fp + fn),
           "dice": _div(2 * tp, 2 * tp + fp + fn), "pixel_accuracy": float(_div(tp.sum(), cm.sum())),
           "gg_precision_pooled": float(_div(tp[1:].sum(), cm[:, 1:].sum()))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        out["mean_iou"] = float(np.nanmean(out["iou"])) if np.isfinite(out["iou"]).any() else float("nan")
        out["mean_dice"] = float(np.nanmean(out["dice"])) if np.isfinite(out["dice"]).any() else float("nan")
        gp = out["precision"][1:]
        out["gg_precision_mean"] = float(np.nanmean(gp)) if np.isfinite(gp).any() else float("nan")
    return out


def tidy_rows(m: dict, **keys) -> list[dict]:
    """One row per metric (and label) of :func:`metrics_from_confusion`."""
    rows = []
    for i, lab in enumerate(LABELS):
        if i > 0:  # precision of positive Gleason predictions only
            rows.append({**keys, "metric": "precision", "label": lab, "value": m["precision"][i]})
        rows += [{**keys, "metric": k, "label": lab, "value": m[k][i]} for k in ("iou", "dice")]
    rows += [{**keys, "metric": "precision", "label": "GG mean", "value": m["gg_precision_mean"]},
             {**keys, "metric": "precision", "label": "GG pooled", "value": m["gg_precision_pooled"]},
             {**keys, "metric": "iou", "label": "mean", "value": m["mean_iou"]},
             {**keys, "metric": "dice", "label": "mean", "value": m["mean_dice"]},
             {**keys, "metric": "pixel_accuracy", "label": "all", "value": m["pixel_accuracy"]}]
    return rows


def test_sets(D: dict) -> list[str]:
    return [n for n in ("test", "ood") if n in D and len(D[n]["imgs"])]


def evaluate(P, runs: list[dict], D: dict) -> tuple[pd.DataFrame, dict]:
    """Every run on the test split and the OOD set: a tidy frame (model, generator, lam, seed,
    test_set, metric, label, value) and the confusion matrices."""
    dev = device_of(P)
    rows, cms = [], {}
    for r in runs:
        model = load_model(Path(r["dir"]) / "best")
        for ts in test_sets(D):
            cm = confusion(D[ts]["masks"], predict(model, D[ts]["imgs"], P.eval_batch, dev))
            cms[f"{r['tag']}/seed{r['seed']}/{ts}"] = cm.tolist()
            rows += tidy_rows(metrics_from_confusion(cm), model="CarcinoNet", generator=r["generator"],
                              lam=r["lam"], seed=r["seed"], test_set=ts)
    return pd.DataFrame(rows), cms


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


def save_results(P, df: pd.DataFrame, summary: pd.DataFrame, extra: dict) -> tuple[Path, Path]:
    """``results.csv`` (tidy, one row per run/test set/metric/label) and ``results.json``, atomically."""
    out = out_dir(P)
    csv = out / "results.csv"
    tmp = csv.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(csv)
    js = prep.write_json(out / "results.json", {"summary": summary.to_dict("records"), **extra})
    return csv, js


# ===================================================================================== judge
def judge_scores(pred: np.ndarray, masks: np.ndarray) -> dict:
    """How well a segmentation follows the guiding masks: per-class IoU (NaN for a class in
    neither), their mean, pixel agreement, and per-class recall (share of the asked-for pixels
    drawn as that class)."""
    cm = confusion(masks, pred)
    m = metrics_from_confusion(cm)
    return {"iou": dict(zip(LABELS, m["iou"].tolist())), "mean_iou": m["mean_iou"],
            "pixel_agreement": m["pixel_accuracy"], "recall": dict(zip(LABELS, m["recall"].tolist())),
            "n_tiles": int(len(masks)), "confusion": cm.tolist()}


@dataclass
class Judge:
    """The frozen real-only CarcinoNet as a pattern judge: ``judge(tiles, masks) -> dict``."""
    segment: Callable[[np.ndarray], np.ndarray]
    info: dict = field(default_factory=dict)

    def __call__(self, tiles: np.ndarray, masks: np.ndarray) -> dict:
        tiles, masks = np.asarray(tiles), np.asarray(masks)
        if tiles.shape[:3] != masks.shape:
            raise ValueError(f"tiles {tiles.shape} and masks {masks.shape} do not match")
        return judge_scores(self.segment(tiles), masks)


def judge_from_model(model: nn.Module, info: dict | None = None, batch_size: int = 32, device="cpu") -> Judge:
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Judge(lambda tiles: predict(model, tiles, batch_size, device), info or {})


def load_or_train_judge(P, D: dict | None = None, progress: bool = True) -> Judge:
    """The judge for these parameters: a real-only CarcinoNet of seed ``P.seed``, copied to
    ``carcinonet/judge/model`` with ``judge.json`` (its signature and its own IoU per class on
    validation tiles, or on the test split when ``val_fold`` is 0), trained once.

    ``judge_input: real``: trained on real tiles (then it is the notebook's baseline run of that
    seed). ``first_stage``: trained on real tiles passed through notebook 01's first stage
    (:func:`first_stage_view`), the domain of every generated tile; its accuracy is reported both
    there (``real``) and on the untouched real tiles (``real_tiles``).
    """
    D = D if D is not None else load_data(P, progress=progress)
    if P.judge_input not in ("real", "first_stage"):
        raise ValueError(f"judge_input must be 'real' or 'first_stage', got {P.judge_input!r}")
    s = spec(None, 0.0, P.seed)
    # the signature needs only the first stage's key; tiles are reconstructed only to train
    key = {"domain": first_stage(D, ldm_dir(P))[1]} if P.judge_input == "first_stage" else {}
    sig = run_signature(P, D | key, s, None)
    jdir = out_dir(P) / "judge"
    meta = jdir / "judge.json"
    if meta.exists() and json.loads(meta.read_text()).get("signature") == sig and (jdir / "model").exists():
        info = json.loads(meta.read_text())
        return judge_from_model(load_model(jdir / "model"), info, P.eval_batch, device_of(P))
    DJ = first_stage_view(D, ldm_dir(P), progress) if key else D
    run = train_run(P, DJ, s, None, progress)
    model = load_model(Path(run["dir"]) / "best")
    on = "val" if len(D["val"]["imgs"]) else "test"
    j = judge_from_model(model, {}, P.eval_batch, device_of(P))
    real = j(DJ[on]["imgs"], D[on]["masks"])
    jdir.mkdir(parents=True, exist_ok=True)
    atomic_save_dir(lambda d: save_model(model, d), jdir / "model")
    info = {"signature": sig, "source_run": run["dir"], "input": P.judge_input,
            "scored_on": on if P.judge_input == "real" else f"{on}, through the first stage", "real": real}
    if P.judge_input == "first_stage":
        info["real_tiles"] = j(D[on]["imgs"], D[on]["masks"])
    prep.write_json(meta, info)
    j.info = info
    return j


def load_judge(profile: str = "smoke", folder: str | Path | None = None, device: str = "cpu") -> Judge:
    """The judge stored by notebook 04 (for other notebooks: score SD vs SD-SC vs SD-DISC tiles)."""
    jdir = Path(folder) if folder else paths.output_dir(profile, STAGE, "judge", create=False)
    if not (jdir / "judge.json").exists():
        raise FileNotFoundError(f"{jdir}: no pattern judge; run notebooks/04_carcinonet.ipynb (profile {profile}) first")
    return judge_from_model(load_model(jdir / "model"), json.loads((jdir / "judge.json").read_text()), device=device)


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


# ==================================================================================== figure
def pick_tiles(masks: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` tiles, those with the most labels first (ties broken at random)."""
    rng = np.random.default_rng(seed)
    n_labels = np.array([len(np.unique(m)) for m in masks])
    return np.argsort(-n_labels + rng.random(len(masks)) * 0.5, kind="stable")[:n]


def judge_rows(synth: dict[str, dict], judge: Judge, n: int, seed: int) -> dict:
    """Per generator: guiding masks, the synthetic tiles and the judge's segmentation of them
    (``n`` tiles, those with the most labels first): does the judge see the mask in the tile?"""
    from discnb.plots import colorize
    rows = {}
    for g, s in synth.items():
        idx = pick_tiles(s["masks"], n, seed)
        rows[f"{g}: guiding mask"] = [colorize(m) for m in s["masks"][idx]]
        rows[f"{g}: tile"] = list(s["images"][idx])
        rows[f"{g}: judge"] = [colorize(m) for m in judge.segment(s["images"][idx])]
    return rows


def figure_rows(P, runs: list[dict], D: dict, test_set: str = "test") -> tuple[dict, list[str]]:
    """Fig. 8 layout: tile | ground truth | baseline | + each generator (seed ``seeds[0]``, each lambda)."""
    from discnb.plots import colorize
    idx = pick_tiles(D[test_set]["masks"], P.figure_tiles, P.seed)
    imgs, masks = D[test_set]["imgs"][idx], D[test_set]["masks"][idx]
    rows = {"tile": list(imgs), "ground truth": [colorize(m) for m in masks]}
    dev = device_of(P)
    for r in runs:
        if r["seed"] != P.seeds[0]:
            continue
        name = "baseline" if r["generator"] == "none" else f"+{r['generator']} (λ={r['lam']:g})"
        rows[name] = [colorize(m) for m in predict(load_model(Path(r["dir"]) / "best"), imgs, P.eval_batch, dev)]
    return rows, [str(n)[:18] for n in D[test_set]["names"][idx]]


def plot_confusions(confusions: dict, runs: list[dict], seed: int):
    """Row-normalised pixel confusion matrices (rows: truth, so the diagonal is recall) of seed
    ``seed``: one row of panels per test set, one column per model."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    tags = [r["tag"] for r in runs if r["seed"] == seed]
    sets = sorted({k.split("/")[-1] for k in confusions}, key=["test", "ood"].index)
    fig, axes = plt.subplots(len(sets), len(tags), figsize=(2.8 * len(tags), 2.6 * len(sets)), squeeze=False)
    for i, ts in enumerate(sets):
        for j, tag in enumerate(tags):
            cm = np.asarray(confusions[f"{tag}/seed{seed}/{ts}"], float)
            norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
            sns.heatmap(norm, vmin=0, vmax=1, annot=True, fmt=".2f", cbar=False, cmap="Blues", ax=axes[i, j],
                        xticklabels=LABELS, yticklabels=LABELS, annot_kws={"fontsize": 7})
            axes[i, j].set_title(f"{'baseline' if tag == 'real' else '+' + tag} · {ts}", fontsize=8)
            axes[i, j].set_xlabel("predicted" if i == len(sets) - 1 else "")
            axes[i, j].set_ylabel("truth" if j == 0 else "")
    fig.tight_layout()
    return fig


# ======================================================================================= CLI
def run(P, progress: bool = True) -> dict:
    """The whole notebook-04 pipeline (data, synthetic tiles, training, judge, evaluation, results)."""
    D = load_data(P, progress)
    synth = {g: synthetic_tiles(P, g, D["image_size"], progress) for g in P.generators}
    runs = train_all(P, D, synth, progress)
    judge = load_or_train_judge(P, D, progress)
    judged = judge_self_rows(judge)
    judged |= {g: judge(s["images"], s["masks"]) for g, s in synth.items()}
    df, cms = evaluate(P, runs, D)
    summary = summarize(df)
    save_results(P, df, summary, {"confusion": cms, "judge": judged, "runs": runs,
                                  "synthetic": {g: s["meta"] for g, s in synth.items()}})
    return {"data": D, "synthetic": synth, "runs": runs, "judge": judge, "judged": judged, "results": df,
            "summary": summary}


def main(argv: list[str] | None = None) -> int:
    from discnb.core.notebook import cli
    P, a = cli(NOTEBOOK, "carcinonet", __doc__.split("\n\n")[0], out_dir, argv)
    res = run(P, progress=not a.no_progress)
    print(metric_table(res["summary"]).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
