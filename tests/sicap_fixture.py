"""Tiny SICAPv2-layout folders written from scratch (no dependency on ../shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from discnb.data.sicap import tile_label

# slide -> (patient, primary, secondary, split, fold)
SLIDES = {
    "16B0000001": ("1001", 3, 4, "train", 1),
    "16B0000002": ("1002", 0, 0, "train", 2),
    "17B0000003": ("1003", 4, 5, "train", 3),
    "17B0000004A": ("1004", 5, 5, "train", 4),
    "18B0000005": ("1005", 4, 3, "test", 0),
    "18B0000006": ("1006", 0, 0, "test", 0),
}
TILES_PER_SLIDE = 3
SIZE = 32


def _mask_for(rng, primary, secondary):
    m = np.zeros((SIZE, SIZE), np.uint8)
    if primary:
        m[:, : SIZE * 3 // 4] = primary
        m[: SIZE // 3, : SIZE // 3] = secondary
    return m


def write_sicap(root: Path, mask_ext: str = ".png", seed: int = 0) -> Path:
    """A minimal SICAPv2-layout folder: images, masks (0/3/4/5), partitions, wsi_labels."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = {"train": [], "test": []}
    folds = {k: [] for k in range(1, 5)}
    for sid, (pid, p, s, split, fold) in SLIDES.items():
        for t in range(TILES_PER_SLIDE):
            name = f"{sid}_Block_Region_1_0_{t}_xini_{1000 * t}_yini_500"
            Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / "images" / f"{name}.jpg")
            m = _mask_for(rng, p, s)
            if mask_ext == ".png":
                Image.fromarray(m).save(root / "masks" / f"{name}.png")
            else:
                Image.fromarray(m).save(root / "masks" / f"{name}.jpg", quality=75)
            onehot = np.eye(4, dtype=int)[tile_label(np.bincount(m.ravel(), minlength=6)[[0, 3, 4, 5]] / m.size)]
            row = {"image_name": f"{name}.jpg", "NC": onehot[0], "G3": onehot[1], "G4": onehot[2],
                   "G5": onehot[3], "G4C": 0}
            rows[split].append(row)
            if split == "train":
                folds[fold].append(row)
    part = root / "partition"
    (part / "Test").mkdir(parents=True)
    for split, r in rows.items():
        pd.DataFrame(r).to_excel(part / "Test" / f"{split.capitalize()}.xlsx", index=False)
    train_all = pd.DataFrame(rows["train"])
    for k, r in folds.items():
        d = part / "Validation" / f"Val{k}"
        d.mkdir(parents=True)
        test_k = pd.DataFrame(r)
        test_k.to_excel(d / "Test.xlsx", index=False)
        train_all[~train_all.image_name.isin(test_k.image_name)].to_excel(d / "Train.xlsx", index=False)
    pd.DataFrame([{"slide_id": s, "patient_id": v[0], "Gleason_primary": v[1], "Gleason_secondary": v[2]}
                  for s, v in SLIDES.items()]).to_excel(root / "wsi_labels.xlsx", index=False)
    return root
