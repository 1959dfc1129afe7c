"""Tile shape maps m_freq (paper Sec. 2.2).

Each human-annotated mask m becomes a shape map m_freq in which labels are renamed by pixel
count, from the most frequent (rank 0) to the least. At sampling time a shape map is drawn and
its ranks get Gleason labels, which keeps the annotators' drawings while letting any label mix
be asked for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from discnb import K
from discnb.core.io import atomic_file
from discnb.data.sicap import load_mask


def freq_relabel(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """m -> (m_freq, labels_by_rank).

    ``m_freq[i, j]`` is the rank (0 = most pixels) of label ``mask[i, j]``; ties go to the
    lower label. ``labels_by_rank[r]`` is the label of rank r, -1 past the labels present, so
    ``labels_by_rank[m_freq]`` gives back ``mask``.
    """
    mask = np.asarray(mask)
    counts = np.bincount(mask.ravel(), minlength=K)[:K]
    order = np.lexsort((np.arange(K), -counts))  # by count desc, then label asc
    present = order[counts[order] > 0]
    rank_of = np.full(K, 255, np.uint8)
    rank_of[present] = np.arange(len(present), dtype=np.uint8)
    labels_by_rank = np.full(K, -1, np.int8)
    labels_by_rank[: len(present)] = present
    return rank_of[mask], labels_by_rank


def assign_labels(shape_map: np.ndarray, labels_by_rank) -> np.ndarray:
    """A shape map with a label per rank -> a label mask (the inverse of :func:`freq_relabel`)."""
    lut = np.asarray(labels_by_rank, dtype=np.int16)
    n_ranks = int(shape_map.max()) + 1
    if len(lut) < n_ranks or (lut[:n_ranks] < 0).any() or (lut[:n_ranks] >= K).any():
        raise ValueError(f"shape map has {n_ranks} ranks but labels_by_rank is {list(labels_by_rank)}")
    return lut[shape_map].astype(np.uint8)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize, which never invents labels."""
    if mask.shape == (size, size):
        return mask
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))


def build_library(index: pd.DataFrame, size: int, progress: bool = True) -> dict[str, np.ndarray]:
    """The shape-map library of the masks in ``index`` (use the training split only).

    Returns arrays: ``maps`` (N,size,size) uint8 ranks, ``n_ranks`` (N,), ``labels_by_rank``
    (N,K) int8 (the source mask's own labels, -1 padded) and ``image_name`` (N,) for tracing.
    Masks are resized before ranking so ranks are counted at the size they are used.
    """
    from tqdm.auto import tqdm
    idx = index[index.mask_path.astype(bool)]
    if len(idx) == 0:
        raise ValueError("no masks to build shape maps from: every index row lacks a mask")
    n = len(idx)
    maps = np.empty((n, size, size), np.uint8)
    lbr = np.empty((n, K), np.int8)
    for i, p in enumerate(tqdm(idx.mask_path.tolist(), desc="shape maps", disable=not progress, mininterval=2)):
        maps[i], lbr[i] = freq_relabel(resize_mask(load_mask(p), size))
    return {"maps": maps, "n_ranks": (lbr >= 0).sum(1).astype(np.uint8), "labels_by_rank": lbr,
            "image_name": idx.image_name.to_numpy().astype(str)}


def save_library(path: str | Path, lib: dict[str, np.ndarray]) -> Path:
    """Write atomically: a crash leaves the old library or the new one, never half of one."""
    return atomic_file(path, lambda tmp: np.savez_compressed(tmp, **lib))


def load_library(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no shape-map library; run notebooks/00_data_prep.ipynb for this profile first")
    with np.load(path) as z:
        lib = {k: z[k] for k in z.files}
    missing = {"maps", "n_ranks", "labels_by_rank", "image_name"} - set(lib)
    if missing:
        raise ValueError(f"{path}: not a shape-map library (missing {sorted(missing)})")
    return lib


def rank_histogram(lib: dict[str, np.ndarray]) -> pd.Series:
    """How many shape maps have 1, 2, 3, 4 ranks (labels)."""
    return pd.Series(lib["n_ranks"]).value_counts().reindex(range(1, K + 1), fill_value=0).rename("shape_maps")


def most_labels_first(masks: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` masks, those with the most distinct labels first (ties broken at random
    with ``seed``): the tiles every figure shows, so that mixed patterns are seen."""
    rng = np.random.default_rng(seed)
    n_labels = np.array([len(np.unique(m)) for m in masks])
    return np.argsort(-n_labels + rng.random(len(masks)) * 0.5, kind="stable")[:n]
