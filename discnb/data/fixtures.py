"""Real-format stand-ins for the datasets the paper profile reads, written from scratch.

The paper path must be proven end to end before anyone brings SICAPv2 and a GPU for a week, but no
dataset may be downloaded here. These writers make folders in the **real file formats** at the
**real sizes** (the paper dry run, ``python -m discnb.pipelines.dryrun``, and tests use them):

* :func:`write_sicapv2`: SICAPv2's layout: 512-px JPEG patches named ``<slide>_Block_Region_...``,
  0/3/4/5 PNG masks, ``partition/Test/{Train,Test}.xlsx`` and ``partition/Validation/Val1..4``,
  ``wsi_labels.xlsx`` (slide, patient, Gleason primary/secondary);
* :func:`write_panda`: PANDA's ``train.csv`` and 2-level pyramidal TIFFs (``train_images``,
  Radboud ``train_label_masks`` with labels in the red channel).

The pixels are stand-ins (stain-coloured noise with glands as darker discs), not tissue: they prove
shapes, formats, configs and file handling, never what a model learns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from discnb.data.sicap import tile_label

# slide -> (patient, Gleason primary, secondary, official split, CV fold of the train split)
SICAP_SLIDES = {
    "16B0001851": ("1001", 3, 4, "train", 1),
    "16B0003388": ("1002", 0, 0, "train", 1),
    "17B0005013": ("1003", 4, 5, "train", 2),
    "17B0023424": ("1004", 5, 5, "train", 2),
    "18B0006169": ("1005", 4, 3, "train", 3),
    "18B0000233": ("1006", 3, 3, "train", 3),
    "16B0008067": ("1007", 4, 4, "train", 4),
    "17B0000071": ("1008", 0, 0, "train", 4),
    "18B0002271": ("1009", 3, 4, "test", 0),
    "18B0004441": ("1010", 5, 4, "test", 0),
    "16B0021456": ("1011", 0, 0, "test", 0),
}

# PANDA: image_id -> (provider, gleason_score, isup_grade)
PANDA_SLIDES = {
    "0005f7aaab2800f6170c399693a96917": ("karolinska", "0+0", 0),
    "000920ad0b612851f8e01bcc880d9b3d": ("karolinska", "0+0", 0),
    "0018ae58b01bdadc8e347995b69f99aa": ("radboud", "4+4", 4),
    "001c62abd11fa4b57bf7a6c603a11bb9": ("karolinska", "4+4", 4),
    "001d865e65ef5d2579c190a0e0350d8f": ("karolinska", "3+3", 1),
    "002a4db09dad406c85505a00fb6f6144": ("radboud", "3+4", 2),
    "003046e27c8ead3e3db155780dc5498e": ("radboud", "5+5", 5),
    "0032bfa835ce0f43a92ae0bbab6871cb": ("radboud", "4+5", 5),
}

STAIN = np.array([205, 110, 165], np.float32)   # eosin pink
NUCLEI = np.array([95, 60, 140], np.float32)    # haematoxylin purple


def _tissue(rng: np.random.Generator, h: int, w: int, glands: int) -> np.ndarray:
    """Stain-coloured noise with ``glands`` darker discs (uint8 RGB)."""
    img = STAIN + rng.normal(0, 12, (h, w, 3)).astype(np.float32)
    for _ in range(glands):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), int(rng.integers(max(2, h // 40), max(3, h // 12)))
        y0, x0 = max(0, cy - r - 2), max(0, cx - r - 2)  # only the disc's box: whole-slide sizes stay cheap
        yy, xx = np.mgrid[y0:min(h, cy + r + 3), x0:min(w, cx + r + 3)]
        ring = np.abs(np.hypot(yy - cy, xx - cx) - r) < max(1.5, r / 5)
        img[yy[ring], xx[ring]] = NUCLEI + rng.normal(0, 8, (int(ring.sum()), 3))
    return img.clip(0, 255).astype(np.uint8)


def _sicap_mask(rng: np.random.Generator, size: int, primary: int, secondary: int) -> np.ndarray:
    """A 0/3/4/5 mask: non-cancer slides all 0; others a primary region with a secondary corner."""
    m = np.zeros((size, size), np.uint8)
    if primary:
        cut = int(size * rng.uniform(0.5, 0.9))
        m[:, :cut] = primary
        k = int(size * rng.uniform(0.2, 0.45))
        m[:k, :k] = secondary
    return m


def write_sicapv2(root: str | Path, *, size: int = 512, tiles_per_slide: int = 3, seed: int = 0) -> Path:
    """A SICAPv2-layout folder at ``root`` (see the module docstring); returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rows: dict[str, list] = {"train": [], "test": []}
    folds: dict[int, list] = {k: [] for k in range(1, 5)}
    for sid, (pid, p, s, split, fold) in SICAP_SLIDES.items():
        for t in range(tiles_per_slide):
            name = f"{sid}_Block_Region_{t % 2 + 1}_{t // 2}_{t}_xini_{7000 + 512 * t}_yini_{3000 + 256 * t}"
            Image.fromarray(_tissue(rng, size, size, glands=12)).save(root / "images" / f"{name}.jpg", quality=90)
            m = _sicap_mask(rng, size, p, s)
            Image.fromarray(m).save(root / "masks" / f"{name}.png")
            row = partition_row(f"{name}.jpg", m)
            rows[split].append(row)
            if split == "train":
                folds[fold].append(row)
    return write_tables(root, SICAP_SLIDES, rows, folds)


