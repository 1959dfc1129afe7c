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
``bench``      ``bench.json``                              ``python -m discnb.grading.bench``
=============  ==========================================  ====================================

A missing input raises :class:`MissingInput`, whose message names what to run; notebook 06
prints it and goes on. Colours: seaborn's colour-blind-safe palette, one fixed colour per
generator / condition in every figure; label maps use :data:`discnb.plots.PALETTE` (Fig. 5).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, NullFormatter

from discnb import plots
from discnb.core import io, layout, paths
from discnb.core.notebook import cli
from discnb.grading import bench as B
from discnb.grading import carcinonet as gc
from discnb.grading import comparison
from discnb.grading import mil
from discnb.plots import colour, order

NOTEBOOK = "06_figures"
FIGURES = ("fig5", "adherence", "cost", "fig6", "fig7", "fig8", "bench")
# Fig. 7: notebook 01's ablation SDs (generators of notebooks 03 and 05) and the conditioning each stands for
ABLATION_GENERATORS = {"SD": "pixel", "SD-tile": "tile", "SD-tile+slide": "tile+slide"}
CONDITIONS = ("pixel", "tile", "tile+slide")

# What each figure reads ((stage folder of discnb.core.layout.Layout, file); "root": outputs/<profile>) and
# which notebook writes it.
REQUIRES = {
    "fig5": ([("disc", "comparison_samples.npz")], "notebooks/02_sc_disc.ipynb"),
    "adherence": ([("disc", "comparison.csv")], "notebooks/02_sc_disc.ipynb"),
    "cost": ([("disc", "comparison.csv"), ("disc", "sc_cost.csv")], "notebooks/02_sc_disc.ipynb"),
    "fig6": ([("mil", "results.csv")], "notebooks/05_transmil_sweep.ipynb"),
    "fig8": ([("carcinonet", "fig8.npz"), ("carcinonet", "results.csv")], "notebooks/04_carcinonet.ipynb"),
    "bench": ([("root", "bench.json")], "python -m discnb.grading.bench --profile {profile}"),
}


class MissingInput(FileNotFoundError):
    """A figure's stored input is not there; the message says what to run."""


# ===================================================================================== inputs
def run_hint(name: str, profile: str) -> str:
    what = REQUIRES[name][1].format(profile=profile)
    return f"run {what} (profile {profile})" if what.startswith("notebooks/") else f"run `{what}`"


def inputs_present(name: str, profile: str) -> bool:
    """Whether figure ``name`` has every stored input it reads."""
    if name == "fig7":
        main = stored(profile).mil / "results.csv"
        in_main = main.exists() and bool(set(pd.read_csv(main, usecols=["generator"]).generator)
                                         & (set(ABLATION_GENERATORS) - {"SD"}))
        return in_main or bool(ablation_sources(profile))
    L = stored(profile)
    return all((getattr(L, stage) / f).exists() for stage, f in REQUIRES[name][0])


def stored(profile: str) -> layout.Layout:
    """The stage folders of ``profile`` that notebook 06 reads."""
    return layout.of({"profile": profile})


def require(name: str, profile: str) -> layout.Layout:
    """The stage folders of ``profile`` if figure ``name``'s inputs are there, else :class:`MissingInput`."""
    L = stored(profile)
    missing = [str(getattr(L, stage) / f) for stage, f in REQUIRES[name][0] if not (getattr(L, stage) / f).exists()]
    if missing:
        raise MissingInput(f"{name}: {', '.join(missing)} not found; {run_hint(name, profile)} first")
    return L


def load_comparison(profile: str) -> pd.DataFrame:
    """Notebook 02's tidy comparison (model, seed, metric, label, value)."""
    return pd.read_csv(require("adherence", profile).disc / "comparison.csv")


def load_fig5(profile: str) -> dict:
    return comparison.load_samples(require("fig5", profile).disc)


