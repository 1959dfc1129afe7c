"""Notebook 06: the paper's figures (and the new ones) from stored results; nothing is trained here.

Every figure reads what an earlier notebook wrote under ``outputs/<profile>/``:

=============  ==========================================  ====================================
figure         reads                                       written by
=============  ==========================================  ====================================
``fig5``       ``disc/comparison_samples.npz``             notebook 02 (Fig. 5 layout)
``adherence``  ``disc/comparison.csv``                     notebook 02 (pattern judge IoU)
``cost``       ``disc/comparison.csv``, ``sc_cost.csv``     notebook 02 (s/tile, UNet evals/tile)
``fig6``       ``mil/results.csv``, ``results.json``        notebook 05 (λ sweep, Fig. 6)
``fig7``       ``ablation/...`` (see :func:`load_ablation`)  notebooks 01, 03, 05 per condition
``fig8``       ``carcinonet/results.json`` + runs/best      notebook 04 (Fig. 8 layout)
``bench``      ``bench.json``                              ``python -m discnb.pipelines.bench``
=============  ==========================================  ====================================

A missing input raises :class:`MissingInput`, whose message names what to run; notebook 06
prints it and goes on. Colours: seaborn's colour-blind-safe palette, one fixed colour per
generator / condition in every figure; label maps use :data:`discnb.plots.PALETTE` (Fig. 5).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from discnb import LABELS

from discnb.core import paths

NOTEBOOK = "06_figures"
FIGURES = ("fig5", "adherence", "cost", "fig6", "fig7", "fig8", "bench")
GEN_ORDER = ("SD", "SD-SC", "SD-SC-step", "SD-DISC", "SD-DISC-CoTrain")
# Fig. 7: notebook 01's ablation SDs (generators of notebooks 03 and 05) and the conditioning each stands for
ABLATION_GENERATORS = {"SD": "pixel", "SD-tile": "tile", "SD-tile+slide": "tile+slide"}
CONDITIONS = ("pixel", "tile", "tile+slide")
CHANCE = "SD vs shuffled masks (chance)"

# What each figure reads (relative to outputs/<profile>/) and which notebook writes it.
REQUIRES = {
    "fig5": (["disc/comparison_samples.npz"], "notebooks/02_sc_disc.ipynb"),
    "adherence": (["disc/comparison.csv"], "notebooks/02_sc_disc.ipynb"),
    "cost": (["disc/comparison.csv", "disc/sc_cost.csv"], "notebooks/02_sc_disc.ipynb"),
    "fig6": (["mil/results.csv"], "notebooks/05_transmil_sweep.ipynb"),
    "fig8": (["carcinonet/results.json", "carcinonet/params.resolved.yaml"], "notebooks/04_carcinonet.ipynb"),
    "bench": (["bench.json"], "python -m discnb.pipelines.bench --profile {profile}"),
}


class MissingInput(FileNotFoundError):
    """A figure's stored input is not there; the message says what to run."""


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


# ===================================================================================== inputs
def run_hint(name: str, profile: str) -> str:
    what = REQUIRES[name][1].format(profile=profile)
    return f"run {what} (profile {profile})" if what.startswith("notebooks/") else f"run `{what}`"


def inputs_present(name: str, profile: str) -> bool:
    """Whether figure ``name`` has every stored input it reads."""
    if name == "fig7":
        main = paths.output_dir(profile, "mil", create=False) / "results.csv"
        in_main = main.exists() and bool(set(pd.read_csv(main, usecols=["generator"]).generator)
                                         & (set(ABLATION_GENERATORS) - {"SD"}))
        return in_main or bool(ablation_sources(profile))
    files, _ = REQUIRES[name]
    root = paths.output_dir(profile, create=False)
    return all((root / f).exists() for f in files)


def require(name: str, profile: str) -> Path:
    """``outputs/<profile>`` if figure ``name``'s inputs are there, else :class:`MissingInput`."""
    root = paths.output_dir(profile, create=False)
    missing = [str(root / f) for f in REQUIRES[name][0] if not (root / f).exists()]
    if missing:
        raise MissingInput(f"{name}: {', '.join(missing)} not found; {run_hint(name, profile)} first")
    return root


def load_comparison(profile: str) -> pd.DataFrame:
    """Notebook 02's tidy comparison (model, seed, metric, label, value)."""
    return pd.read_csv(require("adherence", profile) / "disc" / "comparison.csv")