def partition_row(image_name: str, mask: np.ndarray) -> dict:
    """A partition row of SICAPv2 for a tile and its 0/3/4/5 mask: the one-hot label by SICAPv2's rule."""
    onehot = np.eye(4, dtype=int)[tile_label(np.bincount(mask.ravel(), minlength=6)[[0, 3, 4, 5]] / mask.size)]
    return {"image_name": image_name, "NC": onehot[0], "G3": onehot[1], "G4": onehot[2], "G5": onehot[3], "G4C": 0}


def write_tables(root: Path, slides: dict, rows: dict[str, list], folds: dict[int, list]) -> Path:
    """SICAPv2's tables: ``partition/Test/{Train,Test}.xlsx`` from ``rows`` (split -> rows),
    ``partition/Validation/ValK/{Train,Test}.xlsx`` from ``folds`` (K -> held-out train rows), and
    ``wsi_labels.xlsx`` from ``slides`` (slide -> (patient, primary, secondary, ...))."""
    part = Path(root) / "partition"
    (part / "Test").mkdir(parents=True, exist_ok=True)
    for split, r in rows.items():
        pd.DataFrame(r).to_excel(part / "Test" / f"{split.capitalize()}.xlsx", index=False)
    train_all = pd.DataFrame(rows["train"])
    for k, r in folds.items():
        d = part / "Validation" / f"Val{k}"
        d.mkdir(parents=True, exist_ok=True)
        held = pd.DataFrame(r)
        held.to_excel(d / "Test.xlsx", index=False)
        train_all[~train_all.image_name.isin(held.image_name)].to_excel(d / "Train.xlsx", index=False)
    pd.DataFrame([{"slide_id": s, "patient_id": v[0], "Gleason_primary": v[1], "Gleason_secondary": v[2]}
                  for s, v in slides.items()]).to_excel(Path(root) / "wsi_labels.xlsx", index=False)
    return Path(root)


def _pyramid(path: Path, arr: np.ndarray, factor: int = 4, nearest: bool = False) -> None:
    """A 2-level TIFF (level 0 and a 1/``factor`` copy), as PANDA's pyramids (levels 1/4 apart)."""
    im = Image.fromarray(arr)
    small = im.resize((arr.shape[1] // factor, arr.shape[0] // factor), Image.NEAREST if nearest else Image.BILINEAR)
    im.save(path, save_all=True, append_images=[small], compression="tiff_deflate")


def write_panda(root: str | Path, *, height: int = 2048, width: int = 3072, seed: int = 0) -> Path:
    """A PANDA-layout folder: ``train.csv`` and one pyramidal slide per :data:`PANDA_SLIDES` row
    (tissue on the left two thirds, glass on the right), Radboud slides with a label mask."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "train_images").mkdir(parents=True, exist_ok=True)
    (root / "train_label_masks").mkdir(exist_ok=True)
    rows = []
    for sid, (prov, score, isup) in PANDA_SLIDES.items():
        img = np.full((height, width, 3), 242, np.uint8)
        tw = width * 2 // 3
        img[:, :tw] = _tissue(rng, height, tw, glands=60)
        _pyramid(root / "train_images" / f"{sid}.tiff", img)
        if prov == "radboud":
            p, s = (0, 0) if score in ("negative", "0+0") else tuple(int(x) for x in score.split("+"))
            m = np.zeros((height, width, 3), np.uint8)
            m[:, :tw, 0] = 1                          # stroma
            if p:
                m[: height // 2, :tw, 0] = p
                m[height // 2:, : tw // 2, 0] = s
            _pyramid(root / "train_label_masks" / f"{sid}_mask.tiff", m, nearest=True)
        rows.append({"image_id": sid, "data_provider": prov, "isup_grade": isup, "gleason_score": score})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root
