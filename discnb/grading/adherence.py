"""Mask adherence, the measurement the README leads with (beyond the paper, which shows pictures):
does a generator draw, region by region, the pattern its mask asks for?

Four mask sets, kept apart because the paper's claim (Sec. 2.3: SD misdraws patterns inside
complex masks, SC and DISC fix it) concerns only the multi-label ones:

- ``multi``: shape maps of notebook 00's library (real annotation shapes) with random distinct
  labels on their ranks, as the tile sets assign them (:func:`discnb.generative.disc.random_masks`),
  kept when at least two labels survive on the latent grid, where SC fuses;
- ``complex-real``: the held-out annotation masks with the most labels (at least two), the real
  masks closest to the paper's "complex masks" (beyond the issue's three sets: on the demo, this is
  where SD-DISC measured above SD, docs/mask-adherence.md); it may share masks with ``real``;
- ``single``: constant masks, the same number of each label;
- ``real``: annotation masks of held-out tiles, as they are.

``multi`` and ``complex-real`` are sampled with every seed, the others with the first.

Each set is scored by the pattern judge against its masks (:func:`score`): IoU per class and their
mean, and chance, the same judge on the same tiles against a fixed permutation of the masks. A row
of ``adherence.csv`` puts the mean between chance and the ceiling (the judge on first-stage
reconstructions of real tiles, which no generator can beat): ``normalized`` = (mean - chance) /
(ceiling - chance).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
import torch

from discnb import K, LABELS
from discnb.data.shapes import most_labels_first
from discnb.generative import disc
from discnb.grading.judge import judge_scores

SETS = ("multi", "complex-real", "single", "real")
EVERY_SEED = ("multi", "complex-real")  # the sets sampled with every seed (the paper's claim)
COLUMNS = ["model", "masks", "seed", "n_masks", "mean_iou"] + [f"iou_{lab}" for lab in LABELS] + \
          ["chance_mean_iou", "ceiling_mean_iou", "normalized", "sec_per_tile", "unet_evals_per_tile"] + \
          ["band_px", "interior_share", "interior_mean_iou"] + [f"interior_iou_{lab}" for lab in LABELS] + \
          ["interior_chance_mean_iou"]


def multi_label_masks(maps: np.ndarray, n: int, seed: int, latent_side: int) -> np.ndarray:
    """``n`` masks (n,s,s) uint8 from a shape-map library (M,s,s) with at least two labels on the
    ``latent_side`` grid; fixed by ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    maps_t, out, have = torch.as_tensor(maps), [], 0
    for _ in range(100):
        m, _ = disc.random_masks(maps_t, 4 * n, g)
        lat = disc.downsample_mask(m, latent_side)
        keep = m[torch.tensor([len(torch.unique(x)) > 1 for x in lat], dtype=torch.bool)]
        out.append(keep)
        have += len(keep)
        if have >= n:
            return torch.cat(out)[:n].numpy()
    raise ValueError(f"the shape-map library gives fewer than {n} multi-label masks on a {latent_side}-px latent grid "
                     f"(found {have}); its maps have too few ranks")


