"""Notebook 04's pipeline: CarcinoNet on real and synthetic tiles (paper Sec. 2.4, Eq. 4, Fig. 8).

    python -m discnb.pipelines.train_carcinonet --params params/demo/04_carcinonet.yaml

The model, its loss (focal + Dice, Eq. 4 with synthetic tiles) and one training run are
:mod:`discnb.grading.carcinonet`; the metrics :mod:`discnb.grading.metrics`; the pattern judge
(trained by notebook 01) :mod:`discnb.grading.judge`. This module runs the experiment, as named
steps that the notebook calls cell by cell and :func:`run` calls in order:

1. :func:`load_data`: real tiles of train / val (fold ``val_fold``) / test / ood;
2. :func:`synthetic_tiles`: each generator's tiles for one fixed mask/noise plan (the same masks
   and seeds for every generator), cached per generator fingerprint;
3. :func:`train_all`: the real-only baseline (lambda = 0) and each (generator, lambda > 0), every
   seed; each run cached under ``carcinonet/runs/<model>-seed<s>-<hash of its signature>/``;
4. :func:`evaluate` on the test split and the OOD set, :func:`save_results` (``results.csv``,
   ``results.json``), :func:`save_fig8` (``fig8.npz``: what notebook 06 draws Fig. 8 from);
5. the pattern judge's view of the synthetic tiles, and the figures.

Under ``accelerate launch`` (several processes, ``python -m`` only; the notebook is one process):
step 2 splits each generator's tile chunks over the processes (:mod:`discnb.core.shards`); step 3
trains each run with every process (DDP in :func:`discnb.core.train.fit`, the global batches of
one process), and the main process alone writes its ``done.json``; steps 4-5 (evaluation, judge,
results, ``fig8.npz``, figures, checks) run on the main process while the others wait for it by
marker files (:func:`discnb.core.shards.on_main`), as do parameters and provenance. A DDP run draws its augmentations
and synthetic tiles per process, so its weights are not those of a one-process run.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from tqdm.auto import tqdm

from discnb import K, LABELS, plots
from discnb.core import layout, paths, shards
from discnb.core.io import atomic_file, fingerprint, write_json
from discnb.core.notebook import cli
from discnb.core.train import pick_device
from discnb.data import prepared, shapes
from discnb.generative.generators import GeneratorContext, build_generator
from discnb.grading import judge as jg
from discnb.grading.carcinonet import load_model, metric_table, predict, summarize, train_carcinonet
from discnb.grading.eq4 import check_lam
from discnb.grading.metrics import confusion, metrics_from_confusion

NOTEBOOK = "04_carcinonet"
ARCH_VERSION = 2  # bump when the code of the architecture changes: finished runs of another version are not reused


# ===================================================================================== paths

# ====================================================================================== data
def load_data(P, progress: bool = True) -> dict:
    """Real tiles of train / val (fold ``val_fold``) / test / ood (rows ``ood_split``) in memory
    (:func:`discnb.data.prepared.split_tiles`)."""
    return prepared.split_tiles(layout.of(P, NOTEBOOK).data, P.val_fold, P.ood_split, progress)


def data_fingerprint(D: dict) -> str:
    """The tile size and the names of the training and validation tiles (what a run was trained on)."""
    return fingerprint(D["image_size"], *(part for name in ("train", "val") for part in (name, "\n".join(D[name]["names"]))))


def test_sets(D: dict) -> list[str]:
    return [n for n in ("test", "ood") if n in D and len(D[n]["imgs"])]


# ============================================================================ synthetic tiles
def synthetic_masks(lib: dict, n: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` label masks from the shape-map library and one noise seed per tile.

    Each mask: a random shape map; random label weights; its ranks get distinct labels drawn by
    weighted choice without repetition (rank 0 = most pixels gets the first draw). A simple
    stand-in for the tile-set sampler (notebook 03); fixed ``seed`` -> the same masks and noise
    for every generator.
    """
    if len(lib["maps"]) == 0:
        raise ValueError("the shape-map library is empty")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(lib["maps"]), size=n, replace=n > len(lib["maps"]))
    masks = np.empty((n, size, size), np.uint8)
    for i, j in enumerate(picks):
        r = int(lib["n_ranks"][j])
        w = rng.random(K) + 1e-3
        labels = rng.choice(K, size=r, replace=False, p=w / w.sum())
        masks[i] = shapes.resize_mask(shapes.assign_labels(lib["maps"][j], labels), size)
    return masks, (np.int64(seed) * 1_000_003 + np.arange(n)).astype(np.int64)


