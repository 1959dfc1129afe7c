"""Notebook 05's pipeline: slide-level grading with synthetic slides, the λ sweep of Eq. 4 (paper
Sec. 2.4, Sec. 3, Figs. 6-7).

    python -m discnb.pipelines.transmil_sweep --params params/demo/05_transmil_sweep.yaml

The models are :mod:`discnb.grading.transmil`, their training on bags :mod:`discnb.grading.mil`,
AUROC :mod:`discnb.grading.metrics`. This module runs the sweep, as named steps that the notebook
calls cell by cell and :func:`run` calls in order:

1. **Tile features** (:mod:`discnb.grading.features`) of the real tiles (notebook 00's ``index.csv``), the
   out-of-distribution slides (notebook 00's ``ood_index.csv``, a generic tile folder, or PANDA
   prepared by :mod:`discnb.data.panda`) and each generator's synthetic slides (notebook 03), cached per
   (source, extractor).
2. **Bags**: one per slide, its tiles in name order, with the multi-label target of
   :func:`discnb.grading.transmil.slide_targets` (label i = 1 when it is the slide's primary or
   secondary pattern).
3. **Runs**, for every CV fold (train = official train minus fold k, validation = fold k, patient-
   wise as SICAPv2's Val1..4) and seed: TransMIL on real slides (the baseline, λ = 0), Mixed
   Supervision on real slides (the comparison model), and TransMIL + each generator's slides for
   every λ > 0 of the grid (Eq. 4; :func:`discnb.grading.mil.train_model`). Nothing is selected on
   the test split or the OOD set.
4. **Evaluation**: AUROC per label (NC, GG3, GG4, GG5) and their macro mean (labels with one
   class only in a test set are left out of the mean) on validation, test and OOD slides; mean ±
   std over folds and seeds; ``results.csv`` (tidy) for notebook 06, ``results.json``, and a table
   with the **best λ per generator chosen on validation** (plus, flagged, the λ that is best on
   each test set, which is how the paper's text reads its Fig. 6); figure ``05_transmil_sweep``.

Under ``accelerate launch`` (several processes, ``python -m`` only; the notebook is one process),
the tile features are split over the processes by tile chunk and the runs by run
(:func:`run_sweep`): the run list is fixed by the parameters, each run seeds itself and is trained
whole by one process, which writes its record; the main process then gathers the records and
alone writes the results, the figure, parameters and provenance (the others wait, :func:`discnb.core.shards.on_main`).
So the records, ``results.csv`` and ``results.json`` hold what one process writes but for the
timings. PANDA's tiles are prepared by the main process. A ``tilecnn`` extractor must already be
trained (one process: ``--stage extractor``): trained by DDP it would be another model than one
process's.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from discnb import LABELS, plots
from discnb.core import layout, paths, shards
from discnb.core.io import atomic_file, fingerprint, write_json
from discnb.core.notebook import cli
from discnb.core.train import pick_device
from discnb.data import panda, prepared
from discnb.data import sicap as data
from discnb.grading import features
from discnb.grading.eq4 import check_lam
from discnb.grading.metrics import auroc_scores
from discnb.grading.mil import (Bag, best_lambda_table, build_model, grid_coords, mean_bce, percent_cell, predict, summarize,
                                train_model)
from discnb.grading.transmil import slide_targets

NOTEBOOK = "05_transmil_sweep"
GENERATORS = ("SD", "SD-SC", "SD-DISC", "SD-DISC-CoTrain", "SD-tile", "SD-tile+slide")  # the last two: Fig. 7
TEST_SETS = ("val", "test", "ood")
ARCH_VERSION = 1  # bump when training/model code changes: cached runs of another version are not reused

# Paper Sec. 3 ("On improving slide-level prostate cancer grading") and Fig. 6: slide-level AUROC (%), features (c) Lunit DINO ViT-S/16.
PAPER = pd.DataFrame([
    ("TransMIL", "none", 96.52, None, 85.68, None),
    ("Mixed Supervision (≈, read off Fig. 6)", "none", 93.4, None, 82.6, None),
    ("TransMIL", "SD", 96.77, 0.1, 85.80, 0.25),
    ("TransMIL", "SD-SC", 96.89, 0.05, 86.01, 0.3),
    ("TransMIL", "SD-DISC-CoTrain", 97.04, 0.1, None, None),
    ("TransMIL", "SD-DISC", None, None, 86.25, 0.3),
], columns=["model", "generator", "SICAPv2 test", "λ (test)", "PANDA", "λ (PANDA)"])


# ================================================================================= processes
def procs_of(P) -> shards.Processes:
    """The processes of ``accelerate launch`` (one under a plain run or in the notebook)."""
    return shards.processes(P.device == "cpu")


# ================================================================================= tile sets
def read_tileset(folder: str | Path) -> pd.DataFrame:
    """A generator's tile set (notebook 03) as the sweep reads it, labels added (the raw manifest, with
    the contract's columns only, is ``pipelines.tilesets.read_manifest``): ``manifest.csv`` (slide_id,
    primary, secondary, tertiary, weights, n_tiles, seed, file) + ``slides/<slide_id>.npz`` (tiles
    (N,H,W,3) uint8, masks (N,H,W) uint8, mask_ids, seeds).

    Adds ``primary_label``/``secondary_label`` (0..3) and ``path``. The manifest's grades are read
    as labels 0..3 (the project's convention); a manifest holding 4 or 5 is read as Gleason grades
    0/3/4/5; columns primary_label/secondary_label, when present, win.
    """
    folder = Path(folder)
    mpath = folder / "manifest.csv"
    if not mpath.exists():
        raise FileNotFoundError(f"{mpath}: no tile-set manifest; run notebooks/03_tile_sets.ipynb first")
    m = pd.read_csv(mpath, dtype={"slide_id": str})
    missing = [c for c in ("slide_id", "primary", "secondary", "file") if c not in m.columns]
    if missing:
        raise data.DataError(f"{mpath}: missing column(s) {missing}; found {list(m.columns)}")
    if {"primary_label", "secondary_label"} <= set(m.columns):
        pass
    elif (m[["primary", "secondary"]].to_numpy() > 3).any():
        bad = sorted((set(m.primary) | set(m.secondary)) - set(data.GRADE_TO_LABEL))
        if bad:
            raise data.DataError(f"{mpath}: grades {bad} are neither labels 0..3 nor Gleason 0/3/4/5")
        m["primary_label"] = m.primary.map(data.GRADE_TO_LABEL)
        m["secondary_label"] = m.secondary.map(data.GRADE_TO_LABEL)
    else:
        m["primary_label"], m["secondary_label"] = m.primary.astype(int), m.secondary.astype(int)
    m["path"] = [str(folder / f) for f in m.file]
    absent = [p for p in m.path if not Path(p).exists()]
    if absent:
        raise FileNotFoundError(f"{mpath}: {len(absent)} slide file(s) listed but absent, e.g. {absent[0]}; rerun "
                                "notebooks/03_tile_sets.ipynb (it resumes)")
    return m


def tileset_fingerprint(folder: Path, manifest: pd.DataFrame) -> str:
    stats = [(Path(p).name, Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in manifest.path]
    return fingerprint(folder / "manifest.csv", stats)


def tileset_chunks(manifest: pd.DataFrame) -> list:
    """One loader per synthetic slide: ``() -> (keys "<slide_id>/<i>", tiles)`` (the work units of
    :func:`discnb.grading.features.cached_features`)."""
    def loader(sid: str, p: str):
        def load():
            with np.load(p, allow_pickle=False) as z:
                tiles = z["tiles"]
            return [f"{sid}/{i}" for i in range(len(tiles))], tiles
        return load
    return [loader(sid, p) for sid, p in zip(manifest.slide_id, manifest.path)]


def find_tilesets(P, generators) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The generators whose tile set exists, and a note for each that does not."""
    root = layout.of(P, NOTEBOOK).tilesets
    found, notes = {}, []
    for g in generators:
        if g not in GENERATORS:
            raise ValueError(f"unknown generator {g!r}; known: {list(GENERATORS)}")
        if not (root / g / "manifest.csv").exists():
            notes.append(f"{g}: no tile set at {root / g} — skipped (generate it with notebooks/03_tile_sets.ipynb "
                         f"for profile {P.profile})")
            continue
        m = read_tileset(root / g)
        if len(m) == 0:
            notes.append(f"{g}: {root / g}/manifest.csv lists no slide — skipped")
            continue
        found[g] = m
    return found, notes


# ====================================================================================== data
def describe_sources(S: dict) -> str:
    """A note per generator without a tile set, then what was found."""
    notes = [f"note: {n}" for n in S["notes"]]
    return "\n".join(notes + [f"synthetic tile sets found: {list(S['tilesets']) or 'none (baselines only)'}; "
                              f"OOD set: {S['ood_name'] or 'none'}"])


def load_sources(P, progress: bool = True) -> dict:
    """Real index (train + test), the OOD index (or None) and the synthetic tile sets present."""
    L = layout.of(P, NOTEBOOK)
    ddir = L.data
    index = prepared.read_index(ddir)
    out: dict = {"index": index, "data_dir": ddir, "notes": []}
    if P.panda["root"]:
        pz = P.panda
        procs = procs_of(P)  # several processes: the main one prepares the tiles, the others wait
        folder = L.out / "panda"
        shards.on_main(procs, L.out, "panda", lambda: panda.prepare_panda(
            paths.resolve(pz["root"]), folder, n_per_label=pz["n_per_label"], max_tiles=pz["max_tiles"],
            tile_px=pz["tile_px"], target_mpp=pz["target_mpp"], base_mpp=pz["base_mpp"], min_tissue=pz["min_tissue"],
            providers=tuple(pz["providers"]), seed=P.seed, progress=progress))
        out["ood"], out["ood_name"], out["ood_fp"] = panda.read_tile_folder(folder), "PANDA", _folder_fp(folder)
    elif P.ood_dir:
        folder = paths.resolve(P.ood_dir)
        out["ood"], out["ood_name"], out["ood_fp"] = panda.read_tile_folder(folder), str(P.ood_dir), _folder_fp(folder)
    elif P.ood_split:
        out["ood"], out["ood_name"] = prepared.read_ood_index(ddir, P.ood_split), "demo OOD (notebook 00)"
        out["ood_fp"] = fingerprint(ddir / "ood_index.csv", P.ood_split)
    else:
        out["ood"], out["ood_name"], out["ood_fp"] = None, "", ""
    out["real_fp"] = fingerprint(ddir / "index.csv")
    out["tilesets"], out["notes"] = find_tilesets(P, P.generators)
    return out


def _folder_fp(folder: Path) -> str:
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in panda.IMAGE_EXTS + (".csv",))
    return fingerprint([(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files])


def build_extractor(P, S: dict, progress: bool = True) -> features.Extractor:
    """The extractor named by ``P.extractor['name']`` (see :mod:`discnb.grading.features`).

    Under ``accelerate launch`` a ``tilecnn`` extractor is loaded, never trained: a ``ValueError``
    asks for the one-process ``--stage extractor`` first (DDP would train another model than one
    process, and the processes would all write its folder)."""
    L = layout.of(P, NOTEBOOK)
    E = P.extractor
    dev = str(pick_device(P.device))
    if E["name"] in features.PRETRAINED:
        return features.pretrained_extractor(E["name"], E["path"], E["eval_batch"], dev)
    if E["name"] != "tilecnn":
        raise ValueError(f"extractor.name {E['name']!r} is not one of {list(features.EXTRACTORS)}")
    size = int(E["input_size"] or prepared.prep_params(S["data_dir"])["image_size"])
    train = S["index"][(S["index"].split == "train") & S["index"].mask_path.astype(bool)]
    if train.empty:
        raise data.DataError(f"{S['data_dir']}/index.csv: no training tile with a mask to train the tilecnn extractor")

    procs = procs_of(P)

    def tiles():  # called only when no finished extractor of this signature is there
        if procs.world > 1:
            raise ValueError(f"the tilecnn extractor is not trained yet ({L.out / 'extractors'}); under accelerate "
                             f"launch it is not trained ({procs.world} processes would train another model than one and "
                             "all write its folder): train it first with one process, python -m discnb.pipelines.transmil_sweep "
                             "--params FILE --stage extractor, then launch again")
        imgs, _ = data.load_tiles(train, size, progress=progress)
        return imgs, train[list(data.FRACTION_COLUMNS)].to_numpy(np.float32)
    key = fingerprint(S["real_fp"], "train-split")
    return features.tilecnn_extractor(E, L.out, tiles, key, size, progress, dev)


def extract_all(P, ext: features.Extractor, S: dict, progress: bool = True) -> dict:
    """Features of every source (cached): real, ood, synth-<generator>. Under ``accelerate launch``
    each source's tile chunks are split over the processes (:func:`discnb.grading.features.cached_features`)
    and every process returns all features."""
    out = layout.of(P, NOTEBOOK).out
    procs = shards.processes(P.device == "cpu")
    F_ = {"real": features.cached_features(ext, out, "real", S["real_fp"], features.index_chunks(S["index"], ext.input_size),
                                           progress, len(S["index"]), procs)}
    if S["ood"] is not None:
        F_["ood"] = features.cached_features(ext, out, "ood", S["ood_fp"], features.index_chunks(S["ood"], ext.input_size),
                                             progress, len(S["ood"]), procs)
    for g, m in S["tilesets"].items():
        fp = tileset_fingerprint(layout.of(P, NOTEBOOK).tilesets / g, m)
        F_[f"synth-{g}"] = features.cached_features(ext, out, f"synth-{g}", fp, tileset_chunks(m), progress,
                                                    int(m.n_tiles.sum()) if "n_tiles" in m else None, procs)
    return F_


def real_bags(index: pd.DataFrame, feats: dict) -> dict[str, Bag]:
    """One bag per slide of a tile index, tiles sorted by name."""
    bags = {}
    for sid, part in index.sort_values("image_name", kind="stable").groupby("slide_id", sort=True):
        rows = [feats["index"][n] for n in part.image_name.astype(str)]
        p, s = int(part.slide_primary_label.iloc[0]), int(part.slide_secondary_label.iloc[0])
        tl = part.tile_label.to_numpy() if "tile_label" in part else np.full(len(part), -1)
        has_mask = part.mask_path.astype(bool).to_numpy()
        tl = np.where(has_mask & (tl >= 0), tl, -100)
        bags[str(sid)] = Bag(str(sid), torch.from_numpy(feats["feats"][rows]), slide_targets(p, s),
                             torch.as_tensor(tl, dtype=torch.long),
                             torch.from_numpy(grid_coords(part.image_name.tolist())), p, s)
    return bags


def synth_bags(manifest: pd.DataFrame, feats: dict) -> list[Bag]:
    out = []
    for rec in manifest.to_dict("records"):
        sid = str(rec["slide_id"])
        keys = sorted((k for k in feats["index"] if k.startswith(sid + "/")), key=lambda k: int(k.rsplit("/", 1)[1]))
        if not keys:
            raise data.DataError(f"synthetic slide {sid}: no features (empty npz?)")
        p, s = int(rec["primary_label"]), int(rec["secondary_label"])
        out.append(Bag(sid, torch.from_numpy(feats["feats"][[feats["index"][k] for k in keys]]), slide_targets(p, s),
                       torch.full((len(keys),), -100, dtype=torch.long),
                       torch.from_numpy(grid_coords([None] * len(keys))), p, s))
    return out


def build_bags(P, S: dict, F_: dict) -> dict:
    """Bags: real (all slides of index.csv), ood, synth {generator: [Bag]}, and the slide ids of
    the official train/test split."""
    real = real_bags(S["index"], F_["real"])
    slides = S["index"].drop_duplicates("slide_id").set_index("slide_id")
    B = {"real": real, "slides": slides, "ood": real_bags(S["ood"], F_["ood"]) if S["ood"] is not None else {},
         "synth": {g: synth_bags(m, F_[f"synth-{g}"]) for g, m in S["tilesets"].items()}}
    return B


def fold_slides(B: dict, fold: int) -> dict[str, list[str]]:
    """Slide ids of train / val (CV fold ``fold``, patient-wise) / test."""
    s = B["slides"]
    tr = s[s.split == "train"]
    if fold not in set(tr.cv_fold):
        raise data.DataError(f"fold {fold} is not among the CV folds of index.csv ({sorted(set(tr.cv_fold[tr.cv_fold > 0]))})")
    return {"train": sorted(tr.index[tr.cv_fold != fold].astype(str)), "val": sorted(tr.index[tr.cv_fold == fold].astype(str)),
            "test": sorted(s.index[s.split == "test"].astype(str))}


def bag_table(B: dict, folds) -> pd.DataFrame:
    """Slides and tiles per set, and slides per label (as primary or secondary)."""
    rows = []

    def add(name, bags):
        if not bags:
            return
        y = torch.stack([b.y for b in bags]).sum(0).int().tolist()
        rows.append({"set": name, "slides": len(bags), "tiles": int(sum(len(b) for b in bags)),
                     **{f"slides with {lab}": v for lab, v in zip(LABELS, y)}})
    f0 = fold_slides(B, folds[0])
    for part in ("train", "val", "test"):
        add(f"{part} (fold {folds[0]})" if part != "test" else "test", [B["real"][i] for i in f0[part]])
    add("ood", list(B["ood"].values()))
    for g, bags in B["synth"].items():
        add(f"synthetic {g}", bags)
    return pd.DataFrame(rows).set_index("set")


# ====================================================================================== runs
@dataclass
class RunSpec:
    model: str
    generator: str | None
    lam: float
    fold: int
    seed: int

    @property
    def tag(self) -> str:
        base = "TransMIL" if self.model == "TransMIL" else "MixedSup"
        return base if self.generator is None else f"{base}+{self.generator}-lam{self.lam:g}"


def run_specs(P, generators) -> list[RunSpec]:
    specs = []
    for fold in P.folds:
        for seed in P.seeds:
            specs.append(RunSpec("TransMIL", None, 0.0, fold, seed))
            if P.mixed_supervision:
                specs.append(RunSpec("MixedSupervision", None, 0.0, fold, seed))
            specs += [RunSpec("TransMIL", g, check_lam(lam), fold, seed) for g in generators for lam in P.lams if lam > 0]
    return specs


def run_record(P, spec: RunSpec, keys: dict) -> tuple[dict, Path]:
    """A run's signature (what makes its result what it is) and the file of its record,
    ``runs/<tag>-fold<k>-seed<s>-<hash of the signature>.json``."""
    sig = {"version": ARCH_VERSION, "model": spec.model,
           "arch": dict(P.transmil) if spec.model == "TransMIL" else dict(P.mixed), "train": dict(P.train),
           "features": keys["extractor"], "real": keys["real"], "ood": keys.get("ood", ""),
           "synth": keys.get(f"synth-{spec.generator}") if spec.generator else None,
           "generator": spec.generator, "lam": spec.lam, "fold": spec.fold, "seed": spec.seed}
    h = fingerprint(sig, n=10)
    return sig, layout.of(P, NOTEBOOK).out / "runs" / f"{spec.tag}-fold{spec.fold}-seed{spec.seed}-{h}.json"


def stored_run(P, spec: RunSpec, keys: dict) -> dict | None:
    """The stored record of a finished run of the same signature (None without ``reuse_runs``)."""
    sig, path = run_record(P, spec, keys)
    if P.reuse_runs and path.exists():
        rec = json.loads(path.read_text())
        if rec.get("signature") == sig:
            return rec
    return None


def run_one(P, B: dict, spec: RunSpec, keys: dict, progress: bool = False) -> dict:
    """Train and evaluate one run, or reuse its stored result (same signature). The run seeds
    itself (weights, dropout, slide order), so its result does not depend on what ran before it
    or in which process; its record is written atomically."""
    sig, path = run_record(P, spec, keys)
    if (rec := stored_run(P, spec, keys)) is not None:
        return rec | {"reused": True}
    dev = pick_device(P.device)
    parts = fold_slides(B, spec.fold)
    bags = {k: [B["real"][i] for i in v] for k, v in parts.items()}
    bags["ood"] = [B["ood"][i] for i in sorted(B["ood"])]
    in_dim = next(iter(B["real"].values())).feats.shape[1]
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, in_dim, dict(P.transmil) if spec.model == "TransMIL" else dict(P.mixed))
    fit = train_model(model, bags["train"], bags["val"], P.train, spec.seed, dev,
                      B["synth"][spec.generator] if spec.generator else None, spec.lam,
                      select="auroc" if spec.model == "MixedSupervision" else "loss")
    preds = {}
    for ts in TEST_SETS:
        if bags[ts]:
            preds[ts] = {"slides": [b.slide_id for b in bags[ts]], "y": [b.y.int().tolist() for b in bags[ts]],
                         "prob": predict(model, bags[ts], dev).round(6).tolist()}
    rec = {"signature": sig, "model": spec.model, "generator": spec.generator or "none", "lam": spec.lam,
           "fold": spec.fold, "seed": spec.seed, "tag": spec.tag, "fit": fit, "predictions": preds}
    if P.save_models:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(path.with_suffix(".safetensors")))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, rec)
    return rec | {"reused": False}