def load_fig5(profile: str) -> dict:
    from discnb.pipelines.sc_disc import load_samples
    return load_samples(require("fig5", profile) / "disc")


def load_mil(profile: str) -> tuple[pd.DataFrame, str]:
    """Notebook 05's summary (mean ± std over folds and seeds) and the OOD set's name."""
    from discnb.pipelines import mil
    root = require("fig6", profile) / "mil"
    js = root / "results.json"
    ood = json.loads(js.read_text()).get("ood", "OOD") if js.exists() else "OOD"
    return mil.summarize(pd.read_csv(root / "results.csv")), ood or "OOD"


# ===================================================================================== Fig. 5
def fig5_rows(cmp: dict, n: int) -> tuple[dict, list[str]]:
    """Fig. 5 layout: one row per guiding mask; columns real | mask | SD | SD-SC | SD-DISC | SD-DISC-CoTrain
    (and any other stored model, e.g. SD-SC-step)."""
    from discnb.plots import colorize
    models = order(cmp["samples"])
    n = min(n, len(cmp["masks"]))
    cols = ["real", "mask"] + models
    rows = {f"mask {i + 1}": [cmp["real"][i], colorize(cmp["masks"][i])] + [cmp["samples"][m][i] for m in models]
            for i in range(n)}
    return rows, cols


def fig5(cmp: dict, n: int = 4):
    from discnb.plots import image_grid
    rows, cols = fig5_rows(cmp, n)
    return image_grid(rows, cols, size=1.5)


# ============================================================================= mask adherence
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
        raise MissingInput("adherence: comparison.csv has no IoU rows; re-run notebooks/02_sc_disc.ipynb")
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


def adherence_table(df: pd.DataFrame) -> pd.DataFrame:
    """Notebook 02's table (IoU per class, mean IoU, KID, s/tile, UNet evals/tile as 'mean ± std')."""
    from discnb.pipelines.sc_disc import summarize, table
    return table(summarize(df), order(df.model[df.model != CHANCE]))


# ============================================================================= cost vs adherence
def cost_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean and std over seeds of mean IoU, s/tile and UNet evals/tile."""
    d = df[df.metric.isin(["mean_iou", "sec_per_tile", "nfe_per_tile"]) & (df.model != CHANCE)]
    g = d.groupby(["model", "metric"]).value.agg(["mean", "std"]).unstack("metric")
    g.columns = [f"{m}_{s}" for s, m in g.columns]
    return g.reindex(order(g.index)).fillna({c: 0.0 for c in g.columns if c.endswith("_std")})


def fig_cost(df: pd.DataFrame, sc_cost: pd.DataFrame | None = None):
    """Cost per tile against mask adherence (mean ± std over seeds, both axes): wall-clock seconds
    and UNet evaluations per tile; and SD-SC's cost relative to SD by number of labels in the mask."""
    import matplotlib.pyplot as plt
    c = cost_frame(df)
    panels = [("sec_per_tile", "wall-clock time per tile (s)"), ("nfe_per_tile", "UNet evaluations per tile")]
    n = len(panels) + (sc_cost is not None and len(sc_cost) > 0)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    ch = chance_level(df)
    for ax, (metric, label) in zip(axes[0], panels):
        for m, r in c.iterrows():
            ax.errorbar(r[f"{metric}_mean"], r["mean_iou_mean"], xerr=r[f"{metric}_std"], yerr=r["mean_iou_std"],
                        fmt="o", ms=6, capsize=3, color=colour(m), label=m)
        if np.isfinite(ch):
            ax.axhline(ch, color="black", ls="--", lw=1, label="chance")
        ax.set_xlabel(label)
        ax.set_ylabel("mean IoU with guiding mask (0-1)")
        ax.grid(alpha=0.3)
    axes[0, 0].set_title("Cost vs adherence (wall clock)", fontsize=9)
    axes[0, 1].set_title("Cost vs adherence (UNet evaluations)", fontsize=9)
    axes[0, 0].legend(fontsize=7, frameon=False)
    if n == 3:
        ax = axes[0, 2]
        s = sc_cost.sort_values("labels")
        ax.plot(s["labels"], s["time_ratio"], "-o", color=colour("SD-SC"), label="wall-clock time")
        ax.plot(s["labels"], s["nfe_ratio"], "--s", color="black", ms=4, label="UNet evaluations")
        ax.axhline(1, color="grey", lw=0.8)
        ax.set_xticks(s["labels"])
        ax.set_xlabel("labels present in the mask")
        ax.set_ylabel("SD-SC cost / SD cost (×)")
        ax.set_title("SD-SC cost by number of labels", fontsize=9)
        ax.legend(fontsize=7, frameon=False)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ===================================================================================== Fig. 6