def _read_tile_cache(cache: Path, n_tiles: int, image_size: int) -> dict | None:
    try:
        with np.load(cache, allow_pickle=False) as z:
            got = {k: z[k] for k in ("images", "masks", "seeds")} | {"meta": json.loads(str(z["meta"]))}
        if got["images"].shape == (n_tiles, image_size, image_size, 3):
            return got | {"path": str(cache), "cached": True}
    except (OSError, ValueError, KeyError) as e:
        warnings.warn(f"{cache}: unreadable tile cache ({e}); generating again")
    return None


def synthetic_tiles(P, name: str, image_size: int, progress: bool = True) -> dict:
    """Tiles of generator ``name`` for the fixed mask/noise plan, generated once and cached in
    ``carcinonet/synthetic/<name>-<key>.npz`` (atomic). Returns images, masks, seeds, meta.

    The tiles are made in chunks of ``synth.batch_size`` (one generator batch each, as one call on
    all tiles batches them, so the tiles are those of one call), the work units of
    :func:`discnb.core.shards.run`: under ``accelerate launch`` each process generates its part of
    the chunks into ``<name>-<key>.chunk<B>-<i>.npz``, and the main process merges them into the
    one cache file and deletes them; a killed run keeps its finished chunks. Every process returns
    the whole set."""
    L = layout.of(P, NOTEBOOK)
    S = P.synth
    lib_path = L.data / "shape_maps.npz"
    lib = shapes.load_library(lib_path)
    plan_key = fingerprint([S["n_tiles"], S["seed"], image_size], lib_path)
    procs = shards.processes(P.device == "cpu")  # before the model goes to a GPU: each process has its own
    device = str(pick_device(P.device))
    ctx = GeneratorContext(L.ldm, image_size, S["steps"], S["scheduler"], S["batch_size"], device,
                           P.mixed_precision == "bf16")
    gen, gen_key = build_generator(name, ctx)
    key = fingerprint(f"{gen_key}/{plan_key}", n=12)
    folder = L.out / "synthetic"
    cache = folder / f"{name}-{key}.npz"
    if cache.exists() and (got := _read_tile_cache(cache, S["n_tiles"], image_size)) is not None:
        return got
    masks, seeds = synthetic_masks(lib, S["n_tiles"], S["seed"], image_size)
    step = int(S["batch_size"])
    n_chunks = -(-len(masks) // step)
    stem = f"{cache.stem}.chunk{step}-"

    def part(c: int) -> Path:
        return folder / f"{stem}{c:05d}.npz"

    def setup() -> None:
        shards.remove_tmp(folder, f"{cache.stem}.tmp*")
        shards.remove_tmp(folder, f"{cache.stem}.chunk*.tmp*")
        for p in folder.glob(f"{cache.stem}.chunk*.npz"):  # chunks of another batch size
            if not p.name.startswith(stem):
                p.unlink()

    bar = tqdm(total=0, desc=f"synthetic tiles {name}", unit="tile", disable=not (progress and procs.is_main), mininterval=2)

    def start(mine: list[int]) -> None:
        bar.total = sum(min(step, len(masks) - c * step) for c in mine)
        bar.refresh()

    def work(c: int) -> None:
        sl = slice(c * step, min(len(masks), (c + 1) * step))
        t0 = time.perf_counter()
        imgs = np.asarray(gen.generate(masks[sl], seeds[sl].tolist()))
        sec = time.perf_counter() - t0
        atomic_file(part(c), lambda tmp: np.savez(tmp, images=imgs, seconds=np.float64(sec)))
        bar.update(len(imgs))

    def merge() -> None:
        imgs, secs = [], 0.0
        for c in range(n_chunks):
            with np.load(part(c), allow_pickle=False) as z:
                imgs.append(z["images"])
                secs += float(z["seconds"])
        images = np.concatenate(imgs)
        meta = {"generator": name, "generator_fingerprint": gen_key, "plan_fingerprint": plan_key,
                "n_tiles": S["n_tiles"], "seed": S["seed"], "steps": S["steps"], "scheduler": S["scheduler"],
                "device": device, "sec_per_tile": secs / max(1, len(masks)), "ldm_dir": str(ctx.ldm_dir)}
        atomic_file(cache, lambda tmp: np.savez_compressed(tmp, images=images, masks=masks, seeds=seeds,
                                                           meta=np.array(json.dumps(meta))))
        for c in range(n_chunks):
            part(c).unlink()

    shards.run(folder, cache.stem, todo=lambda: [c for c in range(n_chunks) if not part(c).exists()], work=work,
               setup=setup, merge=merge, start=start, procs=procs)
    bar.close()
    got = _read_tile_cache(cache, S["n_tiles"], image_size)
    if got is None:
        raise RuntimeError(f"{cache}: the merged tile cache is unreadable")
    return got | {"cached": False}


def all_synthetic_tiles(P, D: dict, progress: bool = True) -> dict[str, dict]:
    """:func:`synthetic_tiles` of every generator in ``generators`` (under ``accelerate launch``: the
    chunks of each split over the processes)."""
    return {g: synthetic_tiles(P, g, D["image_size"], progress) for g in P.generators}


def synth_table(synth: dict[str, dict]) -> pd.DataFrame:
    return pd.DataFrame({g: {"tiles": len(s["images"]), "cached": s["cached"], "sec_per_tile": s["meta"]["sec_per_tile"],
                             "file": s["path"]} for g, s in synth.items()}).T


# ================================================================================== training
@dataclass
class RunSpec:
    generator: str | None
    lam: float
    seed: int

    @property
    def tag(self) -> str:
        return "real" if self.generator is None else f"{self.generator}-lam{self.lam:g}"


def spec(generator: str | None, lam: float, seed: int) -> RunSpec:
    """lambda = 0 is the real-only baseline whatever the generator (Eq. 4 ignores synthetic tiles)."""
    lam = check_lam(lam)
    return RunSpec(None, 0.0, int(seed)) if generator is None or lam == 0 else RunSpec(generator, lam, int(seed))


def run_signature(P, D: dict, s: RunSpec, synth_key: str | None) -> dict:
    """Everything that makes a trained run what it is (its folder name hashes it; a resume must match it)."""
    return {"kind": "carcinonet", "arch_version": ARCH_VERSION, "model": dict(P.model), "train": dict(P.train),
            "image_size": D["image_size"], "val_fold": P.val_fold, "data": data_fingerprint(D), "mixed_precision": P.mixed_precision,
            "generator": s.generator, "lam": s.lam, "synthetic": synth_key, "seed": s.seed}


def run_dir(P, sig: dict, s: RunSpec) -> Path:
    h = fingerprint(sig, n=8)
    return layout.of(P, NOTEBOOK).out / "runs" / f"{s.tag}-seed{s.seed}-{h}"


def train_run(P, D: dict, s: RunSpec, synth: dict | None = None, progress: bool = True) -> dict:
    """Train one CarcinoNet (real only, or real + synthetic with Eq. 4), or reuse a finished run
    with the same signature. Returns {dir, generator, lam, seed, fit}; the model is in ``dir/best``.

    Under ``accelerate launch`` every process calls it (the run is trained by DDP); the main
    process writes ``done.json`` and every process returns the main process's summary."""
    if s.generator is not None and synth is None:
        raise ValueError(f"run {s.tag}: synthetic tiles of {s.generator!r} are needed")
    synth_key = None if s.generator is None else Path(synth["path"]).stem
    sig = run_signature(P, D, s, synth_key)
    rdir = run_dir(P, sig, s)
    done = rdir / "done.json"
    info = {"dir": str(rdir), "tag": s.tag, "generator": s.generator or "none", "lam": s.lam, "seed": s.seed}
    if done.exists() and json.loads(done.read_text()).get("signature") == sig and (rdir / "best").exists():
        return info | {"fit": json.loads(done.read_text())["fit"], "reused": True}
    summary = train_carcinonet(rdir, {"model": P.model, "train": P.train}, (D["train"]["imgs"], D["train"]["masks"]),
                               (D["val"]["imgs"], D["val"]["masks"]), s.seed,
                               synth=None if synth is None else (synth["images"], synth["masks"]), lam=s.lam,
                               signature=sig, mixed_precision=P.mixed_precision, cpu=P.device == "cpu",
                               checkpoint_every=P.checkpoint_every, checkpoints_total_limit=P.checkpoints_total_limit,
                               resume=P.resume, desc=f"CarcinoNet {s.tag} seed {s.seed}", progress=progress)
    procs = shards.processes(P.device == "cpu")
    if procs.is_main:
        write_json(done, {"signature": sig, "fit": summary})
    procs.barrier()  # done.json is there before any process looks for the next run's (quick: fit ends together)
    if not procs.is_main:  # fit's validation and selection ran on the main process: its summary
        summary = json.loads(done.read_text())["fit"]
    return info | {"fit": summary, "reused": False}


def train_all(P, D: dict, synth: dict[str, dict], progress: bool = True) -> list[dict]:
    """The real-only baseline and every (generator, lambda) model, for every seed (cached runs reused)."""
    if not P.seeds:
        raise ValueError("seeds is empty: give at least one training seed")
    for lam in P.lams:
        check_lam(lam)
    specs = [spec(None, 0.0, sd) for sd in P.seeds]
    specs += [spec(g, lam, sd) for g in P.generators for lam in P.lams for sd in P.seeds if lam > 0]
    return [train_run(P, D, s, synth.get(s.generator), progress) for s in specs]


def runs_table(runs: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"model": r["tag"], "seed": r["seed"], "steps": r["fit"]["steps"], "best_step": r["fit"]["best_step"],
                          "best_val_loss": r["fit"]["best_val_loss"], "train_s": r["fit"]["train_seconds"],
                          "reused": r["reused"]} for r in runs])


