"""Tile sets (Sec. 2.2, Sec. 3): weights, masks, ablation, balancing plan, generation, resume, contract."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from discnb import K

from discnb.generative import generators

from discnb.core import params

from discnb.data import shapes
from discnb.generative import tileset_plan as tp
from discnb.pipelines import tilesets as ts
from discnb.plots import PALETTE

FOUR = ["SD", "SD-SC", "SD-DISC", "SD-DISC-CoTrain"]
SIZE = 16


# ------------------------------------------------------------------------------- fixtures
def make_library(n: int = 60, size: int = SIZE, seed: int = 0) -> dict:
    """Shape maps of random blocky masks with 1..4 labels (built like notebook 00's)."""
    rng = np.random.default_rng(seed)
    masks = []
    for i in range(n):
        k = 1 + i % 4
        labs = rng.choice(K, size=k, replace=False)
        m = np.full((size, size), labs[0], np.uint8)
        for j, lab in enumerate(labs[1:], 1):
            h = size // (j + 1)
            y, x = rng.integers(0, size - h + 1, 2)
            m[y:y + h, x:x + h] = lab
        masks.append(m)
    out = [shapes.freq_relabel(m) for m in masks]
    maps = np.stack([o[0] for o in out])
    lbr = np.stack([o[1] for o in out])
    return {"maps": maps, "n_ranks": (lbr >= 0).sum(1).astype(np.uint8), "labels_by_rank": lbr,
            "image_name": np.array([f"m{i}" for i in range(n)])}


class ColourGen:
    """Colour-from-mask tiles + seeded noise; ``offset`` makes generators differ, ``sleep`` is per tile.
    A :class:`discnb.generative.protocol.Generator` on the CPU that needs no slide labels."""

    name = "colour"
    device = torch.device("cpu")
    needs_slide_labels = False

    def __init__(self, offset: int = 0, sleep: float = 0.0):
        self.offset, self.sleep, self.nfe = offset, sleep, 0

    def generate(self, masks, seeds):
        time.sleep(self.sleep * len(masks))
        masks = np.asarray(masks)
        out = PALETTE[masks].astype(np.int16) + self.offset
        for i, s in enumerate(seeds):
            out[i] += np.random.default_rng(int(s)).integers(-20, 21, size=out.shape[1:], dtype=np.int16)
        return np.clip(out, 0, 255).astype(np.uint8)


def register_fake(names=FOUR, sleep: float = 0.0, setitem=None):
    """Register ColourGen under ``names`` (``setitem`` = monkeypatch.setitem so the registry is restored)."""
    generators.available()  # load plugins first, so a later import cannot overwrite the fakes
    put = setitem or (lambda d, k, v: d.__setitem__(k, v))
    for i, name in enumerate(names):
        put(generators.GENERATORS, name, lambda ctx, i=i: (ColourGen(offset=10 * i, sleep=sleep), f"colour-{i}"))


def real_frame(counts: dict[int, int]) -> pd.DataFrame:
    rows = [{"slide_id": f"r{g}-{k}", "primary": g, "secondary": g if g else 0} for g, n in counts.items() for k in range(n)]
    return pd.DataFrame(rows, columns=["slide_id", "primary", "secondary"])


def P_for(tmp: Path, **kw) -> params.Params:
    base = {"output_dir": str(tmp / "tilesets"), "target_per_grade": 3, "min_tiles": 2, "max_tiles": 5,
            "sampling": {"steps": 2, "scheduler": "ddim", "batch_size": 4}, "device": "cpu", "replace_stale": False}
    return params.validate("03_tile_sets", {**base, **kw})


def inputs_for(lib) -> dict:
    return {"lib": tp.library_info(lib), "lib_fingerprint": "lib0", "image_size": SIZE, "data_dir": "-",
            "index": None}


# --------------------------------------------------------------------------- mask sampling
def test_random_weights_order_and_nc_rule():
    rng = np.random.default_rng(0)
    for _ in range(300):
        w = tp.label_weights(3, 1, 2, rng)
        assert np.isclose(w.sum(), 1) and (w > 0).all()
        assert w[3] > w[1] > w[2] and w[3] > w[0]  # primary > secondary > tertiary; NC below the primary
        w = tp.label_weights(2, 2, -1, rng)
        assert w[1] == w[3] == 0 and w[2] > w[0] > 0
    ws = np.array([tp.label_weights(1, 3, -1, rng) for _ in range(300)])
    assert (ws[:, 0] > ws[:, 3]).any() and (ws[:, 0] < ws[:, 3]).any()  # NC's place below the primary is random
    assert tp.label_weights(0, 0, -1, rng).tolist() == [1, 0, 0, 0]
    assert np.allclose(tp.label_weights(3, 1, 2, rng, "equal"), 0.25)
    assert np.allclose(tp.label_weights(2, 1, -1, rng, "equal"), [1 / 3, 1 / 3, 1 / 3, 0])


@pytest.mark.parametrize("p,s,t", [(0, 2, -1), (0, 0, 1), (2, 0, -1), (2, 2, 3), (2, 3, 3), (2, 3, 0), (4, 1, -1)])
def test_invalid_designations(p, s, t):
    with pytest.raises(ValueError):
        tp.check_designation(p, s, t)


def test_sampled_masks_follow_the_slide():
    lib = make_library()
    nc = tp.sample_slide(lib, 0, 0, -1, seed=5, min_tiles=20, max_tiles=30)
    assert nc["masks"].max() == 0 and 20 <= len(nc["masks"]) <= 30  # primary NC: NC only
    assert (lib["n_ranks"][nc["mask_ids"]] == 1).all()
    for seed in range(20):
        s = tp.sample_slide(lib, 3, 1, -1, seed, 4, 8)
        assert set(np.unique(s["masks"])) <= {0, 1, 3}
        for lab, j in zip(s["labels"], s["mask_ids"]):
            got = lab[lab >= 0]
            assert len(got) == lib["n_ranks"][j] and len(set(got)) == len(got)  # no repeats
        assert (np.bincount(s["masks"].ravel(), minlength=K) == s["counts"]).all()


def test_same_seed_same_masks_other_seed_other_masks():
    lib = make_library()
    a, b = (tp.sample_slide(lib, 2, 3, 1, 1234, 10, 20) for _ in range(2))
    for k in ("masks", "mask_ids", "seeds", "weights"):
        assert np.array_equal(a[k], b[k]), k
    c = tp.sample_slide(lib, 2, 3, 1, 1235, 10, 20)
    assert not np.array_equal(a["seeds"][:5], c["seeds"][:5])
    # both weight schemes share the maps and the noise (stream 0); only labels differ
    e = tp.sample_slide(lib, 2, 3, 1, 1234, 10, 20, scheme="equal")
    assert np.array_equal(a["mask_ids"], e["mask_ids"]) and np.array_equal(a["seeds"], e["seeds"])


def test_draw_without_repeats_follows_the_weights():
    """Rank 0's label has probability = weight; rank 1's = the sequential law (w_b / (1 - w_a) ...)."""
    rng = np.random.default_rng(0)
    w = np.array([0.5, 0.3, 0.2])
    d = tp.draw_without_repeats(rng, np.array([0, 1, 2]), w, np.full(40000, 2))
    assert np.allclose(np.bincount(d[:, 0], minlength=3) / len(d), w, atol=0.01)
    p_second_1 = 0.5 * 0.3 / 0.5 + 0.2 * 0.3 / 0.8  # P(rank 1 = label 1)
    assert abs((d[:, 1] == 1).mean() - p_second_1) < 0.01
    assert (d[:, 2] == -1).all()


def test_recompute_grades():
    assert tp.recompute_grades([100, 0, 0, 0]) == (0, 0)
    assert tp.recompute_grades([100, 5, 0, 0]) == (1, 1)
    assert tp.recompute_grades([0, 10, 30, 20]) == (2, 3)
    assert tp.recompute_grades([50, 10, 0, 10]) == (1, 3)  # tie -> lower grade first


def test_ablation_random_beats_equal_and_is_deterministic():
    lib = make_library(80, seed=1)
    s1, per = tp.ablation(lib, per_grade=100, min_tiles=20, max_tiles=100, seed=3, tertiary_prob=0.25)
    s2, _ = tp.ablation(lib, per_grade=100, min_tiles=20, max_tiles=100, seed=3, tertiary_prob=0.25)
    pd.testing.assert_frame_equal(s1, s2)
    assert (s1.slides == 400).all() and len(per) == 800
    assert s1.loc["random", "all"] > s1.loc["equal", "all"] + 0.1
    assert s1.loc["random", "all"] > 0.85 and s1.loc["random", "NC"] == s1.loc["equal", "NC"] == 1.0
    g, _ = tp.ablation_grid(lib, [0.0, 0.25], per_grade=20, min_tiles=20, max_tiles=40, seed=0)
    assert list(g.index) == [(0.0, "random"), (0.0, "equal"), (0.25, "random"), (0.25, "equal")]


# ---------------------------------------------------------------------------------- the plan
def test_plan_arithmetic_and_designations():
    real = real_frame({0: 5, 1: 2, 2: 12, 3: 0})
    p = tp.make_plan(real, target=10, seed=7, tertiary_prob=0.5)
    assert p.table.loc[["NC", "GG3", "GG4", "GG5"], "real"].tolist() == [5, 2, 12, 0]
    assert p.table.loc[["NC", "GG3", "GG4", "GG5"], "synthetic"].tolist() == [5, 8, 0, 10]
    assert p.table.loc[["NC", "GG3", "GG5"], "total"].tolist() == [10, 10, 10] and p.table.loc["all", "synthetic"] == 23
    assert len(p.slides) == 23 and p.slides.slide_id.is_unique and p.slides.seed.is_unique
    assert p.slides.slide_id.iloc[12] == "syn-00012"
    assert p.slides.primary.tolist()[:6] == [0, 1, 3, 0, 1, 3]  # round-robin over grades
    assert (p.pairs_synthetic.sum(axis=1).tolist() == [5, 8, 0, 10]) and p.pairs_real.loc[2, 2] == 12
    for r in p.slides.itertuples():
        tp.check_designation(r.primary, r.secondary, r.tertiary)
    nc = p.slides[p.slides.primary == 0]
    assert (nc.secondary == 0).all() and (nc.tertiary == -1).all()
    assert (p.slides.tertiary >= 0).any()
    # deterministic; a slide's designation and seed depend on (seed, grade, k), not on the target
    q = tp.make_plan(real, target=10, seed=7, tertiary_prob=0.5)
    assert q.fingerprint() == p.fingerprint()
    big = tp.make_plan(real, target=14, seed=7, tertiary_prob=0.5)
    key = ["primary", "secondary", "tertiary", "seed"]
    assert set(map(tuple, p.slides[key].to_numpy())) <= set(map(tuple, big.slides[key].to_numpy()))
    assert tp.make_plan(real, target=3, seed=7).table.loc["all", "synthetic"] == 0 + 1 + 0 + 3


def test_plan_counts_the_training_split_of_an_index():
    idx = pd.DataFrame({"slide_id": ["a", "a", "b", "c", "d"], "split": ["train", "train", "train", "test", "train"],
                        "slide_primary_label": [1, 1, 2, 3, 0], "slide_secondary_label": [2, 2, 2, 3, 0]})
    p = tp.make_plan(idx, target=2, seed=0, secondary="real")
    assert p.table.loc[["NC", "GG3", "GG4", "GG5"], "real"].tolist() == [1, 1, 1, 0]
    assert (p.slides[p.slides.primary == 1].secondary == 2).all()  # "real": GG3's only real pair is 3+4


# ------------------------------------------------------------------------------- generation
def test_four_generators_get_identical_masks_and_seeds(tmp_path, monkeypatch):
    register_fake(setitem=monkeypatch.setitem)
    lib = make_library()
    P = P_for(tmp_path, generators=FOUR)
    plan = tp.make_plan(real_frame({0: 1, 1: 2, 2: 0, 3: 1}), P.target_per_grade, P.seed)
    res = {g: ts.build(P, g, plan, inputs_for(lib), progress=False) for g in FOUR}
    assert all(r["slides"] == len(plan.slides) == 8 for r in res.values())
    sets = {g: ts.load_tileset(tmp_path / "tilesets", g) for g in FOUR}
    m0, load0 = sets["SD"]
    for g, (m, load) in sets.items():
        pd.testing.assert_frame_equal(m, m0)
        for sid in m.slide_id:
            a, b = load0(sid), load(sid)
            for k in ("masks", "mask_ids", "seeds"):
                assert np.array_equal(a[k], b[k]), (g, sid, k)
            assert g == "SD" or not np.array_equal(a["tiles"], b["tiles"])  # the generators do differ
    t = json.loads(ts.write_timing(P, res).read_text())
    assert set(t) == set(FOUR) and all(t[g]["sec_per_tile"] > 0 and t[g]["sec_per_slide"] > 0 for g in FOUR)


def test_unknown_generator_is_a_clear_error(tmp_path):
    lib = make_library()
    P = P_for(tmp_path)
    plan = tp.make_plan(real_frame({0: 1}), 2, 0)
    with pytest.raises(ValueError, match="unknown generator"):
        ts.build(P, "no-such-generator", plan, inputs_for(lib), progress=False)


def _generate(folder, lib, plan, gen=None, fp="colour-0", **kw):
    args = dict(image_size=SIZE, min_tiles=2, max_tiles=5, batch_tiles=4, generator_name="SD", progress=False)
    return ts.generate_tileset(folder, gen or ColourGen(), fp, plan, lib, **{**args, **kw})


def test_manifest_contract_and_same_seed_same_tiles(tmp_path):
    lib = make_library()
    plan = tp.make_plan(real_frame({0: 0, 1: 1, 2: 2, 3: 3}), 3, 11, tertiary_prob=0.5)
    r = _generate(tmp_path / "a" / "SD", lib, plan)
    assert r["slides"] == len(plan.slides) == 6 and r["generated_now"] == 6
    man = pd.read_csv(tmp_path / "a" / "SD" / "manifest.csv", dtype={"slide_id": str})
    assert list(man.columns) == ["slide_id", "primary", "secondary", "tertiary", "weights", "n_tiles", "seed", "file"]
    assert man.slide_id.str.fullmatch(r"syn-\d{5}").all()
    for c in ("primary", "secondary", "tertiary", "n_tiles", "seed"):
        assert pd.api.types.is_integer_dtype(man[c]), c
    assert man.primary.between(0, 3).all() and man.tertiary.between(-1, 3).all()
    for row in man.itertuples():
        w = json.loads(row.weights)
        assert len(w) == 4 and all(isinstance(x, float) for x in w) and abs(sum(w) - 1) < 1e-4
        assert row.file == f"slides/{row.slide_id}.npz"
        with np.load(tmp_path / "a" / "SD" / row.file) as z:
            assert sorted(z.files) == ["mask_ids", "masks", "seeds", "tiles"]
            assert z["tiles"].dtype == np.uint8 and z["tiles"].shape == (row.n_tiles, SIZE, SIZE, 3)
            assert z["masks"].dtype == np.uint8 and z["masks"].shape == (row.n_tiles, SIZE, SIZE) and z["masks"].max() <= 3
            assert z["mask_ids"].dtype == np.int64 and z["seeds"].dtype == np.int64
            assert z["mask_ids"].shape == z["seeds"].shape == (row.n_tiles,)
            assert set(np.unique(z["masks"])) <= {0, row.primary, row.secondary, row.tertiary}
    pj = json.loads((tmp_path / "a" / "SD" / "plan.json").read_text())
    assert pj["settings"]["generator_fingerprint"] == "colour-0" and len(pj["plan"]["slides"]) == 6
    assert {"sec_per_tile", "sec_per_slide"} <= set(json.loads((tmp_path / "a" / "SD" / "timing.json").read_text()))
    # the same plan in another folder: the same masks and tiles, byte for byte
    _generate(tmp_path / "b" / "SD", lib, plan, batch_tiles=7)
    for base in ("a", "b"):  # load_tileset takes the tilesets folder or the generator folder
        assert len(ts.load_tileset(tmp_path / base, "SD")[0]) == 6
    ma, la = ts.load_tileset(tmp_path / "a", "SD")
    _, lb = ts.load_tileset(tmp_path / "b" / "SD", "SD")
    for sid in ma.slide_id:
        a, b = la(sid), lb(sid)
        assert all(np.array_equal(a[k], b[k]) for k in a)
    # rerun: nothing to do
    assert _generate(tmp_path / "a" / "SD", lib, plan)["generated_now"] == 0


def test_stale_folder_is_an_error_or_replaced(tmp_path):
    lib = make_library()
    plan = tp.make_plan(real_frame({1: 1}), 2, 0)
    _generate(tmp_path / "SD", lib, plan)
    with pytest.raises(ValueError, match="generator_fingerprint.*replace_stale"):
        _generate(tmp_path / "SD", lib, plan, fp="retrained")
    with pytest.warns(UserWarning, match="stale"):
        r = _generate(tmp_path / "SD", lib, plan, gen=ColourGen(offset=50), fp="retrained", replace_stale=True)
    assert r["generated_now"] == len(plan.slides)
    m, load = ts.load_tileset(tmp_path, "SD")
    assert json.loads((tmp_path / "SD" / "plan.json").read_text())["settings"]["generator_fingerprint"] == "retrained"


KILL_SCRIPT = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
import test_tilesets as T
from discnb.generative import tileset_plan as tp
from discnb.pipelines import tilesets as ts
lib = T.make_library()
plan = tp.make_plan(T.real_frame({{0: 0, 1: 0, 2: 0, 3: 0}}), 3, 5)
print("start", flush=True)
T._generate({folder!r}, lib, plan, gen=T.ColourGen(sleep={sleep}), batch_tiles=1)
print("done", flush=True)
"""



def assert_same_tileset(a_dir, b_dir, plan):
    """Every planned slide's arrays and the manifest's bytes are those of the other folder."""
    _, la = ts.load_tileset(a_dir, "SD")
    _, lb = ts.load_tileset(b_dir, "SD")
    for sid in plan.slides.slide_id:
        a, b = la(sid), lb(sid)
        assert all(np.array_equal(a[k], b[k]) for k in a), sid
    assert (Path(a_dir) / "manifest.csv").read_bytes() == (Path(b_dir) / "manifest.csv").read_bytes()

def test_sigkill_mid_generation_then_rerun_completes(tmp_path):
    """A real process, killed with SIGKILL while it generates a slide; the rerun finishes the set with
    no duplicate or partial slide, and the result equals an uninterrupted run's."""
    folder = tmp_path / "killed" / "SD"
    record = folder / "manifest.rank-0.json"  # the process's own record of its finished slides
    script = tmp_path / "gen.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).parent), folder=str(folder), sleep=0.15))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until 3 slides are recorded
            try:
                if len(json.loads(record.read_text())["rows"]) >= 3:
                    break
            except FileNotFoundError:
                pass
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        else:
            pytest.fail("the generation process never wrote 3 slides")
        time.sleep(0.2)  # inside the next slide's generate() (0.15 s per tile, >= 2 tiles per slide)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    plan = tp.make_plan(real_frame({0: 0, 1: 0, 2: 0, 3: 0}), 3, 5)
    before = json.loads(record.read_text())["rows"]
    assert len(ts.read_manifest(folder)) == 0  # the manifest is merged at the end of a run
    assert 3 <= len(before) < len(plan.slides), "the kill did not land mid-generation"
    assert all((folder / r["file"]).exists() for r in before)
    (folder / "slides" / "syn-00011.tmp.npz").write_bytes(b"half")  # what a kill inside np.savez leaves
    lib = make_library()
    r = _generate(folder, lib, plan)  # rerun (no sleep; same fingerprint): folds the record in first
    assert r["generated_now"] == len(plan.slides) - len(before)
    after = ts.read_manifest(folder)
    assert after.slide_id.is_unique and after.slide_id.tolist() == plan.slides.slide_id.tolist()  # plan order
    assert sorted(p.name for p in (folder / "slides").iterdir()) == sorted(f"{s}.npz" for s in plan.slides.slide_id)
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.csv", "plan.json", "slides", "timing.json"]
    _generate(tmp_path / "clean" / "SD", lib, plan)
    assert_same_tileset(folder, tmp_path / "clean" / "SD", plan)
    runs = json.loads((folder / "timing.json").read_text())["runs"]
    assert [x.get("interrupted", False) for x in runs] == [True, False]
    assert sum(x["slides"] for x in runs) == len(plan.slides)


class BatchSensitiveGen(ColourGen):
    """Tiles that also depend on the batch they were generated in (as batched floating point on a GPU
    can): each call shifts its tiles by its tile count and first seed."""

    def generate(self, masks, seeds):
        out = super().generate(masks, seeds).astype(np.int16) + (len(seeds) * 7 + int(seeds[0]) % 13)
        return np.clip(out, 0, 255).astype(np.uint8)


def test_interrupted_run_resumes_to_the_same_bytes_even_for_a_batch_sensitive_generator(tmp_path):
    """A run stopped in the middle of a slide group, resumed: the group is generated whole again (the
    same batches, only its missing slides written), so even tiles that depend on their batch equal
    those of an uninterrupted run, and the manifest is byte-identical."""
    lib = make_library()
    plan = tp.make_plan(real_frame({0: 0, 1: 0, 2: 0, 3: 0}), 3, 5)
    groups = ts.slide_groups([len(tp.sample_slide(lib, r.primary, r.secondary, r.tertiary, r.seed, 2, 5)["mask_ids"])
                              for r in plan.slides.itertuples()], 6)
    assert any(len(g) > 1 for g in groups[:3])
    first = next(g for g in groups if len(g) > 1)
    stop_after = plan.slides.slide_id[first[0]]  # the first slide of a group of several

    def stop(sid):
        if sid == stop_after:
            raise KeyboardInterrupt

    folder = tmp_path / "cut" / "SD"
    with pytest.raises(KeyboardInterrupt):
        _generate(folder, lib, plan, gen=BatchSensitiveGen(), batch_tiles=6, on_slide=stop)
    r = _generate(folder, lib, plan, gen=BatchSensitiveGen(), batch_tiles=6)
    assert r["generated_now"] == len(plan.slides) - first[0] - 1
    _generate(tmp_path / "clean" / "SD", lib, plan, gen=BatchSensitiveGen(), batch_tiles=6)
    assert_same_tileset(folder, tmp_path / "clean" / "SD", plan)


def test_slide_groups_depend_on_the_plan_only():
    assert ts.slide_groups([2, 3, 5, 1, 1, 1, 4], 4) == [[0, 1], [2], [3, 4, 5, 6]]
    assert ts.slide_groups([2, 3], 100) == [[0, 1]]
    assert ts.slide_groups([], 4) == []


def test_mosaic():
    tiles = np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3)
    m = ts.mosaic(tiles, pad=1)
    assert m.shape == (2 * 2 + 1, 3 * 2 + 2, 3)  # 3 columns (ceil sqrt 5), 2 rows, 1-px padding
    assert (m[0:2, 0:2] == tiles[0]).all() and (m[0:2, 3:5] == tiles[1]).all() and (m[3:5, 0:2] == tiles[3]).all()
    assert (m[3:5, 6:8] == 255).all() and (m[2] == 255).all()  # the empty sixth cell and the padding