def load_mil(profile: str) -> tuple[pd.DataFrame, str]:
    """Notebook 05's summary (mean ± std over folds and seeds) and the OOD set's name."""
    root = require("fig6", profile).mil
    js = root / "results.json"
    ood = json.loads(js.read_text()).get("ood", "OOD") if js.exists() else "OOD"
    return mil.summarize(pd.read_csv(root / "results.csv")), ood or "OOD"


# ===================================================================================== Fig. 5
def fig5(cmp: dict, n: int = 4):
    rows, cols = plots.fig5_rows(cmp, n)
    return plots.image_grid(rows, cols, size=1.5)


# ============================================================================= mask adherence
def adherence_table(df: pd.DataFrame) -> pd.DataFrame:
    """Notebook 02's table (IoU per class, mean IoU, KID, s/tile, UNet evals/tile as 'mean ± std')."""
    return comparison.table(comparison.summarize(df), order(df.model[df.model != plots.CHANCE]))


# ============================================================================= cost vs adherence
def cost_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean and std over seeds of mean IoU, s/tile and UNet evals/tile."""
    d = df[df.metric.isin(["mean_iou", "sec_per_tile", "nfe_per_tile"]) & (df.model != plots.CHANCE)]
    g = d.groupby(["model", "metric"]).value.agg(["mean", "std"]).unstack("metric")
    g.columns = [f"{m}_{s}" for s, m in g.columns]
    return g.reindex(order(g.index)).fillna({c: 0.0 for c in g.columns if c.endswith("_std")})


def fig_cost(df: pd.DataFrame, sc_cost: pd.DataFrame | None = None):
    """Cost per tile against mask adherence (mean ± std over seeds, both axes): wall-clock seconds
    and UNet evaluations per tile; and SD-SC's cost relative to SD by number of labels in the mask."""
    c = cost_frame(df)
    panels = [("sec_per_tile", "wall-clock time per tile (s)"), ("nfe_per_tile", "UNet evaluations per tile")]
    n = len(panels) + (sc_cost is not None and len(sc_cost) > 0)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    ch = plots.chance_level(df)
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
def fig6(summary: pd.DataFrame, ood_name: str = "OOD", labels=("macro", "GG5"), sets=("test", "ood")):
    """Fig. 6 (:func:`discnb.plots.plot_sweep`, the plotter notebook 05 draws too), without the
    conditioning ablation's SD-tile / SD-tile+slide: they belong to Fig. 7."""
    if not (summary[summary.metric == "auroc"].test_set.isin(sets)).any():
        raise MissingInput("fig6: results.csv has no test or OOD AUROC rows; re-run notebooks/05_transmil_sweep.ipynb")
    return plots.plot_sweep(summary, ood_name, labels, sets, exclude=set(ABLATION_GENERATORS) - {"SD"})


def best_lambda_table(summary: pd.DataFrame) -> pd.DataFrame:
    return mil.best_lambda_table(summary)


# ===================================================================================== Fig. 7
def ablation_sources(profile: str) -> dict[str, Path]:
    """Where the conditioning ablation's results are (see :func:`load_ablation`)."""
    root = stored(profile).ablation
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
    main = stored(profile).mil / "results.csv"
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
                plots.band(ax, sc.lam.to_numpy(float), 100 * sc["mean"].to_numpy(float),
                      100 * np.nan_to_num(sc["std"].to_numpy(float)), colour(c), f"TransMIL + SD ({c} labels)")
            plots.lam_axes(ax, a.lam, "in-distribution test" if ts == "test" else ood_name, lab)
    plots.shared_legend(fig, axes)
    return fig


# ===================================================================================== Fig. 8
def load_fig8(profile: str) -> dict:
    """What notebook 04 stored for Fig. 8 (``carcinonet/fig8.npz``: tiles, truth and each run's
    predicted label maps per test set); nothing is predicted here."""
    return gc.load_fig8(require("fig8", profile).carcinonet / "fig8.npz")


