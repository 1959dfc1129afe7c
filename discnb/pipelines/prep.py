"""Notebook 00 (data prep) in a few calls: the dataset folder, the index, the overview figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from discnb.data import sicap as data

from discnb.core import paths

from discnb.data import shapes


def dataset_root(spec: str, out: Path, *, name: str, domain: str, seed: int, patients: int,
                 tiles_per_slide: int, tile_size: int, progress: bool = True) -> Path:
    """``spec`` "demo" -> the built-in procedural SICAPv2-layout dataset (made once, cached under
    ``out/name``); anything else is a path to a real SICAPv2-layout folder."""
    if spec == "demo":
        from discnb.data.demo import make_demo_sicap
        return make_demo_sicap(out / name, n_patients=patients, tiles_per_slide=tiles_per_slide,
                               tile_size=tile_size, seed=seed, domain=domain, progress=progress)
    return data.check_layout(paths.resolve(spec))


def write_index(index: pd.DataFrame, skipped: data.Skipped, out: Path, stem: str = "index") -> Path:
    """``<stem>.csv`` (+ ``<stem>.skipped.csv`` when files were skipped), written atomically."""
    path = out / f"{stem}.csv"
    tmp = path.with_suffix(".tmp")
    index.to_csv(tmp, index=False)
    tmp.replace(path)
    report = out / f"{stem}.skipped.csv"
    if len(skipped):
        skipped.frame().to_csv(report, index=False)
    elif report.exists():
        report.unlink()  # a stale report would describe another run
    return path


def read_index(out: Path, stem: str = "index") -> pd.DataFrame:
    path = Path(out) / f"{stem}.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no tile index; run notebooks/00_data_prep.ipynb for this profile first")
    return pd.read_csv(path, dtype={"slide_id": str, "patient_id": str, "mask_path": str},
                       keep_default_na=False, na_values={c: [""] for c in data.FRACTION_COLUMNS})


# Shape-map ranks 0 (most pixels) .. 3 in grey levels: ranks are not labels, so not the label palette.
RANK_COLOURS = np.array([[40, 40, 40], [110, 110, 110], [180, 180, 180], [245, 245, 245]], np.uint8)


def overview_rows(index: pd.DataFrame, lib: dict, n: int, size: int, seed: int) -> tuple[dict, list[str]]:
    """Rows for the data-prep figure: tiles, tiles with mask overlay, and their shape maps.

    Picks a spread of tiles: every majority label, multi-label masks first.
    """
    from discnb.plots import overlay
    rng = np.random.default_rng(seed)
    tr = index[(index.split == "train") & index.mask_path.astype(bool)]
    n_labels = (tr[list(data.FRACTION_COLUMNS)] > 0).sum(1)
    picks = []
    for lab in range(4):
        cand = tr[(tr.tile_label == lab)]
        cand = cand.loc[n_labels[cand.index].sort_values(ascending=False, kind="stable").index]
        picks += cand.index[: max(1, n // 4)].tolist() if len(cand) else []
    rest = tr.index.difference(picks)
    picks += rng.choice(rest, size=min(len(rest), max(0, n - len(picks))), replace=False).tolist()
    picks = picks[:n]
    tiles, overl, smaps, titles = [], [], [], []
    pos = {name: i for i, name in enumerate(lib["image_name"])}
    for i in picks:
        row = tr.loc[i]
        img, m = data.load_tile(row, size)
        tiles.append(img)
        overl.append(overlay(img, m))
        j = pos.get(row.image_name)
        ranks = shapes.resize_mask(lib["maps"][j], size) if j is not None else np.zeros_like(m)
        smaps.append(RANK_COLOURS[ranks])
        titles.append(f"{row.slide_id} {row.slide_primary}+{row.slide_secondary}")
    return {"tile": tiles, "mask overlay": overl, "shape map m_freq": smaps}, titles


def write_json(path: Path, obj) -> Path:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float) + "\n")
    tmp.replace(path)
    return Path(path)
