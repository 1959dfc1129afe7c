"""Plot helpers shared by the notebooks: the label palette, one fixed colour per generator, tile/mask
grids, loss curves and the plotters that more than one notebook draws (mask adherence: 02 and 06)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from discnb import LABELS
from discnb.core.train import read_metrics

# The paper's label colours (Fig. 5): NC green, GG3 blue, GG4 yellow, GG5 red.
PALETTE = np.array([[46, 160, 67], [31, 119, 230], [240, 200, 30], [220, 40, 40]], np.uint8)


# Generators in the paper's order; notebook 02's chance row (SD's tiles scored against other tiles' masks).
GEN_ORDER = ("SD", "SD-SC", "SD-SC-step", "SD-DISC", "SD-DISC-CoTrain")
CHANCE = "SD vs shuffled masks (chance)"


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
    """Save a figure as PNG (and PDF beside it). The PDF carries no creation date, so the same figure gives the same
    bytes on every run (a re-run leaves committed figures unchanged)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path.with_suffix(".png"), dpi=150, bbox_inches="tight")
    if pdf:
        fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight", metadata={"CreationDate": None})
    return path.with_suffix(".png")


def loss_curves(panels: dict[str, str | Path], smooth: int = 1, ylabel: str = "loss", log: bool = True,
                xlabel: str = "optimizer step", title: str | None = None):
    """Training loss (rolling mean over ``smooth`` logged steps) and validation loss (EMA weights
    when EMA is on) from each run folder's ``metrics.csv``; one panel per entry of ``panels``
    (panel title -> run folder), or one shared panel when ``title`` is given. Folders without a
    ``metrics.csv`` (a first stage loaded from ``autoencoder.path``) are left out."""
    import matplotlib.pyplot as plt
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


# ========================================================= generator colours
def _colours() -> dict[str, tuple]:
    import seaborn as sns
    pal = sns.color_palette("colorblind", 10)
    names = list(GEN_ORDER) + ["pixel", "tile", "tile+slide"]
    # colorblind: 0 blue, 1 orange, 2 green, 3 vermillion, 4 purple, 5 brown, 6 pink, 7 grey, 8 yellow, 9 sky
    idx = [0, 1, 5, 2, 4, 0, 3, 9]
    return dict(zip(names, [pal[i] for i in idx]))


def colour(name: str):
    """The fixed colour-blind-safe colour of a generator or conditioning (grey for anything else)."""
    return _colours().get(name, (0.5, 0.5, 0.5))


def order(names) -> list[str]:
    """Generators in the paper's order, unknown names last."""
    names = list(dict.fromkeys(names))
    return [g for g in GEN_ORDER if g in names] + [g for g in names if g not in GEN_ORDER]


# ========================================================= mask adherence (notebooks 02, 06)
def adherence_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Per model, seed and class: the judge's IoU with the guiding mask (classes NC..GG5 and 'mean')."""
    a = df[(df.metric == "iou") & (df.model != CHANCE)][["model", "seed", "label", "value"]]
    m = df[(df.metric == "mean_iou") & (df.model != CHANCE)][["model", "seed", "value"]].assign(label="mean")
    out = pd.concat([a, m], ignore_index=True).rename(columns={"label": "class", "value": "iou"})
    out["class"] = pd.Categorical(out["class"], list(LABELS) + ["mean"])
    return out


def chance_level(df: pd.DataFrame) -> float:
    c = df[(df.model == CHANCE) & (df.metric == "mean_iou")].value
    return float(c.mean()) if len(c) else float("nan")