def _band(ax, x, m, sd, col, label, style="-o"):
    ax.plot(x, m, style, ms=3, color=col, label=label)
    ax.fill_between(x, m - sd, m + sd, color=col, alpha=0.15, lw=0)


def fig6(summary: pd.DataFrame, ood_name: str = "OOD", labels=("macro", "GG5"), sets=("test", "ood")):
    """Fig. 6: AUROC (%) against the balance weight λ of Eq. 4 for TransMIL + each generator's slides
    (mean ± std band over folds and seeds; λ = 0 is TransMIL on real slides), TransMIL (solid grey)
    and Mixed Supervision (dashed black) as reference lines; rows all-label macro AUROC and GG5,
    columns in-distribution test and OOD."""
    import matplotlib.pyplot as plt
    s_all = summary[summary.metric == "auroc"]
    sets = [ts for ts in sets if (s_all.test_set == ts).any()]
    if not sets:
        raise MissingInput("fig6: results.csv has no test or OOD AUROC rows; re-run notebooks/05_transmil_sweep.ipynb")
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
            # the conditioning ablation's SD-tile / SD-tile+slide belong to Fig. 7, not here
            for gen in order(g for g in s.generator.unique() if g != "none" and g not in set(ABLATION_GENERATORS) - {"SD"}):
                sg = s[(s.generator == gen) & (s.model == "TransMIL")].sort_values("lam")
                if len(base):
                    sg = pd.concat([base, sg])
                _band(ax, sg.lam.to_numpy(float), 100 * sg["mean"].to_numpy(float),
                      100 * np.nan_to_num(sg["std"].to_numpy(float)), colour(gen), f"TransMIL + {gen}")
            if not np.isfinite(s["mean"].to_numpy(float)).any():
                ax.text(0.5, 0.5, f"AUROC {lab} undefined here:\nevery slide has the same {lab} label",
                        ha="center", va="center", transform=ax.transAxes, fontsize=8)
            _lam_axes(ax, s_all.lam, "in-distribution test" if ts == "test" else ood_name, lab)
    _shared_legend(fig, axes)
    return fig


def _lam_axes(ax, lams, where: str, lab: str) -> None:
    hi = float(np.nanmax(lams)) if len(lams) else 1.0
    ax.set_xlim(-0.02 * max(hi, 0.1), hi + 0.02 * max(hi, 0.1))
    ax.set_title(f"{where} · AUROC {'all labels (macro)' if lab == 'macro' else lab}", fontsize=9)
    ax.set_xlabel("balance weight λ (Eq. 4)")
    ax.set_ylabel("AUROC (%)")
    ax.grid(alpha=0.3)


