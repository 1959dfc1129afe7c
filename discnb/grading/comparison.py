"""Notebook 02's comparison of SD, SD-SC, SD-DISC and SD-DISC-CoTrain (paper Sec. 2.3, Fig. 5) read
back: the tidy rows as mean ± std over seeds, the table of IoU per class, KID and cost, and the Fig. 5
tiles, for notebook 02 itself and notebook 06."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from discnb import LABELS, plots

CHANCE = plots.CHANCE  # the row of SD's tiles scored against other tiles' masks


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby(["model", "metric", "label"], sort=False)["value"]
    return g.agg(mean="mean", std="std", n="count").reset_index()


def table(summary: pd.DataFrame, models) -> pd.DataFrame:
    """model x (IoU per class, mean IoU, KID, s/tile, UNet evals/tile) as 'mean ± std'."""
    s = summary.copy()
    s["col"] = np.where(s.metric == "iou", "IoU " + s.label, s.metric)
    s["cell"] = [f"{m:.3f} ± {sd:.3f}" if n > 1 else f"{m:.3f}" for m, sd, n in zip(s["mean"], s["std"].fillna(0), s["n"])]
    t = s.pivot(index="model", columns="col", values="cell")
    cols = [f"IoU {lab}" for lab in LABELS] + ["mean_iou", "pixel_agreement", "kid", "sec_per_tile", "nfe_per_tile"]
    order = [m for m in list(models) + [CHANCE] if m in t.index]
    return t.reindex(index=order, columns=[c for c in cols if c in t.columns])


def load_samples(folder: str | Path) -> dict:
    """The Fig. 5 tiles saved by :func:`save` (for notebook 06)."""
    p = Path(folder) / "comparison_samples.npz"
    if not p.exists():
        raise FileNotFoundError(f"{p}: no SC/DISC comparison; run notebooks/02_sc_disc.ipynb for this profile")
    with np.load(p) as z:
        models = [str(m) for m in z["models"]]
        return {"masks": z["masks"], "real": z["real"], "samples": {m: z[f"tiles_{i}"] for i, m in enumerate(models)}}
