"""What the batch size changes in generated tiles (the shipped SD-DISC): the noise not at all, the tiles
by a few grey levels in a few pixels (CPU kernels differ by batch size), and a run of ``generate`` not
at all, since a resume with another batch size is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from discnb.generative.disc_pipeline import DISCPipeline
from discnb.generative.sampling import initial_noise
from discnb.generative import masks_to_tiles

MODEL = Path(__file__).resolve().parents[1] / "weights" / "demo" / "SD-DISC"
# Measured on the shipped SD-DISC (16 masks, DPM-Solver++ 20, 2 threads): batch 16 vs 1 differ in 0.28 % of
# pixels, by at most 10 grey levels (masks_to_tiles' docstring). The bound leaves room for other CPUs; a tile
# that depended on its batch-mates' noise or masks would differ almost everywhere.
MAX_PIXELS_DIFFERING, MAX_GREY_LEVELS = 0.02, 32


def masks(n: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, size, size), np.uint8)
    for m in out:
        for _ in range(3):
            c, r = rng.integers(0, size, 2), rng.integers(8, 30)
            m[(yy - c[0]) ** 2 + (xx - c[1]) ** 2 < r * r] = rng.integers(0, 4)
    return out


@pytest.fixture(scope="module")
def pipe():
    return DISCPipeline.from_pretrained(MODEL)


def test_noise_does_not_depend_on_the_batch():
    whole = initial_noise([3, 4, 5, 6], (3, 16, 16))
    assert torch.equal(whole, torch.cat([initial_noise([s], (3, 16, 16)) for s in (3, 4, 5, 6)]))


def test_tiles_differ_between_batch_sizes_only_within_the_stated_bound(pipe):
    m, seeds = masks(2), [0, 1]
    draw = {bs: pipe(m, num_inference_steps=6, seeds=seeds, batch_size=bs, output_type="np").images
            for bs in (2, 1)}
    again = pipe(m, num_inference_steps=6, seeds=seeds, batch_size=2, output_type="np").images
    assert np.array_equal(draw[2], again)  # the same batch size: the same tiles
    a, b = (np.round(draw[bs] * 255).astype(int) for bs in (2, 1))
    diff = np.abs(a - b)
    assert (diff > 0).mean() <= MAX_PIXELS_DIFFERING and diff.max() <= MAX_GREY_LEVELS, ((diff > 0).mean(), diff.max())


def test_generate_refuses_to_resume_with_another_batch_size(tmp_path):
    d = tmp_path / "masks"
    d.mkdir()
    for i, m in enumerate(masks(3)):
        Image.fromarray(m).save(d / f"m{i}.png")
    masks_to_tiles.run(MODEL, d, tmp_path / "out", steps=1, sampler="dpm++", batch_size=2, mask_format="labels",
                       progress=False)
    before = (tmp_path / "out" / "manifest.json").read_bytes()
    with pytest.raises(ValueError, match=r"holds tiles of another settings .*'batch_size': 2.*'batch_size': 3"):
        masks_to_tiles.run(MODEL, d, tmp_path / "out", steps=1, sampler="dpm++", batch_size=3, mask_format="labels",
                           progress=False)
    assert (tmp_path / "out" / "manifest.json").read_bytes() == before