class SlideLabelGen(ColourGen):
    """A tile+slide-conditioned stand-in (Fig. 7): records the slide labels it is given per tile."""
    needs_slide_labels = True

    def __init__(self):
        super().__init__()
        self.seen = []

    def generate(self, masks, seeds, slide_labels=None):
        assert slide_labels is not None and len(slide_labels) == len(masks)
        self.seen += [tuple(int(v) for v in r) for r in slide_labels]
        return super().generate(masks, seeds)


def test_slide_conditioned_generator_gets_each_tiles_slide_labels(tmp_path):
    lib = make_library()
    plan = tp.make_plan(real_frame({0: 0, 1: 1, 2: 2, 3: 3}), 3, 11, tertiary_prob=0.5)
    gen = SlideLabelGen()
    _generate(tmp_path / "SD-tile+slide", lib, plan, gen=gen, batch_tiles=7)
    man = ts.read_manifest(tmp_path / "SD-tile+slide")
    expected = [(int(r.primary), int(r.secondary)) for r in man.itertuples() for _ in range(int(r.n_tiles))]
    assert gen.seen == expected and len(set(expected)) > 1


def test_figure_of_a_plan_without_synthetic_slides_warns_instead_of_crashing(tmp_path):
    """Real slides that already reach target_per_grade leave nothing to synthesise: the figure warns
    instead of asking matplotlib for zero columns ('Number of columns must be a positive integer')."""
    folder = tmp_path / "SD"
    folder.mkdir()
    ts._write_manifest(folder, ts.read_manifest(folder))
    P = params.Params({"profile": "smoke", "output_dir": str(tmp_path), "generators": ["SD"], "figure_slides": 2,
                       "figure_tiles": 4, "target_per_grade": 1})
    with pytest.warns(UserWarning, match="no synthetic slide to draw"):
        assert ts.figure(P) is None
