"""Tiny SICAPv2-layout folders written from scratch (no dependency on ../shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from discnb.data import fixtures

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


def _mask_for(rng, primary, secondary, corner: int = 0):
    """Primary grade on the left three quarters, secondary in a square at the top (``corner`` 0) or the
    bottom (1) of it."""
    m = np.zeros((SIZE, SIZE), np.uint8)
    if primary:
        m[:, : SIZE * 3 // 4] = primary
        rows = slice(None, SIZE // 3) if corner == 0 else slice(SIZE - SIZE // 3, None)
        m[rows, : SIZE // 3] = secondary
    return m


def write_sicap(root: Path, mask_ext: str = ".png", seed: int = 0, varied: bool = False) -> Path:
    """A minimal SICAPv2-layout folder: images, masks (0/3/4/5), partitions, wsi_labels. ``varied``: a
    slide's tiles put their secondary grade in different places (else they share one mask, and a
    fold of one slide is too uniform to score chance on)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = {"train": [], "test": []}
    folds = {k: [] for k in range(1, 5)}
    for sid, (pid, p, s, split, fold) in SLIDES.items():
        for t in range(TILES_PER_SLIDE):
            name = f"{sid}_Block_Region_1_0_{t}_xini_{1000 * t}_yini_500"
            Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / "images" / f"{name}.jpg")
            m = _mask_for(rng, p, s, t % 2 if varied else 0)
            if mask_ext == ".png":
                Image.fromarray(m).save(root / "masks" / f"{name}.png")
            else:
                Image.fromarray(m).save(root / "masks" / f"{name}.jpg", quality=75)
            row = fixtures.partition_row(f"{name}.jpg", m)
            rows[split].append(row)
            if split == "train":
                folds[fold].append(row)
    return fixtures.write_tables(root, SLIDES, rows, folds)
