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


def _on_cpu(gen) -> bool:
    return str(getattr(gen, "device", "cpu")).startswith("cpu")


def generate_tileset(folder: str | Path, gen, gen_fingerprint: str, plan: Plan, lib: dict, *, image_size: int,
                     min_tiles: int, max_tiles: int, scheme: str = "random", batch_tiles: int = 16,
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
    the same slides and the same manifest (timing aside).
    """
    folder = Path(folder)
    lib = library_info(lib)
    size = int(image_size)
    procs = procs or shards.processes(_on_cpu(gen))
    settings = {"version": VERSION, "generator": generator_name, "generator_fingerprint": gen_fingerprint,
                "plan_fingerprint": plan.fingerprint(), "library_fingerprint": lib_fingerprint,
                "image_size": size, "min_tiles": int(min_tiles), "max_tiles": int(max_tiles), "scheme": scheme}
    key = io.fingerprint(settings)
    plan_file = folder / "plan.json"
    stale = None
    if plan_file.exists():  # every process checks, so all of them stop on an error
        old = json.loads(plan_file.read_text())
        if old.get("key") != key:
            stale = sorted(k for k in settings if old.get("settings", {}).get(k) != settings[k])
            if not replace_stale:
                raise ValueError(f"{folder}: this tile set was made with other settings ({', '.join(stale)} differ: "
                                 f"e.g. retrained generator weights or another plan). Delete the folder, or set "
                                 f"replace_stale: true to regenerate it")
    timing_file = folder / "timing.json"
    slide_ids = plan.slides.slide_id.tolist()
    rank_of = {sid: i for i, sid in enumerate(slide_ids)}

    def merge_records(interrupted: bool = False) -> int:
        """manifest.csv and timing.json plus every process's record (deleted after); returns the
        number of slides the records add."""
        manifest = read_manifest(folder)
        timing = json.loads(timing_file.read_text()) if timing_file.exists() else \
            {"generator": generator_name, "slides": 0, "tiles": 0, "generate_seconds": 0.0, "slide_seconds": 0.0, "runs": []}
        records = shards.rank_paths(folder, RECORD, ".json")
        rows, run, world = [], {"slides": 0, "tiles": 0, "generate_seconds": 0.0, "slide_seconds": 0.0}, 1
        for r in records:
            rec = json.loads(r.read_text())
            rows += rec["rows"]
            world = max(world, int(rec["processes"]))
            for k in run:
                run[k] += rec["run"][k]
        if rows:
            new = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
            manifest = pd.concat([manifest, new], ignore_index=True) if len(manifest) else new
        gone = [r.slide_id for r in manifest.itertuples() if not (folder / r.file).exists()]
        if gone:
            warnings.warn(f"{folder}: {len(gone)} manifest row(s) without their file (e.g. {gone[:3]}); generating them again")
            manifest = manifest[~manifest.slide_id.isin(gone)]
        manifest = manifest.drop_duplicates("slide_id", keep="last")
        manifest = manifest.iloc[np.argsort([rank_of.get(x, len(rank_of)) for x in manifest.slide_id], kind="stable")]
        _write_manifest(folder, manifest.reset_index(drop=True))
        if run["slides"]:
            for k in run:
                timing[k] += run[k]
            timing["runs"].append({**run, "processes": world, **({"interrupted": True} if interrupted else {}),
                                   "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                   **(extra or {}).get("sampling", {})})
        timing.update(generator=generator_name, generator_fingerprint=gen_fingerprint,
                      sec_per_tile=timing["generate_seconds"] / timing["tiles"] if timing["tiles"] else None,
                      sec_per_slide=timing["slide_seconds"] / timing["slides"] if timing["slides"] else None,
                      mean_tiles_per_slide=timing["tiles"] / timing["slides"] if timing["slides"] else None)
        io.write_text(timing_file, json.dumps(timing, indent=1) + "\n")
        for r in records:
            r.unlink()
        return run["slides"]

    def setup() -> None:
        if stale is not None:
            warnings.warn(f"{folder}: stale tile set ({', '.join(stale)} changed); deleting it and generating afresh")
            _clear(folder)
        (folder / "slides").mkdir(parents=True, exist_ok=True)
        shards.remove_tmp(folder / "slides")  # left by a killed run
        shards.remove_tmp(folder)
        io.write_text(plan_file, json.dumps({"key": key, "settings": settings, **(extra or {}), "plan": plan.to_json()},
                                            indent=1, default=int) + "\n")
        merge_records(interrupted=True)

    # every process draws every slide's masks and seeds (cheap; the masks themselves are built per group)
    specs = [(r, sample_slide(lib, r.primary, r.secondary, r.tertiary, r.seed, min_tiles, max_tiles, scheme, masks=False))
             for r in plan.slides.itertuples()]
    groups = slide_groups([len(s["mask_ids"]) for _, s in specs], batch_tiles)
    missing: set[int] = set()

    def todo() -> list[int]:
        m = read_manifest(folder)
        done = {sid for sid, f in zip(m.slide_id, m.file) if (folder / f).exists()}
        missing.update(i for i, sid in enumerate(slide_ids) if sid not in done)
        return [g for g, idx in enumerate(groups) if any(i in missing for i in idx)]

    record = shards.rank_path(folder, RECORD, procs.rank, ".json")
    mine = {"processes": procs.world, "rows": [], "run": {"slides": 0, "tiles": 0, "generate_seconds": 0.0, "slide_seconds": 0.0}}
    bar = tqdm(total=0, desc=f"{generator_name or 'tiles'}", unit="tile", disable=not (progress and procs.is_main),
               mininterval=1)

    def start(units: list[int]) -> None:
        bar.total = sum(len(specs[i][1]["mask_ids"]) for g in units for i in groups[g] if i in missing)
        bar.refresh()

    def work(g: int) -> None:
        t0 = time.perf_counter()
        group = [specs[i] for i in groups[g]]
        for _, smp in group:
            smp["masks"] = build_masks(lib, smp["mask_ids"], smp["labels"], size)
        masks = np.concatenate([s["masks"] for _, s in group])
        seeds = np.concatenate([s["seeds"] for _, s in group])
        kw = {}
        if getattr(gen, "needs_slide_labels", False):  # Fig. 7's tile+slide-conditioned SD: the slide's labels per tile
            kw["slide_labels"] = np.concatenate([np.tile([[int(r.primary), int(r.secondary)]], (len(s["seeds"]), 1))
                                                 for r, s in group])
        tg = time.perf_counter()
        tiles = np.asarray(gen.generate(masks, [int(x) for x in seeds], **kw))
        gen_s = time.perf_counter() - tg
        if tiles.shape != (len(masks), size, size, 3) or tiles.dtype != np.uint8:
            raise ValueError(f"generator {generator_name!r} returned {tiles.dtype} {tiles.shape}; expected uint8 "
                             f"{(len(masks), size, size, 3)}")
        o, written = 0, 0
        for i, (r, smp) in zip(groups[g], group):
            m = len(smp["mask_ids"])
            if i in missing:  # a resumed group: its finished slides are not written again
                rel = f"slides/{r.slide_id}.npz"
                _write_slide(folder / rel, tiles=tiles[o:o + m], masks=smp["masks"], mask_ids=smp["mask_ids"],
                             seeds=smp["seeds"])
                mine["rows"].append({"slide_id": r.slide_id, "primary": int(r.primary), "secondary": int(r.secondary),
                                     "tertiary": int(r.tertiary),
                                     "weights": json.dumps([round(float(x), 6) for x in smp["weights"]]),
                                     "n_tiles": m, "seed": int(r.seed), "file": rel})
                mine["run"]["slides"] += 1
                mine["run"]["tiles"] += m
                written += m
                io.write_text(record, json.dumps(mine) + "\n")
                if on_slide:
                    on_slide(r.slide_id)
                bar.update(m)
            o += m
            del smp["masks"]
        share = written / len(masks)  # the time of the slides written (all of the group's but when resumed)
        mine["run"]["generate_seconds"] += gen_s * share
        mine["run"]["slide_seconds"] += (time.perf_counter() - t0) * share
        io.write_text(record, json.dumps(mine) + "\n")

    generated = shards.run(folder, "generation", todo=todo, work=work, setup=setup, merge=merge_records, start=start,
                           procs=procs)
    bar.close()
    manifest = read_manifest(folder)
    timing = json.loads(timing_file.read_text())
    missing_now = set(slide_ids) - set(manifest.slide_id)
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
