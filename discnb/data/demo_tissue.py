"""How the procedural demo tissue is drawn (:mod:`discnb.data.demo` writes the dataset from it).

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
soft (about 1 px) edges (:func:`render_tile`).

Labels here are 0..3 (NC, GG3, GG4, GG5). Feature sizes are given in "units" = pixels of a 64-px
tile; a tile of size N uses ``N / 64 * scale`` pixels per unit, so every tile size shows the same
field of view. Any change to what this module draws must bump :data:`discnb.data.demo.GENERATOR_VERSION`
(the cache stamp of written datasets).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

__all__ = ["random_annotation_mask", "render_tile", "make_stain", "default_stain", "DOMAINS"]

DOMAINS = ("in", "ood")

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
