"""discnb.data.demo: the procedural SICAPv2-layout dataset (layout, splits, labels, caching)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from discnb.data import demo
from discnb.data.demo import dataset

SIZE = 32
SMALL = dict(n_patients=6, tiles_per_slide=3, tile_size=SIZE, progress=False)
NAME_RE = re.compile(r"^(?P<slide>[0-9]{2}B[0-9]{7}[A-Z]?)_Block_Region_\d+_\d+_\d+_xini_\d+_yini_\d+\.jpg$")
SPLIT_COLS = ["image_name", "NC", "G3", "G4", "G5", "G4C"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return demo.make_demo_sicap(tmp_path_factory.mktemp("demo") / "sicap", seed=0, **SMALL)


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    # n_patients >= 12 switches on the "at least two GG5 slides per split" guarantee
    return demo.make_demo_sicap(tmp_path_factory.mktemp("demo12") / "sicap", n_patients=12, tiles_per_slide=2,
                              tile_size=SIZE, seed=3, progress=False)


def _read(root: Path, rel: str) -> pd.DataFrame:
    return pd.read_excel(root / rel)


def _slide_table(root):
    w = _read(root, "wsi_labels.xlsx")
    w["slide_id"] = w["slide_id"].astype(str)
    w["patient_id"] = w["patient_id"].astype(str)
    return w


def _patients(root, names, w=None):
    w = _slide_table(root) if w is None else w
    pat = dict(zip(w.slide_id, w.patient_id))
    return {pat[n.split("_", 1)[0]] for n in names}


def _mask(root, name):
    return np.asarray(Image.open(root / "masks" / (Path(name).stem + ".png")))


# ----------------------------------------------------------------------------- layout
def test_layout_and_columns(small):
    root = small
    assert (root / "images").is_dir() and (root / "masks").is_dir()
    w = _read(root, "wsi_labels.xlsx")
    assert list(w.columns) == ["slide_id", "patient_id", "Gleason_primary", "Gleason_secondary"]
    assert w.slide_id.map(lambda s: "_" not in str(s)).all()
    assert w.patient_id.astype(str).str.fullmatch(r"\d+").all()
    combos = set(zip(w.Gleason_primary, w.Gleason_secondary))
    assert combos <= set(demo.slide_label_frequencies())
    for rel in ["partition/Test/Train.xlsx", "partition/Test/Test.xlsx"] + [
            f"partition/Validation/Val{k}/{f}.xlsx" for k in range(1, 5) for f in ("Train", "Test")]:
        df = _read(root, rel)
        assert list(df.columns) == SPLIT_COLS, rel
        assert (df[["NC", "G3", "G4", "G5"]].sum(axis=1) == 1).all(), rel
    for rel in ["partition/Test/TrainCribfriform.xlsx", "partition/Test/TestCribfriform.xlsx"] + [
            f"partition/Validation/Val{k}/{f}Cribfriform.xlsx" for k in range(1, 5) for f in ("Train", "Test")]:
        assert list(_read(root, rel).columns) == ["image_name", "G4C"], rel
    stamp = json.loads((root / "demo_params.json").read_text())
    assert stamp["tile_size"] == SIZE and stamp["seed"] == 0


def test_files_names_sizes_and_mask_values(small):
    root = small
    tr, te = _read(root, "partition/Test/Train.xlsx"), _read(root, "partition/Test/Test.xlsx")
    names = list(tr.image_name) + list(te.image_name)
    slides = set(_slide_table(root).slide_id)
    assert len(names) == len(set(names)) == len(list((root / "images").glob("*.jpg")))
    for n in names:
        m = NAME_RE.match(n)
        assert m, n
        assert m["slide"] in slides
        with Image.open(root / "images" / n) as im:
            assert im.mode == "RGB" and im.size == (SIZE, SIZE)
        with Image.open(root / "masks" / (Path(n).stem + ".png")) as im:
            assert im.mode == "L" and im.size == (SIZE, SIZE)
            assert set(np.unique(np.asarray(im))) <= {0, 3, 4, 5}


def test_official_split_is_patient_disjoint(small):
    tr, te = _read(small, "partition/Test/Train.xlsx"), _read(small, "partition/Test/Test.xlsx")
    assert len(te) > 0 and len(tr) > len(te)
    assert not (_patients(small, tr.image_name) & _patients(small, te.image_name))


def test_validation_folds_partition_official_train(small):
    root = small
    w = _slide_table(root)
    train = set(_read(root, "partition/Test/Train.xlsx").image_name)
    tests, pats = [], []
    for k in range(1, 5):
        vt = set(_read(root, f"partition/Validation/Val{k}/Test.xlsx").image_name)
        vtr = set(_read(root, f"partition/Validation/Val{k}/Train.xlsx").image_name)
        assert vt, f"Val{k} is empty"
        assert vt | vtr == train and not (vt & vtr)
        assert not (_patients(root, vt, w) & _patients(root, vtr, w))
        tests.append(vt)
        pats.append(_patients(root, vt, w))
    assert set().union(*tests) == train and sum(map(len, tests)) == len(train)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not (pats[i] & pats[j])


def test_onehot_is_mask_majority_and_slide_labels_hold(small):
    root = small
    w = _slide_table(root).set_index("slide_id")
    for split in ("Train", "Test"):
        df = _read(root, f"partition/Test/{split}.xlsx")
        crib = _read(root, f"partition/Test/{split}Cribfriform.xlsx")
        g4 = df[df.G4 == 1]
        assert list(crib.image_name) == list(g4.image_name)
        assert list(crib.G4C) == list(g4.G4C)
        assert (df.loc[df.G4 == 0, "G4C"] == 0).all()
        for _, r in df.iterrows():
            m = _mask(root, r.image_name)
            counts = np.array([(m == v).sum() for v in (0, 3, 4, 5)])
            assert np.argmax(r[["NC", "G3", "G4", "G5"]].to_numpy()) == counts.argmax(), r.image_name
            sl = w.loc[r.image_name.split("_", 1)[0]]
            allowed = {0, int(sl.Gleason_primary), int(sl.Gleason_secondary)}
            assert set(np.unique(m)) <= allowed
            if sl.Gleason_primary == 0:
                assert not m.any() and r.NC == 1
            else:
                assert r.NC == 0  # as in SICAPv2: NC patches come from non-cancer slides


def test_split_coverage_and_gg5_guarantee(medium):
    root = medium
    w = _slide_table(root)
    for split in ("Train", "Test"):
        df = _read(root, f"partition/Test/{split}.xlsx")
        slides = {n.split("_", 1)[0] for n in df.image_name}
        sub = w[w.slide_id.isin(slides)]
        has5 = ((sub.Gleason_primary == 5) | (sub.Gleason_secondary == 5)).sum()
        assert has5 >= 2, split
        assert ((sub.Gleason_primary == 0)).any(), split
        for g in (3, 4):
            assert ((sub.Gleason_primary == g) | (sub.Gleason_secondary == g)).any(), (split, g)
    npat = w.patient_id.nunique()
    assert npat == 12
    assert w.groupby("patient_id").size().max() <= 2


# ----------------------------------------------------------------------------- determinism / cache
def _all_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_byte_identical_other_seed_differs(small, tmp_path):
    again = demo.make_demo_sicap(tmp_path / "again", seed=0, **SMALL)
    a, b = _all_bytes(small), _all_bytes(again)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]][:5]
    other = _all_bytes(demo.make_demo_sicap(tmp_path / "other", seed=1, **SMALL))
    assert other["wsi_labels.xlsx"] != a["wsi_labels.xlsx"]
    imgs_a = sorted(v for k, v in a.items() if k.startswith("images"))
    imgs_o = sorted(v for k, v in other.items() if k.startswith("images"))
    assert imgs_a != imgs_o


def test_cache_overwrite_and_atomic(tmp_path, monkeypatch):
    root = tmp_path / "d"
    demo.make_demo_sicap(root, seed=5, **SMALL)
    stamp = root / "demo_params.json"
    before = stamp.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(dataset, "_generate", boom)
    assert demo.make_demo_sicap(root, seed=5, **SMALL) == root  # cache hit: no generation
    assert stamp.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match=r"seed.*overwrite=True"):
        demo.make_demo_sicap(root, seed=6, **SMALL)
    # a failing generation leaves the old folder and no temporary folder behind
    with pytest.raises(AssertionError):
        demo.make_demo_sicap(root, seed=6, overwrite=True, **SMALL)
    assert json.loads(stamp.read_text())["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    monkeypatch.undo()
    demo.make_demo_sicap(root, seed=6, overwrite=True, **SMALL)
    assert json.loads(stamp.read_text())["seed"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    # a non-empty folder that is not a demo dataset is never replaced
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not a demo dataset"):
        demo.make_demo_sicap(foreign, overwrite=True, **SMALL)
    assert (foreign / "keep.txt").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="domain"):
        demo.make_demo_sicap(tmp_path / "x", domain="mars", **SMALL)
    with pytest.raises(ValueError, match="n_patients"):
        demo.make_demo_sicap(tmp_path / "x", n_patients=3, tile_size=SIZE, progress=False)
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- appearance
def _mean_rgb(root):
    return np.mean([np.asarray(Image.open(p)).reshape(-1, 3).mean(0) for p in sorted((root / "images").glob("*.jpg"))], 0)


def test_ood_differs_in_colour(small, tmp_path):
    ood = demo.make_demo_sicap(tmp_path / "ood", seed=0, domain="ood", **SMALL)
    a, b = _mean_rgb(small), _mean_rgb(ood)
    assert np.abs(a - b).max() > 8, (a, b)
    w_in, w_ood = _slide_table(small), _slide_table(ood)
    assert not (set(w_in.slide_id) & set(w_ood.slide_id))


def test_random_annotation_mask():
    rng = np.random.default_rng(0)
    m = demo.random_annotation_mask(rng, 64, [2, 3, 0], [0.6, 0.25, 0.15])
    assert m.shape == (64, 64) and m.dtype == np.uint8
    assert set(np.unique(m)) <= {0, 2, 3}
    frac = np.bincount(m.ravel(), minlength=4) / m.size
    assert abs(frac[2] - 0.6) < 0.08 and abs(frac[3] - 0.25) < 0.08 and abs(frac[0] - 0.15) < 0.08
    assert (demo.random_annotation_mask(rng, 48, [1], [1.0]) == 1).all()
    # same generator state -> same shapes at any size
    a = demo.random_annotation_mask(np.random.default_rng(4), 64, [1, 0], [0.5, 0.5])
    b = demo.random_annotation_mask(np.random.default_rng(4), 128, [1, 0], [0.5, 0.5])
    assert (a == b[::2, ::2]).mean() > 0.9


def _pure_tiles(label, n, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return [demo.render_tile(np.full((size, size), label, np.uint8), rng) for _ in range(n)]


def test_render_tile_shapes_determinism_and_structure():
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 3
    a = demo.render_tile(mask, np.random.default_rng(1))
    b = demo.render_tile(mask, np.random.default_rng(1))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert demo.render_tile(np.zeros((128, 128), np.uint8), 0, scale=1.2).shape == (128, 128, 3)
    with pytest.raises(ValueError):
        demo.render_tile(np.full((8, 8), 5, np.uint8), 0)
    tiles = {lab: _pure_tiles(lab, 6) for lab in range(4)}
    means = np.array([np.mean([t.reshape(-1, 3).mean(0) for t in tiles[lab]], 0) for lab in range(4)])
    # one palette: the labels' mean colours agree within a few grey levels
    assert np.ptp(means, axis=0).max() < 8, means
    # structure: GG3 shows lumens (near-white pixels), GG5 none
    white = {lab: np.mean([(t.min(2) > 225).mean() for t in tiles[lab]]) for lab in range(4)}
    assert white[1] > 0.02 and white[3] < 0.002, white


# ------------------------------------------------------------------- the validity property
VALID = dict(n_patients=12, tiles_per_slide=6, tile_size=32, progress=False)


def assert_valid(rep: dict) -> None:
    """The demo data's claim (notebook 00): grades differ by structure, not colour. A mean-colour
    classifier is near chance (0.25), a small CNN well above it."""
    assert rep["colour_acc"] < 0.45, f"mean colour tells the grade: {rep['colour_acc']:.3f}"
    assert rep["cnn_acc"] > 0.5 and rep["cnn_acc"] > rep["colour_acc"] + 0.2, rep


def leaky_render(render):
    """``render_tile`` with a per-label colour shift: the colour then carries the grade."""
    shift = np.array([[0, 0, 0], [40, -20, 0], [-20, 40, 0], [0, -20, 40]], np.int16)

    def f(mask, rng, *a, **k):
        out = render(mask, rng, *a, **k)
        img, info = out if isinstance(out, tuple) else (out, None)
        img = np.clip(img.astype(np.int16) + shift[np.asarray(mask)], 0, 255).astype(np.uint8)
        return img if info is None else (img, info)
    return f


def test_grades_differ_by_structure_not_colour(tmp_path):
    root = demo.make_demo_sicap(tmp_path / "sicap", seed=0, **VALID)
    rep = demo.validity_report(root, seed=0, cnn_epochs=3)
    for key in ("colour_acc", "cnn_acc", "cnn_per_class", "colour_per_class", "n_regions", "n_crops", "chance"):
        assert key in rep
    assert rep["chance"] == 0.25
    assert_valid(rep)


def test_the_validity_check_catches_colour_that_carries_the_grade(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset, "render_tile", leaky_render(demo.render_tile))
    root = demo.make_demo_sicap(tmp_path / "sicap", seed=0, **VALID)
    rep = demo.validity_report(root, seed=0, cnn_epochs=0)  # the colour half needs no CNN
    assert rep["colour_acc"] > 0.9
    with pytest.raises(AssertionError, match="mean colour tells the grade"):
        assert_valid(rep)