def fig8(stored: dict, n_tiles: int = 4, test_sets=("test",)) -> dict:
    """Fig. 8 grids (tile | ground truth | baseline | + each generator), one per test set that notebook
    04 stored, at most ``n_tiles`` tiles each. A test set it did not store is left out with a
    message when another one is there."""
    have = [str(t) for t in stored["test_sets"]]
    out = {}
    for ts in test_sets:
        if ts not in have:
            print(f"[fig8] left out: notebook 04 stored no {ts!r} tiles (it has {have})")
            continue
        rows, titles = plots.fig8_rows(stored, ts)
        out[ts] = plots.image_grid({k: v[:n_tiles] for k, v in rows.items()}, titles[:n_tiles])
    if not out:
        raise MissingInput(f"fig8: notebook 04 stored none of the test sets {list(test_sets)} (it has {have})")
    return out


def carcinonet_table(profile: str) -> pd.DataFrame:
    """Notebook 04's metric table (mean ± std over seeds) from its ``results.csv``."""
    root = require("fig8", profile).carcinonet
    return gc.metric_table(gc.summarize(pd.read_csv(root / "results.csv")))


# ================================================================================== benchmark
BENCH_MODES = ("never", "missing", "always")


def should_run_bench(mode: str, profile: str) -> bool:
    """Notebook 06's ``run_bench``: never, when ``outputs/<profile>/bench.json`` is missing, or always."""
    if mode not in BENCH_MODES:
        raise ValueError(f"run_bench must be one of {BENCH_MODES}, got {mode!r}")
    return mode == "always" or (mode == "missing" and not (stored(profile).root / "bench.json").exists())


def load_bench(profile: str) -> dict:
    return json.loads((require("bench", profile).root / "bench.json").read_text())


def bench_table(b: dict) -> pd.DataFrame:
    """The benchmark's sampling rows: method, steps, labels, s/tile, UNet evals/tile, × SD DDIM."""
    return pd.DataFrame(b["sampling"]).set_index("method")


def fig_bench(b: dict):
    """Seconds per tile of every sampler the benchmark timed (log scale) and training throughput."""
    t = pd.DataFrame(b["sampling"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * len(t) + 1.6), gridspec_kw={"width_ratios": [2, 1]})
    ax = axes[0]
    cols = [colour(m.split(" ")[0]) for m in t.method]
    ax.barh(t.method, t.sec_per_tile, color=cols)
    for y, (v, nfe) in enumerate(zip(t.sec_per_tile, t.nfe_per_tile)):
        ax.text(v, y, f" {v:.3g} s · {nfe:.0f} evals", va="center", fontsize=7)
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


# ================================================================================== the steps
# Each step draws one entry of FIGURES from stored results: (figures by file stem, table or None).
def step_fig5(P):
    return {"06_fig5_qualitative": fig5(load_fig5(P.profile), P.fig5_rows)}, None


def step_adherence(P):
    cmp = load_comparison(P.profile)
    if plots.adherence_frame(cmp).empty:
        raise MissingInput("adherence: comparison.csv has no IoU rows; re-run notebooks/02_sc_disc.ipynb")
    return {"06_adherence_per_class": plots.fig_adherence(cmp)}, adherence_table(cmp)


def step_cost(P):
    root = require("cost", P.profile).disc
    return {"06_cost_vs_adherence": fig_cost(pd.read_csv(root / "comparison.csv"), pd.read_csv(root / "sc_cost.csv"))}, None


def step_fig6(P):
    summary, ood_name = load_mil(P.profile)
    return {"06_fig6_auroc_vs_lambda": fig6(summary, ood_name)}, best_lambda_table(summary)


def step_fig7(P):
    return {"06_fig7_conditioning_ablation": fig7(load_ablation(P.profile, P.ablation_generator))}, None


def step_fig8(P):
    figs = fig8(load_fig8(P.profile), P.fig8_tiles, P.fig8_test_sets)
    return {f"06_fig8_carcinonet_{ts}": f for ts, f in figs.items()}, carcinonet_table(P.profile)


def step_bench(P):
    b = load_bench(P.profile)
    print("\n".join(B.summary_lines(b)))
    return {"06_bench": fig_bench(b)}, None


