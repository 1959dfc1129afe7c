"""Plot helpers shared by the notebooks: the label palette and tile/mask grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from discnb import LABELS

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


def loss_curves(panels: dict[str, str | Path], smooth: int = 1, ylabel: str = "loss", log: bool = True,
                xlabel: str = "optimizer step", title: str | None = None):
    """Training loss (rolling mean over ``smooth`` logged steps) and validation loss (EMA weights
    when EMA is on) from each run folder's ``metrics.csv``; one panel per entry of ``panels``
    (panel title -> run folder), or one shared panel when ``title`` is given. Folders without a
    ``metrics.csv`` (a first stage loaded from ``autoencoder.path``) are left out."""
    import matplotlib.pyplot as plt
    from discnb.core.train import read_metrics
    panels = {k: v for k, v in panels.items() if (Path(v) / "metrics.csv").exists()}
    if not panels:
        raise FileNotFoundError("no metrics.csv in any of the run folders: nothing was trained here")
    shared = title is not None
    n = 1 if shared else len(panels)
    fig, axes = plt.subplots(1, n, figsize=(7, 3.5) if shared else (5 * n, 3.2), squeeze=False)
    for i, (name, folder) in enumerate(panels.items()):
        ax = axes[0, 0 if shared else i]
        m = read_metrics(folder)
        prefix = f"{name} " if shared else ""
        line, = ax.plot(m.step, m.loss.rolling(smooth, min_periods=1).mean(), lw=0.8, label=f"{prefix}train")
        v = m.dropna(subset=["val_loss"])
        # shared panel: a run's validation curve in its training curve's colour
        ax.plot(v.step, v.val_loss, "o--" if shared else "o-", color=line.get_color() if shared else None,
                label=f"{prefix}validation")
        ax.set(title=title if shared else name, xlabel=xlabel, ylabel=ylabel, yscale="log" if log else "linear")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
