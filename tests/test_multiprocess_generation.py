"""Generation over several processes (:mod:`discnb.core.shards`): DISC data and tile sets made
by 2 CPU processes (``accelerate launch``, gloo, as the training test) equal those of one process byte for
byte, and a run with one process SIGKILLed mid-run resumes, with 2 processes or 1, to the same bytes with
nothing duplicated or left behind.

The runs are tests/generate_toy.py: a tiny random pixel-conditioned SD (DDIM, 2 steps), real sampling.

Notebooks 04 and 05 under ``accelerate launch`` (their commands, through tests/generate_toy.py, which lists
who wrote what): the λ sweep of 05 from 2 processes (runs split between them) gives the records and results
of one process, and resumes after a SIGKILL with its finished runs; in 04 the main process alone writes
the shared files (done.json, results, fig8.npz, figures, parameters) and the folder is that of one process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

import generate_toy
from discnb.core import params, paths, shards
from discnb.core.paths import REPO
from discnb.data import shapes
from discnb.generative import generators
from discnb.grading import carcinonet as gc
from discnb.pipelines import train_carcinonet as cn
from discnb.pipelines import transmil_sweep as sweep
from test_tilesets import BatchSensitiveGen, make_library

SCRIPT = Path(__file__).with_name("generate_toy.py")
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
LAUNCH = ["-m", "accelerate.commands.launch", "--config_file", str(REPO / "params/accelerate/cpu_2proc.yaml")]


def _one(what: str, out: Path) -> dict:
    """A one-process run, in this process (imports paid once), with one torch thread as the launched ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return generate_toy.generate(what, str(out))
    finally:
        torch.set_num_threads(n)