def run_keys(P, S: dict, ext: features.Extractor) -> dict:
    """What the inputs of every run are (extractor, real, OOD and synthetic sources): part of each
    run's signature, so a run is redone when any of them changes."""
    keys = {"extractor": ext.key, "real": S["real_fp"], "ood": S["ood_fp"]}
    return keys | {f"synth-{g}": tileset_fingerprint(layout.of(P, NOTEBOOK).tilesets / g, m) for g, m in S["tilesets"].items()}


def run_sweep(P, B: dict, keys: dict, progress: bool = True) -> list[dict]:
    """Every run of :func:`run_specs` for the generators that have slides (cached runs reused), in
    the order of :func:`run_specs`.

    The runs are the work units of :func:`discnb.core.shards.run`, numbered by their place in
    :func:`run_specs` (fixed by the parameters, whatever the process count). Under ``accelerate
    launch`` each process trains its part of the unfinished runs (a contiguous slice of them, whole
    runs) and writes each one's record; when all are done every process reads every record (so a
    run's result is its record, whoever trained it). A killed sweep keeps its finished records:
    the next one, with any number of processes, trains only the others."""
    if not P.seeds or not P.folds:
        raise ValueError("folds and seeds must each name at least one")
    specs = run_specs(P, list(B["synth"]))
    procs = procs_of(P)
    folder = layout.of(P, NOTEBOOK).out / "runs"
    trained: dict[int, dict] = {}
    state: dict = {}

    def todo() -> list[int]:
        state["todo"] = [i for i, s in enumerate(specs) if stored_run(P, s, keys) is None]
        return state["todo"]

    bar = tqdm(total=0, desc="runs", disable=not (progress and procs.is_main), mininterval=2)

    def start(mine: list[int]) -> None:
        bar.total = len(mine)
        bar.refresh()

    def work(i: int) -> None:
        s = specs[i]
        bar.set_postfix_str(f"{s.tag} fold {s.fold} seed {s.seed}")
        trained[i] = run_one(P, B, s, keys)
        bar.update(1)

    # On CPU the sweep's models are tiny (the demo's TransMIL: dim 32): one thread trains them 1.7x faster than two
    # (experiments/cpu_threads.py), and the same thread count in every process keeps results process-count-free
    threads = torch.get_num_threads()
    if pick_device(P.device).type == "cpu":
        torch.set_num_threads(1)
    try:
        shards.run(folder, "sweep", todo=todo, work=work, setup=lambda: shards.remove_tmp(folder), start=start,
                   procs=procs)
    finally:
        torch.set_num_threads(threads)
    bar.close()
    fresh = set(state["todo"])
    out = []
    for i, s in enumerate(specs):
        if procs.world == 1 and i in trained:  # one process: as it was trained (its record holds the same)
            out.append(trained[i])
            continue
        path = run_record(P, s, keys)[1]
        if not path.exists():
            raise RuntimeError(f"{path}: run {s.tag} fold {s.fold} seed {s.seed} has no record after the sweep")
        out.append(json.loads(path.read_text()) | {"reused": i not in fresh})
    return out


