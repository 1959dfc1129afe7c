"""Synthetic slides: tile sets with designated Gleason grades (paper Sec. 2.2 and Sec. 3; notebook 03).

A *tile set* stands for one whole-slide image for slide-level grading (MIL): 20-100 tiles generated
from shape-map masks whose labels follow a designated primary / secondary (optional tertiary) grade.
How a slide's masks, labels and noise seeds are chosen (mask sampling, grades from pixels, the
balancing plan, seeds) is :mod:`discnb.generative.tileset_plan`; this module draws the tiles with a
generator, writes them, reads them back, and is notebook 03's pipeline.

**Output** (one folder per generator, ``outputs/<profile>/tilesets/<generator>/``)::

    manifest.csv      one row per finished slide: slide_id (str, "syn-00012"), primary, secondary
                      (int 0..3 = NC, GG3, GG4, GG5), tertiary (int, -1 = none), weights (JSON list of
                      4 floats, label order NC..GG5), n_tiles, seed, file ("slides/<slide_id>.npz")
    slides/<id>.npz   tiles (N,H,W,3) uint8, masks (N,H,W) uint8 labels 0..3, mask_ids (N,) int64
                      (rows of the shape-map library), seeds (N,) int64 (noise seed per tile)
    plan.json         the plan (per-grade table and every slide), the sampling parameters, the
                      generator's name and fingerprint, and the plan fingerprint
    timing.json       seconds per tile (generator calls only) and per slide (masks + tiles + write),
                      summed over every run that added slides

``outputs/<profile>/tilesets/timing.json`` collects every generator's timing.

Reading a tile set::

    manifest, load = load_tileset("demo", "SD")       # or a tilesets/ folder, or the generator folder
    slide = load(manifest.slide_id[0])                 # dict: tiles, masks, mask_ids, seeds
    for row in manifest.itertuples(): ...              # row.primary, row.secondary: slide labels

**Resume and several processes**: a generator call is one *group* of consecutive slides of the plan
(:func:`slide_groups`, fixed by the plan and ``batch_tiles``), the work unit of
:mod:`discnb.core.shards`. Each slide's npz is written atomically (tmp file + ``os.replace``) by the
process that owns its group, then added to that process's record ``manifest.rank-K.json``; the main
process merges the records into ``manifest.csv`` (plan order) and ``timing.json`` when all processes
are done, and at the start of a run it folds in a killed run's records and deletes stray tmp files.
A rerun (with any number of processes) skips every finished slide, so a killed run never leaves a
half-written or duplicated slide; a group cut short is generated whole again (the same batches) and
only its missing slides are written. Because the groups and every tile's noise depend on the plan
only, one process, N processes (``accelerate launch``) and a resumed run write the same slides and
the same ``manifest.csv`` (timing aside). A folder made with another plan or another generator
fingerprint (retrained weights, other steps) is *stale*: with ``replace_stale`` its files are deleted
and it is generated afresh, otherwise it is an error that names the folder. One run per generator
folder at a time.

From a terminal: ``python -m discnb.pipelines.tilesets --params params/demo/03_tile_sets.yaml``; on
several GPUs: ``accelerate launch --config_file params/accelerate/multi_gpu.yaml -m
discnb.pipelines.tilesets --params params/paper/03_tile_sets.yaml`` (the slide groups are split over
the processes; the ablation, the timing table, the figure and the checks are the main process's).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from discnb import LABELS, plots
from discnb.core import io, layout, paths, shards
from discnb.core.notebook import cli
from discnb.core.train import pick_device
from discnb.data import prepared, shapes
from discnb.generative.generators import GeneratorContext, build_generator
from discnb.generative.protocol import Generator
from discnb.generative.tileset_plan import (VERSION, Plan, ablation_grid, build_masks, library_info, make_plan,
                                            pair_table, sample_slide)

NOTEBOOK = "03_tile_sets"
MANIFEST_COLUMNS = ["slide_id", "primary", "secondary", "tertiary", "weights", "n_tiles", "seed", "file"]


# ================================================================================ generation
def _write_slide(path: Path, **arrays) -> None:
    io.atomic_file(path, lambda tmp: np.savez_compressed(tmp, **arrays))


def read_manifest(folder: str | Path) -> pd.DataFrame:
    """``manifest.csv`` of a generator folder (empty frame with the contract's columns if none)."""
    f = Path(folder) / "manifest.csv"
    if not f.exists():
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("slide_id", "weights", "file") else "int64")
                             for c in MANIFEST_COLUMNS})
    m = pd.read_csv(f, dtype={"slide_id": str, "weights": str, "file": str}, keep_default_na=False)
    if list(m.columns) != MANIFEST_COLUMNS:
        raise ValueError(f"{f}: columns {list(m.columns)} are not the tile-set manifest's {MANIFEST_COLUMNS}")
    return m


