"""The demo tissue's stain model: one H&E palette for every label (:mod:`discnb.data.demo.tissue` renders with it).

A Beer-Lambert hematoxylin + eosin model: each domain has a mean stain (:func:`default_stain`; ``"ood"``
is another hospital), jittered per slide (:func:`make_stain`). Each label's texture then gets its
hematoxylin/eosin amounts fitted so that its mean RGB equals the slide's target colour
(:func:`fit_colour`), so a region's mean colour does not give its grade away.

Any change to what this module draws must bump :data:`discnb.data.demo.GENERATOR_VERSION` (the cache
stamp of written datasets).
"""

from __future__ import annotations

import math

import numpy as np

DOMAINS = ("in", "ood")

# --------------------------------------------------------------------------- stain model
# Optical-density (OD) vectors of the two stains (Ruifrok-like; unit length).
_H_VEC = np.array([0.62, 0.72, 0.32])
_E_VEC = np.array([0.12, 0.90, 0.42])


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


# --------------------------------------------------------------------------- colour fit
def fit_colour(H, E, stain, target, iters=6):
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
