"""Eq. 4 of the paper (Sec. 2.4): the balance between real and synthetic data,

    L = (1 - lambda) L_real + lambda L_synth,     lambda in [0, 1),

used alike by CarcinoNet (tiles, :mod:`discnb.grading.carcinonet`) and TransMIL (slides,
:mod:`discnb.grading.mil`). lambda = 0 is the real-only baseline; lambda = 1 would ignore the real
data, so it is refused.
"""

from __future__ import annotations

import math

import torch


def check_lam(lam) -> float:
    """The balance weight of Eq. 4 as a float in [0, 1), or a ValueError naming the range."""
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
        raise ValueError(f"lambda (balance weight of Eq. 4) must be a number in [0, 1), got {lam!r}")
    if not 0 <= lam < 1:
        raise ValueError(f"lambda (balance weight of Eq. 4) must be in [0, 1), got {lam}: lambda = 1 would "
                         "ignore the real data; lambda = 0 is the real-only baseline")
    return float(lam)


def eq4(l_real: torch.Tensor, l_synth: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 4: (1 - lambda) L_real + lambda L_synth."""
    return (1 - lam) * l_real + lam * l_synth