def _write_manifest(folder: Path, m: pd.DataFrame) -> None:
    io.atomic_file(folder / "manifest.csv", lambda tmp: m[MANIFEST_COLUMNS].to_csv(tmp, index=False))


RECORD = "manifest"  # each process's record of the slides it wrote: manifest.rank-K.json (merged, then deleted)


def _clear(folder: Path) -> None:
    """Delete a stale tile set (only the files this module writes)."""
    for name in ("manifest.csv", "plan.json", "timing.json"):
        (folder / name).unlink(missing_ok=True)
    for p in shards.rank_paths(folder, RECORD, ".json"):
        p.unlink()
    shutil.rmtree(folder / "slides", ignore_errors=True)


def slide_groups(n_tiles, batch_tiles: int) -> list[list[int]]:
    """The plan's slides (their tile counts, in plan order) in groups of consecutive slides, each
    closed once it holds ``batch_tiles`` tiles: the generator's calls. A function of the plan
    only, so the generator sees the same batches (and batched floating point gives the same bits)
    whichever slides are already finished and whichever process computes a group."""
    groups, cur, n = [], [], 0
    for i, m in enumerate(n_tiles):
        cur.append(i)
        n += int(m)
        if n >= batch_tiles:
            groups.append(cur)
            cur, n = [], 0
    return groups + ([cur] if cur else [])


def _on_cpu(gen: Generator) -> bool:
    return gen.device.type == "cpu"


def _no_run() -> dict:
    """A run's (or a process's) totals before its first slide."""
    return {"slides": 0, "tiles": 0, "generate_seconds": 0.0, "slide_seconds": 0.0}


def _tileset_settings(plan: Plan, generator_name: str, gen_fingerprint: str, lib_fingerprint: str, image_size: int,
                      min_tiles: int, max_tiles: int, scheme: str) -> dict:
    """What a tile set's slides depend on (kept in plan.json): a folder made with other settings is stale."""
    return {"version": VERSION, "generator": generator_name, "generator_fingerprint": gen_fingerprint,
            "plan_fingerprint": plan.fingerprint(), "library_fingerprint": lib_fingerprint,
            "image_size": int(image_size), "min_tiles": int(min_tiles), "max_tiles": int(max_tiles), "scheme": scheme}


def _stale_settings(folder: Path, settings: dict, key: str, replace_stale: bool) -> list[str] | None:
    """The settings in which the tile set already in ``folder`` differs (None when it does not, or there is
    none); an error unless ``replace_stale``. Every process checks, so all of them stop on an error."""
    plan_file = folder / "plan.json"
    if not plan_file.exists():
        return None
    old = json.loads(plan_file.read_text())
    if old.get("key") == key:
        return None
    stale = sorted(k for k in settings if old.get("settings", {}).get(k) != settings[k])
    if not replace_stale:
        raise ValueError(f"{folder}: this tile set was made with other settings ({', '.join(stale)} differ: "
                         f"e.g. retrained generator weights or another plan). Delete the folder, or set "
                         f"replace_stale: true to regenerate it")
    return stale


