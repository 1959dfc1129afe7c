"""A procedural stand-in for SICAPv2: H&E-like prostate tiles with pixel-wise Gleason masks.

``make_demo_sicap(root)`` writes a folder in exactly the on-disk layout of the real SICAPv2
dataset (images/, masks/, wsi_labels.xlsx, partition/Test/, partition/Validation/Val1..4/), so
the project's SICAPv2 loader reads it unchanged::

    root/images/<slide>_Block_Region_<r>_<row>_<col>_xini_<x>_yini_<y>.jpg   RGB, JPEG q=92
    root/masks/<same stem>.png          uint8, 0 / 3 / 4 / 5 (non-cancer / Gleason 3 / 4 / 5)
    root/wsi_labels.xlsx                slide_id, patient_id, Gleason_primary, Gleason_secondary
    root/partition/Test/{Train,Test}.xlsx                image_name, NC, G3, G4, G5, G4C
    root/partition/Test/{Train,Test}Cribfriform.xlsx     image_name, G4C  (G4 rows only; sic)
    root/partition/Validation/Val{1..4}/{Train,Test,TrainCribfriform,TestCribfriform}.xlsx
    root/demo_params.json               the generation parameters (cache stamp)

The grades differ by *structure*, not by colour, as in real tissue. One H&E palette (a
Beer-Lambert hematoxylin + eosin model) is used for every label, jittered per slide:

* 0 non-cancer: wavy fibromuscular stroma with sparse elongated nuclei and a few large benign
  glands (big lumen, papillary infoldings, two-layer rim: basal + luminal nuclei);
* 1 GG3: many small, separate, round glands, each with one clear lumen and a ring of nuclei;
* 2 GG4: fused glands and cribriform nests (epithelial blobs with punched-out small lumens);
* 3 GG5: solid sheets of crowded nuclei or single infiltrating cells/cords; no lumens.

Each label present in a tile is rendered as a full-tile texture; its hematoxylin/eosin amounts
are then fitted so that the texture's mean RGB equals the slide's target colour (so a region's
mean colour does not give its grade away), and the textures are composited by the mask with
soft (about 1 px) edges. ``validity_report`` checks this on the written files: a colour-only
classifier must be near chance, a small CNN on structure must be well above it.

Labels inside this module are 0..3 (NC, GG3, GG4, GG5); on disk masks hold 0/3/4/5.
``GENERATOR_VERSION`` is part of the cache stamp: bump it whenever the rendering changes, so a
cached folder made by older code is not silently reused (it then needs ``overwrite=True``).
``preview_grid(root)`` draws a visual check of a written folder.
Feature sizes are given in "units" = pixels of a 64-px tile; a tile of size N uses
``N / 64 * scale`` pixels per unit, so every tile size shows the same field of view.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
import zipfile
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from discnb.core.io import atomic_dir
from discnb.data.sicap import GRADE_TO_LABEL, MASK_VALUES, tile_label

__all__ = [
    "make_demo_sicap",
    "random_annotation_mask",
    "render_tile",
    "validity_report",
    "make_stain",
    "default_stain",
    "slide_label_frequencies",
    "preview_grid",
    "GENERATOR_VERSION",
]

GENERATOR_VERSION = 2

LABEL_TO_DISK = np.array(MASK_VALUES, np.uint8)
DISK_TO_LABEL = _GRADE_TO_LABEL = GRADE_TO_LABEL  # one mapping for the loader and the generator

# Slide-level (primary, secondary) Gleason patterns in SICAPv2 (155 slides).
_SLIDE_COMBOS = {
    (0, 0): 36, (4, 5): 28, (4, 3): 23, (3, 4): 22, (3, 3): 14,
    (4, 4): 13, (5, 5): 7, (5, 4): 7, (3, 5): 4, (5, 3): 1,
}

DOMAINS = ("in", "ood")
_DOMAIN_SCALE = {"in": 1.0, "ood": 1.25}

# --------------------------------------------------------------------------- stain model
# Optical-density (OD) vectors of the two stains (Ruifrok-like; unit length).
_H_VEC = np.array([0.62, 0.72, 0.32])
_E_VEC = np.array([0.12, 0.90, 0.42])

# Raw OD amounts of the tissue compartments before the per-texture colour fit.
_STROMA_E, _STROMA_H = 0.33, 0.13
_CYTO_E, _CYTO_H = 0.24, 0.11          # tumour / epithelial cytoplasm (amphophilic)
_BENIGN_CYTO_E, _BENIGN_CYTO_H = 0.20, 0.07  # benign luminal cells: paler
_LUMEN_E, _LUMEN_H = 0.025, 0.005
_NUC_H, _NUC_E = 1.0, 0.10


def slide_label_frequencies() -> dict:
    """SICAPv2's slide-level (primary, secondary) Gleason pattern counts (155 slides)."""
    return dict(_SLIDE_COMBOS)


def _unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def default_stain(domain: str = "in") -> dict:
    """The mean stain of a domain (no slide jitter).

    Keys: ``h_vec``/``e_vec`` (OD vectors), ``target`` (mean RGB every texture is fitted to),
    ``i0`` (light through glass), ``blur`` (px, at 64 px; scales with the tile), ``noise``
    (std of additive RGB noise).
    """
    if domain == "in":
        return {"h_vec": _unit(_H_VEC), "e_vec": _unit(_E_VEC),
                "target": np.array([206.0, 172.0, 202.0]), "i0": np.array([246.0, 244.0, 248.0]),
                "blur": 0.0, "noise": 1.5}
    if domain == "ood":
        # Another hospital: more eosin (redder), a bluer/darker hematoxylin, softer optics.
        return {"h_vec": _unit([0.72, 0.68, 0.24]), "e_vec": _unit([0.05, 0.94, 0.33]),
                "target": np.array([214.0, 152.0, 202.0]), "i0": np.array([250.0, 246.0, 246.0]),
                "blur": 0.35, "noise": 3.0}
    raise ValueError(f"domain must be one of {DOMAINS}, not {domain!r}")


def make_stain(rng: np.random.Generator, domain: str = "in") -> dict:
    """A slide's stain: the domain's stain with hue / saturation / intensity jitter."""
    st = default_stain(domain)
    h = st["h_vec"] + rng.normal(0, 0.04, 3)
    e = st["e_vec"] + rng.normal(0, 0.04, 3)
    st["h_vec"], st["e_vec"] = _unit(np.abs(h)), _unit(np.abs(e))
    # intensity / saturation of the target colour: scale its OD
    od = -np.log(st["target"] / st["i0"])
    od = od * rng.uniform(0.85, 1.15) * (1 + rng.normal(0, 0.05, 3))
    st["target"] = st["i0"] * np.exp(-od)
    st["i0"] = np.clip(st["i0"] + rng.normal(0, 2.0, 3), 225, 255)
    return st


