"""The numbers the paper reports and the ones we add (Sec. 2.4, Sec. 3).

- pixel level (CarcinoNet, Fig. 8 and the supplement's table): a confusion matrix and, from it,
  per-class precision, recall, IoU and Dice, pixel accuracy and the precision of positive Gleason
  predictions;
- slide level (TransMIL, Fig. 6): AUROC per label and their macro mean;
- realism of generated tiles (beyond the paper): KID on given features;
- reconstruction of the first stage (Sec. 2.1): PSNR and SSIM.

The pixel metrics are our own few lines on purpose: one ``bincount`` gives the confusion matrix
and every metric follows from it, which is tested against scikit-learn (tests/test_metrics.py)
and is much faster on millions of pixels than calling the libraries' per-metric functions
(each of which rebuilds the confusion matrix).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from discnb import K, LABELS


# =============================================================================== pixel level
def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int = K) -> np.ndarray:
    """Pixel confusion matrix, rows = truth, columns = prediction."""
    t, p = np.asarray(y_true).ravel().astype(np.int64), np.asarray(y_pred).ravel().astype(np.int64)
    if t.shape != p.shape:
        raise ValueError(f"truth has {t.size} pixels, prediction {p.size}")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def _div(a, b) -> np.ndarray:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.divide(a, b, out=np.full(np.broadcast(a, b).shape, np.nan), where=b > 0)


def metrics_from_confusion(cm: np.ndarray) -> dict:
    """Per-class precision, recall, IoU, Dice (NaN where undefined), pixel accuracy, and the
    precision of positive Gleason predictions (NC omitted, as the paper's supplement)."""
    cm = np.asarray(cm, np.int64)
    tp = np.diag(cm).astype(float)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    out = {"precision": _div(tp, tp + fp), "recall": _div(tp, tp + fn), "iou": _div(tp, tp + fp + fn),
           "dice": _div(2 * tp, 2 * tp + fp + fn), "pixel_accuracy": float(_div(tp.sum(), cm.sum())),
           "gg_precision_pooled": float(_div(tp[1:].sum(), cm[:, 1:].sum()))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        out["mean_iou"] = float(np.nanmean(out["iou"])) if np.isfinite(out["iou"]).any() else float("nan")
        out["mean_dice"] = float(np.nanmean(out["dice"])) if np.isfinite(out["dice"]).any() else float("nan")
        gp = out["precision"][1:]
        out["gg_precision_mean"] = float(np.nanmean(gp)) if np.isfinite(gp).any() else float("nan")
    return out


# =============================================================================== slide level
def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn's ``roc_auc_score``); NaN when ``y`` has one class
    only (a test set in which no slide, or every slide, has the label), without the error (older
    scikit-learn) or warning (newer) that scikit-learn gives there: such labels are left out of
    the macro mean (:func:`auroc_scores`)."""
    y, score = np.asarray(y).astype(bool).ravel(), np.asarray(score, float).ravel()
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, score))


def auroc_scores(Y: np.ndarray, S: np.ndarray) -> dict:
    """Per-label AUROC and their macro mean over labels with both classes (NaN if none)."""
    Y, S = np.asarray(Y), np.asarray(S)
    out = {lab: auroc(Y[:, i], S[:, i]) for i, lab in enumerate(LABELS)}
    vals = [v for v in out.values() if np.isfinite(v)]
    out["macro"] = float(np.mean(vals)) if vals else float("nan")
    return out


# =================================================================================== realism
def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 50, subset_size: int = 100, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018) on given features: the unbiased MMD^2
    with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, (mean, std) over ``subsets``
    random subsets of ``min(subset_size, len(real), len(fake))`` rows each. Unbiased in the
    sample size, so it is preferred to FID at the few hundred tiles a CPU can make."""
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


# ============================================================================ reconstruction
def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB) of uint8 images."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image SSIM (Wang et al. 2004) of (N,H,W,3) uint8 images: ``pytorch_msssim.ssim``, the
    standard setting (11-px Gaussian window, sigma 1.5, K = (0.01, 0.03), data range 255), mean
    over the RGB channels. (SSIMs of other settings, e.g. grey-level with a 7-px uniform window,
    are not comparable with these.)"""
    from pytorch_msssim import ssim as _ssim

    def chw(x):
        return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float()
    return _ssim(chw(a), chw(b), data_range=255, size_average=False).numpy()