def _read_records(records: list[Path]) -> tuple[list[dict], dict, int]:
    """The processes' records: their manifest rows, their summed run totals, and the largest process count."""
    rows, run, world = [], _no_run(), 1
    for r in records:
        rec = json.loads(r.read_text())
        rows += rec["rows"]
        world = max(world, int(rec["processes"]))
        for k in run:
            run[k] += rec["run"][k]
    return rows, run, world


def _merged_manifest(folder: Path, rows: list[dict], slide_order: dict[str, int]) -> pd.DataFrame:
    """``manifest.csv`` plus ``rows``, one row per slide (the last), in plan order; a row whose file is
    gone is dropped, with a warning, so that its slide is generated again."""
    manifest = read_manifest(folder)
    if rows:
        new = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        manifest = pd.concat([manifest, new], ignore_index=True) if len(manifest) else new
    gone = [r.slide_id for r in manifest.itertuples() if not (folder / r.file).exists()]
    if gone:
        warnings.warn(f"{folder}: {len(gone)} manifest row(s) without their file (e.g. {gone[:3]}); generating them again")
        manifest = manifest[~manifest.slide_id.isin(gone)]
    manifest = manifest.drop_duplicates("slide_id", keep="last")
    manifest = manifest.iloc[np.argsort([slide_order.get(x, len(slide_order)) for x in manifest.slide_id], kind="stable")]
    return manifest.reset_index(drop=True)


