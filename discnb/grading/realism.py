"""Realism of generated tiles as a distribution distance (beyond the paper, which shows pictures).

No ImageNet Inception weights can be downloaded here, so FID/KID use the features of a network
trained in this repository: the pattern judge's encoder (the real-only CarcinoNet of notebook 04),
global-average-pooled over its two deepest levels. Numbers are comparable only with the same
judge. KID (Binkowski et al. 2018: unbiased MMD^2 with the cubic polynomial kernel
k(x, y) = (x.y / d + 1)^3, averaged over random subsets) is preferred to FID at the few hundred
tiles a CPU can make: it is unbiased in the sample size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def encoder_features(model, imgs: np.ndarray, batch_size: int = 64, device="cpu") -> np.ndarray:
    """(N,H,W,3) uint8 -> (N, D) features from a CarcinoNet's encoder (two deepest levels, GAP)."""
    from discnb.pipelines.carcinonet import to_chw, to_unit
    model = model.eval().to(device)
    out = []
    for s in range(0, len(imgs), batch_size):
        x = to_chw(imgs[s:s + batch_size]).to(device)
        x = (to_unit(x) - model.mean) / model.std
        feats = model.encoder(x)
        out.append(torch.cat([F.adaptive_avg_pool2d(f, 1).flatten(1) for f in feats[-2:]], 1).float().cpu())
    return torch.cat(out).numpy()


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 50, subset_size: int = 100, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance on given features: (mean, std) over ``subsets`` random subsets
    of ``min(subset_size, len(real), len(fake))`` rows each."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples on each side, got {len(real)} real and {len(fake)} generated")
    d = real.shape[1]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        off = ~np.eye(m, dtype=bool)
        vals.append(kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean())
    return float(np.mean(vals)), float(np.std(vals))
