"""Shape primitives of the demo tissue (:mod:`discnb.data.demo.textures` draws the grades with them).

Smooth noise fields and soft inside-indicators; soft-edged filled ellipses (nuclei); glands as
outlines in radial harmonics with an optional lumen (:class:`Glands`: depth fields, points along the
rims); jittered hexagonal lattices, nearest-neighbour distances and random points in a mask. All
inputs are in pixels of the tile being drawn.

Any change to what this module draws must bump :data:`discnb.data.demo.GENERATOR_VERSION` (the cache
stamp of written datasets).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi


# --------------------------------------------------------------------------- noise helpers
def noise_field(rng, n, sigma):
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


def antialias(depth, edge=0.7):
    """Soft (anti-aliased) inside-indicator from a signed depth in px."""
    return np.clip(depth / edge + 0.5, 0.0, 1.0)


# --------------------------------------------------------------------------- primitives
def splat_ellipses(img, cx, cy, a, b, ang, val):
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


class Glands:
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
        sub = Glands.__new__(Glands)
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


def hex_points(rng, n, spacing, jitter, margin):
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


def nn_dist(x, y):
    if len(x) < 2:
        return np.full(len(x), 1e6, np.float32)
    d = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    np.fill_diagonal(d, np.inf)
    return d.min(1)


def harmonics(rng, g, ks, amp_lo, amp_hi):
    ks = np.asarray(ks, np.float32)
    amp = rng.uniform(amp_lo, amp_hi, (g, len(ks))).astype(np.float32)
    kk = np.broadcast_to(ks, (g, len(ks))).copy()
    ph = rng.uniform(0, 2 * np.pi, (g, len(ks))).astype(np.float32)
    return amp, kk, ph


def random_in(rng, mask, count):
    """Up to ``count`` uniform random points (float px) where ``mask`` (bool) holds."""
    n = mask.shape[0]
    if count <= 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    x = rng.uniform(0, n, count).astype(np.float32)
    y = rng.uniform(0, n, count).astype(np.float32)
    ok = mask[np.minimum(y.astype(int), n - 1), np.minimum(x.astype(int), n - 1)]
    return x[ok], y[ok]