def results_frame(runs: list[dict], extractor: str) -> pd.DataFrame:
    """Tidy rows: model, extractor, generator, lam, fold, seed, test_set, label, metric, value,
    n_slides, epochs, best_epoch, train_s. Metrics: ``auroc`` per label and ``macro``; ``bce`` (label
    ``all``, the mean slide BCE)."""
    rows = []
    for r in runs:
        for ts, pr in r["predictions"].items():
            Y, S_ = np.array(pr["y"], float), np.array(pr["prob"], float)
            vals = [("auroc", lab, v) for lab, v in auroc_scores(Y, S_).items()]
            vals.append(("bce", "all", mean_bce(S_, Y)))
            for metric, lab, v in vals:
                rows.append({"model": r["model"], "extractor": extractor, "generator": r["generator"], "lam": r["lam"],
                             "fold": r["fold"], "seed": r["seed"], "test_set": ts, "label": lab, "metric": metric,
                             "value": v, "n_slides": len(pr["y"]), "epochs": r["fit"]["epochs"],
                             "best_epoch": r["fit"]["best_epoch"], "train_s": r["fit"]["seconds"]})
    return pd.DataFrame(rows)


def baseline_table(summary: pd.DataFrame) -> pd.DataFrame:
    """AUROC (%) mean ± std of the baselines (and every λ) per test set, macro and GG5."""
    s = summary[(summary.metric == "auroc") & summary.label.isin(["macro", "GG5"])].copy()
    s["cell"] = [percent_cell(m, sd, n) for m, sd, n in zip(s["mean"], s["std"], s["n"])]
    s["col"] = s.test_set + " " + s.label
    t = s.pivot_table(index=["model", "generator", "lam"], columns="col", values="cell", aggfunc="first", sort=False)
    cols = [f"{ts} {lab}" for ts in TEST_SETS for lab in ("macro", "GG5") if f"{ts} {lab}" in t.columns]
    return t[cols]