STEPS: dict[str, Callable] = {"fig5": step_fig5, "adherence": step_adherence, "cost": step_cost, "fig6": step_fig6,
                              "fig7": step_fig7, "fig8": step_fig8, "bench": step_bench}
TABLES = {"adherence": "adherence_table.csv", "fig6": "mil_best_lambda.csv", "fig8": "carcinonet_table.csv"}


def bench_if_asked(P) -> Path | None:
    """Run the benchmark first when ``run_bench`` asks for it (see :func:`should_run_bench`)."""
    if not should_run_bench(P.run_bench, P.profile):
        return None
    b = B.run(P.profile, B.Settings(**P.bench), progress=False)
    return B.save(b, stored(P.profile).root / "bench.json")


# ================================================================================== bookkeeping
class Report:
    """What notebook 06 made and what it could not (with the message naming what to run)."""

    def __init__(self, P, out: Path | None = None):
        unknown = sorted(set(P.figures_wanted) - set(FIGURES))
        if unknown:
            raise ValueError(f"unknown figure(s) {unknown}; known: {list(FIGURES)}")
        self.P, self.out = P, Path(out) if out is not None else layout.of(P, NOTEBOOK).out
        self.wanted = list(P.figures_wanted)
        self.made: dict[str, list[str]] = {}
        self.missing: dict[str, str] = {}

    def add(self, name: str, png: Path) -> Path:
        self.made.setdefault(name, []).append(str(png))
        return png

    def skip(self, name: str, err: Exception) -> None:
        self.missing[name] = str(err)
        print(f"[{name}] not made: {err}")

    def draw(self, name: str) -> pd.DataFrame | None:
        """Figure ``name`` if wanted: its step's figures saved (PNG + PDF) and recorded, its table
        written to the output folder and returned; a missing input is recorded with what to run."""
        if name not in self.wanted:
            return None
        try:
            figs, table = STEPS[name](self.P)
        except MissingInput as e:
            self.skip(name, e)
            return None
        for stem, fig in figs.items():
            self.add(name, plots.save(fig, paths.figures_dir(self.P.profile) / stem))
        if table is not None:
            table.to_csv(self.out / TABLES[name])
            table.to_csv(paths.results_dir(self.P.profile) / TABLES[name])  # the committed copy the README cites
        return table

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"figure": n, "made": n in self.made,
                              "files / what to run": ", ".join(Path(p).name for p in self.made.get(n, []))
                              or self.missing.get(n, "")} for n in self.wanted]).set_index("figure")

    def save(self) -> Path:
        """``report.json`` in the output folder: what was made and what to run for the rest."""
        return io.write_json(self.out / "report.json", {"made": self.made, "missing": self.missing})

    def check(self) -> None:
        """Every wanted figure whose inputs exist was made (PNG and PDF); every other one has a
        message naming what to run."""
        for name in self.wanted:
            if inputs_present(name, self.P.profile):
                assert name in self.made, f"{name}: its inputs exist but it was not made: {self.missing.get(name)}"
                assert all(Path(p).exists() and Path(p).with_suffix(".pdf").exists() for p in self.made[name]), name
            else:
                assert name in self.missing and "run " in self.missing[name], \
                    f"{name}: no figure and no message naming what to run"


def run(P, progress: bool = True, checks: bool = True) -> Report:
    """Notebook 06: the benchmark if asked, every wanted figure from stored results, ``report.json``."""
    layout.of(P, NOTEBOOK).out.mkdir(parents=True, exist_ok=True)
    bench_if_asked(P)
    R = Report(P)
    for name in FIGURES:
        R.draw(name)
    R.save()
    if checks:
        R.check()
    plt.close("all")
    return R


def main(argv: list[str] | None = None) -> int:
    P, a = cli(NOTEBOOK, "pipelines.paper_figures", __doc__.split("\n\n")[0].split(";")[0], argv)
    print(run(P, checks=not a.no_checks).frame().to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
