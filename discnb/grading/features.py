"""Tile features for the slide-level models (paper Sec. 3, Fig. 6: ViT-S/16 DINO; supplement: ResNet-50 ImageNet / MoCoV2), cached per tile
source and extractor.

Slide-level models (TransMIL, Mixed Supervision) see a slide as a bag of tile embeddings from a
frozen extractor. The paper's extractors, all loaded **from local files** (nothing is downloaded):

``lunit-vits16``       (c) DINO ViT-S/16 of Lunit (``dino_vit_small_patch16_ep200.torch``): timm
                       ``vit_small_patch16_224`` without head, 224 px, Lunit's mean/std, 384-d.
                       The paper's main results use this one.
``resnet50-mocov2``    (b) ResNet-50 MoCo v2 of Lunit (``mocov2_rn50_ep200.torch``): timm
                       ``resnet50`` without head, 224 px, Lunit's mean/std, 2048-d (global pool).
``resnet50-imagenet``  (a) ResNet-50 ImageNet weights (a timm/torchvision state dict), ImageNet
                       mean/std, 224 px, 2048-d.

and, because none of those can be downloaded on the project's machines, an offline default:

``tilecnn``            a slim ResNet-18-shaped CNN (timm ``resnet18`` with stage widths
                       (w, 2w, 4w, 8w)) trained **here, on the official training split only**
                       (never the test split or the out-of-distribution set), to predict each
                       tile's mask label fractions (soft cross-entropy), with
                       :func:`discnb.core.train.fit`; its features are the 8w-d global-pooled
                       penultimate layer. It sees the tiles of the CV validation folds (tile
                       labels only; the slide labels the MIL models learn are never used), so
                       validation numbers are slightly optimistic; test and OOD numbers are not
                       affected. Every results row names the extractor that produced it.

A feature file is ``<out>/features/<extractor key>/<source>.npz`` with ``feats`` (N, D) float32,
``keys`` (one id per tile) and a JSON ``meta`` holding the source's fingerprint: it is reused
while the extractor and the source are unchanged and rebuilt otherwise.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from discnb import K
from discnb.core import paths, shards
from discnb.core.io import atomic_file, fingerprint, load_state_dict, write_json
from discnb.core.train import FitConfig, TensorData, fit
from discnb.data import sicap as data
from discnb.data.augment import dihedral

LUNIT_MEAN = (0.70322989, 0.53606487, 0.66096631)
LUNIT_STD = (0.21716536, 0.26081574, 0.20723464)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> (timm model, input px, mean, std, what the local file is)
PRETRAINED = {
    "lunit-vits16": ("vit_small_patch16_224", 224, LUNIT_MEAN, LUNIT_STD,
                     "Lunit DINO ViT-S/16 (dino_vit_small_patch16_ep200.torch, lunit-io/benchmark-ssl-pathology)"),
    "resnet50-mocov2": ("resnet50", 224, LUNIT_MEAN, LUNIT_STD,
                        "Lunit MoCo v2 ResNet-50 (mocov2_rn50_ep200.torch, lunit-io/benchmark-ssl-pathology)"),
    "resnet50-imagenet": ("resnet50", 224, IMAGENET_MEAN, IMAGENET_STD,
                          "ResNet-50 ImageNet weights (a timm/torchvision resnet50 state dict)"),
}
EXTRACTORS = (*PRETRAINED, "tilecnn")
TILECNN_VERSION = 1  # bump when the tilecnn recipe changes: cached extractors of another version are not reused


@dataclass
class Extractor:
    """A frozen tile encoder: ``ext(tiles uint8 (N,H,W,3)) -> (N, dim) float32``.

    Tiles are resized to ``input_size`` (bilinear, antialiased) when they have another size, scaled
    to [0, 1] and normalised with ``mean``/``std``.
    """
    name: str
    model: nn.Module
    input_size: int
    mean: tuple
    std: tuple
    dim: int
    key: str                       # names the feature folder: extractor name + fingerprint of its weights
    info: dict = field(default_factory=dict)
    batch_size: int = 64
    device: str = "cpu"

    @torch.no_grad()
    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        tiles = np.asarray(tiles)
        if tiles.ndim != 4 or tiles.shape[-1] != 3:
            raise ValueError(f"tiles must be (N, H, W, 3) uint8, got {tiles.shape}")
        self.model.eval().to(self.device)
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        out = np.empty((len(tiles), self.dim), np.float32)
        for s in range(0, len(tiles), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(tiles[s:s + self.batch_size])).to(self.device)
            x = x.permute(0, 3, 1, 2).float().div(255)
            if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
                x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                                  align_corners=False, antialias=True)
            out[s:s + len(x)] = self.model((x - mean) / std).float().cpu().numpy()
        return out


# ====================================================================== pretrained (local files)
def pretrained_extractor(name: str, path: str | Path, batch_size: int = 64, device: str = "cpu") -> Extractor:
    """One of :data:`PRETRAINED`, its weights from the local file ``path`` (every backbone weight
    must be there; a classifier head in the file is ignored)."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained extractor {name!r}; known: {sorted(PRETRAINED)} (or 'tilecnn')")
    arch, size, mean, std, what = PRETRAINED[name]
    path = paths.resolve(path) if path else None
    if path is None:
        raise ValueError(f"extractor {name!r} needs extractor.path: a local file with the {what}")
    sd = load_state_dict(path, hint="Download it yourself (e.g. from lunit-io/benchmark-ssl-pathology releases) and "
                         "set extractor.path to it; or use extractor name 'tilecnn' (trained here, offline)")
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if k in own}
    missing = sorted(set(own) - set(sd))
    bad = sorted(k for k in sd if sd[k].shape != own[k].shape)
    if missing or bad:
        raise ValueError(f"{path} does not fit timm {arch} ({what}): {len(missing)} weight(s) missing "
                         f"(e.g. {missing[:3]}), {len(bad)} of another shape (e.g. {bad[:3]})")
    model.load_state_dict(sd)
    model.eval()
    return Extractor(name, model, size, mean, std, model.num_features, f"{name}-{fingerprint(path, n=12)}",
                     {"weights": str(path), "what": what}, batch_size, device)