def _shared_legend(fig, axes):
    seen = {}
    for ax in axes.flat:
        for h, l_ in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(l_, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=min(len(seen), 3), frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.04 + 0.025 * ((len(seen) + 2) // 3) if seen else 0, 1, 1))


def best_lambda_table(summary: pd.DataFrame) -> pd.DataFrame:
    from discnb.pipelines.mil import best_lambda_table as t
    return t(summary)


# ===================================================================================== Fig. 7
def ablation_sources(profile: str) -> dict[str, Path]:
    """Where the conditioning ablation's results are (see :func:`load_ablation`)."""
    root = paths.output_dir(profile, "ablation", create=False)
    if (root / "results.csv").exists():
        return {"all": root / "results.csv"}
    return {c: root / c / "mil" / "results.csv" for c in CONDITIONS if (root / c / "mil" / "results.csv").exists()}


def ablation_hint(profile: str) -> str:
    root = f"outputs/{profile}/ablation"
    return (f"fig7 (conditioning ablation) needs notebook 05 results for SD conditioned on tile and/or tile+slide "
            f"labels besides pixel: list them in ablation_conditions of notebooks/01_train_ldm.ipynb (the demo and "
            f"paper profiles do), add SD-tile / SD-tile+slide to the generators of notebooks 03 and 05, and run "
            f"01, 03 and 05 (profile {profile}); or write one {root}/results.csv (notebook 05's columns plus "
            f"`condition`), or one notebook-05 run per condition under {root}/<condition>/mil/")


def load_ablation(profile: str, generator: str = "SD") -> pd.DataFrame:
    """The conditioning ablation (Fig. 7) as notebook 05's tidy rows plus a ``condition`` column.

    Inputs, first found wins:

    - the main run ``outputs/<profile>/mil/results.csv`` when it has rows of the ablation generators
      ``SD-tile`` / ``SD-tile+slide`` (notebook 01's ``ablation_conditions``, swept by notebook 05):
      SD is ``pixel``, SD-tile ``tile``, SD-tile+slide ``tile+slide`` (all relabelled ``generator``);
    - ``outputs/<profile>/ablation/results.csv``: notebook 05's ``results.csv`` columns plus
      ``condition`` (pixel | tile | tile+slide); or
    - ``outputs/<profile>/ablation/<condition>/mil/results.csv`` for each condition, each a
      notebook-05 run on tile sets of an SD trained with ``condition: <condition>``. Where ``pixel``
      has no folder, the main run's ``generator`` rows stand in for it.

    Only TransMIL rows of ``generator`` (λ > 0) and the real-only baseline (λ = 0) are kept. A
    figure needs at least one non-pixel condition; otherwise :class:`MissingInput`.
    """
    main = paths.output_dir(profile, "mil", create=False) / "results.csv"
    src = ablation_sources(profile)
    mdf = pd.read_csv(main) if main.exists() else None
    if mdf is not None and set(mdf.generator) & (set(ABLATION_GENERATORS) - {"SD"}):
        df = mdf[mdf.generator.isin(list(ABLATION_GENERATORS) + ["none"])].copy()
        df["condition"] = df.generator.map(ABLATION_GENERATORS).fillna("pixel")
        df.loc[df.generator != "none", "generator"] = generator
    elif "all" in src:
        df = pd.read_csv(src["all"])
        if "condition" not in df.columns:
            raise ValueError(f"{src['all']}: needs a `condition` column (pixel | tile | tile+slide)")
    else:
        frames = [pd.read_csv(p).assign(condition=c) for c, p in src.items()]
        if frames and "pixel" not in src and mdf is not None:
            frames.append(mdf.assign(condition="pixel"))
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["condition"])
    if not set(df.condition) - {"pixel"}:
        raise MissingInput(ablation_hint(profile))
    keep = (df.model == "TransMIL") & ((df.generator == generator) | (df.generator == "none"))
    return df[keep].copy()


def fig7(df: pd.DataFrame, labels=("macro", "GG5"), sets=("test", "ood"), ood_name: str = "OOD"):
    """Fig. 7 (left): TransMIL AUROC (%) against λ with tiles from SD conditioned on pixel-wise labels
    (the paper's choice), tile labels, or tile + slide labels; mean ± std band over folds and seeds
    (and over the conditions' baseline runs for λ = 0)."""
    import matplotlib.pyplot as plt
    keys = ["condition", "generator", "lam", "test_set", "label"]
    a = df[df.metric == "auroc"].groupby(keys).value.agg(["mean", lambda v: v.std(ddof=0)]).reset_index()
    a.columns = keys + ["mean", "std"]
    sets = [ts for ts in sets if (a.test_set == ts).any()]
    if not sets:
        raise MissingInput("fig7: the ablation results have no test or OOD AUROC rows")
    conds = [c for c in CONDITIONS if c in set(a.condition)] + sorted(set(a.condition) - set(CONDITIONS))
    fig, axes = plt.subplots(len(labels), len(sets), figsize=(4.6 * len(sets), 3.2 * len(labels)), squeeze=False)
    for i, lab in enumerate(labels):
        for j, ts in enumerate(sets):
            ax = axes[i, j]
            s = a[(a.test_set == ts) & (a.label == lab)]
            b = df[(df.metric == "auroc") & (df.generator == "none") & (df.test_set == ts) & (df.label == lab)].value
            if len(b) and np.isfinite(b).any():
                m, sd = 100 * b.mean(), 100 * np.nan_to_num(b.std(ddof=0))
                ax.axhline(m, color="grey", lw=1.5, label="TransMIL (real only, λ = 0)")
                ax.axhspan(m - sd, m + sd, color="grey", alpha=0.12, lw=0)
            for c in conds:
                sc = s[(s.condition == c) & (s.generator != "none")].sort_values("lam")
                if len(b):
                    sc = pd.concat([pd.DataFrame({"lam": [0.0], "mean": [b.mean()], "std": [b.std(ddof=0)]}), sc])
                _band(ax, sc.lam.to_numpy(float), 100 * sc["mean"].to_numpy(float),
                      100 * np.nan_to_num(sc["std"].to_numpy(float)), colour(c), f"TransMIL + SD ({c} labels)")
            _lam_axes(ax, a.lam, "in-distribution test" if ts == "test" else ood_name, lab)
    _shared_legend(fig, axes)
    return fig


# ===================================================================================== Fig. 8
def carcinonet_params(profile: str):
    """Notebook 04's parameters as it ran for this profile (its ``params.resolved.yaml``)."""
    import yaml

    from discnb.core import params
    from discnb.pipelines.carcinonet import NOTEBOOK as NB04
    p = require("fig8", profile) / "carcinonet" / "params.resolved.yaml"
    return params.validate(NB04, yaml.safe_load(p.read_text()) or {})


def carcinonet_runs(P04) -> list[dict]:
    """Notebook 04's runs (``results.json``), their folders re-rooted under this checkout's
    ``carcinonet/runs`` when the stored absolute path is elsewhere (a moved clone)."""
    from discnb.pipelines import carcinonet as cn
    out = cn.out_dir(P04)
    runs = json.loads((out / "results.json").read_text())["runs"]
    fixed = []
    for r in runs:
        d = Path(r["dir"])
        if not (d / "best").exists():
            d = out / "runs" / d.name
        if not (d / "best").exists():
            raise MissingInput(f"fig8: {d / 'best'}: the model of run {r['tag']} seed {r['seed']} is gone; "
                               f"re-run notebooks/04_carcinonet.ipynb (profile {P04.profile})")
        fixed.append({**r, "dir": str(d)})
    return fixed


def carcinonet_data(P04) -> dict:
    """Notebook 04's tiles (``carcinonet.load_data``), without its per-split class warnings."""
    import warnings

    from discnb.pipelines import carcinonet as cn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return cn.load_data(P04, progress=False)


def fig8_rows(profile: str, n_tiles: int = 4, test_set: str = "test", D: dict | None = None,
              seed: int | None = None) -> tuple[dict, list]:
    """Fig. 8 layout from notebook 04's stored models: tile | ground truth | baseline | + each generator
    (seed ``seeds[0]`` of notebook 04; tiles with the most labels first). Loads the models and
    predicts; trains nothing. ``D``: notebook 04's data, if already loaded."""
    from discnb.pipelines import carcinonet as cn
    from discnb.core.params import Params
    P04 = carcinonet_params(profile)
    runs = carcinonet_runs(P04)
    D = D if D is not None else carcinonet_data(P04)
    if test_set not in D or not len(D[test_set]["imgs"]):
        raise MissingInput(f"fig8: notebook 04's data (profile {profile}) has no {test_set!r} tiles "
                           f"(ood_split {P04.ood_split!r})")
    P = Params({**P04, "figure_tiles": int(n_tiles), "seed": P04.seed if seed is None else seed})
    return cn.figure_rows(P, runs, D, test_set)


def fig8(profile: str, n_tiles: int = 4, test_sets=("test",)) -> dict:
    """Fig. 8 grids, one per test set (``test``: in-distribution, ``ood``), the data loaded once.
    A test set without tiles is left out (with a message) when another one has tiles."""
    from discnb.plots import image_grid
    D = carcinonet_data(carcinonet_params(profile))
    out, errors = {}, []
    for ts in test_sets:
        try:
            rows, titles = fig8_rows(profile, n_tiles, ts, D)
        except MissingInput as e:
            errors.append(str(e))
            continue
        out[ts] = image_grid(rows, titles)
    if out:
        for e in errors:
            print(f"[fig8] left out: {e}")
    else:
        raise MissingInput("; ".join(errors) or "fig8: no test set asked for")
    return out


def carcinonet_table(profile: str) -> pd.DataFrame:
    """Notebook 04's metric table (mean ± std over seeds) from its ``results.csv``."""
    from discnb.pipelines import carcinonet as cn
    root = require("fig8", profile) / "carcinonet"
    return cn.metric_table(cn.summarize(pd.read_csv(root / "results.csv")))


# ================================================================================== benchmark
BENCH_MODES = ("never", "missing", "always")


def should_run_bench(mode: str, profile: str) -> bool:
    """Notebook 06's ``run_bench``: never, when ``outputs/<profile>/bench.json`` is missing, or always."""
    if mode not in BENCH_MODES:
        raise ValueError(f"run_bench must be one of {BENCH_MODES}, got {mode!r}")
    return mode == "always" or (mode == "missing" and not (paths.output_dir(profile, create=False) / "bench.json").exists())


def load_bench(profile: str) -> dict:
    return json.loads((require("bench", profile) / "bench.json").read_text())


def bench_table(b: dict) -> pd.DataFrame:
    """The benchmark's sampling rows: method, steps, labels, s/tile, UNet evals/tile, × SD DDIM."""
    return pd.DataFrame(b["sampling"]).set_index("method")


def fig_bench(b: dict):
    """Seconds per tile of every sampler the benchmark timed (log scale) and training throughput."""
    import matplotlib.pyplot as plt
    t = pd.DataFrame(b["sampling"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * len(t) + 1.6), gridspec_kw={"width_ratios": [2, 1]})
    ax = axes[0]
    cols = [colour(m.split(" ")[0]) for m in t.method]
    ax.barh(t.method, t.sec_per_tile, color=cols)
    for y, (v, nfe) in enumerate(zip(t.sec_per_tile, t.nfe_per_tile)):
        ax.text(v, y, f" {v:.3g} s · {nfe:.0f} evals", va="center", fontsize=7)
    from matplotlib.ticker import FuncFormatter, NullFormatter
    log = t.sec_per_tile.max() / t.sec_per_tile.min() > 20
    if log:
        ax.set_xscale("log")
        ax.set_xlim(t.sec_per_tile.min() / 2, t.sec_per_tile.max() * 6)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_xlim(0, t.sec_per_tile.max() * 1.45)
    ax.invert_yaxis()
    ax.set_xlabel("wall-clock time per tile (s" + (", log scale)" if log else ")"))
    dev = b["device"]
    ax.set_title(f"Sampling cost on {dev.get('gpu') or dev.get('cpu')} ({dev.get('torch_threads')} threads)", fontsize=8)
    ax = axes[1]
    tr = b["training"]
    names = ["LDM (SD)", "CarcinoNet"]
    vals = [tr["ldm"]["images_per_s"], tr["carcinonet"]["images_per_s"]]
    ax.bar(names, vals, color=[colour("SD"), (0.55, 0.55, 0.55)])
    for x, v in enumerate(vals):
        ax.text(x, v, f"{v:.3g}", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("training images / s")
    ax.set_title("Training throughput", fontsize=8)
    for a in axes:
        a.grid(alpha=0.3, axis="x" if a is axes[0] else "y")
    fig.tight_layout()
    return fig


# ================================================================================== bookkeeping
class Report:
    """What notebook 06 made and what it could not (with the message naming what to run)."""

    def __init__(self, wanted):
        unknown = sorted(set(wanted) - set(FIGURES))
        if unknown:
            raise ValueError(f"unknown figure(s) {unknown}; known: {list(FIGURES)}")
        self.wanted = list(wanted)
        self.made: dict[str, list[str]] = {}
        self.missing: dict[str, str] = {}

    def add(self, name: str, png: Path) -> Path:
        self.made.setdefault(name, []).append(str(png))
        return png

    def skip(self, name: str, err: Exception) -> None:
        self.missing[name] = str(err)
        print(f"[{name}] not made: {err}")

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"figure": n, "made": n in self.made,
                              "files / what to run": ", ".join(Path(p).name for p in self.made.get(n, []))
                              or self.missing.get(n, "")} for n in self.wanted]).set_index("figure")

    def save(self, path: Path) -> Path:
        from discnb.pipelines.prep import write_json
        return write_json(Path(path), {"made": self.made, "missing": self.missing})
