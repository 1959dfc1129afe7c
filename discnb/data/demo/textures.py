"""The demo tissue's per-grade textures (:func:`discnb.data.demo.tissue.render_tile` composites them).

The grades differ by *structure*, not by colour, as in real tissue:

* 0 non-cancer: wavy fibromuscular stroma with sparse elongated nuclei and a few large benign
  glands (big lumen, papillary infoldings, two-layer rim: basal + luminal nuclei);
* 1 GG3: many small, separate, round glands, each with one clear lumen and a ring of nuclei;
* 2 GG4: fused glands and cribriform nests (epithelial blobs with punched-out small lumens);
* 3 GG5: solid sheets of crowded nuclei or single infiltrating cells/cords; no lumens.

Each label's texture covers the full tile, over the stroma every label shares (:func:`shared_stroma`);
:func:`texture_od` turns it into hematoxylin/eosin OD maps. ``s`` is pixels per "unit" (see
:mod:`discnb.data.demo.tissue`).

Any change to what this module draws must bump :data:`discnb.data.demo.GENERATOR_VERSION` (the cache
stamp of written datasets).
"""

from __future__ import annotations

import math

import numpy as np

from discnb.data.demo.geometry import (Glands, antialias, harmonics, hex_points, nn_dist, noise_field, random_in,
                                       splat_ellipses)

# Raw OD amounts of the tissue compartments before the per-texture colour fit.
_STROMA_E, _STROMA_H = 0.33, 0.13
_CYTO_E, _CYTO_H = 0.24, 0.11          # tumour / epithelial cytoplasm (amphophilic)
_BENIGN_CYTO_E, _BENIGN_CYTO_H = 0.20, 0.07  # benign luminal cells: paler
_LUMEN_E, _LUMEN_H = 0.025, 0.005
_NUC_H, _NUC_E = 1.0, 0.10


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
        self.epi = antialias(t_out)
        self.lum = antialias(t_lum)
        return t_out

    def nuclei_ring(self, rng, glands, at, spread, side, a, b, lo, hi, keep=None):
        """Nuclei (ellipses of half-axes a, b, intensity U(lo, hi)) along the glands' ``side`` ring;
        ``keep(x, y)`` selects among the ring's points."""
        x, y, ang = glands.ring_points(rng, at, spread, side)
        if keep is not None:
            sel = keep(x, y)
            x, y, ang = x[sel], y[sel], ang[sel]
        splat_ellipses(self.nuc, x, y, np.full(len(x), a), np.full(len(x), b), ang, rng.uniform(lo, hi, len(x)))


