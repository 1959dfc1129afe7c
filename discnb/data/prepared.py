"""What notebook 00 wrote (paper Sec. 2.2), read back by every later stage from its folder
(:attr:`discnb.core.layout.Layout.data`): its resolved parameters (``image_size`` is every model's tile size), the tile index, the out-of-distribution index,
and the tiles split by cross-validation fold in memory."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from discnb import K, LABELS
from discnb.data import sicap as data

def prep_params(ddir: Path) -> dict:
    """Notebook 00's resolved parameters (its ``image_size`` is every model's tile size)."""
    p = Path(ddir) / "params.resolved.yaml"
    if not p.exists():
        raise FileNotFoundError(f"{p}: no data prep for this profile; run notebooks/00_data_prep.ipynb first")
    return yaml.safe_load(p.read_text())


def read_index(out: Path, stem: str = "index") -> pd.DataFrame:
    path = Path(out) / f"{stem}.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no tile index; run notebooks/00_data_prep.ipynb for this profile first")
    # "" is NaN only in the numeric columns of tiles without a mask (a slide id "NA" stays text)
    return pd.read_csv(path, dtype={"slide_id": str, "patient_id": str, "mask_path": str},
                       keep_default_na=False, na_values={c: [""] for c in (*data.FRACTION_COLUMNS, "mask_changed")})


def read_ood_index(out: Path, ood_split: str) -> pd.DataFrame:
    """Rows ``ood_split`` ("all", or a split name such as "test") of ``ood_index.csv``: the
    out-of-distribution test set of notebooks 04 and 05."""
    path = Path(out) / "ood_index.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no out-of-distribution set for this profile (notebook 00 ran with "
                                "ood_dataset empty?); set ood_split: \"\" (none) or give notebook 00 an ood_dataset")
    ood = read_index(out, stem="ood_index")
    if ood_split != "all":
        if ood_split not in set(ood.split):
            raise data.DataError(f"{path} has no {ood_split!r} rows (splits: {sorted(set(ood.split))}); "
                                 "set ood_split to 'all', 'test' or '' (none)")
        ood = ood[ood.split == ood_split]
    return ood


def pixel_counts(masks: np.ndarray) -> np.ndarray:
    return np.bincount(np.asarray(masks).ravel(), minlength=K)[:K]


def split_tiles(ddir: Path, val_fold: int, ood_split: str = "", progress: bool = True) -> dict:
    """Tiles and masks of train / val (CV fold ``val_fold``) / test (/ ood: rows ``ood_split`` of
    ``ood_index.csv``) in memory at notebook 00's ``image_size``, plus ``pixels``: label pixel
    counts per split.

    Rows without a mask are left out (with a warning). A class with no pixel in a split gets a
    warning: the model cannot learn it (train) or its IoU/Dice are undefined (test sets).
    """
    ddir = Path(ddir)
    size = int(prep_params(ddir)["image_size"])
    parts = data.fold_split(read_index(ddir), val_fold)
    if ood_split:
        parts["ood"] = read_ood_index(ddir, ood_split)
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
        raise data.DataError(f"{ddir}/index.csv: no training tile with a mask (official train minus fold {val_fold})")
    if val_fold and len(out["val"]["imgs"]) == 0:
        raise data.DataError(f"{ddir}/index.csv: validation fold {val_fold} has no tile with a mask")
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
