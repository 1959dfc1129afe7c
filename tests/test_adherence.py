"""discnb.grading.adherence: the mask sets and the rows of adherence.csv."""

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
    assert list(s) == ["multi", "single", "real"] and [len(s[k]) for k in s] == [16, 8, 10]
    assert np.bincount(s["single"][:, 0, 0], minlength=4).tolist() == [2, 2, 2, 2]
    assert all(len(np.unique(x)) == 1 for x in s["single"])
    assert all(any(np.array_equal(r, h) for h in held) for r in s["real"])
    with pytest.raises(ValueError, match="px"):
        adherence.mask_sets(_maps(size=16), held, 4, 4, 4, seed=0, latent_side=8)


def test_complex_real_set_has_the_most_labels_and_only_multi_label_masks():
    rng = np.random.default_rng(1)
    # 20 held-out masks with 1, 2, 3 or 4 labels: quadrants drawn from a pool of that many labels
    n_labels = np.tile([1, 2, 3, 4], 5)
    held = np.stack([np.kron(rng.permutation(np.resize(rng.permutation(4)[:k], 4)).reshape(2, 2),
                             np.ones((16, 16), int)) for k in n_labels]).astype(np.uint8)
    s = adherence.mask_sets(_maps(), held, 4, 4, 4, seed=0, latent_side=8, n_complex=8)
    assert list(s) == list(adherence.SETS)
    counts = sorted(len(np.unique(m)) for m in s["complex-real"])
    assert counts == [3] * 3 + [4] * 5  # the 5 four-label masks, then 3 of the 5 three-label ones
    assert all(any(np.array_equal(c, h) for h in held) for c in s["complex-real"])
    # among the 8 most complex of only-one-or-two-label masks, the one-label ones are dropped
    few = held[n_labels <= 2]
    idx = adherence.complex_choice(few, 8, seed=0)
    assert len(idx) == 5 and all(len(np.unique(few[i])) == 2 for i in idx)
    assert np.array_equal(idx, adherence.complex_choice(few, 8, seed=0))


class _ReadingJudge:
    """A perfect judge: reads the label from the tile's first channel."""

    def segment(self, tiles):
        return np.asarray(tiles)[..., 0].astype(np.uint8)


def test_score_and_row():
    masks = np.stack([np.full((8, 8), k, np.uint8) for k in range(4)] * 2)
    judge = _ReadingJudge()
    tiles = np.repeat(masks[..., None], 3, -1)
    s = adherence.score(judge, tiles, masks)
    assert s["mean_iou"] == 1.0 and s["chance_mean_iou"] < 1.0
    r = adherence.row("SD", "single", 0, len(masks), s, ceiling=1.0, sec_per_tile=0.5, evals_per_tile=100)
    assert list(r) == adherence.COLUMNS
    assert r["normalized"] == pytest.approx(1.0)
    r = adherence.row("SD", "single", 0, 8, {**s, "mean_iou": 0.5, "chance_mean_iou": 0.25}, 0.75, 0.5, 100)
    assert r["normalized"] == pytest.approx(0.5)


def test_interior_keeps_pixels_a_band_away_from_boundaries():
    m = np.zeros((1, 12, 12), np.uint8)
    m[0, :, 6:] = 2
    keep = adherence.interior(m, 2)
    assert keep[0, :, :4].all() and keep[0, :, 8:].all() and not keep[0, :, 4:8].any()  # 2 px each side of col 6
    assert adherence.interior(m, 0).all() and adherence.interior(np.ones((1, 5, 5), np.uint8), 3).all()


def test_interior_scores_tell_seams_from_patterns():
    """A judge wrong only along the boundaries scores below 1 on the whole tile and 1 on the interior; one
    wrong inside a region is wrong on the interior too."""
    masks = np.zeros((4, 16, 16), np.uint8)
    for i in range(4):
        masks[i, :, 8:] = i % 3 + 1
    seam = masks.copy()
    seam[:, :, 7:9] = 3 - masks[:, :, 7:9] % 4  # wrong labels on the 2 columns at the seam
    s = adherence.score(_ReadingJudge(), np.repeat(seam[..., None], 3, -1), masks, band=2)
    assert s["mean_iou"] < 0.9 and s["interior_mean_iou"] == 1.0 and s["interior_share"] == pytest.approx(12 / 16)
    inside = masks.copy()
    inside[:, :, :3] = 3
    s2 = adherence.score(_ReadingJudge(), np.repeat(inside[..., None], 3, -1), masks, band=2)
    assert s2["interior_mean_iou"] < 0.9
    r = adherence.row("SD", "multi", 0, 4, s, 1.0, 0.1, 10)
    assert list(r) == adherence.COLUMNS and r["band_px"] == 2 and r["interior_mean_iou"] == 1.0
    assert np.isnan(adherence.row("SD", "multi", 0, 4, adherence.score(_ReadingJudge(), np.repeat(masks[..., None], 3, -1),
                                                                        masks), 1.0, 0.1, 10)["interior_mean_iou"])
