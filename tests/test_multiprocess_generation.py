"""Generation over several processes (issue 17, :mod:`discnb.core.shards`): DISC data and tile sets made
by 2 CPU processes (``accelerate launch``, gloo, as the training test) equal those of one process byte for
byte, and a run with one process SIGKILLed mid-run resumes, with 2 processes or 1, to the same bytes with
nothing duplicated or left behind.

The runs are tests/generate_toy.py: a tiny random pixel-conditioned SD (DDIM, 2 steps), real sampling.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import generate_toy
from discnb.core import params, shards
from discnb.core.paths import REPO
from discnb.data import shapes
from discnb.generative import generators
from discnb.pipelines import carcinonet as cn
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
