"""discnb.grading.adherence: the mask sets and the rows of adherence.csv (issue 15)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from discnb.generative import disc
from discnb.grading import adherence


def _maps(n=12, size=32):
    """Shape maps with 1..3 ranks: vertical bands."""
    maps = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        ranks = 1 + i % 3
        for r in range(ranks):
            maps[i, :, r * size // ranks:(r + 1) * size // ranks] = r
    return maps


def test_multi_label_masks_have_two_labels_on_the_latent_grid_and_are_seeded():
    m = adherence.multi_label_masks(_maps(), 40, seed=3, latent_side=8)
    assert m.shape == (40, 32, 32) and m.dtype == np.uint8
    lat = disc.downsample_mask(torch.from_numpy(m), 8)
    assert all(len(torch.unique(x)) >= 2 for x in lat)
    assert np.array_equal(m, adherence.multi_label_masks(_maps(), 40, seed=3, latent_side=8))
    assert not np.array_equal(m, adherence.multi_label_masks(_maps(), 40, seed=4, latent_side=8))
    with pytest.raises(ValueError, match="fewer than"):
        adherence.multi_label_masks(np.zeros((4, 32, 32), np.uint8), 5, seed=0, latent_side=8)


def test_mask_sets_sizes_single_label_balance_and_real_choice():
    held = np.random.default_rng(0).integers(0, 4, (30, 32, 32)).astype(np.uint8)
    s = adherence.mask_sets(_maps(), held, 16, 8, 10, seed=0, latent_side=8)
    assert [len(s[k]) for k in adherence.SETS] == [16, 8, 10]
    assert np.bincount(s["single"][:, 0, 0], minlength=4).tolist() == [2, 2, 2, 2]
    assert all(len(np.unique(x)) == 1 for x in s["single"])
    assert all(any(np.array_equal(r, h) for h in held) for r in s["real"])
    with pytest.raises(ValueError, match="px"):
        adherence.mask_sets(_maps(size=16), held, 4, 4, 4, seed=0, latent_side=8)


def test_score_and_row():
    masks = np.stack([np.full((8, 8), k, np.uint8) for k in range(4)] * 2)

    def judge(tiles, m):  # a perfect judge reads the label from the tile
        from discnb.grading.judge import judge_scores
        return judge_scores(tiles[..., 0].astype(np.uint8), m)
    tiles = np.repeat(masks[..., None], 3, -1)
    s = adherence.score(judge, tiles, masks)
    assert s["mean_iou"] == 1.0 and s["chance_mean_iou"] < 1.0
    r = adherence.row("SD", "single", 0, len(masks), s, ceiling=1.0, sec_per_tile=0.5, evals_per_tile=100)
    assert list(r) == adherence.COLUMNS
    assert r["normalized"] == pytest.approx(1.0)
    r = adherence.row("SD", "single", 0, 8, {**s, "mean_iou": 0.5, "chance_mean_iou": 0.25}, 0.75, 0.5, 100)
    assert r["normalized"] == pytest.approx(0.5)