def single_label_masks(n: int, size: int) -> np.ndarray:
    """``n`` constant masks, label k for the k-th quarter (n a multiple of K gives each label n / K)."""
    return np.repeat(np.arange(K, dtype=np.uint8), -(-n // K))[:n, None, None] * np.ones((1, size, size), np.uint8)


def set_names(n_complex: int) -> list[str]:
    """The sets :func:`mask_sets` makes, in :data:`SETS`'s order (``complex-real`` only when ``n_complex`` > 0)."""
    return [k for k in SETS if k != "complex-real" or n_complex]


def set_seeds(set_name: str, seeds: list) -> list:
    """The sampling seeds of a set: every seed for :data:`EVERY_SEED`'s sets, the first for the others."""
    return list(seeds) if set_name in EVERY_SEED else list(seeds)[:1]


def mask_sets(maps: np.ndarray, held_out_masks: np.ndarray, n_multi: int, n_single: int, n_real: int, seed: int,
              latent_side: int, n_complex: int = 0) -> dict[str, np.ndarray]:
    """The mask sets of the module docstring, fixed by ``seed`` (``real``: a seeded choice of
    held-out annotation masks, all of them when there are fewer; ``complex-real`` only when
    ``n_complex`` > 0)."""
    size = held_out_masks.shape[-1]
    if maps.shape[-1] != size:
        raise ValueError(f"shape maps are {maps.shape[-1]} px but the held-out masks are {size} px")
    make = {"multi": lambda: multi_label_masks(maps, n_multi, seed, latent_side),
            "complex-real": lambda: held_out_masks[complex_choice(held_out_masks, n_complex, seed)],
            "single": lambda: single_label_masks(n_single, size),
            "real": lambda: held_out_masks[real_choice(len(held_out_masks), n_real, seed)]}
    return {k: make[k]() for k in set_names(n_complex)}


def complex_choice(held_out_masks: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices (sorted) of the ``complex-real`` set: of the ``n`` held-out masks with the most labels
    (:func:`discnb.data.shapes.most_labels_first`, ties broken by ``seed``), those with at least two."""
    pick = np.sort(most_labels_first(held_out_masks, n, seed))
    return pick[[len(np.unique(held_out_masks[i])) > 1 for i in pick]]


def real_choice(n_held_out: int, n: int, seed: int) -> np.ndarray:
    """Indices (sorted) of the held-out tiles whose annotation masks form the ``real`` set."""
    return np.sort(np.random.default_rng(seed).choice(n_held_out, min(n, n_held_out), replace=False))


def chance_order(n: int, seed: int = 0) -> np.ndarray:
    """The fixed permutation of the masks that chance is scored against."""
    return np.random.default_rng(10_000 + seed).permutation(n)


# Chance scores a judge against masks shuffled between tiles. Where the shuffled masks agree with the
# true ones on most pixels (one tile; tiles that all show one label), chance is the real score
# by construction and a normalized adherence (between chance and the ceiling) means nothing.
MAX_CHANCE_AGREEMENT = 0.9


def chance_agreement(masks: np.ndarray, seed: int = 0) -> float:
    """The fraction of pixels on which ``masks`` and their :func:`chance_order` shuffle agree."""
    masks = np.asarray(masks)
    return float((masks == masks[chance_order(len(masks), seed)]).mean()) if len(masks) else 1.0


def check_chance_separable(masks: np.ndarray, where: str, seed: int = 0) -> float:
    """Refuse held-out masks on which chance cannot be told from the ceiling (see
    :data:`MAX_CHANCE_AGREEMENT`); returns the agreement otherwise. ``where`` names the split."""
    agree = chance_agreement(masks, seed)
    if agree > MAX_CHANCE_AGREEMENT:
        raise ValueError(f"{where}: {len(masks)} held-out tile(s) whose masks, shuffled between tiles, still agree "
                         f"on {agree:.0%} of pixels (limit {MAX_CHANCE_AGREEMENT:.0%}): chance would equal the ceiling. "
                         "Score on a larger or more varied split (another val_fold, or fix the partition files)")
    return agree


def interior(masks: np.ndarray, band: int) -> np.ndarray:
    """Pixels at least ``band`` px (in both axes) from a region boundary of their mask: the
    (2 band + 1)-square around each holds one label. The tile's own edge is no boundary."""
    masks = np.asarray(masks)
    if band <= 0:
        return np.ones(masks.shape, bool)
    size = (1, 2 * band + 1, 2 * band + 1)
    return ndimage.maximum_filter(masks, size, mode="nearest") == ndimage.minimum_filter(masks, size, mode="nearest")


def score(judge, tiles: np.ndarray, masks: np.ndarray, seed: int = 0, band: int = 0) -> dict:
    """The judge's IoU per class and mean (and pixel agreement) for ``tiles`` against their ``masks``,
    and chance: the same tiles against :func:`chance_order` of the masks (one segmentation serves both).

    ``band`` > 0 (beyond the paper): the same scores on the pixels at least ``band`` px from a region
    boundary only (:func:`interior`; one latent cell in notebook 02), so errors at the seams (SD-SC's
    fusion, the judge's context window across a boundary) are told apart from patterns drawn wrong
    inside a region: ``interior_mean_iou``, ``interior_iou``, ``interior_chance_mean_iou`` (chance on the
    interior of the shuffled masks) and ``interior_share`` (the fraction of pixels kept)."""
    tiles, masks = np.asarray(tiles), np.asarray(masks)
    if tiles.shape[:3] != masks.shape:
        raise ValueError(f"tiles {tiles.shape} and masks {masks.shape} do not match")
    pred = judge.segment(tiles)
    shuffled = masks[chance_order(len(masks), seed)]
    j, c = judge_scores(pred, masks), judge_scores(pred, shuffled)
    out = {"mean_iou": j["mean_iou"], "iou": j["iou"], "pixel_agreement": j["pixel_agreement"],
           "chance_mean_iou": c["mean_iou"], "band_px": int(band)}
    if band > 0:
        keep, keep_c = interior(masks, band), interior(shuffled, band)
        ji, ci = judge_scores(pred[keep], masks[keep]), judge_scores(pred[keep_c], shuffled[keep_c])
        out |= {"interior_share": float(keep.mean()), "interior_mean_iou": ji["mean_iou"], "interior_iou": ji["iou"],
                "interior_chance_mean_iou": ci["mean_iou"]}
    return out


def row(model: str, masks: str, seed: int, n: int, s: dict, ceiling: float, sec_per_tile: float,
        evals_per_tile: float) -> dict:
    """One row of ``adherence.csv`` (:data:`COLUMNS`)."""
    span = ceiling - s["chance_mean_iou"]
    return {"model": model, "masks": masks, "seed": int(seed), "n_masks": int(n), "mean_iou": s["mean_iou"],
            **{f"iou_{lab}": s["iou"][lab] for lab in LABELS}, "chance_mean_iou": s["chance_mean_iou"],
            "ceiling_mean_iou": ceiling, "normalized": (s["mean_iou"] - s["chance_mean_iou"]) / span if span > 0
            else float("nan"), "sec_per_tile": sec_per_tile, "unet_evals_per_tile": evals_per_tile,
            "band_px": s.get("band_px", 0), "interior_share": s.get("interior_share", float("nan")),
            "interior_mean_iou": s.get("interior_mean_iou", float("nan")),
            **{f"interior_iou_{lab}": s.get("interior_iou", {}).get(lab, float("nan")) for lab in LABELS},
            "interior_chance_mean_iou": s.get("interior_chance_mean_iou", float("nan"))}