def results_extra(S: dict, ext: features.Extractor, B: dict, runs: list[dict]) -> dict:
    """What ``results.json`` holds beside the summary: extractor, OOD set, notes, generators, runs."""
    return {"extractor": {"key": ext.key, "name": ext.name, **ext.info}, "ood": S["ood_name"], "notes": S["notes"],
            "generators": list(B["synth"]),
            "runs": [{k: r[k] for k in ("tag", "fold", "seed", "fit", "reused")} for r in runs]}


def save_results(P, df: pd.DataFrame, summary: pd.DataFrame, extra: dict) -> tuple[Path, Path]:
    """``results.csv`` (tidy) and ``results.json`` (summary + :func:`results_extra`), atomically."""
    out = layout.of(P, NOTEBOOK).out
    out.mkdir(parents=True, exist_ok=True)
    csv = atomic_file(out / "results.csv", lambda tmp: df.to_csv(tmp, index=False))
    return csv, write_json(out / "results.json", {"summary": summary.to_dict("records"), **extra})


# ============================================================================= notebook views
def feature_table(F_: dict) -> pd.DataFrame:
    return pd.DataFrame({k: {"tiles": len(v["keys"]), "dim": v["feats"].shape[1], "cached": v["cached"], "file": v["path"]}
                         for k, v in F_.items()}).T