# ================================================================================== tilecnn
class TileCNN(nn.Module):
    """A slim timm ResNet-18 (stages w, 2w, 4w, 8w; "deep" stem of width w) with a K-way head on
    the pooled features; ``features(x)`` returns the pooled 8w-d features."""

    def __init__(self, width: int = 16):
        super().__init__()
        if width < 2 or width % 2:
            raise ValueError(f"tilecnn width must be an even number >= 2, got {width}")
        self.config = {"width": int(width)}
        self.net = timm.create_model("resnet18", pretrained=False, num_classes=K,
                                     channels=(width, 2 * width, 4 * width, 8 * width),
                                     stem_type="deep", stem_width=width // 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Features(nn.Module):
    def __init__(self, cnn: TileCNN):
        super().__init__()
        self.cnn = cnn

    def forward(self, x):
        return self.cnn.features(x)


def soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets (the tile's mask label fractions)."""
    return -(target * F.log_softmax(logits.float(), -1)).sum(-1).mean()


def tilecnn_extractor(cfg: dict, out: Path, train_tiles: Callable[[], tuple[np.ndarray, np.ndarray]],
                      train_key: str, input_size: int, progress: bool = True, device: str = "cpu") -> Extractor:
    """The offline default: trained once on the training split (``train_tiles() -> (tiles uint8
    (N,S,S,3), label fractions (N,K))``, called only when no finished model matches) and stored
    in ``<out>/extractors/tilecnn-<hash>/`` (``final/model.safetensors`` + ``done.json``)."""


    sig = {"version": TILECNN_VERSION, "width": int(cfg["width"]), "epochs": int(cfg["epochs"]),
           "batch": int(cfg["batch"]), "lr": float(cfg["lr"]), "seed": int(cfg["seed"]),
           "input_size": int(input_size), "train": train_key}
    key = fingerprint(sig, n=12)
    folder = out / "extractors" / f"tilecnn-{key}"
    done = folder / "done.json"
    torch.manual_seed(sig["seed"])
    cnn = TileCNN(sig["width"])
    if done.exists() and json.loads(done.read_text()).get("signature") == sig:
        cnn.load_state_dict(load_file(str(folder / "final" / "model.safetensors")))
        info = json.loads(done.read_text())
    else:
        tiles, frac = train_tiles()
        if len(tiles) < sig["batch"]:
            raise ValueError(f"tilecnn: {len(tiles)} training tiles, fewer than one batch ({sig['batch']})")
        data = TensorData({"image": torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).contiguous(),
                           "frac": torch.from_numpy(np.asarray(frac, np.float32))},
                          augment=lambda b: dihedral(b, ("image",)))
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

        def loss_fn(model, batch, generator=None):
            x = (batch["image"].float().div(255) - mean.to(batch["image"].device)) / std.to(batch["image"].device)
            return soft_ce(model(x), batch["frac"])

        def save_fn(model, d: Path):
            d.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))

        steps = max(1, sig["epochs"] * (len(tiles) // sig["batch"]))
        cfg_fit = FitConfig(out_dir=str(folder), max_steps=steps, global_batch=sig["batch"], lr=sig["lr"],
                            weight_decay=1e-4, warmup_steps=min(20, steps // 10), cpu=device == "cpu",
                            checkpoint_every=10**9, checkpoints_total_limit=1, seed=sig["seed"],
                            desc="tilecnn feature extractor", signature=sig, progress=progress, log_every=20)
        summary = fit(cnn, loss_fn, data, cfg_fit, save_fn=save_fn)
        for extra in [*folder.glob("checkpoint-*"), folder / "best"]:  # the weights are in final/
            shutil.rmtree(extra, ignore_errors=True)
        cnn.load_state_dict(load_file(str(folder / "final" / "model.safetensors")))
        info = {"signature": sig, "fit": summary, "n_train_tiles": int(len(tiles))}
        write_json(done, info)
    cnn.eval()
    dim = 8 * sig["width"]
    return Extractor("tilecnn", _Features(cnn), input_size, IMAGENET_MEAN, IMAGENET_STD, dim, f"tilecnn-{key}",
                     {"trained_on": "official training split (tile mask fractions)", "folder": str(folder),
                      "n_train_tiles": info.get("n_train_tiles")}, int(cfg["eval_batch"]), device)


# ===================================================================================== cache
Loader = Callable[[], tuple[list[str], np.ndarray]]


def _load_features(path: Path, meta: dict) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["meta"])) == meta:
                feats, keys = z["feats"], z["keys"].astype(str)
                return {"feats": feats, "keys": keys, "index": {k: i for i, k in enumerate(keys)},
                        "path": str(path), "cached": True}
    except (OSError, ValueError, KeyError) as e:
        warnings.warn(f"{path}: unreadable feature file ({e}); extracting again")
    return None


def cached_features(ext: Extractor, out: Path, source: str, fingerprint: str,
                    chunks: Sequence[Loader] | Callable[[], Iterable[tuple[list[str], np.ndarray]]],
                    progress: bool = True, total: int | None = None, procs: shards.Processes | None = None) -> dict:
    """Features of one tile source, from ``<out>/features/<ext.key>/<source>.npz`` when that file
    was made from the same source (``fingerprint``), else computed and written atomically.

    ``chunks``: a sequence of loaders, each ``() -> (tile keys, tiles uint8 (n,H,W,3))`` (see
    :func:`index_chunks`), or a callable returning an iterable of such pairs (then one unit). Each
    chunk is a work unit of :func:`discnb.core.shards.run`: under ``accelerate launch`` every
    process extracts its part of the chunks into ``<source>.part-<i>.npz`` (with the source's
    meta), and the main process merges them, in chunk order, into the one feature file and deletes
    them; a killed run keeps its finished parts. The features of a chunk are the extractor's on
    that chunk alone, as in one process, so the file holds the same features.

    Returns {"feats": (N, D) float32, "keys": array of str, "index": {key: row}, "path", "cached"}.
    """
    folder = out / "features" / ext.key
    path = folder / f"{source}.npz"
    meta = {"source": source, "fingerprint": fingerprint, "extractor": ext.key, "dim": ext.dim}
    if path.exists() and (got := _load_features(path, meta)) is not None:
        return got
    procs = procs or shards.processes(str(ext.device).startswith("cpu"))
    # work units: each a callable returning an iterable of (keys, tiles)
    units = [(lambda ld=ld: [ld()]) for ld in chunks] if isinstance(chunks, Sequence) else [chunks]
    part_meta = {**meta, "chunks": len(units)}

    def part(i: int) -> Path:
        return folder / f"{source}.part-{i:05d}.npz"

    def part_ok(p: Path) -> bool:
        try:
            with np.load(p, allow_pickle=False) as z:
                return json.loads(str(z["meta"])) == part_meta
        except (OSError, ValueError, KeyError):
            return False

    def setup() -> None:
        shards.remove_tmp(folder, f"{source}.tmp*")
        shards.remove_tmp(folder, f"{source}.part-*.tmp*")
        for p in folder.glob(f"{source}.part-*.npz"):  # of another source version
            if not part_ok(p):
                p.unlink()

    bar = tqdm(total=total, desc=f"features {source} ({ext.name})", disable=not (progress and procs.is_main),
               mininterval=2)

    def work(i: int) -> None:
        feats, keys = [], []
        for k, tiles in units[i]():
            if len(k) != len(tiles):
                raise ValueError(f"source {source}: {len(k)} keys for {len(tiles)} tiles")
            if len(k):
                feats.append(ext(tiles))
                keys += list(k)
            bar.update(len(k))
        f = np.concatenate(feats) if feats else np.zeros((0, ext.dim), np.float32)
        atomic_file(part(i), lambda tmp: np.savez(tmp, feats=f, keys=np.array(keys, dtype=str),
                                                  meta=np.array(json.dumps(part_meta))))

    def merge() -> None:
        feats, keys = [], []
        for i in range(len(units)):
            with np.load(part(i), allow_pickle=False) as z:
                feats.append(z["feats"])
                keys += z["keys"].astype(str).tolist()
        f = np.concatenate(feats) if feats else np.zeros((0, ext.dim), np.float32)
        if len(set(keys)) != len(keys):
            raise ValueError(f"source {source}: tile keys are not unique")
        atomic_file(path, lambda tmp: np.savez(tmp, feats=f, keys=np.array(keys, dtype=str),
                                               meta=np.array(json.dumps(meta))))
        for i in range(len(units)):
            part(i).unlink()

    folder.mkdir(parents=True, exist_ok=True)
    shards.run(folder, source, todo=lambda: [i for i in range(len(units)) if not part_ok(part(i))], work=work,
               setup=setup, merge=merge, procs=procs)
    bar.close()
    got = _load_features(path, meta)
    if got is None:
        raise RuntimeError(f"{path}: the merged feature file is unreadable")
    return got | {"cached": False}


def index_chunks(index, size: int, chunk: int = 256) -> list[Loader]:
    """Loaders of chunks of (image names, tiles) of a tile index (prepared.read_index / the generic tile
    folder), each loading its tiles at ``size`` px when called, so that all of them are never in
    memory at once (and a process of ``accelerate launch`` loads only its own)."""

    def loader(s: int) -> Loader:
        def load():
            part = index.iloc[s:s + chunk]
            imgs, _ = data.load_tiles(part, size, progress=False)
            return part.image_name.astype(str).tolist(), imgs
        return load
    return [loader(s) for s in range(0, len(index), chunk)]