# ================================================================================ evaluation
def tidy_rows(m: dict, **keys) -> list[dict]:
    """One row per metric (and label) of :func:`discnb.grading.metrics.metrics_from_confusion`."""
    rows = []
    for i, lab in enumerate(LABELS):
        if i > 0:  # precision of positive Gleason predictions only
            rows.append({**keys, "metric": "precision", "label": lab, "value": m["precision"][i]})
        rows += [{**keys, "metric": k, "label": lab, "value": m[k][i]} for k in ("iou", "dice")]
    rows += [{**keys, "metric": "precision", "label": "GG mean", "value": m["gg_precision_mean"]},
             {**keys, "metric": "precision", "label": "GG pooled", "value": m["gg_precision_pooled"]},
             {**keys, "metric": "iou", "label": "mean", "value": m["mean_iou"]},
             {**keys, "metric": "dice", "label": "mean", "value": m["mean_dice"]},
             {**keys, "metric": "pixel_accuracy", "label": "all", "value": m["pixel_accuracy"]}]
    return rows


def evaluate(P, runs: list[dict], D: dict) -> tuple[pd.DataFrame, dict]:
    """Every run on the test split and the OOD set: a tidy frame (model, generator, lam, seed,
    test_set, metric, label, value) and the confusion matrices."""
    dev = pick_device(P.device)
    rows, cms = [], {}
    for r in runs:
        model = load_model(Path(r["dir"]) / "best")
        for ts in test_sets(D):
            cm = confusion(D[ts]["masks"], predict(model, D[ts]["imgs"], P.eval_batch, dev))
            cms[f"{r['tag']}/seed{r['seed']}/{ts}"] = cm.tolist()
            rows += tidy_rows(metrics_from_confusion(cm), model="CarcinoNet", generator=r["generator"],
                              lam=r["lam"], seed=r["seed"], test_set=ts)
    return pd.DataFrame(rows), cms