# --------------------------------------------------------------------------- noise helpers
def _noise(rng, n, sigma):
    """(n, n) float32 smooth Gaussian noise, unit std, correlation length ``sigma`` px."""
    if sigma <= 3.0:
        z = rng.standard_normal((n, n), dtype=np.float32)
        z = ndi.gaussian_filter(z, sigma, mode="wrap") if sigma > 0 else z
    else:
        f = max(1, int(sigma // 2))
        m = -(-n // f) + 1
        z = rng.standard_normal((m, m), dtype=np.float32)
        z = ndi.gaussian_filter(z, sigma / f, mode="wrap")
        z = ndi.zoom(z, f, order=1, mode="nearest")[:n, :n]
    z = z - z.mean()
    return z / (z.std() + 1e-6)


def _aa(depth, edge=0.7):
    """Soft (anti-aliased) inside-indicator from a signed depth in px."""
    return np.clip(depth / edge + 0.5, 0.0, 1.0)


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


# --------------------------------------------------------------------------- primitives
def _splat_ellipses(img, cx, cy, a, b, ang, val):
    """Max-composite soft-edged filled ellipses into ``img`` (in place). All inputs in px."""
    if len(cx) == 0:
        return img
    h, w = img.shape
    cx = np.asarray(cx, np.float32)
    cy = np.asarray(cy, np.float32)
    a = np.maximum(np.asarray(a, np.float32), 0.3)
    b = np.maximum(np.asarray(b, np.float32), 0.3)
    R = int(math.ceil(float(max(a.max(), b.max())) + 1.5))
    off = np.arange(-R, R + 1, dtype=np.int32)
    ix = np.round(cx).astype(np.int32)
    iy = np.round(cy).astype(np.int32)
    X = ix[:, None, None] + off[None, None, :]
    Y = iy[:, None, None] + off[None, :, None]
    dx = X.astype(np.float32) - cx[:, None, None]
    dy = Y.astype(np.float32) - cy[:, None, None]
    c = np.cos(ang).astype(np.float32)[:, None, None]
    s = np.sin(ang).astype(np.float32)[:, None, None]
    u = (dx * c + dy * s) / a[:, None, None]
    v = (-dx * s + dy * c) / b[:, None, None]
    r = np.sqrt(u * u + v * v)
    depth = (1.0 - r) * b[:, None, None]  # ~ px inside the boundary (minor axis)
    vv = np.clip(depth / 0.8 + 0.5, 0, 1) * np.asarray(val, np.float32)[:, None, None]
    X, Y = np.broadcast_arrays(X, Y)
    ok = (X >= 0) & (X < w) & (Y >= 0) & (Y < h) & (vv > 0.01)
    np.maximum.at(img.reshape(-1), (Y[ok] * w + X[ok]).astype(np.intp), vv[ok].astype(img.dtype))
    return img


def _radius(theta, r, amp, kk, ph):
    """r * (1 + sum_j amp_j cos(k_j theta + ph_j)), broadcasting glands along axis 0."""
    extra = (theta.ndim - 1)
    sh = (slice(None),) + (None,) * extra
    m = np.ones_like(theta)
    for j in range(amp.shape[1]):
        m += amp[:, j][sh] * np.cos(kk[:, j][sh] * theta + ph[:, j][sh])
    return r[sh] * m


_ANGLE_BINS = 128


class _Glands:
    """A set of glands: outer outline and (optional) lumen outline as radial harmonics."""

    def __init__(self, cx, cy, r, amp, kk, ph, lum_frac=None, lamp=None, lk=None, lph=None,
                 rim=None, pap_amp=None, pap_k=None, pap_ph=None):
        g = len(cx)
        self.cx, self.cy, self.r = (np.asarray(x, np.float32) for x in (cx, cy, r))
        self.amp, self.kk, self.ph = (np.asarray(x, np.float32).reshape(g, -1) for x in (amp, kk, ph))
        z = np.zeros((g, 1), np.float32)
        self.lum_frac = np.zeros(g, np.float32) if lum_frac is None else np.asarray(lum_frac, np.float32)
        self.lamp = z if lamp is None else np.asarray(lamp, np.float32).reshape(g, -1)
        self.lk = z if lk is None else np.asarray(lk, np.float32).reshape(g, -1)
        self.lph = z if lph is None else np.asarray(lph, np.float32).reshape(g, -1)
        self.rim = np.zeros(g, np.float32) if rim is None else np.asarray(rim, np.float32)
        self.pap_amp = np.zeros(g, np.float32) if pap_amp is None else np.asarray(pap_amp, np.float32)
        self.pap_k = np.ones(g, np.float32) if pap_k is None else np.asarray(pap_k, np.float32)
        self.pap_ph = np.zeros(g, np.float32) if pap_ph is None else np.asarray(pap_ph, np.float32)

    def __len__(self):
        return len(self.cx)

    def r_out(self, theta):
        return _radius(theta, self.r, self.amp, self.kk, self.ph)

    def r_lum(self, theta, rout=None):
        if rout is None:
            rout = self.r_out(theta)
        extra = theta.ndim - 1
        sh = (slice(None),) + (None,) * extra
        rl = _radius(theta, self.r * self.lum_frac, self.lamp, self.lk, self.lph)
        pap = self.pap_amp[sh] * self.r[sh] * np.maximum(0, np.cos(self.pap_k[sh] * theta + self.pap_ph[sh])) ** 3
        rl = np.minimum(rl - pap, rout - self.rim[sh])
        return np.where(self.lum_frac[sh] > 0, rl, -1.0)

    def fields(self, n):
        """Depth (px) inside the outer outline and inside the lumen, max over glands."""
        t_out = np.full(n * n, -1e3, np.float32)
        t_lum = np.full(n * n, -1e3, np.float32)
        if len(self) == 0:
            return t_out.reshape(n, n), t_lum.reshape(n, n)
        rmax = float((self.r * (1 + np.abs(self.amp).sum(1))).max())
        R = int(math.ceil(rmax)) + 2
        off = np.arange(-R, R + 1, dtype=np.int32)
        ix = np.round(self.cx).astype(np.int32)
        iy = np.round(self.cy).astype(np.int32)
        # skip glands whose window misses the tile
        vis = (ix + R >= 0) & (ix - R < n) & (iy + R >= 0) & (iy - R < n)
        if not vis.any():
            return t_out.reshape(n, n), t_lum.reshape(n, n)
        sub = _Glands.__new__(_Glands)
        for k, v in self.__dict__.items():
            sub.__dict__[k] = v[vis]
        ix, iy = ix[vis], iy[vis]
        X = ix[:, None, None] + off[None, None, :]
        Y = iy[:, None, None] + off[None, :, None]
        dx = X.astype(np.float32) - sub.cx[:, None, None]
        dy = Y.astype(np.float32) - sub.cy[:, None, None]
        d = np.sqrt(dx * dx + dy * dy)
        reach = (sub.r * (1 + np.abs(sub.amp).sum(1)) + 1.5)[:, None, None]
        X, Y = np.broadcast_arrays(X, Y)
        ok = (X >= 0) & (X < n) & (Y >= 0) & (Y < n) & (d <= reach)
        gi = np.broadcast_to(np.arange(len(sub), dtype=np.int32)[:, None, None], ok.shape)[ok]
        d = d[ok]
        th = np.arctan2(np.broadcast_to(dy, ok.shape)[ok], np.broadcast_to(dx, ok.shape)[ok])
        # outline radii from a per-gland angular table (linear interpolation)
        nb = _ANGLE_BINS
        tb = np.linspace(-np.pi, np.pi, nb + 1, dtype=np.float32)[None, :].repeat(len(sub), 0)
        ro_tab = sub.r_out(tb)
        rl_tab = sub.r_lum(tb, ro_tab)
        u = (th + np.float32(np.pi)) * np.float32(nb / (2 * np.pi))
        j = np.minimum(u.astype(np.int32), nb - 1)
        f = u - j
        flat = gi * (nb + 1) + j
        ro_f, rl_f = ro_tab.ravel(), rl_tab.ravel()
        to = ro_f[flat] * (1 - f) + ro_f[flat + 1] * f - d
        tl = rl_f[flat] * (1 - f) + rl_f[flat + 1] * f - d
        idx = (Y[ok] * n + X[ok]).astype(np.intp)
        np.maximum.at(t_out, idx, to.astype(np.float32))
        np.maximum.at(t_lum, idx, tl.astype(np.float32))
        return t_out.reshape(n, n), t_lum.reshape(n, n)

    def ring_points(self, rng, spacing, depth, which="out", jitter=0.25):
        """Points along each outline, ``depth`` px inside it (``which``='lum': outside the lumen)."""
        g = len(self)
        if g == 0:
            return np.zeros((0,)), np.zeros((0,)), np.zeros((0,))
        circ = 2 * np.pi * np.maximum(self.r * (self.lum_frac if which == "lum" else 1.0), 0.5)
        cnt = np.maximum(3, np.round(circ / spacing)).astype(int)
        m = int(cnt.max())
        base = np.arange(m)[None, :] / cnt[:, None]
        th = 2 * np.pi * (base + rng.uniform(0, 1, (g, 1)) + rng.normal(0, jitter / cnt[:, None], (g, m)))
        th = th.astype(np.float32)
        valid = np.arange(m)[None, :] < cnt[:, None]
        ro = self.r_out(th)
        if which == "out":
            rad = ro - depth
        else:
            rl = self.r_lum(th, ro)
            valid &= rl > 0.3
            rad = rl + depth
        px = self.cx[:, None] + rad * np.cos(th)
        py = self.cy[:, None] + rad * np.sin(th)
        return px[valid], py[valid], (th + np.pi / 2)[valid]


def _hex_points(rng, n, spacing, jitter, margin):
    """Jittered hexagonal lattice with random rotation/offset covering [-margin, n+margin]^2."""
    span = n + 2 * margin
    rows = int(span / (spacing * 0.866)) + 3
    cols = int(span / spacing) + 3
    j, i = np.meshgrid(np.arange(cols), np.arange(rows))
    x = (j + 0.5 * (i % 2)) * spacing
    y = i * spacing * 0.866
    x = x - x.mean()
    y = y - y.mean()
    t = rng.uniform(0, np.pi)
    xr = x * np.cos(t) - y * np.sin(t)
    yr = x * np.sin(t) + y * np.cos(t)
    xr = xr.ravel() + n / 2 + rng.uniform(-spacing, spacing)
    yr = yr.ravel() + n / 2 + rng.uniform(-spacing, spacing)
    xr = xr + rng.normal(0, jitter * spacing, xr.shape)
    yr = yr + rng.normal(0, jitter * spacing, yr.shape)
    ok = (xr > -margin) & (xr < n + margin) & (yr > -margin) & (yr < n + margin)
    return xr[ok].astype(np.float32), yr[ok].astype(np.float32)


def _nn_dist(x, y):
    if len(x) < 2:
        return np.full(len(x), 1e6, np.float32)
    d = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    np.fill_diagonal(d, np.inf)
    return d.min(1)


def _harmonics(rng, g, ks, amp_lo, amp_hi):
    ks = np.asarray(ks, np.float32)
    amp = rng.uniform(amp_lo, amp_hi, (g, len(ks))).astype(np.float32)
    kk = np.broadcast_to(ks, (g, len(ks))).copy()
    ph = rng.uniform(0, 2 * np.pi, (g, len(ks))).astype(np.float32)
    return amp, kk, ph


def _random_in(rng, mask, count):
    """Up to ``count`` uniform random points (float px) where ``mask`` (bool) holds."""
    n = mask.shape[0]
    if count <= 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    x = rng.uniform(0, n, count).astype(np.float32)
    y = rng.uniform(0, n, count).astype(np.float32)
    ok = mask[np.minimum(y.astype(int), n - 1), np.minimum(x.astype(int), n - 1)]
    return x[ok], y[ok]


# --------------------------------------------------------------------------- tissue textures
class _Tex:
    """One label's structures: epithelium/lumen depth fields and a nuclei map."""

    def __init__(self, n):
        self.epi = np.zeros((n, n), np.float32)
        self.lum = np.zeros((n, n), np.float32)
        self.nuc = np.zeros((n, n), np.float32)
        self.cyto = (_CYTO_E, _CYTO_H)
        self.cribriform = False
        self.stromal_nuc = None

    def set_glands(self, glands, n):
        """Epithelium and lumen from the glands' depth fields; returns the outer depth field."""
        t_out, t_lum = glands.fields(n)
        self.epi = _aa(t_out)
        self.lum = _aa(t_lum)
        return t_out

    def nuclei_ring(self, rng, glands, at, spread, side, a, b, lo, hi, keep=None):
        """Nuclei (ellipses of half-axes a, b, intensity U(lo, hi)) along the glands' ``side`` ring;
        ``keep(x, y)`` selects among the ring's points."""
        x, y, ang = glands.ring_points(rng, at, spread, side)
        if keep is not None:
            sel = keep(x, y)
            x, y, ang = x[sel], y[sel], ang[sel]
        _splat_ellipses(self.nuc, x, y, np.full(len(x), a), np.full(len(x), b), ang, rng.uniform(lo, hi, len(x)))


def _stroma(rng, n, s):
    """Shared fibromuscular stroma: (E, H, nuclei map)."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    phi = rng.uniform(0, np.pi)
    warp = _noise(rng, n, 9 * s) * (3.0 * s)
    p = -xx * np.sin(phi) + yy * np.cos(phi) + warp
    lam = rng.uniform(3.2, 4.2) * s
    fib = 0.5 + 0.5 * np.sin(2 * np.pi * p / lam + 1.2 * _noise(rng, n, 1.2 * s))
    low = _noise(rng, n, 7 * s)
    E = _STROMA_E * (0.72 + 0.34 * fib) * (1 + 0.12 * low)
    # occasional thin clefts (retraction / oedema) between fibre bundles
    cleft = np.clip((_noise(rng, n, 2.0 * s) - 1.6) * 1.5, 0, 1) * np.clip(1.2 - fib, 0, 1)
    E = E * (1 - 0.6 * cleft)
    H = np.full((n, n), _STROMA_H, np.float32) * (1 + 0.2 * low)
    # sparse elongated nuclei aligned with the local fibre direction
    cnt = int(rng.poisson((n / s) ** 2 / 34.0))
    x = rng.uniform(-2, n + 2, cnt).astype(np.float32)
    y = rng.uniform(-2, n + 2, cnt).astype(np.float32)
    gy, gx = np.gradient(warp)
    ixy = (np.clip(y.astype(int), 0, n - 1), np.clip(x.astype(int), 0, n - 1))
    # fibres are level sets of p; tangent is perpendicular to grad p
    px_ = -np.sin(phi) + gx[ixy]
    py_ = np.cos(phi) + gy[ixy]
    ang = np.arctan2(-px_, py_)
    nuc = np.zeros((n, n), np.float32)
    _splat_ellipses(nuc, x, y, rng.uniform(1.3, 1.9, cnt) * s, rng.uniform(0.38, 0.5, cnt) * s,
                    ang, rng.uniform(0.65, 0.95, cnt))
    ang_field = np.arctan2(-(-np.sin(phi) + gx), np.cos(phi) + gy).astype(np.float32)
    return E.astype(np.float32), H.astype(np.float32), nuc, ang_field


def _tex_nc(rng, n, s, ang_field):
    t = _Tex(n)
    t.cyto = (_BENIGN_CYTO_E, _BENIGN_CYTO_H)
    # normal fibromuscular stroma: extra smooth-muscle nuclei along the fibres
    cnt = int(rng.poisson((n / s) ** 2 / 40.0))
    x = rng.uniform(-2, n + 2, cnt).astype(np.float32)
    y = rng.uniform(-2, n + 2, cnt).astype(np.float32)
    ang = ang_field[np.clip(y.astype(int), 0, n - 1), np.clip(x.astype(int), 0, n - 1)]
    stromal = np.zeros((n, n), np.float32)
    _splat_ellipses(stromal, x, y, rng.uniform(1.3, 1.9, cnt) * s, rng.uniform(0.38, 0.5, cnt) * s,
                    ang, rng.uniform(0.65, 0.95, cnt))
    t.stromal_nuc = stromal
    if rng.random() < 0.2:  # stroma only
        return t
    g = 1 if rng.random() < 0.6 else 2
    r = rng.uniform(11, 18, g) * s
    cx = rng.uniform(0.05 * n, 0.95 * n, g)
    cy = rng.uniform(0.05 * n, 0.95 * n, g)
    if g == 2:  # keep the two apart
        d = math.hypot(cx[1] - cx[0], cy[1] - cy[0])
        if d < (r[0] + r[1]) * 0.95:
            ang = rng.uniform(0, 2 * np.pi)
            cx[1] = cx[0] + np.cos(ang) * (r[0] + r[1]) * 1.0
            cy[1] = cy[0] + np.sin(ang) * (r[0] + r[1]) * 1.0
    amp, kk, ph = _harmonics(rng, g, [2, 3, 5], 0.03, 0.10)
    rim = rng.uniform(3.3, 4.2, g) * s
    glands = _Glands(cx, cy, r, amp, kk, ph,
                     lum_frac=np.full(g, 0.98), lamp=np.zeros((g, 1)), lk=np.ones((g, 1)),
                     lph=np.zeros((g, 1)), rim=rim,
                     pap_amp=rng.uniform(0.2, 0.35, g), pap_k=rng.integers(5, 10, g).astype(float),
                     pap_ph=rng.uniform(0, 2 * np.pi, g))
    t_out = t.set_glands(glands, n)
    # outer (basal) layer: flat dark nuclei along the outline
    t.nuclei_ring(rng, glands, 1.7 * s, 0.45 * s, "out", 0.85 * s, 0.33 * s, 0.75, 1.0)
    # inner (luminal, columnar) layer: rounder nuclei a little away from the lumen
    t.nuclei_ring(rng, glands, 1.25 * s, 1.9 * s, "lum", 0.5 * s, 0.62 * s, 0.6, 0.85,
                  keep=lambda x, y: t_out[np.clip(y.astype(int), 0, n - 1), np.clip(x.astype(int), 0, n - 1)] > 0.6 * s)
    return t


def _tex_gg3(rng, n, s):
    t = _Tex(n)
    spacing = rng.uniform(10.5, 12.5) * s
    x, y = _hex_points(rng, n, spacing, 0.14, 6 * s)
    keep = rng.random(len(x)) > 0.15
    x, y = x[keep], y[keep]
    g = len(x)
    r = rng.uniform(3.2, 4.8, g) * s
    r = np.minimum(r, 0.5 * _nn_dist(x, y) - 1.2 * s)
    ok = r > 2.0 * s
    x, y, r = x[ok], y[ok], r[ok]
    g = len(x)
    amp, kk, ph = _harmonics(rng, g, [2, 3], 0.02, 0.09)
    lamp, lk, lph = _harmonics(rng, g, [2, 3], 0.02, 0.10)
    glands = _Glands(x, y, r, amp, kk, ph, lum_frac=rng.uniform(0.46, 0.58, g), lamp=lamp, lk=lk,
                     lph=lph, rim=np.full(g, 1.4 * s))
    t.set_glands(glands, n)
    t.nuclei_ring(rng, glands, 1.45 * s, 0.75 * s, "out", 0.7 * s, 0.55 * s, 0.7, 1.0)
    return t


def _tex_gg4(rng, n, s, cribriform, focus=None):
    t = _Tex(n)
    t.cyto = (_CYTO_E * 0.9, _CYTO_H * 0.45)
    t.cribriform = bool(cribriform)
    glands = []
    lumens = []
    # fused glands: clusters of overlapping small glands with small irregular lumens
    cx, cy = _hex_points(rng, n, rng.uniform(13, 16) * s, 0.12, 8 * s)
    crib_c = np.zeros(len(cx), bool)
    if cribriform:
        # turn 1-2 cluster sites (near ``focus``: inside the GG4 region) into cribriform nests
        fx0, fy0 = (n / 2, n / 2) if focus is None else focus
        d = np.hypot(cx - fx0, cy - fy0)
        k = 1 if rng.random() < 0.5 else 2
        crib_c[np.argsort(d + rng.uniform(0, 10 * s, len(d)))[:k]] = True
    fx, fy, fr = [], [], []
    for c in np.flatnonzero(~crib_c):
        m = int(rng.integers(3, 6))
        x, y = cx[c], cy[c]
        for _ in range(m):
            rr = rng.uniform(3.0, 4.3) * s
            fx.append(x); fy.append(y); fr.append(rr)
            a = rng.uniform(0, 2 * np.pi)
            step = rr * rng.uniform(1.1, 1.45)
            x, y = x + step * np.cos(a), y + step * np.sin(a)
    fx, fy, fr = (np.asarray(v, np.float32) for v in (fx, fy, fr))
    g = len(fx)
    amp, kk, ph = _harmonics(rng, g, [2, 3], 0.04, 0.12)
    lamp, lk, lph = _harmonics(rng, g, [2, 3], 0.03, 0.12)
    fused = _Glands(fx, fy, fr, amp, kk, ph, lum_frac=rng.uniform(0.30, 0.42, g) * (rng.random(g) > 0.2),
                    lamp=lamp, lk=lk, lph=lph, rim=np.full(g, 1.6 * s))
    glands.append(fused)
    # cribriform nests: big epithelial blobs + punched-out round lumens
    nx, ny = cx[crib_c], cy[crib_c]
    gn = len(nx)
    if gn:
        nr = rng.uniform(10.0, 15.0, gn) * s
        amp, kk, ph = _harmonics(rng, gn, [2, 3, 4], 0.02, 0.08)
        nests = _Glands(nx, ny, nr, amp, kk, ph)
        glands.append(nests)
        lx, ly = _hex_points(rng, n, rng.uniform(4.6, 5.4) * s, 0.10, 16 * s)
        th = np.arctan2(ly[None, :] - ny[:, None], lx[None, :] - nx[:, None])
        dd = np.hypot(ly[None, :] - ny[:, None], lx[None, :] - nx[:, None])
        inside = (dd < nests.r_out(th) - 2.6 * s).any(0) & (rng.random(len(lx)) > 0.1)
        lx, ly = lx[inside], ly[inside]
        gl = len(lx)
        lr = rng.uniform(1.2, 1.8, gl) * s
        lamp, lk, lph = _harmonics(rng, gl, [2], 0.0, 0.08)
        lumens.append(_Glands(lx, ly, lr, lamp, lk, lph))
    t_out = np.full((n, n), -1e3, np.float32)
    t_lum = np.full((n, n), -1e3, np.float32)
    for gs in glands:
        a, b = gs.fields(n)
        t_out = np.maximum(t_out, a)
        t_lum = np.maximum(t_lum, b)
    for gs in lumens:
        a, _ = gs.fields(n)
        t_lum = np.maximum(t_lum, a)
    t.epi = _aa(t_out)
    t.lum = _aa(t_lum) * (t_out > 0)
    # nuclei: rings at the outlines, rings around lumens, crowded fill in the epithelium
    xs, ys, angs, sz = [], [], [], []
    for gs in glands:
        x, y, a = gs.ring_points(rng, 1.9 * s, 0.7 * s, "out")
        xs.append(x); ys.append(y); angs.append(a); sz.append(np.full(len(x), 0.66))
    x, y, a = fused.ring_points(rng, 1.6 * s, 0.6 * s, "lum")
    xs.append(x); ys.append(y); angs.append(a); sz.append(np.full(len(x), 0.62))
    for gs in lumens:
        x, y, a = gs.ring_points(rng, 1.3 * s, 0.75 * s, "out")  # just outside the small lumen
        th = a - np.pi / 2
        x = x + np.cos(th) * 1.5 * s
        y = y + np.sin(th) * 1.5 * s
        xs.append(x); ys.append(y); angs.append(a); sz.append(np.full(len(x), 0.62))
    inner = (t_out > 1.2 * s) & (t_lum < -0.8 * s)
    x, y = _random_in(rng, inner, int((n / s) ** 2 / 16.0))
    xs.append(x); ys.append(y); angs.append(rng.uniform(0, np.pi, len(x))); sz.append(np.full(len(x), 0.6))
    x, y, a, z = (np.concatenate(v) for v in (xs, ys, angs, sz))
    iy, ix = np.clip(y.astype(int), 0, n - 1), np.clip(x.astype(int), 0, n - 1)
    ok = (t_lum[iy, ix] < -0.3 * s) & (t_out[iy, ix] > 0)
    x, y, a, z = x[ok], y[ok], a[ok], z[ok]
    _splat_ellipses(t.nuc, x, y, z * s * rng.uniform(1.0, 1.2, len(x)), z * s * rng.uniform(0.8, 1.0, len(x)),
                    a, rng.uniform(0.65, 0.95, len(x)))
    return t


def _tex_gg5(rng, n, s):
    t = _Tex(n)
    t.cyto = (_CYTO_E * 0.8, _CYTO_H * 0.7)
    mode = rng.random()
    # solid sheet (possibly with stroma gaps) or cords/single cells, or both
    sheet_frac = 1.0 if mode < 0.35 else (rng.uniform(0.45, 0.8) if mode < 0.7 else 0.0)
    sheet = np.zeros((n, n), np.float32)
    if sheet_frac > 0:
        z = _noise(rng, n, 7 * s)
        thr = np.quantile(z, 1 - sheet_frac) if sheet_frac < 1 else -1e9
        sheet = _aa((z - thr) * 4 * s, 0.8)
        sp = rng.uniform(2.5, 2.8) * s
        x, y = _hex_points(rng, n, sp, 0.22, 2 * s)
        iy, ix = np.clip(y.astype(int), 0, n - 1), np.clip(x.astype(int), 0, n - 1)
        ok = (sheet[iy, ix] > 0.5) & (rng.random(len(x)) > 0.12)
        x, y = x[ok], y[ok]
        rr = rng.uniform(0.6, 0.78, len(x)) * s
        _splat_ellipses(t.nuc, x, y, rr * rng.uniform(1.0, 1.3, len(x)), rr, rng.uniform(0, np.pi, len(x)),
                        rng.uniform(0.75, 1.0, len(x)))
    t.epi = sheet
    if sheet_frac < 1:
        # cords / single cells infiltrating the stroma
        halo = np.zeros((n, n), np.float32)
        nc = int(rng.poisson((n / s) ** 2 / 38.0))
        L = rng.integers(1, 6, nc)
        x0 = rng.uniform(-3 * s, n + 3 * s, nc)
        y0 = rng.uniform(-3 * s, n + 3 * s, nc)
        base = rng.uniform(0, np.pi)
        a0 = base + rng.normal(0, 0.5, nc)
        m = int(L.max()) if nc else 0
        k = np.arange(m)[None, :]
        step = 2.4 * s
        x = x0[:, None] + k * step * np.cos(a0)[:, None] + rng.normal(0, 0.3 * s, (nc, m))
        y = y0[:, None] + k * step * np.sin(a0)[:, None] + rng.normal(0, 0.3 * s, (nc, m))
        val = k < L[:, None]
        x, y = x[val].astype(np.float32), y[val].astype(np.float32)
        iy, ix = np.clip(y.astype(int), 0, n - 1), np.clip(x.astype(int), 0, n - 1)
        ok = sheet[iy, ix] < 0.5
        x, y = x[ok], y[ok]
        cnt = len(x)
        _splat_ellipses(halo, x, y, np.full(cnt, 1.35 * s), np.full(cnt, 1.2 * s), np.zeros(cnt), np.ones(cnt))
        rr = rng.uniform(0.62, 0.85, cnt) * s
        _splat_ellipses(t.nuc, x, y, rr * 1.15, rr, rng.uniform(0, np.pi, cnt), rng.uniform(0.65, 0.95, cnt))
        t.epi = np.maximum(sheet, halo)
    return t


_TEXTURES = {1: _tex_gg3, 3: _tex_gg5}


def _texture_od(label, rng, n, s, stroma, cribriform, focus=None):
    """Hematoxylin and eosin OD maps of one label's texture over the full tile."""
    sE, sH, sN, ang_field = stroma
    if label == 2:
        t = _tex_gg4(rng, n, s, cribriform, focus)
    elif label == 0:
        t = _tex_nc(rng, n, s, ang_field)
    else:
        t = _TEXTURES[label](rng, n, s)
    if t.stromal_nuc is not None:
        sN = np.maximum(sN, t.stromal_nuc)
    cE, cH = t.cyto
    epi, lum = t.epi, t.lum
    E = sE * (1 - epi) + cE * epi
    H = sH * (1 - epi) + cH * epi
    E = E * (1 - lum) + _LUMEN_E * lum
    H = H * (1 - lum) + _LUMEN_H * lum
    nuc = np.maximum(sN * (1 - epi) * (1 - lum), t.nuc)
    H = H * (1 - nuc) + _NUC_H * nuc
    E = E * (1 - nuc) + _NUC_E * nuc
    return H, E, t.cribriform


def _fit_colour(H, E, stain, target, iters=6):
    """Scale H and E amounts so the texture's mean RGB best matches ``target``.

    Returns (a, b, gains): OD multipliers and a residual per-channel transmission gain
    (close to 1) that makes the mean exact.
    """
    hv = np.asarray(stain["h_vec"], np.float32)
    ev = np.asarray(stain["e_vec"], np.float32)
    i0 = np.asarray(stain["i0"], np.float32)
    k = max(1, H.shape[0] // 64)
    h = H[::k, ::k].reshape(-1, 1)
    e = E[::k, ::k].reshape(-1, 1)
    lt = np.log(np.asarray(target, np.float32))
    la = lb = 0.0
    for _ in range(iters):
        a, b = math.exp(la), math.exp(lb)
        ah, be = a * h * hv, b * e * ev
        T = i0 * np.exp(-(ah + be))
        m = T.mean(0)
        res = np.log(m) - lt
        Ja = -(ah * T).mean(0) / m
        Jb = -(be * T).mean(0) / m
        J = np.stack([Ja, Jb], 1)
        step = np.linalg.lstsq(J, -res, rcond=None)[0]
        step = np.clip(step, -0.7, 0.7)
        la = float(np.clip(la + step[0], -1.5, 1.5))
        lb = float(np.clip(lb + step[1], -1.5, 1.5))
    a, b = math.exp(la), math.exp(lb)
    T = i0 * np.exp(-(a * h * hv + b * e * ev))
    gains = np.clip(np.asarray(target) / T.mean(0), 0.8, 1.25)
    return a, b, gains


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
    stroma = _stroma(rng, n, s)
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
        H, E, crib = _texture_od(lab, rng, n, s, stroma, cribriform, focus)
        if lab == 2:
            info["cribriform"] = crib
        a, b, gains = _fit_colour(H, E, stain, target)
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


# --------------------------------------------------------------------------- dataset plan
def _tile_plan(rng, p, q):
    """Labels and area fractions of one tile of a slide with labels (p, q) in 0..3."""
    if p == 0:
        return [0], [1.0]
    cancer = [p] if q == p else [p, q]
    if rng.random() < 0.3:
        lab = p if (len(cancer) == 1 or rng.random() < 0.7) else q
        return [lab], [1.0]
    main = p if (len(cancer) == 1 or rng.random() < 0.72) else q
    other = [c for c in cancer if c != main]
    use_other = bool(other) and rng.random() < 0.65
    use_nc = (not use_other) or rng.random() < 0.6
    w_main = rng.uniform(0.55, 0.85)
    rest = 1.0 - w_main
    labels, weights = [main], [w_main]
    if use_other and use_nc:
        wo = rest * rng.uniform(0.3, 0.7)
        labels += [other[0], 0]
        weights += [wo, rest - wo]
    elif use_other:
        labels.append(other[0]); weights.append(rest)
    else:
        labels.append(0); weights.append(rest)
    return labels, weights


def _draw_combo(rng, pred=None):
    combos = list(_SLIDE_COMBOS)
    w = np.array([_SLIDE_COMBOS[c] for c in combos], float)
    if pred is not None:
        w = w * np.array([bool(pred(c)) for c in combos])
    i = rng.choice(len(combos), p=w / w.sum())
    return combos[i]


def _deficit(cs, reqs):
    return sum(max(0, count - sum(bool(pred(c)) for c in cs)) for pred, count in reqs)


def _enforce(rng, combos, idx, reqs, iters=400):
    """Redraw slide labels in ``idx`` (a local search) until the (predicate, count) requirements
    hold, or as nearly as the number of slides allows."""
    if not idx:
        return
    cur = _deficit([combos[i] for i in idx], reqs)
    for _ in range(iters):
        if cur == 0:
            return
        unmet = [pred for pred, count in reqs if sum(bool(pred(combos[i])) for i in idx) < count]
        pred = unmet[int(rng.integers(len(unmet)))]
        i = idx[int(rng.integers(len(idx)))]
        old = combos[i]
        combos[i] = _draw_combo(rng, pred)
        new = _deficit([combos[j] for j in idx], reqs)
        if new <= cur:
            cur = new
        else:
            combos[i] = old


def _slide_ids(rng, n, domain):
    years = (16, 17, 18) if domain == "in" else (19, 20)
    out, seen = [], set()
    while len(out) < n:
        y = int(rng.choice(years))
        num = int(rng.integers(1, 40000))
        sid = f"{y}B{num:07d}"
        if y == 18 and rng.random() < 0.6:
            sid += "ABCDEFGHIJ"[int(rng.integers(10))]
        if sid not in seen:
            seen.add(sid)
            out.append(sid)
    return out


def _plan_dataset(n_patients, seed, domain, test_fraction):
    rng = np.random.default_rng([int(seed), DOMAINS.index(domain), 7001])
    pids, seen = [], set()
    while len(pids) < n_patients:
        p = str(int(rng.integers(10000, 1000000)))
        if p not in seen:
            seen.add(p); pids.append(p)
    n_slides = 1 + (rng.random(n_patients) < 0.4)
    slide_patient = np.repeat(np.arange(n_patients), n_slides)
    S = len(slide_patient)
    sids = _slide_ids(rng, S, domain)
    combos = []
    for j in range(S):
        if j > 0 and slide_patient[j] == slide_patient[j - 1] and rng.random() < 0.5:
            combos.append(combos[-1])
        else:
            combos.append(_draw_combo(rng))
    # official split: patient-disjoint, ~test_fraction of patients in Test, >= 4 in Train (folds)
    n_test = int(round(test_fraction * n_patients))
    n_test = min(max(n_test, 1), n_patients - 4)
    perm = rng.permutation(n_patients)
    test_p = set(perm[:n_test].tolist())
    split = ["test" if slide_patient[j] in test_p else "train" for j in range(S)]
    k5 = 2 if n_patients >= 12 else 1
    reqs = [(lambda c: c == (0, 0), 1), (lambda c: 5 in c, k5), (lambda c: 4 in c, 1), (lambda c: 3 in c, 1)]
    for sp in ("test", "train"):
        _enforce(rng, combos, [j for j in range(S) if split[j] == sp], reqs)
    # four patient-wise CV folds over the official Train patients, balanced by slide count
    train_p = [int(p) for p in rng.permutation(n_patients) if int(p) not in test_p]
    load = np.zeros(4)
    fold = {}
    cnt = np.bincount(slide_patient, minlength=n_patients)
    for p in sorted(train_p, key=lambda p: -cnt[p]):
        k = int(np.argmin(load + rng.uniform(0, 0.01, 4)))
        fold[p] = k + 1
        load[k] += cnt[p]
    slides = []
    for j in range(S):
        pi = int(slide_patient[j])
        slides.append({"slide_id": sids[j], "patient_id": pids[pi], "patient": pi,
                       "primary": combos[j][0], "secondary": combos[j][1], "split": split[j],
                       "fold": fold.get(pi, 0)})
    return slides


def _tile_names(rng, sid, count):
    names, seen = [], set()
    n_reg = int(rng.integers(1, 5))
    origins = [(int(rng.integers(2000, 40000)), int(rng.integers(2000, 150000))) for _ in range(n_reg)]
    while len(names) < count:
        reg = int(rng.integers(n_reg))
        row, col = int(rng.integers(0, 26)), int(rng.integers(0, 30))
        if (reg, row, col) in seen:
            continue
        seen.add((reg, row, col))
        x0, y0 = origins[reg]
        names.append(f"{sid}_Block_Region_{reg}_{row}_{col}_xini_{x0 + 1024 * col}_yini_{y0 + 1024 * row}")
    return names


# --------------------------------------------------------------------------- xlsx writing
_FIXED_DT = (1980, 1, 1, 0, 0, 0)


def _write_xlsx(path, columns, rows):
    """A one-sheet ('Sheet1') workbook, byte-reproducible (fixed zip and document timestamps)."""
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    ws.append(list(columns))
    for r in rows:
        ws.append(list(r))
    buf = io.BytesIO()
    wb.save(buf)
    buf.seek(0)
    out = io.BytesIO()
    with zipfile.ZipFile(buf) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "docProps/core.xml":
                data = re.sub(rb"(<dcterms:(created|modified)[^>]*>)[^<]*(</dcterms:)",
                              rb"\g<1>2020-05-01T00:00:00Z\g<3>", data)
            zi = zipfile.ZipInfo(item.filename, date_time=_FIXED_DT)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o600 << 16
            zout.writestr(zi, data)
    Path(path).write_bytes(out.getvalue())


def _write_partition(root, train_rows, test_rows, folds):
    """partition/Test and partition/Validation/Val1..4 tables (rows: dicts per tile)."""
    cols = ("image_name", "NC", "G3", "G4", "G5", "G4C")

    def table(rows):
        return [tuple(r[c] for c in cols) for r in sorted(rows, key=lambda r: r["image_name"])]

    def crib(rows):
        return [(r["image_name"], r["G4C"]) for r in sorted(rows, key=lambda r: r["image_name"]) if r["G4"] == 1]

    def write_set(d, tr, te):
        d.mkdir(parents=True, exist_ok=True)
        _write_xlsx(d / "Train.xlsx", cols, table(tr))
        _write_xlsx(d / "Test.xlsx", cols, table(te))
        _write_xlsx(d / "TrainCribfriform.xlsx", ("image_name", "G4C"), crib(tr))
        _write_xlsx(d / "TestCribfriform.xlsx", ("image_name", "G4C"), crib(te))

    write_set(root / "partition" / "Test", train_rows, test_rows)
    for k in range(1, 5):
        te = [r for r in train_rows if folds[r["image_name"]] == k]
        tr = [r for r in train_rows if folds[r["image_name"]] != k]
        write_set(root / "partition" / "Validation" / f"Val{k}", tr, te)


# --------------------------------------------------------------------------- make dataset
def _params(n_patients, tiles_per_slide, tile_size, seed, domain, test_fraction):
    return {"generator": "discnb.data.demo", "version": GENERATOR_VERSION,
            "n_patients": int(n_patients), "tiles_per_slide": int(tiles_per_slide),
            "tile_size": int(tile_size), "seed": int(seed), "domain": str(domain),
            "test_fraction": float(test_fraction)}


def make_demo_sicap(root, *, n_patients: int = 24, tiles_per_slide: int = 12, tile_size: int = 64,
                    seed: int = 0, domain: str = "in", test_fraction: float = 0.2,
                    overwrite: bool = False, progress: bool = True) -> Path:
    """Write (or reuse) a procedural SICAPv2-layout dataset at ``root``; returns ``root``.

    Patients have 1-2 slides; slide Gleason patterns follow SICAPv2's frequencies, with at least
    one non-cancer slide and one slide with each grade in both the official Train and Test split
    (two with a Gleason 5 when ``n_patients >= 12``) where the split has enough slides. The
    official Test split holds ~``test_fraction`` of the patients; the four validation folds split
    the official Train patients. ``domain='ood'`` is another "hospital": shifted stain, 1.25x
    larger structures, softer optics and more noise, same structural rules.

    The folder is written into a temporary sibling and moved into place at the end. A
    ``demo_params.json`` stamp makes a second call with the same parameters return at once; with
    different parameters an existing folder is only replaced when ``overwrite=True``.
    """
    root = Path(root)
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, not {domain!r}")
    if n_patients < 5:
        raise ValueError(f"n_patients must be >= 5 (1 test patient + 4 validation folds), got {n_patients}")
    if tiles_per_slide < 1:
        raise ValueError(f"tiles_per_slide must be >= 1, got {tiles_per_slide}")
    if tile_size < 16:
        raise ValueError(f"tile_size must be >= 16, got {tile_size}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    params = _params(n_patients, tiles_per_slide, tile_size, seed, domain, test_fraction)
    stamp = root / "demo_params.json"
    if root.exists():
        if stamp.exists():
            try:
                old = json.loads(stamp.read_text())
            except (OSError, ValueError):
                old = {}
            old_p = {k: old.get(k) for k in params}
            if old_p == params:
                return root
            if not overwrite:
                diff = ", ".join(f"{k}: {old_p.get(k)!r} on disk vs {v!r} asked" for k, v in params.items()
                                 if old_p.get(k) != v)
                raise ValueError(f"{root} holds a demo dataset made with other parameters ({diff}). "
                                 f"Pass overwrite=True to regenerate it, or choose another folder.")
        elif any(root.iterdir()):
            raise ValueError(f"{root} exists, is not empty and is not a demo dataset (no demo_params.json); "
                             f"refusing to write there. Choose another folder or remove it.")
    root.parent.mkdir(parents=True, exist_ok=True)

    def build(tmp: Path) -> None:
        tmp.mkdir()
        summary = _generate(tmp, params, progress)
        (tmp / "demo_params.json").write_text(json.dumps(dict(params, summary=summary), indent=2) + "\n")
    return atomic_dir(build, root)


def _generate(out, params, progress):
    from PIL import Image

    n, tps, seed, domain = params["tile_size"], params["tiles_per_slide"], params["seed"], params["domain"]
    slides = _plan_dataset(params["n_patients"], seed, domain, params["test_fraction"])
    (out / "images").mkdir()
    (out / "masks").mkdir()
    _write_xlsx(out / "wsi_labels.xlsx", ("slide_id", "patient_id", "Gleason_primary", "Gleason_secondary"),
                [(s["slide_id"], s["patient_id"], int(s["primary"]), int(s["secondary"])) for s in slides])
    rows = {"train": [], "test": []}
    folds = {}
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(slides) * tps, desc=f"demo SICAPv2 ({domain}, {n}px)", unit="tile")
        except ImportError:  # pragma: no cover
            bar = None
    for j, sl in enumerate(slides):
        rng = np.random.default_rng([int(seed), DOMAINS.index(domain), 1000 + j])
        stain = make_stain(rng, domain)
        scale = _DOMAIN_SCALE[domain] * rng.uniform(0.85, 1.15)
        p, q = _GRADE_TO_LABEL[sl["primary"]], _GRADE_TO_LABEL[sl["secondary"]]
        p_crib = float(rng.choice([0.0, 0.25, 0.6])) if 2 in (p, q) else 0.0
        for name in _tile_names(rng, sl["slide_id"], tps):
            for _ in range(20):  # a cancer slide's listed tiles have a cancer majority (as in SICAPv2)
                labels, weights = _tile_plan(rng, p, q)
                mask = random_annotation_mask(rng, n, labels, weights)
                if p == 0 or np.bincount(mask.ravel(), minlength=4).argmax() != 0:
                    break
            img, info = render_tile(mask, rng, stain, scale, cribriform=bool(rng.random() < p_crib),
                                    return_info=True)
            Image.fromarray(img).save(out / "images" / f"{name}.jpg", quality=92, subsampling=0)
            Image.fromarray(LABEL_TO_DISK[mask]).save(out / "masks" / f"{name}.png")
            counts = np.bincount(mask.ravel(), minlength=4)
            maj = tile_label(counts / counts.sum())  # SICAPv2's rule, the one every loader uses
            onehot = np.eye(4, dtype=int)[maj]
            row = {"image_name": f"{name}.jpg", "NC": int(onehot[0]), "G3": int(onehot[1]),
                   "G4": int(onehot[2]), "G5": int(onehot[3]),
                   "G4C": int(maj == 2 and info["cribriform"])}
            rows[sl["split"]].append(row)
            if sl["split"] == "train":
                folds[row["image_name"]] = sl["fold"]
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    _write_partition(out, rows["train"], rows["test"], folds)

    def counts(rs):
        return {c: int(sum(r[c] for r in rs)) for c in ("NC", "G3", "G4", "G5", "G4C")}

    return {"slides": len(slides), "patients": params["n_patients"],
            "train_tiles": len(rows["train"]), "test_tiles": len(rows["test"]),
            "train_labels": counts(rows["train"]), "test_labels": counts(rows["test"])}


# --------------------------------------------------------------------------- validity check
MASK_COLOURS = np.array([[235, 235, 235], [60, 190, 75], [245, 195, 20], [215, 40, 40]], np.uint8)


def preview_grid(root, *, per_row: int = 6, mixed_rows: int = 2, seed: int = 0) -> np.ndarray:
    """A visual check of a written dataset: one row of single-label tiles per label (NC, GG3,
    GG4, GG5), then ``mixed_rows`` rows of multi-label tiles, each followed by its mask
    (grey NC, green GG3, yellow GG4, red GG5). Returns an RGB uint8 array."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    names = sorted(p.name for p in (root / "images").glob("*.jpg"))
    lut = np.zeros(256, np.uint8)
    for v, lab in DISK_TO_LABEL.items():
        lut[v] = lab
    pure = {k: [] for k in range(4)}
    mixed = []
    for nm in rng.permutation(names):
        m = lut[np.asarray(Image.open(root / "masks" / (Path(nm).stem + ".png")))]
        labs = np.unique(m)
        if len(labs) == 1 and len(pure[int(labs[0])]) < per_row:
            pure[int(labs[0])].append(nm)
        elif len(labs) > 1 and len(mixed) < mixed_rows * (per_row // 2):
            mixed.append(nm)
    n = np.asarray(Image.open(root / "images" / names[0])).shape[0]
    blank = np.full((n, n, 3), 255, np.uint8)

    def img(nm):
        return np.asarray(Image.open(root / "images" / nm).convert("RGB"))

    def msk(nm):
        return MASK_COLOURS[lut[np.asarray(Image.open(root / "masks" / (Path(nm).stem + ".png")))]]

    rows = []
    for k in range(4):
        tiles = [img(nm) for nm in pure[k]] + [blank] * (per_row - len(pure[k]))
        rows.append(np.concatenate(tiles, 1))
    for r in range(mixed_rows):
        tiles = []
        for nm in mixed[r * (per_row // 2):(r + 1) * (per_row // 2)]:
            tiles += [img(nm), msk(nm)]
        tiles += [blank] * (per_row - len(tiles))
        rows.append(np.concatenate(tiles, 1))
    pad = 2
    out = np.full((len(rows) * (n + pad), per_row * n, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        out[i * (n + pad):i * (n + pad) + n] = r
    return out


def _read_split_tiles(root, split, max_tiles, rng):
    import pandas as pd
    from PIL import Image

    df = pd.read_excel(root / "partition" / "Test" / f"{split}.xlsx")
    names = df["image_name"].astype(str).tolist()
    if max_tiles is not None and len(names) > max_tiles:
        names = [names[i] for i in sorted(rng.choice(len(names), max_tiles, replace=False))]
    imgs, masks = [], []
    lut = np.zeros(256, np.uint8)
    for v, lab in DISK_TO_LABEL.items():
        lut[v] = lab
    for nm in names:
        with Image.open(root / "images" / nm) as im:
            imgs.append(np.asarray(im.convert("RGB")))
        with Image.open(root / "masks" / (Path(nm).stem + ".png")) as im:
            masks.append(lut[np.asarray(im)])
    return np.stack(imgs), np.stack(masks)


def _region_features(imgs, masks, min_frac=0.05):
    feats, labels = [], []
    n = masks.shape[1] * masks.shape[2]
    for img, m in zip(imgs, masks):
        for lab in np.unique(m):
            sel = m == lab
            if sel.sum() < min_frac * n:
                continue
            px = img[sel].astype(np.float32)
            feats.append(np.concatenate([px.mean(0), px.std(0)]))
            labels.append(int(lab))
    return np.asarray(feats), np.asarray(labels)


def _pure_crops(masks, crop, stride, purity=0.9):
    """(tile, y, x, label) of crops whose mask is >= ``purity`` one label."""
    out = []
    n = masks.shape[1]
    oh = np.stack([(masks == k) for k in range(4)], 1).astype(np.float32)  # (T,4,n,n)
    ii = np.cumsum(np.cumsum(np.pad(oh, ((0, 0), (0, 0), (1, 0), (1, 0))), 2), 3)
    pos = np.arange(0, n - crop + 1, stride)
    for y in pos:
        for x in pos:
            s = ii[:, :, y + crop, x + crop] - ii[:, :, y, x + crop] - ii[:, :, y + crop, x] + ii[:, :, y, x]
            frac = s / (crop * crop)
            lab = frac.argmax(1)
            ok = frac.max(1) >= purity
            for t in np.flatnonzero(ok):
                out.append((t, y, x, lab[t]))
    return np.asarray(out, dtype=np.int64).reshape(-1, 4)


def _balanced_acc(y, p, k=4):
    rec = {}
    for c in range(k):
        sel = y == c
        if sel.any():
            rec[c] = float((p[sel] == c).mean())
    return float(np.mean(list(rec.values()))) if rec else float("nan"), rec


def _small_cnn(crop):
    """A few conv layers; a strided stem maps any crop size to a 32x32 feature map."""
    import torch.nn as nn

    stride = max(1, crop // 32)
    layers = [nn.Conv2d(3, 16, 3, stride=stride, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    ch = 16
    for i, w in enumerate((16, 32, 64)):
        if i:
            layers.append(nn.MaxPool2d(2))
        layers += [nn.Conv2d(ch, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
                   nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        ch = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, 4))


def validity_report(root, *, seed: int = 0, cnn_epochs: int = 8, max_tiles: int | None = None) -> dict:
    """Is the dataset honest? Colour alone must not tell the grade; structure must.

    Reads the written files (official Train -> fit, official Test -> evaluate):

    * ``colour_acc``: logistic regression on the per-region mean RGB (region = one label's pixels
      in one tile, >= 5% of the tile), balanced accuracy; chance 0.25. ``colour_std_acc`` adds
      the per-channel std (texture contrast, partly structural) for reference.
    * ``cnn_acc``: a small CNN on crops of side tile_size//2 whose mask is >= 90% one label,
      class-balanced sampling, flips/rotations; balanced accuracy with ``cnn_per_class`` recalls.
    """
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.time()
    root = Path(root)
    rng = np.random.default_rng(seed)
    Xtr_img, Xtr_m = _read_split_tiles(root, "Train", max_tiles, rng)
    Xte_img, Xte_m = _read_split_tiles(root, "Test", max_tiles, rng)
    names = ["NC", "GG3", "GG4", "GG5"]
    rep = {"chance": 0.25, "n_train_tiles": len(Xtr_img), "n_test_tiles": len(Xte_img)}

    # ---- colour-only baseline
    ftr, ytr = _region_features(Xtr_img, Xtr_m)
    fte, yte = _region_features(Xte_img, Xte_m)
    rep["n_regions"] = {"train": int(len(ytr)), "test": int(len(yte)),
                        "train_per_class": {names[c]: int((ytr == c).sum()) for c in range(4)},
                        "test_per_class": {names[c]: int((yte == c).sum()) for c in range(4)}}
    for key, cols in (("colour", slice(0, 3)), ("colour_std", slice(0, 6))):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, class_weight="balanced"))
        clf.fit(ftr[:, cols], ytr)
        acc, rec = _balanced_acc(yte, clf.predict(fte[:, cols]))
        rep[f"{key}_acc"] = acc
        rep[f"{key}_per_class"] = {names[c]: v for c, v in rec.items()}

    # ---- small CNN on pure crops
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    n = Xtr_img.shape[1]
    crop = n // 2
    ctr = _pure_crops(Xtr_m, crop, max(1, crop // 8))
    cte = _pure_crops(Xte_m, crop, max(1, crop // 4))
    rep["n_crops"] = {"train": int(len(ctr)), "test": int(len(cte)),
                      "train_per_class": {names[c]: int((ctr[:, 3] == c).sum()) for c in range(4)},
                      "test_per_class": {names[c]: int((cte[:, 3] == c).sum()) for c in range(4)}}
    net = _small_cnn(crop)
    tr_img = torch.from_numpy(Xtr_img).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.25)
    te_img = torch.from_numpy(Xte_img).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.25)

    def batch(img, rows):
        xb = torch.stack([img[t, :, y:y + crop, x:x + crop] for t, y, x, _ in rows])
        return xb.contiguous(memory_format=torch.channels_last)

    net = net.to(memory_format=torch.channels_last)

    pools = [np.flatnonzero(ctr[:, 3] == c) for c in range(4)]
    pools = [p for p in pools if len(p)]
    per_epoch = 4 * int(min(256, max(64, len(ctr) // 4)))
    t1 = time.time()
    rep["seconds_load_colour"] = round(t1 - t0, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = cnn_epochs * (per_epoch // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=max(1, steps))
    lossf = torch.nn.CrossEntropyLoss()
    net.train()
    for _ in range(cnn_epochs if len(pools) > 1 else 0):
        idx = np.concatenate([rng.choice(p, per_epoch // len(pools)) for p in pools])
        rng.shuffle(idx)
        for b in range(per_epoch // 64):
            rows = ctr[idx[b * 64:(b + 1) * 64]]
            if len(rows) == 0:
                continue
            xb = batch(tr_img, rows)
            k = int(rng.integers(4))
            xb = torch.rot90(xb, k, (2, 3)).contiguous(memory_format=torch.channels_last)
            if rng.random() < 0.5:
                xb = xb.flip(3)
            yb = torch.from_numpy(rows[:, 3])
            opt.zero_grad()
            loss = lossf(net(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    preds = []
    with torch.no_grad():
        for b in range(0, len(cte), 256):
            preds.append(net(batch(te_img, cte[b:b + 256])).argmax(1).numpy())
    pred = np.concatenate(preds) if preds else np.zeros(0, int)
    acc, rec = _balanced_acc(cte[:, 3], pred)
    rep["cnn_acc"] = acc
    rep["cnn_per_class"] = {names[c]: v for c, v in rec.items()}
    rep["seconds_cnn"] = round(time.time() - t1, 1)
    rep["seconds"] = round(time.time() - t0, 1)
    return rep
