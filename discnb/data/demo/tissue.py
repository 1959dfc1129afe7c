"""How the procedural demo tissue is drawn (:mod:`discnb.data.demo.dataset` writes the dataset from it).

The grades differ by *structure*, not by colour, as in real tissue (the per-grade textures are in
:mod:`discnb.data.demo.textures`, built from the shape primitives of :mod:`discnb.data.demo.geometry`).
One H&E palette (a Beer-Lambert hematoxylin + eosin model, :mod:`discnb.data.demo.stain`) is used for
every label, jittered per slide.

Each label present in a tile is rendered as a full-tile texture; its hematoxylin/eosin amounts
are then fitted so that the texture's mean RGB equals the slide's target colour (so a region's
mean colour does not give its grade away), and the textures are composited by the mask with
soft (about 1 px) edges (:func:`render_tile`). The label masks come from
:func:`random_annotation_mask`.

Labels here are 0..3 (NC, GG3, GG4, GG5). Feature sizes are given in "units" = pixels of a 64-px
tile; a tile of size N uses ``N / 64 * scale`` pixels per unit, so every tile size shows the same
field of view. Any change to what this module (or stain, geometry, textures) draws
must bump :data:`discnb.data.demo.GENERATOR_VERSION` (the cache stamp of written datasets).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from discnb.data.demo.stain import DOMAINS, default_stain, fit_colour, make_stain
from discnb.data.demo.textures import shared_stroma, texture_od

__all__ = ["random_annotation_mask", "render_tile", "make_stain", "default_stain", "DOMAINS"]


# --------------------------------------------------------------------------- masks
def random_annotation_mask(rng: np.random.Generator, size: int, labels, weights) -> np.ndarray:
    """An irregular, smooth, annotator-like label map.

    ``labels`` (values 0..3) cover ``weights`` fractions of the tile (normalised; exact up to a
    few percent). Regions are thresholded smooth noise drawn on a fixed 16x16 grid, so the same
    ``rng`` state gives the same shapes at every ``size``.
    """
    labels = [int(x) for x in labels]
    w = np.asarray(weights, float)
    if len(labels) != len(w) or len(labels) == 0:
        raise ValueError("labels and weights must be non-empty and of the same length")
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be >= 0 with a positive sum")
    if any(lab not in (0, 1, 2, 3) for lab in labels):
        raise ValueError(f"labels must be in 0..3, got {labels}")
    w = w / w.sum()
    out = np.full((size, size), labels[int(np.argmax(w))], np.uint8)
    keep = w > 0
    labels = [lab for lab, k in zip(labels, keep) if k]
    w = w[keep]
    if len(labels) == 1:
        out[:] = labels[0]
        return out
    order = rng.permutation(len(labels))
    free = np.ones((size, size), bool)
    remaining = 1.0
    coarse = 16
    for j in order[:-1]:
        z = rng.standard_normal((coarse, coarse))
        z = ndi.gaussian_filter(z, rng.uniform(1.8, 3.0), mode="wrap")
        z = ndi.zoom(z, size / coarse, order=3, mode="grid-wrap", grid_mode=True)[:size, :size]
        frac = min(1.0, w[j] / remaining)
        vals = z[free]
        if vals.size == 0:
            break
        thr = np.quantile(vals, 1.0 - frac)
        sel = free & (z >= thr)
        out[sel] = labels[j]
        free &= ~sel
        remaining -= w[j]
    out[free] = labels[order[-1]]
    # smooth the outlines a little (a hand-drawn contour has no one-pixel jags)
    sig = max(0.6, size / 64.0)
    soft = np.stack([ndi.gaussian_filter((out == lab).astype(np.float32), sig) for lab in labels])
    out = np.asarray(labels, np.uint8)[soft.argmax(0)]
    return out


# --------------------------------------------------------------------------- tile renderer
def render_tile(mask: np.ndarray, rng, stain: dict | None = None, scale: float = 1.0, *,
                cribriform: bool | None = None, return_info: bool = False):
    """Render an H&E-like tile for a label mask (values 0..3) -> (H, W, 3) uint8.

    ``stain``: a dict from ``make_stain``/``default_stain`` (default: in-domain mean stain).
    ``scale``: feature-size multiplier (slide scale jitter x domain scale; 1 = reference).
    ``cribriform``: GG4 texture with cribriform nests (None: random, p=0.3).
    ``return_info=True`` also returns a dict with ``cribriform`` and the per-label colour fit.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
        raise ValueError(f"mask must be a square 2-D array, got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 3):
        raise ValueError("mask labels must be in 0..3 (convert on-disk 0/3/4/5 first)")
    rng = np.random.default_rng(rng)
    stain = default_stain("in") if stain is None else stain
    n = mask.shape[0]
    s = n / 64.0 * float(scale)
    target = np.asarray(stain["target"], float) * (1 + rng.normal(0, 0.012, 3))
    if cribriform is None:
        cribriform = bool(rng.random() < 0.3)
    present = [int(v) for v in np.unique(mask)]
    stroma = shared_stroma(rng, n, s)
    hv = np.asarray(stain["h_vec"], np.float32)
    ev = np.asarray(stain["e_vec"], np.float32)
    i0 = np.asarray(stain["i0"], np.float32)
    sig = 0.45 * max(1.0, n / 64.0)  # soft region edges of about 1-2 px
    rgb = np.zeros((n, n, 3), np.float32)
    wsum = np.zeros((n, n), np.float32)
    info = {"cribriform": False, "fit": {}}
    for lab in present:
        focus = None
        if lab == 2 and len(present) > 1:  # the most interior point of the GG4 region
            dist = ndi.distance_transform_edt(mask == 2)
            fy, fx = np.unravel_index(int(np.argmax(dist)), dist.shape)
            focus = (float(fx), float(fy))
        H, E, crib = texture_od(lab, rng, n, s, stroma, cribriform, focus)
        if lab == 2:
            info["cribriform"] = crib
        a, b, gains = fit_colour(H, E, stain, target)
        info["fit"][lab] = (a, b, tuple(float(g) for g in gains))
        T = i0 * np.exp(-(a * H[..., None] * hv + b * E[..., None] * ev)) * gains.astype(np.float32)
        w = (mask == lab).astype(np.float32)
        if len(present) > 1:
            w = ndi.gaussian_filter(w, sig)
        rgb += w[..., None] * T
        wsum += w
    rgb /= np.maximum(wsum, 1e-6)[..., None]
    blur = float(stain.get("blur", 0.0)) * n / 64.0
    if blur > 0:
        rgb = ndi.gaussian_filter(rgb, (blur, blur, 0))
    noise = float(stain.get("noise", 0.0))
    if noise > 0:
        rgb += rng.normal(0, noise, rgb.shape).astype(np.float32)
    out = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    return (out, info) if return_info else out