def results_extra(confusions: dict, judged: dict, runs: list[dict], synth: dict[str, dict]) -> dict:
    """What ``results.json`` holds beside the summary: confusion matrices, the judge's scores, the
    runs and each generator's tile-cache meta."""
    return {"confusion": confusions, "judge": judged, "runs": runs, "synthetic": {g: s["meta"] for g, s in synth.items()}}


def save_results(P, df: pd.DataFrame, summary: pd.DataFrame, extra: dict) -> tuple[Path, Path]:
    """``results.csv`` (tidy, one row per run/test set/metric/label) and ``results.json``, atomically."""
    out = layout.of(P, NOTEBOOK).out
    out.mkdir(parents=True, exist_ok=True)
    csv = atomic_file(out / "results.csv", lambda tmp: df.to_csv(tmp, index=False))
    return csv, write_json(out / "results.json", {"summary": summary.to_dict("records"), **extra})


# ===================================================================================== judge
def load_judge(P) -> jg.Judge:
    """The pattern judge notebook 01 trained with the LDM of ``ldm_dir`` (``outputs/<profile>/judge``)."""
    return jg.load_judge(layout.of(P, NOTEBOOK).judge, device=P.device, batch_size=P.eval_batch)


def judge_synthetic(judge: jg.Judge, synth: dict[str, dict]) -> dict:
    """The judge's own accuracy rows, then its scores of each generator's tiles against their masks."""
    return jg.judge_self_rows(judge) | {g: judge(s["images"], s["masks"]) for g, s in synth.items()}