def shared_stroma(rng, n, s):
    """Shared fibromuscular stroma: (E, H, nuclei map)."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    phi = rng.uniform(0, np.pi)
    warp = noise_field(rng, n, 9 * s) * (3.0 * s)
    p = -xx * np.sin(phi) + yy * np.cos(phi) + warp
    lam = rng.uniform(3.2, 4.2) * s
    fib = 0.5 + 0.5 * np.sin(2 * np.pi * p / lam + 1.2 * noise_field(rng, n, 1.2 * s))
    low = noise_field(rng, n, 7 * s)
    E = _STROMA_E * (0.72 + 0.34 * fib) * (1 + 0.12 * low)
    # occasional thin clefts (retraction / oedema) between fibre bundles
    cleft = np.clip((noise_field(rng, n, 2.0 * s) - 1.6) * 1.5, 0, 1) * np.clip(1.2 - fib, 0, 1)
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
    splat_ellipses(nuc, x, y, rng.uniform(1.3, 1.9, cnt) * s, rng.uniform(0.38, 0.5, cnt) * s,
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
    splat_ellipses(stromal, x, y, rng.uniform(1.3, 1.9, cnt) * s, rng.uniform(0.38, 0.5, cnt) * s,
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
    amp, kk, ph = harmonics(rng, g, [2, 3, 5], 0.03, 0.10)
    rim = rng.uniform(3.3, 4.2, g) * s
    glands = Glands(cx, cy, r, amp, kk, ph,
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
    x, y = hex_points(rng, n, spacing, 0.14, 6 * s)
    keep = rng.random(len(x)) > 0.15
    x, y = x[keep], y[keep]
    g = len(x)
    r = rng.uniform(3.2, 4.8, g) * s
    r = np.minimum(r, 0.5 * nn_dist(x, y) - 1.2 * s)
    ok = r > 2.0 * s
    x, y, r = x[ok], y[ok], r[ok]
    g = len(x)
    amp, kk, ph = harmonics(rng, g, [2, 3], 0.02, 0.09)
    lamp, lk, lph = harmonics(rng, g, [2, 3], 0.02, 0.10)
    glands = Glands(x, y, r, amp, kk, ph, lum_frac=rng.uniform(0.46, 0.58, g), lamp=lamp, lk=lk,
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
    cx, cy = hex_points(rng, n, rng.uniform(13, 16) * s, 0.12, 8 * s)
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
    amp, kk, ph = harmonics(rng, g, [2, 3], 0.04, 0.12)
    lamp, lk, lph = harmonics(rng, g, [2, 3], 0.03, 0.12)
    fused = Glands(fx, fy, fr, amp, kk, ph, lum_frac=rng.uniform(0.30, 0.42, g) * (rng.random(g) > 0.2),
                    lamp=lamp, lk=lk, lph=lph, rim=np.full(g, 1.6 * s))
    glands.append(fused)
    # cribriform nests: big epithelial blobs + punched-out round lumens
    nx, ny = cx[crib_c], cy[crib_c]
    gn = len(nx)
    if gn:
        nr = rng.uniform(10.0, 15.0, gn) * s
        amp, kk, ph = harmonics(rng, gn, [2, 3, 4], 0.02, 0.08)
        nests = Glands(nx, ny, nr, amp, kk, ph)
        glands.append(nests)
        lx, ly = hex_points(rng, n, rng.uniform(4.6, 5.4) * s, 0.10, 16 * s)
        th = np.arctan2(ly[None, :] - ny[:, None], lx[None, :] - nx[:, None])
        dd = np.hypot(ly[None, :] - ny[:, None], lx[None, :] - nx[:, None])
        inside = (dd < nests.r_out(th) - 2.6 * s).any(0) & (rng.random(len(lx)) > 0.1)
        lx, ly = lx[inside], ly[inside]
        gl = len(lx)
        lr = rng.uniform(1.2, 1.8, gl) * s
        lamp, lk, lph = harmonics(rng, gl, [2], 0.0, 0.08)
        lumens.append(Glands(lx, ly, lr, lamp, lk, lph))
    t_out = np.full((n, n), -1e3, np.float32)
    t_lum = np.full((n, n), -1e3, np.float32)
    for gs in glands:
        a, b = gs.fields(n)
        t_out = np.maximum(t_out, a)
        t_lum = np.maximum(t_lum, b)
    for gs in lumens:
        a, _ = gs.fields(n)
        t_lum = np.maximum(t_lum, a)
    t.epi = antialias(t_out)
    t.lum = antialias(t_lum) * (t_out > 0)
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
    x, y = random_in(rng, inner, int((n / s) ** 2 / 16.0))
    xs.append(x); ys.append(y); angs.append(rng.uniform(0, np.pi, len(x))); sz.append(np.full(len(x), 0.6))
    x, y, a, z = (np.concatenate(v) for v in (xs, ys, angs, sz))
    iy, ix = np.clip(y.astype(int), 0, n - 1), np.clip(x.astype(int), 0, n - 1)
    ok = (t_lum[iy, ix] < -0.3 * s) & (t_out[iy, ix] > 0)
    x, y, a, z = x[ok], y[ok], a[ok], z[ok]
    splat_ellipses(t.nuc, x, y, z * s * rng.uniform(1.0, 1.2, len(x)), z * s * rng.uniform(0.8, 1.0, len(x)),
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
        z = noise_field(rng, n, 7 * s)
        thr = np.quantile(z, 1 - sheet_frac) if sheet_frac < 1 else -1e9
        sheet = antialias((z - thr) * 4 * s, 0.8)
        sp = rng.uniform(2.5, 2.8) * s
        x, y = hex_points(rng, n, sp, 0.22, 2 * s)
        iy, ix = np.clip(y.astype(int), 0, n - 1), np.clip(x.astype(int), 0, n - 1)
        ok = (sheet[iy, ix] > 0.5) & (rng.random(len(x)) > 0.12)
        x, y = x[ok], y[ok]
        rr = rng.uniform(0.6, 0.78, len(x)) * s
        splat_ellipses(t.nuc, x, y, rr * rng.uniform(1.0, 1.3, len(x)), rr, rng.uniform(0, np.pi, len(x)),
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
        splat_ellipses(halo, x, y, np.full(cnt, 1.35 * s), np.full(cnt, 1.2 * s), np.zeros(cnt), np.ones(cnt))
        rr = rng.uniform(0.62, 0.85, cnt) * s
        splat_ellipses(t.nuc, x, y, rr * 1.15, rr, rng.uniform(0, np.pi, cnt), rng.uniform(0.65, 0.95, cnt))
        t.epi = np.maximum(sheet, halo)
    return t


_TEXTURES = {1: _tex_gg3, 3: _tex_gg5}


def texture_od(label, rng, n, s, stroma, cribriform, focus=None):
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
