"""Training the slide-level models on bags of tile features (paper Sec. 2.4, Eq. 4): TransMIL
(the baseline), Mixed Supervision (the comparison model) and TransMIL + synthetic slides.

A slide is a :class:`Bag` of tile features in a fixed order (TransMIL is order-sensitive, see
:mod:`discnb.grading.transmil`) with the multi-label target of
:func:`discnb.grading.transmil.slide_targets`. Eq. 4 over slides::

    L = (1 - λ) L_real + λ L_synth         (each a mean BCE over its slides)

Each optimizer step takes ``batch`` real slides (one pass over the training slides per epoch) and
``synth_batch`` synthetic slides drawn at random. Lookahead(RAdam), lr 2e-4, weight decay 1e-5
(official TransMIL); early stopping on the validation loss; the kept weights are those of the
lowest validation loss (TransMIL) or the highest validation macro AUROC (Mixed Supervision, its
official monitor).

Why not :func:`discnb.core.train.fit`: slides are bags of different sizes (20-100 synthetic tiles,
any number of real ones), which :class:`~discnb.core.train.TensorData` cannot hold, and the
official recipe needs Lookahead(RAdam) and early stopping on a validation loss; so this module has
a small plain loop (:func:`train_model`). Bags of equal size in one step are stacked into one
forward pass (the only batching TransMIL allows without masks); with ``batch: 1`` it is the
official one-slide-per-step training.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from discnb import K
from discnb.data import panda
from discnb.grading.eq4 import check_lam, eq4
from discnb.grading.metrics import auroc_scores
from discnb.grading.transmil import MixedSupervision, TransMIL, bce_loss, lookahead_radam


@dataclass
class Bag:
    """One slide: its tile features in a fixed order, target, tile pseudo labels, grid coordinates."""
    slide_id: str
    feats: torch.Tensor          # (n, D)
    y: torch.Tensor              # (K,)
    tile_labels: torch.Tensor    # (n,) long, -100 = unknown
    coords: torch.Tensor         # (n, 2) long grid positions (row, col)
    primary: int
    secondary: int

    def __len__(self) -> int:
        return len(self.feats)


def grid_coords(names, grid: int = 200) -> np.ndarray:
    """(row, col) grid positions of a slide's tiles for Mixed Supervision's position encoding: the
    dense ranks of the y/x coordinates in ``..._xini_X_yini_Y`` names, else the bag order laid on a
    square (as TransMIL's PPEG does); clipped to the encoding's grid."""
    c = panda.tile_coords(names)
    n = len(names)
    if c is None:
        side = max(1, math.ceil(math.sqrt(n)))
        c = np.stack([np.arange(n) // side, np.arange(n) % side], 1)
    else:
        c = np.stack([np.unique(c[:, 0], return_inverse=True)[1], np.unique(c[:, 1], return_inverse=True)[1]], 1)
    return np.clip(c, 0, grid - 1)


def build_model(kind: str, in_dim: int, arch: dict) -> torch.nn.Module:
    """TransMIL (``arch``: dim, heads, landmarks (0 = dim // 2), dropout) or Mixed Supervision
    (``arch``: dim, depth, heads, mlp_ratio, skip_lam, drop_path, masking_ratio)."""
    if kind == "TransMIL":
        return TransMIL(in_dim, K, dim=arch["dim"], heads=arch["heads"], landmarks=arch["landmarks"] or None,
                        dropout=arch["dropout"])
    if kind == "MixedSupervision":
        return MixedSupervision(in_dim, K, dim=arch["dim"], depth=arch["depth"], heads=arch["heads"],
                                mlp_ratio=arch["mlp_ratio"], skip_lam=arch["skip_lam"], drop_path=arch["drop_path"],
                                masking_ratio=arch["masking_ratio"])
    raise ValueError(f"unknown model {kind!r}")


def _groups(bags: list[Bag]) -> list[list[Bag]]:
    by: dict[int, list[Bag]] = {}
    for b in bags:
        by.setdefault(len(b), []).append(b)
    return list(by.values())


def slide_loss(model, bags: list[Bag], device, generator: torch.Generator | None = None,
               instance_weight: float = 0.5) -> torch.Tensor:
    """Mean BCE over ``bags`` (TransMIL: bags of equal size share one forward pass). Mixed
    Supervision: per bag, a random (1 - masking_ratio) of its tiles, 0.5 slide BCE + 0.5 instance
    cross-entropy on the tiles' pseudo labels (tiles without one ignored)."""
    total = torch.zeros((), device=device)
    if isinstance(model, MixedSupervision):
        for b in bags:
            keep = model.keep_index(len(b), generator) if model.training else torch.arange(len(b))
            s_logit, i_logit = model(b.feats[keep].to(device), b.coords[keep].to(device))
            loss = bce_loss(s_logit, b.y.to(device))
            tl = b.tile_labels[keep].to(device)
            if (tl >= 0).any():
                loss = (1 - instance_weight) * loss + instance_weight * F.cross_entropy(i_logit[0], tl, ignore_index=-100)
            total = total + loss
        return total / len(bags)
    for grp in _groups(bags):
        x = torch.stack([b.feats for b in grp]).to(device)
        y = torch.stack([b.y for b in grp]).to(device)
        total = total + bce_loss(model(x), y) * len(grp)
    return total / len(bags)


def step_loss(model, real: list[Bag], synth: list[Bag] | None, lam: float, device,
              generator: torch.Generator | None = None, synth_batch: int = 1) -> torch.Tensor:
    """The loss of one optimizer step of :func:`train_model`: Eq. 4 over the step's real slides and
    ``synth_batch`` synthetic slides drawn from ``synth`` with ``generator`` (after the real loss's
    own draws: Mixed Supervision's masking); the real slides' loss alone when λ = 0."""
    loss = slide_loss(model, real, device, generator)
    if lam == 0:
        return loss
    pick = torch.randint(0, len(synth), (synth_batch,), generator=generator).tolist()
    return eq4(loss, slide_loss(model, [synth[j] for j in pick], device, generator), lam)


@torch.no_grad()
def predict(model, bags: list[Bag], device) -> np.ndarray:
    """Sigmoid probabilities (n_bags, K), one bag per forward pass (as the official evaluation)."""
    model.eval()
    out = np.zeros((len(bags), K), np.float32)
    for i, b in enumerate(bags):
        logits = model(b.feats.to(device), b.coords.to(device))[0] if isinstance(model, MixedSupervision) else model(b.feats.to(device))
        out[i] = torch.sigmoid(logits.float()).cpu().numpy().reshape(-1)
    return out


def mean_bce(prob: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities (clamped away from 0 and 1) against 0/1 targets."""
    return float(F.binary_cross_entropy(torch.as_tensor(prob).clamp(1e-7, 1 - 1e-7), torch.as_tensor(y)))


def eval_loss(model, bags: list[Bag], device) -> float:
    """Mean slide BCE (no instance loss, all tiles) of ``bags``."""
    if not bags:
        return float("nan")
    return mean_bce(predict(model, bags, device), torch.stack([b.y for b in bags]))


def train_model(model, train: list[Bag], val: list[Bag], T: dict, seed: int, device, synth: list[Bag] | None = None,
                lam: float = 0.0, select: str = "loss") -> dict:
    """Train ``model`` in place; returns {history, epochs, best_epoch, seconds, steps}.

    One epoch = one pass over ``train`` in a seeded random order, ``T['batch']`` slides per
    optimizer step (plus ``T['synth_batch']`` random synthetic slides when λ > 0, Eq. 4). After
    each epoch: validation loss (and macro AUROC); stop after ``T['patience']`` epochs without a
    lower validation loss; restore the weights of the best epoch (lowest loss, or highest macro
    AUROC with ``select='auroc'``, ties to the earlier epoch).
    """
    lam = check_lam(lam)
    if lam > 0 and not synth:
        raise ValueError("λ > 0 needs synthetic slides")
    if not train:
        raise ValueError("no training slides")
    model.to(device)
    opt = lookahead_radam(model, T["lr"], T["weight_decay"], T["lookahead_k"], T["lookahead_alpha"])
    g = torch.Generator().manual_seed(seed)
    best_score, best_state, best_epoch, bad, best_loss = None, None, -1, 0, math.inf
    history, steps, t0 = [], 0, time.perf_counter()
    yv = np.stack([b.y.numpy() for b in val]) if val else None
    for epoch in range(1, T["max_epochs"] + 1):
        model.train()
        perm = torch.randperm(len(train), generator=g).tolist()
        run = 0.0
        for s in range(0, len(perm), T["batch"]):
            loss = step_loss(model, [train[i] for i in perm[s:s + T["batch"]]], synth, lam, device, g, T["synth_batch"])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the training loss became {float(loss.detach())} at epoch {epoch}; lower train.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run += float(loss.detach())
            steps += 1
        row = {"epoch": epoch, "train_loss": run / math.ceil(len(perm) / T["batch"])}
        if val:
            pv = predict(model, val, device)
            row["val_loss"] = mean_bce(pv, yv)
            row["val_auroc"] = auroc_scores(yv, pv)["macro"]
            score = ((-row["val_loss"],) if select == "loss" else
                     (float(np.nan_to_num(row["val_auroc"], nan=-1.0)), -row["val_loss"]))
            if best_score is None or score > best_score:
                best_score, best_epoch = score, epoch
                best_state = copy.deepcopy(model.state_dict())
            if row["val_loss"] < best_loss - 1e-6:
                best_loss, bad = row["val_loss"], 0
            else:
                bad += 1
        history.append(row)
        if val and bad >= T["patience"]:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = len(history)
    return {"history": history, "epochs": len(history), "best_epoch": best_epoch, "steps": steps,
            "seconds": time.perf_counter() - t0}


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof 0) and count over folds and seeds, per model/generator/lam/test set/label."""
    keys = ["model", "generator", "lam", "test_set", "metric", "label"]
    g = df.groupby(keys, sort=False).value
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=0), "n": g.count()}).reset_index()


def percent_cell(m, s, n) -> str:
    if not np.isfinite(m):
        return "n/a"
    return f"{100 * m:.2f} ± {100 * s:.2f}" if n > 1 else f"{100 * m:.2f}"


def select_lambda(summary: pd.DataFrame, generator: str) -> tuple[float, str]:
    """λ* of ``generator``, chosen on validation only (the test split and the OOD set never enter):
    the λ > 0 of the highest mean validation macro AUROC (ties to the smaller λ); where validation
    AUROC is undefined (e.g. single-class validation folds), the lowest validation BCE. Returns
    (λ*, what it was selected on); (NaN, "no validation") without validation rows."""
    s = summary[(summary.model == "TransMIL") & (summary.generator == generator) & (summary.test_set == "val")]
    va = s[(s.metric == "auroc") & (s.label == "macro")].dropna(subset=["mean"])
    vb = s[s.metric == "bce"].dropna(subset=["mean"])
    if len(va):
        return float(va.sort_values(["mean", "lam"], ascending=[False, True]).lam.iloc[0]), "val AUROC"
    if len(vb):
        return float(vb.sort_values(["mean", "lam"]).lam.iloc[0]), "val BCE"
    return float("nan"), "no validation"


def best_lambda_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per generator: λ* chosen on validation (highest mean macro AUROC over λ > 0; where validation
    AUROC is undefined, e.g. single-class validation folds, the lowest validation BCE), the
    test/OOD macro and GG5 AUROC at λ* and their change over the TransMIL baseline; and, flagged as
    chosen on the test set itself (the paper's reading of Fig. 6), the λ that is best on test and
    on OOD."""
    s = summary[summary.model == "TransMIL"]
    a = s[s.metric == "auroc"]
    base = a[a.generator == "none"].set_index(["test_set", "label"])["mean"]

    def at(gen, lam, ts, lab):
        r = a[(a.generator == gen) & (a.lam == lam) & (a.test_set == ts) & (a.label == lab)]
        return (float(r["mean"].iloc[0]), float(r["std"].iloc[0]), int(r["n"].iloc[0])) if len(r) else (np.nan, np.nan, 0)

    rows = []
    for gen in [g for g in s.generator.unique() if g != "none"]:
        row = {"generator": gen}
        lam_star, row["selected on"] = select_lambda(s, gen)
        row["λ* (val)"] = lam_star
        for ts in ("test", "ood"):
            for lab in ("macro", "GG5"):
                m, sd, n = at(gen, lam_star, ts, lab)
                row[f"{ts} {lab} @λ*"] = percent_cell(m, sd, n)
                b = base.get((ts, lab), np.nan)
                row[f"{ts} {lab} Δ"] = f"{100 * (m - b):+.2f}" if np.isfinite(m) and np.isfinite(b) else "n/a"
            st = a[(a.generator == gen) & (a.test_set == ts) & (a.label == "macro")].dropna(subset=["mean"])
            if len(st):
                top = st.sort_values(["mean", "lam"], ascending=[False, True]).iloc[0]
                row[f"best λ on {ts} (optimistic)"] = f"{top.lam:g}: {100 * top['mean']:.2f}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("generator") if rows else pd.DataFrame()