# =================================================================================== figures
def figures_dir(P) -> Path:
    return paths.figures_dir(P.profile)


def fig8_label(r: dict) -> str:
    return "baseline" if r["generator"] == "none" else f"+{r['generator']} (λ={r['lam']:g})"


def fig8_arrays(P, runs: list[dict], D: dict) -> dict:
    """What Fig. 8 shows, per test set: ``figure_tiles`` tiles (most labels first, seed ``seed``),
    their ground truth and each run's label maps (runs of seed ``seeds[0]``)."""
    shown = [r for r in runs if r["seed"] == P.seeds[0]]
    dev = pick_device(P.device)
    models = [load_model(Path(r["dir"]) / "best") for r in shown]
    out = {"test_sets": np.array(test_sets(D), dtype=str), "runs": np.array([fig8_label(r) for r in shown], dtype=str),
           "run_tags": np.array([r["tag"] for r in shown], dtype=str),
           "run_seeds": np.array([r["seed"] for r in shown], dtype=np.int64)}
    for ts in test_sets(D):
        idx = shapes.most_labels_first(D[ts]["masks"], P.figure_tiles, P.seed)
        imgs = D[ts]["imgs"][idx]
        out[f"{ts}_tiles"], out[f"{ts}_truth"], out[f"{ts}_names"] = imgs, D[ts]["masks"][idx], D[ts]["names"][idx]
        out[f"{ts}_pred"] = np.stack([predict(m, imgs, P.eval_batch, dev) for m in models]) if models else \
            np.zeros((0, *imgs.shape[:3]), np.uint8)
    return out


def save_fig8(P, fig8: dict) -> Path:
    """``fig8.npz`` (atomic): the arrays of :func:`fig8_arrays`, for notebook 06."""
    return atomic_file(layout.of(P, NOTEBOOK).out / "fig8.npz", lambda tmp: np.savez_compressed(tmp, **fig8))


def predictions_figure(P, fig8: dict, test_set: str = "test"):
    """Figure ``04_carcinonet_predictions`` (Fig. 8 layout)."""
    fig = plots.image_grid(*plots.fig8_rows(fig8, test_set))
    plots.save(fig, figures_dir(P) / "04_carcinonet_predictions")
    return fig


def plot_confusions(confusions: dict, runs: list[dict], seed: int):
    """Row-normalised pixel confusion matrices (rows: truth, so the diagonal is recall) of seed
    ``seed``: one row of panels per test set, one column per model."""
    tags = [r["tag"] for r in runs if r["seed"] == seed]
    sets = sorted({k.split("/")[-1] for k in confusions}, key=["test", "ood"].index)
    fig, axes = plt.subplots(len(sets), len(tags), figsize=(2.8 * len(tags), 2.6 * len(sets)), squeeze=False)
    for i, ts in enumerate(sets):
        for j, tag in enumerate(tags):
            cm = np.asarray(confusions[f"{tag}/seed{seed}/{ts}"], float)
            norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
            sns.heatmap(norm, vmin=0, vmax=1, annot=True, fmt=".2f", cbar=False, cmap="Blues", ax=axes[i, j],
                        xticklabels=LABELS, yticklabels=LABELS, annot_kws={"fontsize": 7})
            axes[i, j].set_title(f"{'baseline' if tag == 'real' else '+' + tag} · {ts}", fontsize=8)
            axes[i, j].set_xlabel("predicted" if i == len(sets) - 1 else "")
            axes[i, j].set_ylabel("truth" if j == 0 else "")
    fig.tight_layout()
    return fig


def confusion_figure(P, confusions: dict, runs: list[dict]):
    """Figure ``04_carcinonet_confusion`` (seed ``seeds[0]``)."""
    fig = plot_confusions(confusions, runs, P.seeds[0])
    plots.save(fig, figures_dir(P) / "04_carcinonet_confusion")
    return fig


