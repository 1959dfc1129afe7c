"""Plot helpers shared by the notebooks: the label palette and tile/mask grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import LABELS

# The paper's label colours (Fig. 5): NC green, GG3 blue, GG4 yellow, GG5 red.
PALETTE = np.array([[46, 160, 67], [31, 119, 230], [240, 200, 30], [220, 40, 40]], np.uint8)


def colorize(mask: np.ndarray) -> np.ndarray:
    """Labels 0..3 -> RGB with the label palette."""
    return PALETTE[np.asarray(mask)]


def overlay(tile: np.ndarray, mask: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """A tile with its mask blended on top."""
    return (tile.astype(np.float32) * (1 - alpha) + colorize(mask) * alpha).round().astype(np.uint8)


def legend_handles():
    from matplotlib.patches import Patch
    return [Patch(color=PALETTE[i] / 255, label=n) for i, n in enumerate(LABELS)]


def image_grid(rows: dict[str, list[np.ndarray]], titles: list[str] | None = None, size: float = 1.6,
               cmap_for: dict[str, str] | None = None):
    """A figure with one row per entry of ``rows`` (row label -> images) and a label legend."""
    import matplotlib.pyplot as plt
    n_rows, n_cols = len(rows), max(len(v) for v in rows.values())
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols, size * n_rows + 0.5), squeeze=False)
    for r, (name, imgs) in enumerate(rows.items()):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if c < len(imgs):
                ax.imshow(imgs[c], cmap=(cmap_for or {}).get(name), interpolation="nearest")
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
            if r == 0 and titles and c < len(titles):
                ax.set_title(titles[c], fontsize=7)
    fig.legend(handles=legend_handles(), loc="lower center", ncol=len(LABELS), frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def save(fig, path: str | Path, pdf: bool = True) -> Path:
    """Save a figure as PNG (and PDF beside it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path.with_suffix(".png"), dpi=150, bbox_inches="tight")
    if pdf:
        fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    return path.with_suffix(".png")