def fig_adherence(df: pd.DataFrame):
    """Mask adherence per class: the pattern judge's IoU with each tile's guiding mask, bars mean ± std
    over seeds, per generator; the dashed line is chance (SD's tiles against shuffled masks, mean IoU)."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    a = adherence_frame(df)
    if a.empty:
        raise ValueError("adherence: comparison.csv has no IoU rows; re-run notebooks/02_sc_disc.ipynb")
    models = order(a.model)
    fig, ax = plt.subplots(figsize=(1.3 + 1.25 * (len(LABELS) + 1), 3.4))
    sns.barplot(a, x="class", y="iou", hue="model", hue_order=models, palette=[colour(m) for m in models],
                errorbar="sd", capsize=0.1, err_kws={"linewidth": 1}, ax=ax)
    ch = chance_level(df)
    if np.isfinite(ch):
        ax.axhline(ch, color="black", ls="--", lw=1, label="chance (SD tiles vs shuffled masks, mean IoU)")
    n = a.groupby("model").seed.nunique()
    ax.set_xlabel("class of the guiding mask (mean = mean IoU over the classes present)")
    ax.set_ylabel("IoU of judge segmentation\nwith guiding mask (0-1)")
    ax.set_title(f"Mask adherence (pattern judge; bars: mean ± std over {n.min()}-{n.max()} seeds)"
                 if n.min() != n.max() else f"Mask adherence (pattern judge; mean ± std over {n.min()} seed(s))",
                 fontsize=9)
    ax.set_ylim(0, max(0.05, float(np.nanmax(a.groupby(["model", "class"], observed=True).iou.mean()) * 1.35)))
    ax.legend(fontsize=7, ncol=2, frameon=False, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


# ========================================================= Fig. 5 (notebooks 02, 06)
def fig5_rows(cmp: dict, n: int) -> tuple[dict, list[str]]:
    """Fig. 5 layout: one row per guiding mask; columns real | mask | SD | SD-SC | SD-DISC | SD-DISC-CoTrain
    (and any other stored model, e.g. SD-SC-step)."""
    models = order(cmp["samples"])
    n = min(n, len(cmp["masks"]))
    cols = ["real", "mask"] + models
    rows = {f"mask {i + 1}": [cmp["real"][i], colorize(cmp["masks"][i])] + [cmp["samples"][m][i] for m in models]
            for i in range(n)}
    return rows, cols


# ========================================================= Fig. 6 (notebooks 05, 06)
def band(ax, x, m, sd, col, label, style="-o"):
    """A mean curve with a ± std band."""
    ax.plot(x, m, style, ms=3, color=col, label=label)
    ax.fill_between(x, m - sd, m + sd, color=col, alpha=0.15, lw=0)


def lam_axes(ax, lams, where: str, lab: str) -> None:
    """Axes of an AUROC-against-λ panel (Figs. 6-7)."""
    hi = float(np.nanmax(lams)) if len(lams) else 1.0
    ax.set_xlim(-0.02 * max(hi, 0.1), hi + 0.02 * max(hi, 0.1))
    ax.set_title(f"{where} · AUROC {'all labels (macro)' if lab == 'macro' else lab}", fontsize=9)
    ax.set_xlabel("balance weight λ (Eq. 4)")
    ax.set_ylabel("AUROC (%)")
    ax.grid(alpha=0.3)


def shared_legend(fig, axes) -> None:
    """One legend below the panels for every distinct label in them."""
    seen = {}
    for ax in axes.flat:
        for h, l_ in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(l_, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=min(len(seen), 3), frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.04 + 0.025 * ((len(seen) + 2) // 3) if seen else 0, 1, 1))


def plot_sweep(summary: pd.DataFrame, ood_name: str = "OOD", labels=("macro", "GG5"), sets=("test", "ood"),
               exclude=()):
    """Fig. 6: AUROC (%) against the balance weight λ of Eq. 4 for TransMIL + each generator's slides
    (mean ± std band over folds and seeds; λ = 0 is TransMIL on real slides), TransMIL (solid grey)
    and Mixed Supervision (dashed black) as reference lines; rows all-label macro AUROC and GG5,
    columns in-distribution test and OOD. ``summary``: notebook 05's (model, generator, lam,
    test_set, metric, label, mean, std); generators in ``exclude`` are left out (Fig. 7's ablation)."""
    import matplotlib.pyplot as plt
    s_all = summary[summary.metric == "auroc"]
    sets = [ts for ts in sets if (s_all.test_set == ts).any()]
    if not sets:
        raise ValueError("Fig. 6: the summary has no test or OOD AUROC rows")
    fig, axes = plt.subplots(len(labels), len(sets), figsize=(4.6 * len(sets), 3.2 * len(labels)), squeeze=False)
    for i, lab in enumerate(labels):
        for j, ts in enumerate(sets):
            ax = axes[i, j]
            s = s_all[(s_all.test_set == ts) & (s_all.label == lab)]
            base = s[(s.model == "TransMIL") & (s.generator == "none")]
            ms = s[s.model == "MixedSupervision"]
            if len(base) and np.isfinite(base["mean"].iloc[0]):
                m, sd = 100 * base["mean"].iloc[0], 100 * np.nan_to_num(base["std"].iloc[0])
                ax.axhline(m, color="grey", lw=1.5, label="TransMIL (real only, λ = 0)")
                ax.axhspan(m - sd, m + sd, color="grey", alpha=0.12, lw=0)
            if len(ms) and np.isfinite(ms["mean"].iloc[0]):
                m, sd = 100 * ms["mean"].iloc[0], 100 * np.nan_to_num(ms["std"].iloc[0])
                ax.axhline(m, color="black", ls="--", lw=1.2, label="Mixed Supervision")
                ax.axhspan(m - sd, m + sd, color="black", alpha=0.06, lw=0)
            for gen in order(g for g in s.generator.unique() if g != "none" and g not in set(exclude)):
                sg = s[(s.generator == gen) & (s.model == "TransMIL")].sort_values("lam")
                if len(base):
                    sg = pd.concat([base, sg])
                band(ax, sg.lam.to_numpy(float), 100 * sg["mean"].to_numpy(float),
                     100 * np.nan_to_num(sg["std"].to_numpy(float)), colour(gen), f"TransMIL + {gen}")
            if not np.isfinite(s["mean"].to_numpy(float)).any():
                ax.text(0.5, 0.5, f"AUROC {lab} undefined here:\nevery slide has the same {lab} label",
                        ha="center", va="center", transform=ax.transAxes, fontsize=8)
            lam_axes(ax, s_all.lam, "in-distribution test" if ts == "test" else ood_name, lab)
    shared_legend(fig, axes)
    return fig


def fig8_rows(fig8: dict, test_set: str = "test") -> tuple[dict, list[str]]:
    """Fig. 8 layout: tile | ground truth | baseline | + each generator, as image-grid rows, and
    the tiles' names as column titles."""
    if test_set not in set(fig8["test_sets"].tolist()):
        raise KeyError(f"no {test_set!r} tiles in the Fig. 8 arrays (test sets: {fig8['test_sets'].tolist()})")
    rows = {"tile": list(fig8[f"{test_set}_tiles"]), "ground truth": [colorize(m) for m in fig8[f"{test_set}_truth"]]}
    for name, pred in zip(fig8["runs"].tolist(), fig8[f"{test_set}_pred"]):
        rows[name] = [colorize(m) for m in pred]
    return rows, [str(n)[:18] for n in fig8[f"{test_set}_names"]]