def _merged_timing(timing_file: Path, run: dict, world: int, interrupted: bool, generator_name: str,
                   gen_fingerprint: str, sampling: dict) -> dict:
    """``timing.json`` with ``run`` added (one entry of ``runs`` when it wrote slides) and the means over
    every run."""
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else \
        {"generator": generator_name, **_no_run(), "runs": []}
    if run["slides"]:
        for k in run:
            timing[k] += run[k]
        timing["runs"].append({**run, "processes": world, **({"interrupted": True} if interrupted else {}),
                               "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **sampling})
    timing.update(generator=generator_name, generator_fingerprint=gen_fingerprint,
                  sec_per_tile=timing["generate_seconds"] / timing["tiles"] if timing["tiles"] else None,
                  sec_per_slide=timing["slide_seconds"] / timing["slides"] if timing["slides"] else None,
                  mean_tiles_per_slide=timing["tiles"] / timing["slides"] if timing["slides"] else None)
    return timing


def _manifest_row(r, smp: dict, rel: str) -> dict:
    """The manifest row of plan row ``r`` whose sampled slide ``smp`` was written to ``rel``."""
    return {"slide_id": r.slide_id, "primary": int(r.primary), "secondary": int(r.secondary),
            "tertiary": int(r.tertiary), "weights": json.dumps([round(float(x), 6) for x in smp["weights"]]),
            "n_tiles": len(smp["mask_ids"]), "seed": int(r.seed), "file": rel}


class _Generation:
    """One process's part of generating a tile set: the steps that :func:`discnb.core.shards.run` calls
    (:meth:`setup` and :meth:`merge_records` on the main process; :meth:`todo`, :meth:`start` and
    :meth:`work` on each), over the state they share: the plan's sampled slides and their groups, the
    slides still missing, this process's record and its progress bar."""

    def __init__(self, folder: Path, gen: Generator, plan: Plan, lib: dict, settings: dict, stale: list[str] | None,
                 *, batch_tiles: int, extra: dict, procs: shards.Processes, progress: bool,
                 on_slide: Callable[[str], None] | None):
        self.folder, self.gen, self.lib, self.plan, self.settings, self.stale = folder, gen, lib, plan, settings, stale
        self.key = io.fingerprint(settings)
        self.size, self.name = settings["image_size"], settings["generator"]
        self.extra, self.on_slide = extra, on_slide
        self.slide_ids = plan.slides.slide_id.tolist()
        self.slide_order = {sid: i for i, sid in enumerate(self.slide_ids)}
        # every process draws every slide's masks and seeds (cheap; the masks themselves are built per group)
        self.specs = [(r, sample_slide(lib, r.primary, r.secondary, r.tertiary, r.seed, settings["min_tiles"],
                                       settings["max_tiles"], settings["scheme"], masks=False))
                      for r in plan.slides.itertuples()]
        self.groups = slide_groups([len(s["mask_ids"]) for _, s in self.specs], batch_tiles)
        self.missing: set[int] = set()
        self.record = shards.rank_path(folder, RECORD, procs.rank, ".json")
        self.mine = {"processes": procs.world, "rows": [], "run": _no_run()}
        self.bar = tqdm(total=0, desc=f"{self.name or 'tiles'}", unit="tile", disable=not (progress and procs.is_main),
                        mininterval=1)

    # ----------------------------------------------------------------- main process, before and after
    def setup(self) -> None:
        """Clear a stale folder, delete what a killed run left half written, write plan.json, and fold a
        killed run's records into the manifest."""
        if self.stale is not None:
            warnings.warn(f"{self.folder}: stale tile set ({', '.join(self.stale)} changed); deleting it and "
                          f"generating afresh")
            _clear(self.folder)
        (self.folder / "slides").mkdir(parents=True, exist_ok=True)
        shards.remove_tmp(self.folder / "slides")
        shards.remove_tmp(self.folder)
        io.write_text(self.folder / "plan.json", json.dumps({"key": self.key, "settings": self.settings, **self.extra,
                                                             "plan": self.plan.to_json()}, indent=1, default=int) + "\n")
        self.merge_records(interrupted=True)

    def merge_records(self, interrupted: bool = False) -> int:
        """manifest.csv and timing.json plus every process's record (deleted after); returns the number
        of slides the records add."""
        records = shards.rank_paths(self.folder, RECORD, ".json")
        rows, run, world = _read_records(records)
        _write_manifest(self.folder, _merged_manifest(self.folder, rows, self.slide_order))
        timing = _merged_timing(self.folder / "timing.json", run, world, interrupted, self.name,
                                self.settings["generator_fingerprint"], self.extra.get("sampling", {}))
        io.write_text(self.folder / "timing.json", json.dumps(timing, indent=1) + "\n")
        for r in records:
            r.unlink()
        return run["slides"]

    # ------------------------------------------------------------------------------- every process
    def todo(self) -> list[int]:
        """The groups with a slide not in the manifest (or whose file is gone); notes those slides."""
        m = read_manifest(self.folder)
        done = {sid for sid, f in zip(m.slide_id, m.file) if (self.folder / f).exists()}
        self.missing.update(i for i, sid in enumerate(self.slide_ids) if sid not in done)
        return [g for g, idx in enumerate(self.groups) if any(i in self.missing for i in idx)]

    def start(self, units: list[int]) -> None:
        """The progress bar counts the tiles this process will write."""
        self.bar.total = sum(len(self.specs[i][1]["mask_ids"]) for g in units for i in self.groups[g] if i in self.missing)
        self.bar.refresh()

    def work(self, g: int) -> None:
        """Group ``g``: one generator call on all its slides' masks, then its missing slides written."""
        t0 = time.perf_counter()
        group = [self.specs[i] for i in self.groups[g]]
        masks, seeds, kw = self.group_inputs(group)
        tg = time.perf_counter()
        tiles = np.asarray(self.gen.generate(masks, seeds, **kw))
        gen_s = time.perf_counter() - tg
        if tiles.shape != (len(masks), self.size, self.size, 3) or tiles.dtype != np.uint8:
            raise ValueError(f"generator {self.name!r} returned {tiles.dtype} {tiles.shape}; expected uint8 "
                             f"{(len(masks), self.size, self.size, 3)}")
        written = self.write_group(g, group, tiles)
        share = written / len(masks)  # the time of the slides written (all of the group's but when resumed)
        self.mine["run"]["generate_seconds"] += gen_s * share
        self.mine["run"]["slide_seconds"] += (time.perf_counter() - t0) * share
        io.write_text(self.record, json.dumps(self.mine) + "\n")

    def group_inputs(self, group: list[tuple]) -> tuple[np.ndarray, list[int], dict]:
        """A group's masks (built here), seeds and, for a generator that needs them, slide labels."""
        for _, smp in group:
            smp["masks"] = build_masks(self.lib, smp["mask_ids"], smp["labels"], self.size)
        masks = np.concatenate([s["masks"] for _, s in group])
        seeds = np.concatenate([s["seeds"] for _, s in group])
        kw = {}
        if self.gen.needs_slide_labels:  # Fig. 7's tile+slide-conditioned SD: the slide's labels per tile
            kw["slide_labels"] = np.concatenate([np.tile([[int(r.primary), int(r.secondary)]], (len(s["seeds"]), 1))
                                                 for r, s in group])
        return masks, [int(x) for x in seeds], kw

    def write_group(self, g: int, group: list[tuple], tiles: np.ndarray) -> int:
        """Write and record group ``g``'s missing slides (a resumed group's finished ones are not written
        again); returns the number of tiles written."""
        o, written = 0, 0
        for i, (r, smp) in zip(self.groups[g], group):
            m = len(smp["mask_ids"])
            if i in self.missing:
                self.write_slide(r, smp, tiles[o:o + m])
                written += m
            o += m
            del smp["masks"]
        return written

    def write_slide(self, r, smp: dict, tiles: np.ndarray) -> None:
        """One slide's npz (atomically), then its row in this process's record."""
        rel = f"slides/{r.slide_id}.npz"
        _write_slide(self.folder / rel, tiles=tiles, masks=smp["masks"], mask_ids=smp["mask_ids"], seeds=smp["seeds"])
        self.mine["rows"].append(_manifest_row(r, smp, rel))
        self.mine["run"]["slides"] += 1
        self.mine["run"]["tiles"] += len(tiles)
        io.write_text(self.record, json.dumps(self.mine) + "\n")
        if self.on_slide:
            self.on_slide(r.slide_id)
        self.bar.update(len(tiles))


def generate_tileset(folder: str | Path, gen: Generator, gen_fingerprint: str, plan: Plan, lib: dict, *,
                     image_size: int, min_tiles: int, max_tiles: int, scheme: str = "random", batch_tiles: int = 16,
                     generator_name: str = "", lib_fingerprint: str = "", extra: dict | None = None,
                     replace_stale: bool = False, progress: bool = True,
                     on_slide: Callable[[str], None] | None = None, procs: shards.Processes | None = None) -> dict:
    """Generate (or finish) the tile set of one generator in ``folder``; returns its timing/summary.

    The plan's slides are grouped in plan order until a group holds ``batch_tiles`` tiles
    (:func:`slide_groups`), so the generator sees full batches; a group is one call of
    ``gen.generate(masks, seeds)`` (which must give (N,H,W,3) uint8) and the work unit of
    :func:`discnb.core.shards.run`: under ``accelerate launch`` the unfinished groups are split over
    the processes (one process: all of them), each writing its slides atomically and its own
    record ``manifest.rank-K.json``; the main process merges the records into ``manifest.csv``
    (plan order) and ``timing.json`` once all are done, and at the start of a run folds in those of
    a killed run. A group with some slides finished is generated whole again (the same batches) and
    only its missing slides are written. So N processes, one process and a resumed run all write
    the same slides and the same manifest (timing aside). The steps are :class:`_Generation`'s.
    """
    folder = Path(folder)
    procs = procs or shards.processes(_on_cpu(gen))
    settings = _tileset_settings(plan, generator_name, gen_fingerprint, lib_fingerprint, image_size, min_tiles,
                                 max_tiles, scheme)
    stale = _stale_settings(folder, settings, io.fingerprint(settings), replace_stale)
    job = _Generation(folder, gen, plan, library_info(lib), settings, stale, batch_tiles=batch_tiles,
                      extra=extra or {}, procs=procs, progress=progress, on_slide=on_slide)
    generated = shards.run(folder, "generation", todo=job.todo, work=job.work, setup=job.setup,
                           merge=job.merge_records, start=job.start, procs=procs)
    job.bar.close()
    manifest = read_manifest(folder)
    timing = json.loads((folder / "timing.json").read_text())
    missing_now = set(job.slide_ids) - set(manifest.slide_id)
    if missing_now:
        raise RuntimeError(f"{folder}: {len(missing_now)} planned slide(s) still missing after generation")
    return {"folder": str(folder), "slides": len(manifest), "tiles": int(manifest.n_tiles.sum()),
            "generated_now": int(generated), **{k: timing[k] for k in ("sec_per_tile", "sec_per_slide")}}


# ============================================================================== reading back
def tileset_dir(profile_or_dir: str | Path, generator: str) -> Path:
    """The generator folder for a profile name, a ``tilesets/`` folder or the generator folder itself."""
    s = str(profile_or_dir)
    base = layout.of({"profile": s}).tilesets if s in paths.PROFILES else paths.resolve(s)
    for cand in (base / generator, base):
        if (cand / "manifest.csv").exists():
            return cand
    raise FileNotFoundError(f"{base / generator}: no tile set of generator {generator!r} (no manifest.csv); "
                            f"run notebooks/03_tile_sets.ipynb with {generator!r} in generators")


def load_tileset(profile_or_dir: str | Path, generator: str) -> tuple[pd.DataFrame, Callable[[str], dict]]:
    """(manifest, load) for one generator's tile set; ``load(slide_id)`` -> dict of tiles (N,H,W,3) uint8,
    masks (N,H,W) uint8, mask_ids (N,) int64, seeds (N,) int64. Only finished slides are listed."""
    folder = tileset_dir(profile_or_dir, generator)
    m = read_manifest(folder)
    files = dict(zip(m.slide_id, m.file))

    def load(slide_id: str) -> dict:
        if slide_id not in files:
            raise KeyError(f"{folder}: no slide {slide_id!r} in the manifest")
        with np.load(folder / files[slide_id], allow_pickle=False) as z:
            return {k: z[k] for k in ("tiles", "masks", "mask_ids", "seeds")}

    return m, load


# ================================================================================ notebook glue

def load_inputs(P) -> dict:
    """Notebook 00's index, shape-map library (+ its fingerprint) and tile size."""
    ddir = layout.of(P, NOTEBOOK).data
    lib_path = ddir / "shape_maps.npz"
    lib = library_info(shapes.load_library(lib_path))
    return {"index": prepared.read_index(ddir), "lib": lib, "lib_fingerprint": io.fingerprint(lib_path),
            "image_size": int(prepared.prep_params(ddir)["image_size"]), "data_dir": str(ddir)}


def plan_from_params(P, inputs: dict) -> Plan:
    return make_plan(inputs["index"], P.target_per_grade, P.seed, P.secondary, P.tertiary_prob)


def pair_tables(plan: Plan) -> pd.DataFrame:
    """The plan's (primary, secondary) slide counts, real training slides beside the synthetic ones."""
    return pd.concat({"real": pair_table(plan.pairs_real), "synthetic": pair_table(plan.pairs_synthetic)}, axis=1)


def build(P, generator: str, plan: Plan, inputs: dict, progress: bool = True) -> dict:
    """Build generator ``generator`` (any registered name) and generate its tile set for ``plan``
    (under ``accelerate launch``: this process's part of it)."""
    L = layout.of(P, NOTEBOOK)
    procs = shards.processes(P.device == "cpu")  # before the model goes to a GPU: each process has its own
    device = str(pick_device(P.device))
    S = P.sampling
    ctx = GeneratorContext(L.ldm, inputs["image_size"], S["steps"], S["scheduler"], S["batch_size"], device,
                           P.mixed_precision == "bf16")
    gen, fp = build_generator(generator, ctx)
    fp = fp + ("/bf16" if ctx.bf16 and device == "cuda" else "")  # bf16 tiles differ from fp32 ones
    extra = {"params": dict(P), "sampling": {**dict(S), "device": device}, "data_dir": inputs["data_dir"]}
    res = generate_tileset(L.out / generator, gen, fp, plan, inputs["lib"], image_size=inputs["image_size"],
                           min_tiles=P.min_tiles, max_tiles=P.max_tiles, scheme=P.weights,
                           batch_tiles=S["batch_size"], generator_name=generator,
                           lib_fingerprint=inputs["lib_fingerprint"], extra=extra,
                           replace_stale=P.replace_stale, progress=progress, procs=procs)
    return res | {"device": device, "steps": S["steps"]}


def write_timing(P, results: dict) -> Path:
    """``tilesets/timing.json``: every generator's timing.json (merged with generators built before)."""
    L = layout.of(P, NOTEBOOK)
    f = L.out / "timing.json"
    allt = json.loads(f.read_text()) if f.exists() else {}
    for g in results:
        allt[g] = json.loads((L.out / g / "timing.json").read_text())
    io.write_text(f, json.dumps(allt, indent=1) + "\n")
    return f


def timing_table(P, generators) -> pd.DataFrame:
    rows = {}
    for g in generators:
        t = json.loads((layout.of(P, NOTEBOOK).out / g / "timing.json").read_text())
        rows[g] = {"slides": t["slides"], "tiles": t["tiles"], "sec_per_tile": t["sec_per_tile"],
                   "sec_per_slide": t["sec_per_slide"], "tiles_per_slide": t["mean_tiles_per_slide"]}
    return pd.DataFrame(rows).T


def run_ablation(P, inputs: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    A = dict(P.ablation)
    return ablation_grid(inputs["lib"], A.pop("tertiary_probs"), secondary=P.secondary, **A)


def save_ablation(P, summary: pd.DataFrame, per: pd.DataFrame) -> Path:
    out = layout.of(P, NOTEBOOK).out
    io.atomic_file(out / "ablation_slides.csv", lambda tmp: per.to_csv(tmp, index=False))
    f = out / "ablation.json"
    share = [{"tertiary_prob": tp, "scheme": sc, **r} for (tp, sc), r in summary.to_dict("index").items()]
    io.write_text(f, json.dumps({"settings": dict(P.ablation), "secondary": P.secondary,
                                      "paper": {"random": 0.9675, "equal": 0.6775, "slides": 400},
                                      "match_share": share}, indent=1) + "\n")
    return f


def mosaic(images: np.ndarray, cols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tiles (N,H,W[,3]) in one image, row by row (``cols`` default: ceil(sqrt(N))); white padding."""
    images = np.asarray(images)
    n, h, w = images.shape[:3]
    cols = int(cols or math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, *images.shape[3:]), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = im
    return out


def figure_rows(P, generators, n_slides: int, max_tiles: int) -> tuple[dict, list[str]]:
    """Rows for the figure: per slide (columns) its mask mosaic, then each generator's tile mosaic.
    Slides are the plan's first ones with distinct primary grades where possible."""
    L = layout.of(P, NOTEBOOK)
    m0, load0 = load_tileset(L.out, generators[0])
    picks = m0.drop_duplicates("primary").slide_id.tolist()
    picks = (picks + [s for s in m0.slide_id if s not in picks])[:n_slides]
    rows: dict[str, list] = {"masks": []}
    titles = []
    for sid in picks:
        r = m0[m0.slide_id == sid].iloc[0]
        t = f"+{LABELS[r.tertiary]}" if r.tertiary >= 0 else ""
        titles.append(f"{sid} {LABELS[r.primary]}+{LABELS[r.secondary]}{t}")
        rows["masks"].append(mosaic(plots.colorize(load0(sid)["masks"][:max_tiles])))
    for g in generators:
        _, load = load_tileset(L.out, g)
        rows[g] = [mosaic(load(sid)["tiles"][:max_tiles]) for sid in picks]
    return rows, titles


def figure(P):
    """Figure ``03_tile_sets``: per slide its mask mosaic, then each generator's tile mosaic (None,
    with a warning, when the plan has no synthetic slide: the real ones already reach the target)."""
    rows, titles = figure_rows(P, P.generators, P.figure_slides, P.figure_tiles)
    if not titles:
        warnings.warn(f"no synthetic slide to draw: the real slides already reach target_per_grade "
                      f"{P.target_per_grade} for every grade (raise it to synthesise slides)")
        return None
    fig = plots.image_grid(rows, titles, size=2.4)
    plots.save(fig, paths.figures_dir(P.profile) / "03_tile_sets")
    return fig


def check(P, plan: Plan, abl: pd.DataFrame, timing_path: Path) -> None:
    """The notebook's sanity checks: every planned slide of every generator is there, with the
    manifest's columns and tiles of the right shape; every generator got the same masks and noise
    seeds; primary-NC slides are NC only; random weights match the designation more often than equal
    ones (the ablation); every generator was timed."""
    L = layout.of(P, NOTEBOOK)
    sets = {g: load_tileset(L.out, g) for g in P.generators}
    m0, load0 = sets[P.generators[0]]
    for g, (m, load) in sets.items():
        assert list(m.columns) == MANIFEST_COLUMNS and m.slide_id.is_unique, g
        assert set(m.slide_id) == set(plan.slides.slide_id), f"{g}: not every planned slide was generated"
        assert m.n_tiles.between(P.min_tiles, P.max_tiles).all()
        s = load(m.slide_id.iloc[0])
        assert s["tiles"].dtype == np.uint8 and s["tiles"].shape == (*s["masks"].shape, 3) and s["masks"].max() <= 3
        assert not list((L.out / g / "slides").glob(io.TMP_GLOB))
        for sid in m0.slide_id[:3]:
            a, b = load0(sid), load(sid)
            assert all((a[k] == b[k]).all() for k in ("masks", "seeds", "mask_ids")), f"{g}: other masks or seeds"
    nc = m0[m0.primary == 0]
    assert all(load0(sid)["masks"].max() == 0 for sid in nc.slide_id), "a primary-NC slide has cancer pixels"
    assert (abl.xs("random", level="scheme")["all"] > abl.xs("equal", level="scheme")["all"]).all(), abl
    assert (abl.slides == 4 * P.ablation["per_grade"]).all()
    t = json.loads(Path(timing_path).read_text())
    assert all(t[g]["sec_per_tile"] is not None for g in P.generators)


def build_all(P, plan: Plan, inputs: dict, progress: bool = True) -> dict:
    """:func:`build` of every generator in ``generators``, one after the other."""
    return {g: build(P, g, plan, inputs, progress) for g in P.generators}


def run(P, progress: bool = True, checks: bool = True) -> dict:
    """Every step of notebook 03, in its order: plan, ablation, every generator's tile set, timing,
    the figure and the checks. Under ``accelerate launch`` every process generates its part of each
    tile set, and only the main process runs the rest (``ablation`` is None on the others)."""
    procs = shards.processes(P.device == "cpu")
    inputs = load_inputs(P)
    plan = plan_from_params(P, inputs)
    summary = None
    if procs.is_main:
        summary, per = run_ablation(P, inputs)
        save_ablation(P, summary, per)
    results = build_all(P, plan, inputs, progress)
    if procs.is_main:
        timing_path = write_timing(P, results)
        figure(P)
        if checks:
            check(P, plan, summary, timing_path)
        plt.close("all")
    return {"plan": plan, "ablation": summary, "results": results}


def main(argv=None) -> int:
    def is_main(P):
        return shards.processes(P.device == "cpu").is_main
    P, a = cli(NOTEBOOK, "pipelines.tilesets", "Generate synthetic tile sets (notebook 03) from a terminal.", argv,
               main_process=is_main)
    out = run(P, progress=not a.no_progress, checks=not a.no_checks)
    if not is_main(P):
        return 0
    print(out["plan"].table.to_string())
    print(out["ablation"].to_string())
    print(json.dumps(out["results"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
