"""How close two sets of tiles are, pixel by pixel: PSNR and SSIM of uint8 images, the first stage's
reconstruction quality (paper Sec. 2.1). Used by the first stage (generative) and the metrics that
grade (grading) alike."""

from __future__ import annotations

import numpy as np
import torch


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB) of uint8 images."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image SSIM (Wang et al. 2004) of (N,H,W,3) uint8 images: ``pytorch_msssim.ssim``, the
    standard setting (11-px Gaussian window, sigma 1.5, K = (0.01, 0.03), data range 255), mean
    over the RGB channels. (Not comparable with a grey-level SSIM on a 7-px uniform window, which
    gives other numbers.)"""
    from pytorch_msssim import ssim as _ssim

    def chw(x):
        return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float()
    return _ssim(chw(a), chw(b), data_range=255, size_average=False).numpy()
