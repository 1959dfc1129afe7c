"""What every tile generator has: the interface that tile sets, CarcinoNet's synthetic tiles, the SC/DISC
comparison and the benchmark rely on, whichever registered generator they get
(:func:`discnb.generative.generators.build_generator`: SD, the Fig. 7 ablation models, SD-SC, SD-DISC,
SD-DISC-CoTrain; paper Sec. 2.1-2.3).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Generator(Protocol):
    """A tile generator: masks and one noise seed per tile in, RGB tiles out.

    ``name`` is the registry's name (e.g. "SD-SC"); ``device`` where it samples (a CPU generator is
    run in one process per CPU group, a GPU one per GPU); ``nfe`` counts U-Net evaluations summed over
    tiles (x2 with guidance), the cost measure, and callers may reset it to 0; ``needs_slide_labels``
    says that ``generate`` also needs each tile's slide (primary, secondary) grades, as the
    tile+slide-conditioned model of Fig. 7 does.
    """

    name: str
    device: torch.device
    nfe: int

    @property
    def needs_slide_labels(self) -> bool: ...

    def generate(self, masks, seeds, slide_labels=None) -> np.ndarray:
        """Tiles (N,H,W,3) uint8 for label masks (N,H,W) in 0..3, one seed per tile; ``slide_labels``
        (N,2), needed only when ``needs_slide_labels``."""
        ...


__all__ = ["Generator"]
