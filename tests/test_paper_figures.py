"""discnb.pipelines.paper_figures on small fake stored results: every figure is drawn and saved, and a missing
input gives a message naming what to run."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pandas as pd
import pytest

from discnb import LABELS

from discnb import plots as figures

from discnb.core import params

from discnb.core import paths
from discnb.pipelines import paper_figures as pf

matplotlib.use("Agg")
MODELS = ["SD-DISC", "SD", "SD-SC", "SD-DISC-CoTrain"]  # stored out of order on purpose


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    """An empty outputs/ root: paths.output_dir(profile) points into tmp_path."""
    monkeypatch.setattr(paths, "OUTPUTS", tmp_path / "outputs")
    monkeypatch.setattr(paths, "FIGURES", tmp_path / "figures")
    return tmp_path / "outputs" / "smoke"


def fake_comparison(root, seeds=(0, 1)):
    rng = np.random.default_rng(0)
    rows = []
    for i, m in enumerate(MODELS):
        for s in seeds:
            b = {"model": m, "seed": s}
            rows += [b | {"metric": "iou", "label": lab, "value": rng.uniform(0, 0.6)} for lab in LABELS]
            rows += [b | {"metric": "mean_iou", "label": "all", "value": 0.2 + 0.05 * i + 0.01 * s},
                     b | {"metric": "pixel_agreement", "label": "all", "value": 0.4},
                     b | {"metric": "kid", "label": "all", "value": 0.01},
                     b | {"metric": "sec_per_tile", "label": "all", "value": (2.5 if m == "SD-SC" else 1.0) + 0.1 * s},
                     b | {"metric": "nfe_per_tile", "label": "all", "value": 125.0 if m == "SD-SC" else 50.0}]
    rows.append({"model": figures.CHANCE, "seed": 0, "metric": "mean_iou", "label": "all", "value": 0.15})
    (root / "disc").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "disc" / "comparison.csv", index=False)
    pd.DataFrame({"labels": [1, 2, 3, 4], "sd_sec_per_tile": 1.0, "sc_sec_per_tile": [1.0, 1.9, 2.8, 3.7],
                  "time_ratio": [1.0, 1.9, 2.8, 3.7], "sd_nfe": 50.0, "sc_nfe": [50.0, 100, 150, 200],
                  "nfe_ratio": [1.0, 2, 3, 4]}).to_csv(root / "disc" / "sc_cost.csv", index=False)
    masks = rng.integers(0, 4, (3, 16, 16)).astype(np.uint8)
    tiles = {f"tiles_{i}": rng.integers(0, 255, (3, 16, 16, 3)).astype(np.uint8) for i in range(len(MODELS))}
    np.savez_compressed(root / "disc" / "comparison_samples.npz", masks=masks, real=tiles["tiles_0"],
                        models=np.array(MODELS), **tiles)


def fake_mil(generators=("SD", "SD-SC"), lams=(0.1, 0.5), folds=(1, 2), seed=0):
    rng = np.random.default_rng(seed)
    runs = [("TransMIL", "none", 0.0), ("MixedSupervision", "none", 0.0)]
    runs += [("TransMIL", g, lam) for g in generators for lam in lams]
    rows = []
    for model, gen, lam in runs:
        for fold in folds:
            for ts in ("val", "test", "ood"):
                for lab in list(LABELS) + ["macro"]:
                    rows.append({"model": model, "extractor": "x", "generator": gen, "lam": lam, "fold": fold, "seed": 0,
                                 "test_set": ts, "label": lab, "metric": "auroc", "value": rng.uniform(0.5, 1.0),
                                 "n_slides": 10, "epochs": 3, "best_epoch": 2, "train_s": 1.0})
    return pd.DataFrame(rows)


def saved(fig, tmp_path, name):
    png = figures.save(fig, tmp_path / "figs" / name)
    matplotlib.pyplot.close(fig)
    assert png.exists() and png.with_suffix(".pdf").exists() and png.stat().st_size > 5000
    return png


# ------------------------------------------------------------------------------------ missing
@pytest.mark.parametrize("name, notebook", [("fig5", "02_sc_disc"), ("adherence", "02_sc_disc"), ("cost", "02_sc_disc"),
                                            ("fig6", "05_transmil_sweep"), ("fig8", "04_carcinonet"),
                                            ("fig7", "01_train_ldm"), ("bench", "discnb.grading.bench")])
def test_missing_inputs_name_what_to_run(outputs, name, notebook):
    assert not pf.inputs_present(name, "smoke")
    loaders = {"fig5": pf.load_fig5, "adherence": pf.load_comparison, "cost": lambda p: pf.require("cost", p),
               "fig6": pf.load_mil, "fig8": pf.load_fig8, "fig7": pf.load_ablation, "bench": pf.load_bench}
    with pytest.raises(pf.MissingInput, match=notebook) as e:
        loaders[name]("smoke")
    assert "run " in str(e.value) and "smoke" in str(e.value)


def P06(**kw):
    return params.validate("06_figures", {"profile": "smoke", **kw})


def test_report_lists_made_and_missing(tmp_path):
    R = pf.Report(P06(figures_wanted=["fig5", "fig6"]), tmp_path)
    R.add("fig5", tmp_path / "a.png")
    R.skip("fig6", pf.MissingInput("run notebooks/05_transmil_sweep.ipynb"))
    t = R.frame()
    assert t.loc["fig5", "made"] and not t.loc["fig6", "made"] and "05_transmil" in t.loc["fig6", "files / what to run"]
    assert json.loads(R.save().read_text())["missing"]["fig6"].startswith("run")
    with pytest.raises(params.ParamError, match="'figures_wanted' item 0 must be one of"):
        P06(figures_wanted=["fig9"])
    with pytest.raises(ValueError, match="unknown figure"):  # the module's own check, for parameters built in code
        pf.Report(params.Params({**P06(), "figures_wanted": ["fig9"]}), tmp_path)


def test_one_draw_helper_saves_records_and_skips(outputs, tmp_path):
    """Report.draw is notebook 06's one try/skip block: a figure with inputs is saved (PNG + PDF) and
    recorded with its table; one without is recorded with what to run; Report.check holds both."""
    fake_comparison(outputs)
    out = tmp_path / "tables"
    out.mkdir()
    R = pf.Report(P06(figures_wanted=["adherence", "fig6", "bench"]), out)
    assert R.draw("fig5") is None and "fig5" not in R.made  # not wanted: nothing drawn
    t = R.draw("adherence")
    assert "IoU GG5" in t.columns and (out / "adherence_table.csv").exists()
    png = paths.figures_dir("smoke") / "06_adherence_per_class.png"
    assert R.made["adherence"] == [str(png)] and png.with_suffix(".pdf").exists()
    assert R.draw("fig6") is None and "05_transmil_sweep" in R.missing["fig6"]
    R.draw("bench")
    R.check()
    R.made.pop("adherence")  # a figure whose inputs exist but was not made fails the check
    with pytest.raises(AssertionError, match="adherence"):
        R.check()


# --------------------------------------------------------------------------- Fig. 5, adherence, cost
def test_fig5_adherence_cost_from_notebook_02_outputs(outputs, tmp_path):
    fake_comparison(outputs)
    for name in ("fig5", "adherence", "cost"):
        assert pf.inputs_present(name, "smoke")
    cmp = pf.load_fig5("smoke")
    rows, cols = figures.fig5_rows(cmp, 2)
    assert cols == ["real", "mask", "SD", "SD-SC", "SD-DISC", "SD-DISC-CoTrain"]  # the paper's order
    assert len(rows) == 2 and all(len(r) == 6 for r in rows.values())
    assert np.array_equal(rows["mask 1"][2], cmp["samples"]["SD"][0])
    saved(pf.fig5(cmp, 2), tmp_path, "fig5")

    df = pf.load_comparison("smoke")
    a = figures.adherence_frame(df)
    assert set(a.model) == set(MODELS) and len(a) == len(MODELS) * 2 * (len(LABELS) + 1)
    assert figures.chance_level(df) == pytest.approx(0.15)
    saved(figures.fig_adherence(df), tmp_path, "adherence")
    c = pf.cost_frame(df)
    assert list(c.index) == ["SD", "SD-SC", "SD-DISC", "SD-DISC-CoTrain"]
    assert c.loc["SD-SC", "sec_per_tile_mean"] == pytest.approx(2.55) and c.loc["SD", "nfe_per_tile_mean"] == 50
    saved(pf.fig_cost(df, pd.read_csv(outputs / "disc" / "sc_cost.csv")), tmp_path, "cost")
    assert "IoU GG5" in pf.adherence_table(df).columns


# ------------------------------------------------------------------------------------- Fig. 6, 7
def test_fig6_from_mil_results(outputs, tmp_path):
    (outputs / "mil").mkdir(parents=True)
    fake_mil().to_csv(outputs / "mil" / "results.csv", index=False)
    (outputs / "mil" / "results.json").write_text(json.dumps({"ood": "PANDA"}))
    summary, ood = pf.load_mil("smoke")
    assert ood == "PANDA" and set(summary.generator) == {"none", "SD", "SD-SC"}
    fig = pf.fig6(summary, ood)
    assert len(fig.axes) == 4 and "PANDA" in fig.axes[1].get_title()
    # per generator curve: λ = 0 baseline plus two λ values
    lines = [ln for ln in fig.axes[0].get_lines() if len(ln.get_xdata()) == 3]
    assert len(lines) == 2
    saved(fig, tmp_path, "fig6")
    assert set(pf.best_lambda_table(summary).index) == {"SD", "SD-SC"}


def test_fig7_per_condition_folders_and_pixel_fallback(outputs, tmp_path):
    (outputs / "mil").mkdir(parents=True)
    fake_mil(seed=1).to_csv(outputs / "mil" / "results.csv", index=False)
    with pytest.raises(pf.MissingInput, match="ablation_conditions"):
        pf.load_ablation("smoke")  # pixel alone is no ablation
    for c in ("tile", "tile+slide"):
        (outputs / "ablation" / c / "mil").mkdir(parents=True)
        fake_mil(("SD",), seed=2).to_csv(outputs / "ablation" / c / "mil" / "results.csv", index=False)
    assert pf.inputs_present("fig7", "smoke")
    df = pf.load_ablation("smoke")
    assert set(df.condition) == {"pixel", "tile", "tile+slide"}  # pixel from outputs/smoke/mil
    assert set(df.generator) == {"SD", "none"} and set(df.model) == {"TransMIL"}
    fig = pf.fig7(df)
    assert len([ln for ln in fig.axes[0].get_lines() if len(ln.get_xdata()) == 3]) == 3
    saved(fig, tmp_path, "fig7")


def test_fig7_from_the_main_sweep_of_the_ablation_generators(outputs, tmp_path):
    (outputs / "mil").mkdir(parents=True)
    fake_mil(("SD", "SD-SC"), seed=1).to_csv(outputs / "mil" / "results.csv", index=False)
    assert not pf.inputs_present("fig7", "smoke")
    fake_mil(("SD", "SD-SC", "SD-tile", "SD-tile+slide"), seed=1).to_csv(outputs / "mil" / "results.csv", index=False)
    assert pf.inputs_present("fig7", "smoke")
    df = pf.load_ablation("smoke")
    assert set(df.condition) == {"pixel", "tile", "tile+slide"}  # SD-SC is not part of it
    assert set(df.generator) == {"SD", "none"} and set(df.model) == {"TransMIL"}
    raw = fake_mil(("SD", "SD-SC", "SD-tile", "SD-tile+slide"), seed=1)
    tile = raw[(raw.generator == "SD-tile") & (raw.model == "TransMIL")].value.to_numpy()
    assert np.array_equal(df[df.condition == "tile"].value.to_numpy(), tile)  # rows kept, only relabelled
    fig = pf.fig7(df)
    assert len([ln for ln in fig.axes[0].get_lines() if len(ln.get_xdata()) == 3]) == 3
    saved(fig, tmp_path, "fig7c")


def test_fig7_one_csv_with_condition_column(outputs, tmp_path):
    (outputs / "ablation").mkdir(parents=True)
    df = pd.concat([fake_mil(("SD",), seed=i).assign(condition=c) for i, c in enumerate(["pixel", "tile"])])
    df.to_csv(outputs / "ablation" / "results.csv", index=False)
    saved(pf.fig7(pf.load_ablation("smoke")), tmp_path, "fig7b")
    df.drop(columns="condition").to_csv(outputs / "ablation" / "results.csv", index=False)
    with pytest.raises(ValueError, match="condition"):
        pf.load_ablation("smoke")


# ---------------------------------------------------------------------------------------- Fig. 8
def fake_fig8(root, test_sets=("test",), n=3, size=16):
    """notebook 04's fig8.npz (the layout its save_fig8 writes) and results.csv."""
    rng = np.random.default_rng(0)
    runs = ["baseline", "+SD (λ=0.5)"]
    arrays = {"test_sets": np.array(test_sets), "runs": np.array(runs), "run_tags": np.array(["real", "SD-lam0.5"]),
              "run_seeds": np.array([0, 0])}
    for ts in test_sets:
        arrays |= {f"{ts}_tiles": rng.integers(0, 255, (n, size, size, 3)).astype(np.uint8),
                   f"{ts}_truth": rng.integers(0, 4, (n, size, size)).astype(np.uint8),
                   f"{ts}_names": np.array([f"{ts}-tile-{i}" for i in range(n)]),
                   f"{ts}_pred": rng.integers(0, 4, (len(runs), n, size, size)).astype(np.uint8)}
    root.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(root / "fig8.npz", **arrays)
    pd.DataFrame([{"model": "CarcinoNet", "generator": g, "lam": lam, "seed": 0, "test_set": "test", "metric": "iou",
                   "label": "mean", "value": v} for g, lam, v in (("none", 0.0, 0.3), ("SD", 0.5, 0.4))]
                 ).to_csv(root / "results.csv", index=False)
    return arrays