def runs_table(runs: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"run": r["tag"], "fold": r["fold"], "seed": r["seed"], "epochs": r["fit"]["epochs"],
                          "best_epoch": r["fit"]["best_epoch"], "train_s": round(r["fit"]["seconds"], 1),
                          "reused": r["reused"]} for r in runs])


def sweep_figure(P, summary: pd.DataFrame, S: dict):
    """Figure ``05_transmil_sweep`` (Fig. 6 layout, :func:`discnb.plots.plot_sweep`)."""
    fig = plots.plot_sweep(summary, ood_name=S["ood_name"] or "OOD")
    plots.save(fig, paths.figures_dir(P.profile) / "05_transmil_sweep")
    return fig


def check(P, S: dict, ext: features.Extractor, B: dict, runs: list[dict], results: pd.DataFrame) -> None:
    """The notebook's sanity checks: every run trained, metrics in [0, 1], one extractor, files written."""
    L = layout.of(P, NOTEBOOK)
    n_gen = len(B["synth"])
    assert len(runs) == len(P.folds) * len(P.seeds) * (1 + int(P.mixed_supervision) + n_gen * sum(lam > 0 for lam in P.lams))
    assert set(results.test_set) >= {"val", "test"} and (S["ood"] is None or "ood" in set(results.test_set))
    assert results.value.dropna().between(0, 1).all() and results.value.notna().any()
    assert set(results.extractor) == {ext.key}
    assert all(1 <= r["fit"]["best_epoch"] <= r["fit"]["epochs"] <= P.train["max_epochs"] for r in runs)
    assert (L.out / "results.csv").exists() and (L.out / "results.json").exists()