def _gen(what: str, out: Path, *args, launch: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *(launch or []), str(SCRIPT), what, str(out), *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


def _ok(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_one_process_runs_the_protocol_in_order_without_markers(tmp_path):
    """Under a plain run: setup, then every unit of todo() in order, then merge, whose value comes back;
    no marker or record files; records of any rank are found by rank."""
    procs = shards.processes(cpu=True)
    assert (procs.rank, procs.world, procs.is_main) == (0, 1, True) and procs.mine([3, 1, 2]) == [3, 1, 2]
    log = []
    out = shards.run(tmp_path / "w", "job", setup=lambda: log.append("setup"), todo=lambda: log.append("todo") or [2, 0],
                     start=lambda mine: log.append(("start", mine)), work=lambda u: log.append(u),
                     merge=lambda: log.append("merge") or {"ok": 1}, procs=procs)
    assert out == {"ok": 1} and log == ["setup", "todo", ("start", [2, 0]), 2, 0, "merge"]
    assert list((tmp_path / "w").iterdir()) == []
    for name in ("m.rank-10.json", "m.rank-2.json", "m.rank-x.json", "m.rank-1.csv", "other.rank-0.json"):
        (tmp_path / name).write_text("")
    assert [p.name for p in shards.rank_paths(tmp_path, "m", ".json")] == ["m.rank-2.json", "m.rank-10.json"]
    assert shards.rank_path(tmp_path, "m", 3, ".json").name == "m.rank-3.json"


@pytest.fixture(scope="module")
def disc_ref(tmp_path_factory) -> Path:
    """DISC data written by one process."""
    out = tmp_path_factory.mktemp("disc") / "one"
    _one("disc", out)
    return out


@pytest.fixture(scope="module")
def tileset_ref(tmp_path_factory) -> Path:
    """A tile set written by one process."""
    out = tmp_path_factory.mktemp("tileset") / "one"
    _one("tileset", out)
    return out


def assert_same_disc_data(a: Path, b: Path) -> None:
    """The same files; shard files byte-identical (so their tensors are equal); manifests equal but
    for each shard's seconds."""
    assert _files(a) == _files(b) == ["manifest.json"] + [f"shard-{s:05d}.safetensors" for s in range(4)]
    for f in _files(a):
        if f.endswith(".safetensors"):
            ta, tb = load_file(str(a / f)), load_file(str(b / f))
            assert ta.keys() == tb.keys() and all(ta[k].equal(tb[k]) for k in ta), f
            assert (a / f).read_bytes() == (b / f).read_bytes(), f

    def manifest(folder):
        m = json.loads((folder / "manifest.json").read_text())
        for rec in m["shards"].values():
            rec.pop("seconds")
        return m
    ma, mb = manifest(a), manifest(b)
    assert ma == mb and list(ma["shards"]) == ["0", "1", "2", "3"]


def assert_same_tileset(a: Path, b: Path) -> None:
    """The same files; every slide's arrays equal; manifest.csv byte-identical (it holds no timing)."""
    assert _files(a) == _files(b)
    assert {"manifest.csv", "plan.json", "timing.json"} <= set(_files(a))
    assert not [f for f in _files(a) if ".rank-" in f or ".tmp" in f]
    assert (a / "manifest.csv").read_bytes() == (b / "manifest.csv").read_bytes()
    m = pd.read_csv(a / "manifest.csv", dtype={"slide_id": str})
    assert m.slide_id.is_unique and len(m) == 12
    for f in m.file:
        with np.load(a / f) as za, np.load(b / f) as zb:
            assert za.files == zb.files and all(np.array_equal(za[k], zb[k]) for k in za.files), f
    ja, jb = json.loads((a / "plan.json").read_text()), json.loads((b / "plan.json").read_text())
    assert ja == jb


@pytest.mark.slow
def test_disc_data_two_processes_equal_one(disc_ref, tmp_path):
    out = tmp_path / "two"
    r = _gen("disc", out, launch=LAUNCH)
    _ok(r)
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"shards": ["0", "1", "2", "3"]}
    assert_same_disc_data(disc_ref, out)


@pytest.mark.slow
def test_disc_data_killed_process_resumes_to_the_same_bytes(disc_ref, tmp_path):
    """Process 1 (shards 2 and 3) is SIGKILLed as it starts shard 3; the launcher stops process 0.
    A rerun with 2 processes redoes only the unfinished shards and deletes stray tmp files."""
    out = tmp_path / "run"
    killed = _gen("disc", out, "--kill-rank", 1, "--kill-at", 2, launch=LAUNCH)
    assert killed.returncode != 0, killed.stderr[-3000:]
    assert not (out / "shard-00003.safetensors").exists() and (out / "shard-00002.safetensors").exists()
    assert json.loads((out / "manifest.json").read_text())["shards"] == {}  # merged at the end only
    assert list(json.loads((out / "manifest.rank-1.json").read_text())) == ["2"]  # process 1's record
    (out / "shard-00003.tmp.safetensors").write_bytes(b"half")  # what a kill inside save_file leaves
    recorded = [f"shard-{int(s):05d}.safetensors" for p in shards.rank_paths(out, "manifest", ".json")
                for s in json.loads(p.read_text())]
    stamps = {n: (out / n).stat().st_mtime_ns for n in recorded}
    _ok(_gen("disc", out, launch=LAUNCH))
    assert_same_disc_data(disc_ref, out)
    assert all((out / n).stat().st_mtime_ns == stamps[n] for n in recorded), "a finished shard was redone"


@pytest.mark.slow
def test_tileset_two_processes_equal_one(tileset_ref, tmp_path):
    out = tmp_path / "two"
    r = _gen("tileset", out, launch=LAUNCH)
    _ok(r)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["slides"] == 12 and res["generated_now"] == 12
    assert_same_tileset(tileset_ref, out)
    runs = json.loads((out / "timing.json").read_text())["runs"]
    assert [(x["slides"], x["processes"]) for x in runs] == [(12, 2)]


@pytest.mark.slow
def test_tileset_killed_process_resumes_with_another_process_count(tileset_ref, tmp_path):
    """Process 1 is SIGKILLed as it starts its second slide group; the rerun, with one process, folds
    both processes' records in, generates only the missing slides and ends with the files of a clean run."""
    out = tmp_path / "run"
    killed = _gen("tileset", out, "--kill-rank", 1, "--kill-at", 2, launch=LAUNCH)
    assert killed.returncode != 0, killed.stderr[-3000:]
    recs = {p.name: json.loads(p.read_text())["rows"] for p in shards.rank_paths(out, "manifest", ".json")}
    assert recs.get("manifest.rank-1.json"), recs  # process 1 finished its first group
    written = sum(len(v) for v in recs.values())
    assert 0 < written < 12 and len(list((out / "slides").glob("*.npz"))) >= written
    assert _one("tileset", out)["generated_now"] == 12 - written
    assert_same_tileset(tileset_ref, out)
    runs = json.loads((out / "timing.json").read_text())["runs"]
    assert sum(x["slides"] for x in runs) == 12 and runs[0]["interrupted"] and runs[-1]["processes"] == 1


# ----------------------------------------------- CarcinoNet's tile cache in chunks (one process here)
class BatchedSensitive:
    """A generator that batches like SDGenerator (``batch_size`` tiles per batch) and whose tiles depend
    on their batch (as batched floating point on a GPU can); counts its calls, fails at ``fail_at``."""

    def __init__(self, batch_size: int, fail_at: int = 0):
        self.inner, self.batch_size, self.calls, self.fail_at = BatchSensitiveGen(), batch_size, 0, fail_at

    def generate(self, masks, seeds):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        bs = self.batch_size
        return np.concatenate([self.inner.generate(masks[s:s + bs], seeds[s:s + bs]) for s in range(0, len(masks), bs)])


def test_carcinonet_tile_cache_in_chunks_equals_one_call_and_resumes(tmp_path, monkeypatch):
    """synthetic_tiles makes its tiles in chunks of synth.batch_size (the units split over processes):
    the cache holds the tiles of one call on all masks (today's file), and a run stopped after a chunk
    resumes from its finished chunks, leaving only the cache file."""
    ddir = tmp_path / "data"
    ddir.mkdir()
    shapes.save_library(ddir / "shape_maps.npz", make_library(size=16))
    P = params.validate("04_carcinonet", {"data_dir": str(ddir), "ldm_dir": str(tmp_path / "ldm"), "device": "cpu",
                                          "output_dir": str(tmp_path / "cn"),
                                          "synth": {"n_tiles": 10, "steps": 2, "scheduler": "ddim", "batch_size": 4,
                                                    "seed": 1}})
    made = []

    def factory(ctx, fail_at=0):
        made.append(BatchedSensitive(ctx.batch_size, fail_at))
        return made[-1], "batched-1"
    generators.available()
    monkeypatch.setitem(generators.GENERATORS, "SD", lambda ctx: factory(ctx, fail_at=2))
    with pytest.raises(KeyboardInterrupt):
        cn.synthetic_tiles(P, "SD", 16, progress=False)
    folder = tmp_path / "cn" / "synthetic"
    assert [p.name.split(".", 1)[1] for p in folder.iterdir()] == ["chunk4-00000.npz"]
    monkeypatch.setitem(generators.GENERATORS, "SD", factory)
    got = cn.synthetic_tiles(P, "SD", 16, progress=False)
    assert made[-1].calls == 2 and not got["cached"]  # chunks 1 and 2 (of 4, 4, 2 tiles)
    assert [p.name for p in folder.iterdir()] == [Path(got["path"]).name]
    masks, seeds = cn.synthetic_masks(shapes.load_library(ddir / "shape_maps.npz"), 10, 1, 16)
    ref = BatchedSensitive(4).generate(masks, seeds.tolist())
    assert np.array_equal(got["images"], ref) and np.array_equal(got["masks"], masks)
    assert got["meta"]["n_tiles"] == 10 and got["meta"]["sec_per_tile"] >= 0
    again = cn.synthetic_tiles(P, "SD", 16, progress=False)
    assert again["cached"] and made[-1].calls == 0 and np.array_equal(again["images"], ref)


# -------------------------------------------------------------- notebooks 04 and 05 under accelerate launch
def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; the launcher starts its processes in their own sessions)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            kids.setdefault(int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        below = kids.get(todo.pop(), [])
        out += below
        todo += below
    return out


def _stage(what: str, params_file: Path, *args, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    """Notebook 04's / 05's command (tests/generate_toy.py stage) from 2 launched CPU processes. On a
    timeout (processes waiting for each other) the launcher and the processes it started are killed
    (by their ids) and the test fails."""
    cmd = [sys.executable, *LAUNCH, str(SCRIPT), what, str(params_file), *map(str, args)]
    p = subprocess.Popen(cmd, cwd=REPO, env={**ENV, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [*_descendants(p.pid), p.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out, err = p.communicate()
        pytest.fail(f"{what} from 2 processes: no end after {timeout} s (processes waiting for each other: a collective "
                    f"called by some processes only?)\n{out[-2000:]}\n{err[-4000:]}")
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def _stage_here(what: str, params_file: Path, figures: Path, *args) -> int:
    """The same command as one process, in this process (one torch thread, figures in ``figures``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(paths, "FIGURES", figures)
            return generate_toy.stage(what, str(params_file), *args)
    finally:
        torch.set_num_threads(n)


def _written(log: Path) -> dict[int, list[Path]]:
    """Files each process wrote through the stage's writers (tests/generate_toy.py --log)."""
    return {int(p.stem.rsplit("-", 1)[1]): [Path(x) for x in p.read_text().split()] for p in log.glob("writes.rank-*.txt")}


def _listing(folder: Path) -> list[str]:
    """Relative file list, TensorBoard's volatile names normalised (as tests/test_stage_files.py)."""
    from test_stage_files import file_list
    return file_list(folder)


def _yaml(path: Path, P) -> Path:
    path.write_text(yaml.safe_dump(dict(P), sort_keys=False))
    return path


# ---------------------------------------------------------------------------------- 05: the λ sweep
@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory) -> Path:
    """Tiny notebook-05 inputs (6 real slides x 3 tiles, tile sets SD and SD-DISC of 4 slides; 2 folds x
    (TransMIL, Mixed Supervision, 2 generators x 2 λ) = 12 runs) and the sweep as one process in ``one/``."""
    from test_transmil import fake_tileset
    root = tmp_path_factory.mktemp("sweep")
    fake_tileset(root / "ts", "SD")
    fake_tileset(root / "ts", "SD-DISC", seed=1)
    assert _stage_here("mil", _sweep_params(root, "one"), root / "figures-one") == 0
    return root


def _sweep_params(root: Path, name: str) -> Path:
    from test_transmil import sweep_params
    return _yaml(root / f"{name}.yaml", sweep_params(root, output_dir=str(root / name)))


def _extractor_first(params_file: Path) -> None:
    """What docs/usage.md asks before launching 05 with a tilecnn extractor: train it as one process."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert sweep.main(["--params", str(params_file), "--stage", "extractor", "--no-progress"]) == 0
    finally:
        torch.set_num_threads(n)


def _without_seconds(rec: dict) -> dict:
    return rec | {"fit": {k: v for k, v in rec["fit"].items() if k != "seconds"}}


def assert_same_sweep(a: Path, b: Path, reused: int = 0) -> None:
    """The same files; every run's record equal but for its training time; results.csv equal but for
    ``train_s``; results.json equal but for timings, the extractor's folder and ``reused`` (``reused``
    runs of ``b`` came from an earlier run)."""
    assert _listing(a) == _listing(b)
    assert not [f for f in _listing(b) if ".rank-" in f or ".tmp" in f]
    recs = sorted(p.name for p in (a / "runs").glob("*.json"))
    assert len(recs) == 12
    for name in recs:
        ra, rb = (json.loads((d / "runs" / name).read_text()) for d in (a, b))
        assert _without_seconds(ra) == _without_seconds(rb), name
    ca, cb = (pd.read_csv(d / "results.csv").drop(columns="train_s") for d in (a, b))
    pd.testing.assert_frame_equal(ca, cb, check_exact=True)
    ja, jb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert ja["summary"] == jb["summary"] and ja["generators"] == jb["generators"] == ["SD", "SD-DISC"]
    for j in (ja, jb):
        j["extractor"].pop("folder")
    assert ja["extractor"] == jb["extractor"] and ja["notes"] == jb["notes"]
    assert [_without_seconds(r) | {"reused": False} for r in ja["runs"]] == \
        [_without_seconds(r) | {"reused": False} for r in jb["runs"]]
    assert sum(r["reused"] for r in jb["runs"]) == reused and not any(r["reused"] for r in ja["runs"])


@pytest.mark.slow
def test_sweep_two_processes_equal_one(sweep_root):
    """Notebook 05's command from 2 processes: each trains whole runs (its part of the 12) and writes their
    records; the main process alone writes the results, the figure and the parameters; the records and
    results equal those of one process (the runs seed themselves)."""
    f = _sweep_params(sweep_root, "two")
    _extractor_first(f)
    log = sweep_root / "log-two"
    r = _stage("mil", f, "--log", log, env={"DISCNB_FIGURES": str(sweep_root / "figures-two")})
    _ok(r)
    assert "TransMIL" in r.stdout and "λ* (val)" in r.stdout  # the tables, printed once (main process)
    assert r.stdout.count("λ* (val)") == 1
    assert_same_sweep(sweep_root / "one", sweep_root / "two")
    assert sorted(p.name for p in (sweep_root / "figures-two" / "smoke").iterdir()) == \
        sorted(p.name for p in (sweep_root / "figures-one" / "smoke").iterdir()) == \
        ["05_transmil_sweep.pdf", "05_transmil_sweep.png"]
    w = _written(log)
    out = sweep_root / "two"
    shared = {out / "results.csv", out / "results.json", out / "params.resolved.yaml", out / "provenance.json",
              sweep_root / "figures-two" / "smoke" / "05_transmil_sweep"}  # plots.save adds .png/.pdf
    assert shared <= set(w[0]) and not shared & set(w[1])
    runs0, runs1 = ({p for p in w[k] if p.parent == out / "runs"} for k in (0, 1))
    assert set(w[1]) == runs1 and not runs0 & runs1  # process 1: its run records only, each run by one process
    assert runs0 | runs1 == set((out / "runs").glob("*.json")) and len(runs0) == len(runs1) == 6


@pytest.mark.slow
def test_sweep_killed_process_resumes_with_finished_runs_reused(sweep_root):
    """Process 1 is SIGKILLed as it starts its second run (the launcher stops process 0): the records
    written so far stay; one process then trains only the other runs, to the results of a clean run."""
    f = _sweep_params(sweep_root, "killed")
    _extractor_first(f)
    killed = _stage("mil", f, "--kill-rank", 1, "--kill-at", 2, env={"DISCNB_FIGURES": str(sweep_root / "figures-x")})
    assert killed.returncode != 0, killed.stderr[-3000:]
    out = sweep_root / "killed"
    done = [p for p in (out / "runs").glob("*.json") if ".tmp" not in p.name]
    assert 1 <= len(done) < 12 and not (out / "results.csv").exists()
    assert _stage_here("mil", f, sweep_root / "figures-killed") == 0
    assert_same_sweep(sweep_root / "one", out, reused=len(done))


# --------------------------------------------------------------------------------- 04: CarcinoNet
def _carcinonet_params(root: Path, name: str) -> Path:
    from test_carcinonet import TINY_MODEL
    P = params.validate("04_carcinonet", {
        "data_dir": str(root / "data"), "output_dir": str(root / name), "device": "cpu", "ood_split": "", "seeds": [0],
        "checkpoint_every": 2, "model": TINY_MODEL, "generators": ["SD"], "lams": [0.5], "figure_tiles": 2, "eval_batch": 8,
        "train": {"steps": 3, "batch": 4, "lr": 0.001, "weight_decay": 0.0, "warmup_steps": 0, "ema_decay": 0.0,
                  "validate_every": 0, "focal_gamma": 2.0, "dice_weight": 1.0, "jitter": 0.05},
        "synth": {"n_tiles": 8, "steps": 2, "scheduler": "ddim", "batch_size": 4, "seed": 1}})
    return _yaml(root / f"{name}.yaml", P)


def _no_rank_files(names: list[str]) -> list[str]:
    """A 2-process checkpoint holds each process's RNG state (random_states_K.pkl): one process's has one."""
    return [n for n in names if not re.search(r"/random_states_[1-9]\d*\.pkl$", n)]


@pytest.mark.slow
def test_carcinonet_two_processes_main_writes_the_shared_files(tmp_path):
    """Notebook 04's command from 2 processes (fake generator SD, stub judge): both make their chunks of
    the synthetic tiles and train every run together (DDP); the main process alone writes each run's
    done.json, the results, fig8.npz, the figures and the parameters; the files are those of one
    process, the synthetic tiles the same bytes (the DDP weights are not those of one process: each
    process draws its own augmentations)."""
    from ldm_fixture import prepared
    from test_tilesets import make_library
    prepared(tmp_path)  # 6 slides x 3 tiles (32 px)
    shapes.save_library(tmp_path / "data" / "shape_maps.npz", make_library(size=32))
    assert _stage_here("carcinonet", _carcinonet_params(tmp_path, "one"), tmp_path / "figures-one") == 0
    log = tmp_path / "log"
    r = _stage("carcinonet", _carcinonet_params(tmp_path, "two"), "--log", log,
               env={"DISCNB_FIGURES": str(tmp_path / "figures-two")}, timeout=180)
    _ok(r)
    assert r.stdout.count("pixel_accuracy all") == 1  # the table, printed by the main process
    one, two = tmp_path / "one", tmp_path / "two"
    assert _no_rank_files(_listing(two)) == _listing(one)
    assert not [f for f in _listing(two) if ".rank-" in f or ".tmp" in f or ".chunk" in f]
    assert sorted(p.name for p in (tmp_path / "figures-two" / "smoke").iterdir()) == \
        sorted(p.name for p in (tmp_path / "figures-one" / "smoke").iterdir())
    (cache,) = (one / "synthetic").glob("*.npz")
    with np.load(cache) as za, np.load(two / "synthetic" / cache.name) as zb:
        assert all(np.array_equal(za[k], zb[k]) for k in ("images", "masks", "seeds"))
    keys = ["model", "generator", "lam", "seed", "test_set", "metric", "label"]
    ra, rb = (pd.read_csv(d / "results.csv") for d in (one, two))
    pd.testing.assert_frame_equal(ra[keys], rb[keys])
    assert rb.value.dropna().between(0, 1).all() and rb.value.notna().any()
    ja, jb = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert ja.keys() == jb.keys() and ja["confusion"].keys() == jb["confusion"].keys()
    assert [(x["tag"], x["fit"]["processes"], x["fit"]["steps"]) for x in jb["runs"]] == [("real", 2, 3), ("SD-lam0.5", 2, 3)]
    for run in jb["runs"]:  # what every process returned: the main process's summary, in done.json
        assert json.loads((Path(run["dir"]) / "done.json").read_text())["fit"] == run["fit"]
    f8a, f8b = gc.load_fig8(one / "fig8.npz"), gc.load_fig8(two / "fig8.npz")
    assert f8a.keys() == f8b.keys() and all(f8a[k].shape == f8b[k].shape for k in f8a)
    assert np.array_equal(f8a["test_tiles"], f8b["test_tiles"])
    w = _written(log)
    shared = {two / "results.csv", two / "results.json", two / "fig8.npz", two / "params.resolved.yaml",
              two / "provenance.json", *(Path(x["dir"]) / "done.json" for x in jb["runs"]),
              *(tmp_path / "figures-two" / "smoke" / n for n in ("04_carcinonet_predictions", "04_carcinonet_confusion",
                                                                 "04_judge_synthetic"))}
    assert shared <= set(w[0]) and not shared & set(w[1])
    assert w[1] and all(p.parent == two / "synthetic" and ".chunk4-" in p.name for p in w[1])  # its tile chunks only