def test_fig8_from_the_stored_predictions_only(outputs, tmp_path):
    stored = fake_fig8(outputs / "carcinonet")
    assert pf.inputs_present("fig8", "smoke")
    f8 = pf.load_fig8("smoke")
    figs = pf.fig8(f8, 2, ["test", "ood"])  # no OOD tiles stored: left out with a message
    assert list(figs) == ["test"]
    ax = figs["test"].axes
    assert len(ax) == 4 * 2  # tile, ground truth, baseline, +SD; two of the three stored tiles
    assert np.array_equal(ax[0].images[0].get_array(), stored["test_tiles"][0])  # the stored tile, not a prediction
    assert np.array_equal(ax[4].images[0].get_array(), figures.colorize(stored["test_pred"][0, 0]))  # the stored one
    saved(figs["test"], tmp_path, "fig8")
    with pytest.raises(pf.MissingInput, match="'ood'"):
        pf.fig8(f8, 2, ["ood"])
    assert pf.carcinonet_table("smoke").loc[("test", "SD", 0.5), "iou mean"] == "0.400"
    (outputs / "carcinonet" / "fig8.npz").unlink()
    with pytest.raises(pf.MissingInput, match="04_carcinonet"):
        pf.load_fig8("smoke")


# ------------------------------------------------------------------------------------ benchmark
def test_bench_figure_from_json(outputs, tmp_path):
    outputs.mkdir(parents=True)
    assert pf.should_run_bench("missing", "smoke") and not pf.should_run_bench("never", "smoke")
    with pytest.raises(ValueError, match="run_bench"):
        pf.should_run_bench("yes", "smoke")
    rows = [{"method": m, "sec_per_tile": s, "nfe_per_tile": n} for m, s, n in
            (("SD DDIM-200", 2.0, 200), ("SD DPM++-20", 0.2, 20), ("SD-SC DDIM-200 (2 labels)", 4.1, 400))]
    b = {"device": {"cpu": "test cpu", "gpu": None, "torch_threads": 1}, "sampling": rows,
         "training": {"ldm": {"images_per_s": 20.0}, "carcinonet": {"images_per_s": 50.0}}}
    (outputs / "bench.json").write_text(json.dumps(b))
    assert pf.inputs_present("bench", "smoke") and not pf.should_run_bench("missing", "smoke")
    assert pf.should_run_bench("always", "smoke")
    assert list(pf.bench_table(pf.load_bench("smoke")).index) == [r["method"] for r in rows]
    saved(pf.fig_bench(pf.load_bench("smoke")), tmp_path, "bench")