def judge_rows(synth: dict[str, dict], judge: jg.Judge, n: int, seed: int) -> dict:
    """Per generator: guiding masks, the synthetic tiles and the judge's segmentation of them
    (``n`` tiles, those with the most labels first): does the judge see the mask in the tile?"""
    rows = {}
    for g, s in synth.items():
        idx = shapes.most_labels_first(s["masks"], n, seed)
        rows[f"{g}: guiding mask"] = [plots.colorize(m) for m in s["masks"][idx]]
        rows[f"{g}: tile"] = list(s["images"][idx])
        rows[f"{g}: judge"] = [plots.colorize(m) for m in judge.segment(s["images"][idx])]
    return rows


def judge_figure(P, synth: dict[str, dict], judge: jg.Judge):
    """Figure ``04_judge_synthetic`` (None without synthetic tiles)."""
    if not synth:
        return None
    fig = plots.image_grid(judge_rows(synth, judge, P.figure_tiles, P.seed))
    plots.save(fig, figures_dir(P) / "04_judge_synthetic")
    return fig


# ==================================================================================== checks
def check(P, D: dict, synth: dict, runs: list[dict], results: pd.DataFrame, judge: jg.Judge) -> None:
    """The notebook's sanity checks: every run trained and its loss went down, metrics in [0, 1],
    the synthetic tiles and the stored files are there."""
    base = [r for r in runs if r["generator"] == "none"]
    assert len(base) == len(P.seeds) and len(runs) == len(P.seeds) * (1 + len(P.generators) * sum(lam > 0 for lam in P.lams))
    for r in runs:
        m = pd.read_csv(f"{r['dir']}/metrics.csv")
        assert m.loss.iloc[-3:].mean() < m.loss.iloc[:3].mean(), f"{r['tag']} seed {r['seed']}: the loss did not go down"
    assert set(results.test_set) == set(test_sets(D))
    assert results.value.dropna().between(0, 1).all()
    assert all(s["images"].shape == (P.synth["n_tiles"], D["image_size"], D["image_size"], 3) for s in synth.values())
    assert judge.info["real"]["pixel_agreement"] > 0.25, judge.info["real"]
    assert all((layout.of(P, NOTEBOOK).out / f).exists() for f in ("results.csv", "results.json", "fig8.npz"))


# ======================================================================================= CLI
def evaluate_and_save(P, D: dict, synth: dict[str, dict], runs: list[dict], checks: bool = True) -> dict:
    """Steps 4-5 of notebook 04 (one process): evaluation, the judge, results, ``fig8.npz``,
    figures and the checks."""
    results, confusions = evaluate(P, runs, D)
    summary = summarize(results)
    judge = load_judge(P)
    judged = judge_synthetic(judge, synth)
    save_results(P, results, summary, results_extra(confusions, judged, runs, synth))
    fig8 = fig8_arrays(P, runs, D)
    save_fig8(P, fig8)
    for fig in (predictions_figure(P, fig8), confusion_figure(P, confusions, runs), judge_figure(P, synth, judge)):
        if fig is not None:
            plt.close(fig)
    if checks:
        check(P, D, synth, runs, results, judge)
    return {"judge": judge, "judged": judged, "results": results, "summary": summary, "confusion": confusions,
            "fig8": fig8}


def run(P, progress: bool = True, checks: bool = True) -> dict:
    """Every step of notebook 04, in its order, writing the same files. Under ``accelerate launch``
    every process makes its part of the synthetic tiles and takes part in every training run; the
    main process evaluates and writes the rest (the others wait, and return without ``results``)."""
    procs = shards.processes(P.device == "cpu")
    D = load_data(P, progress and procs.is_main)
    synth = all_synthetic_tiles(P, D, progress)
    runs = train_all(P, D, synth, progress)
    out = {"data": D, "synthetic": synth, "runs": runs}
    rest = shards.on_main(procs, layout.of(P, NOTEBOOK).out, "evaluation",
                          lambda: evaluate_and_save(P, D, synth, runs, checks))
    return out | (rest or {})


def main(argv: list[str] | None = None) -> int:
    def is_main(P):
        return shards.processes(P.device == "cpu").is_main
    P, a = cli(NOTEBOOK, "pipelines.train_carcinonet", __doc__.split("\n\n")[0], argv, main_process=is_main)
    res = run(P, progress=not a.no_progress, checks=not a.no_checks)
    if is_main(P):
        print(metric_table(res["summary"]).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
