"""The augmentation every training loop of the project uses on tiles, latents and masks (the first
stage and SD, paper Sec. 2.1; SD-DISC, Sec. 2.3; CarcinoNet and the feature extractors, Sec. 2.4):
tissue has no orientation, so each sample gets one of the eight flips/rotations of the square."""

from __future__ import annotations

import torch


def dihedral(batch: dict, keys=("x",)) -> dict:
    """A random flip/90-degree rotation per sample (tissue has no orientation), applied alike to
    every tensor in ``keys`` (images (B,C,H,W), latents, masks (B,H,W))."""
    out = dict(batch)
    first = out[keys[0]]
    which = torch.randint(0, 8, (len(first),))
    for key in keys:
        v = out[key].clone()
        for t in which.unique().tolist():
            sel = which == t
            x = torch.rot90(out[key][sel], t % 4, dims=(-2, -1))
            v[sel] = x.flip(-1) if t >= 4 else x
        out[key] = v
    return out


def random_crop(batch: dict, keys=("x",), side: int = 0, step: int = 1) -> dict:
    """A random ``side`` x ``side`` window per sample, at one place in every tensor of ``keys``:
    ``side`` and the offsets are on the grid of ``keys[0]`` and scaled to each other key's grid (a
    mask at 4x the latent grid is cut at 4x the latent offset). Offsets are multiples of ``step``
    (SD's mask tokens: a window starts on a token's edge). The offsets, on ``keys[0]``'s grid, are
    stored under ``"crop_offset"`` (B, 2) for models whose position embedding must see where the
    window lies. ``side`` 0 (or the whole tile): no crop and no random numbers drawn.

    Beyond the paper (which trains on whole 256-px tiles): the demo trains its convolutional models
    on crops of its 128-px tiles, to fit 2 CPU cores (docs/cost.md, "Crops")."""
    first = batch[keys[0]]
    H = first.shape[-1]
    if side <= 0 or side >= H:
        return batch
    if side % step or (H - side) % step:
        raise ValueError(f"crop side {side} and tile side {H} must be multiples of the offset step {step}")
    n = len(first)
    yx = torch.randint(0, (H - side) // step + 1, (n, 2)) * step
    out = dict(batch)
    for key in keys:
        v = batch[key]
        r = v.shape[-1] // H
        if r * H != v.shape[-1]:
            raise ValueError(f"random_crop: {key!r} is {v.shape[-1]} px, not a multiple of {keys[0]!r}'s {H}")
        out[key] = torch.stack([v[i, ..., y * r:(y + side) * r, x * r:(x + side) * r]
                                for i, (y, x) in enumerate(yx.tolist())])
    out["crop_offset"] = yx
    return out