# ======================================================================================= CLI
def save_all(P, S: dict, ext: features.Extractor, B: dict, runs: list[dict], checks: bool = True) -> dict:
    """Step 4 of notebook 05 (one process): results, ``results.csv``/``results.json``, the figure, the checks."""
    df = results_frame(runs, ext.key)
    summary = summarize(df)
    save_results(P, df, summary, results_extra(S, ext, B, runs))
    plt.close(sweep_figure(P, summary, S))
    if checks:
        check(P, S, ext, B, runs, df)
    return {"results": df, "summary": summary}


def run(P, progress: bool = True, checks: bool = True) -> dict:
    """Every step of notebook 05, in its order, writing the same files. Under ``accelerate launch``
    the features and the runs are split over the processes; the main process writes the results
    and the figure (the others wait, and return without ``results``/``summary``)."""
    procs = procs_of(P)
    S = load_sources(P, progress and procs.is_main)
    if procs.is_main:
        print(describe_sources(S))
    ext = build_extractor(P, S, progress and procs.is_main)
    F_ = extract_all(P, ext, S, progress)
    B = build_bags(P, S, F_)
    runs = run_sweep(P, B, run_keys(P, S, ext), progress)
    out = {"sources": S, "extractor": ext, "features": F_, "bags": B, "runs": runs}
    return out | (shards.on_main(procs, layout.of(P, NOTEBOOK).out, "results",
                                 lambda: save_all(P, S, ext, B, runs, checks)) or {})


def main(argv: list[str] | None = None) -> int:
    def is_main(P):
        return procs_of(P).is_main
    P, a = cli(NOTEBOOK, "pipelines.transmil_sweep", __doc__.split("\n\n")[0], argv, main_process=is_main,
               configure=lambda ap: ap.add_argument(
                   "--stage", choices=("all", "extractor"), default="all",
                   help="all = the notebook's steps (under accelerate launch: features and runs split over the "
                        "processes); extractor = only train (or load) the feature extractor, one process: what "
                        "accelerate launch needs first with a tilecnn extractor"))
    if a.stage == "extractor":
        S = load_sources(P, not a.no_progress)
        ext = build_extractor(P, S, not a.no_progress)
        if is_main(P):
            print(f"extractor {ext.key}: {ext.dim}-d, input {ext.input_size} px; {ext.info}")
        return 0
    res = run(P, progress=not a.no_progress, checks=not a.no_checks)
    if is_main(P):
        print(baseline_table(res["summary"]).to_string())
        print(best_lambda_table(res["summary"]).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
