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
