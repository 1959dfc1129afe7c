"""The pattern judge (discnb.grading.judge): scores, training once (same recipe and seed = the
real-only CarcinoNet notebook 04 trains), storage, reuse, the first-stage view, encoder features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from discnb import K, LABELS
from discnb.core import params
from discnb.generative import autoencoder as ae
from discnb.generative import ldm_training
from discnb.grading import carcinonet as gc
from discnb.grading import judge as jg
from discnb.grading import metrics
from discnb.pipelines import train_carcinonet as cn

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = {"encoder": "resnet18", "encoder_width": 8, "encoder_path": "", "decoder_channels": 16, "pool_grids": [1, 2, 3]}
TRAIN = {"steps": 3, "batch": 2, "lr": 0.001, "weight_decay": 0.0, "warmup_steps": 0, "ema_decay": 0.0,
         "validate_every": 0, "focal_gamma": 2.0, "dice_weight": 1.0, "jitter": 0.05}


def tiles(n=6, size=32, seed=0):
    rng = np.random.default_rng(seed)

    def split(k, tag):
        return {"imgs": rng.integers(0, 256, (k, size, size, 3)).astype(np.uint8),
                "masks": rng.integers(0, K, (k, size, size)).astype(np.uint8), "names": np.array([f"{tag}{i}" for i in range(k)])}
    return {"image_size": size, "train": split(n, "tr"), "val": split(2, "va"), "test": split(2, "te")}


# ----------------------------------------------------------------------------------- scoring
def test_judge_on_matching_and_wrong_masks():
    rng = np.random.default_rng(0)
    masks = rng.integers(0, K, (3, 16, 16)).astype(np.uint8)
    tiles_ = np.zeros((3, 16, 16, 3), np.uint8)
    truth = {"m": masks}
    judge = jg.Judge(lambda t: truth["m"])  # a stub segmenter that draws exactly the guiding masks
    good = judge(tiles_, masks)
    assert good["mean_iou"] == 1.0 and good["pixel_agreement"] == 1.0
    assert all(v == 1.0 for v in good["iou"].values())
    bad = judge(tiles_, ((masks + 1) % K).astype(np.uint8))  # every pixel asks for another label
    assert bad["mean_iou"] == 0.0 and bad["pixel_agreement"] == 0.0
    half = masks.copy()
    half[:, :8] = (half[:, :8] + 1) % K
    mid = judge(tiles_, half)
    assert 0 < mid["mean_iou"] < 1 and mid["pixel_agreement"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="do not match"):
        judge(tiles_[:2], masks)
    with pytest.raises(ValueError, match="no model"):
        judge.features(tiles_)


def test_judge_from_a_frozen_model_and_its_encoder_features():
    torch.manual_seed(0)
    model = gc.build_model(MODEL)
    j = jg.judge_from_model(model, {"scored_on": "val"})
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    t = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    r = j(t, np.zeros((3, 32, 32), np.uint8))
    assert set(r["iou"]) == set(LABELS) and r["n_tiles"] == 3 and j.info["scored_on"] == "val"
    assert np.array_equal(np.asarray(r["confusion"]).sum(), 3 * 32 * 32)
    f = j.features(t, batch_size=2)
    assert f.shape == (3, 32 + 64) and np.isfinite(f).all()  # two deepest levels of width 8: 4w + 8w channels
    assert np.allclose(f[:1], j.features(t[:1]), atol=1e-5)  # per tile, whatever the batch


def test_kid_reference_is_the_first_stage_domain():
    """KID's reference set is real tiles through the first stage: a generator that reproduces the
    first stage's reconstructions of other real tiles scores about 0; untouched real tiles, which no
    generator decoding with this first stage can draw, score far from it."""
    torch.manual_seed(0)
    j = jg.judge_from_model(gc.build_model(MODEL), {})
    vq = ae.build_vq([8, 8, 8], 1, 16).eval()  # untrained: its reconstructions are far from the tiles
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (160, 32, 32, 3)).astype(np.uint8)
    ref = jg.kid_reference(j, real[:80], vq)
    recon_other = j.features(jg.first_stage_view(real[80:], vq))
    near = metrics.kid(ref, recon_other, subsets=10, subset_size=40, seed=0)[0]
    far = metrics.kid(ref, j.features(real[80:]), subsets=10, subset_size=40, seed=0)[0]
    assert far > 10 * abs(near) and far > 0, (near, far)


# ---------------------------------------------------------------------------------- training
def test_train_judge_is_the_real_only_run_of_the_same_recipe_and_seed(tmp_path):
    """The judge notebook 01 trains with notebook 04's model/train dicts and seed has the weights of
    notebook 04's real-only run of that seed (what the judge was before it became its own artifact)."""
    D = tiles()
    P04 = params.validate("04_carcinonet", {"profile": "smoke", "output_dir": str(tmp_path / "cn"), "device": "cpu",
                                            "model": MODEL, "train": TRAIN, "checkpoint_every": 2})
    base = cn.train_run(P04, D, cn.spec(None, 0.0, 3), progress=False)
    j = jg.train_judge(D, {"input": "real", "model": MODEL, "train": TRAIN}, tmp_path / "judge", seed=3, progress=False)
    want = gc.load_model(base["dir"] + "/best").state_dict()
    got = gc.load_model(tmp_path / "judge" / "model").state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    info = json.loads((tmp_path / "judge" / "judge.json").read_text())
    assert info["scored_on"] == "val" and info["seed"] == 3 and "real_tiles" not in info
    assert info["real"]["n_tiles"] == 2 and j.info["signature"] == info["signature"]
    # stored: loaded back, not trained again (its run folder is left as it is)
    stamp = (tmp_path / "judge" / "judge.json").stat().st_mtime_ns
    again = jg.train_judge(D, {"input": "real", "model": MODEL, "train": TRAIN}, tmp_path / "judge", seed=3, progress=False)
    assert (tmp_path / "judge" / "judge.json").stat().st_mtime_ns == stamp and again.info == info
    loaded = jg.load_judge(tmp_path / "judge")
    assert loaded.info == info and np.array_equal(loaded.segment(D["val"]["imgs"]), j.segment(D["val"]["imgs"]))
    # another seed is another judge
    other = jg.train_judge(D, {"input": "real", "model": MODEL, "train": TRAIN}, tmp_path / "judge", seed=4, progress=False)
    assert other.info["signature"] != info["signature"]
    assert len(list((tmp_path / "judge").glob("run-*"))) == 1  # the replaced judge's run folder is gone


def test_train_judge_through_the_first_stage(tmp_path):
    torch.manual_seed(0)
    ae.build_vq([8, 16, 16], 1, 32).save_pretrained(tmp_path / "vq")
    D = tiles(4)
    view = jg.first_stage_view(D["val"]["imgs"], tmp_path / "vq")
    assert view.shape == D["val"]["imgs"].shape and view.dtype == np.uint8 and not np.array_equal(view, D["val"]["imgs"])
    assert np.array_equal(jg.first_stage_view(D["val"]["imgs"], ae.load_vq(tmp_path / "vq")), view)
    recipe = {"input": "first_stage", "model": MODEL, "train": dict(TRAIN, steps=2)}  # one epoch: validated once
    j = jg.train_judge(D, recipe, tmp_path / "judge", seed=0, first_stage=tmp_path / "vq", progress=False)
    assert j.info["scored_on"] == "val, through the first stage" and j.info["real_tiles"]["n_tiles"] == 2
    assert j.info["real"] == j(view, D["val"]["masks"])  # scored in its own input domain
    with pytest.raises(ValueError, match="first stage's folder"):
        jg.train_judge(D, recipe, tmp_path / "j2", seed=0, progress=False)


@pytest.mark.parametrize("recipe, match", [
    ({"input": "real", "model": MODEL}, "keys"),
    ({"input": "real", "model": MODEL, "train": TRAIN, "seed": 0}, "keys"),
    ({"input": "noisy", "model": MODEL, "train": TRAIN}, "input must be"),
    ({"input": "real", "model": {**MODEL, "encoder_widht": 8}, "train": TRAIN}, "model keys"),
    ({"input": "real", "model": MODEL, "train": {k: v for k, v in TRAIN.items() if k != "jitter"}}, "train keys"),
])
def test_a_mistyped_recipe_is_an_error(tmp_path, recipe, match):
    with pytest.raises(ValueError, match=match):
        jg.train_judge(tiles(2), recipe, tmp_path / "judge", seed=0, progress=False)


def test_load_judge_names_the_notebook_that_trains_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="01_train_ldm"):
        jg.load_judge(tmp_path / "nothing")


def test_judge_report_rows():
    j = jg.Judge(lambda t: t[..., 0] % K, {"scored_on": "val, through the first stage", "real": {"iou": dict.fromkeys(LABELS, 0.5),
                 "mean_iou": 0.5, "pixel_agreement": 0.6, "n_tiles": 2}, "real_tiles": {"iou": dict.fromkeys(LABELS, 0.4),
                 "mean_iou": 0.4, "pixel_agreement": 0.5, "n_tiles": 2}})
    rows = jg.judge_self_rows(j)
    assert list(rows) == ["real (val, through the first stage)", "real (untouched tiles)"]
    t = jg.judge_table(rows)
    assert list(t.columns) == [f"IoU {k}" for k in LABELS] + ["mean IoU", "pixel agreement", "tiles"]
    assert t.loc["real (untouched tiles)", "mean IoU"] == 0.4


# -------------------------------------------------------------------------------------- the judges three ways
def test_judge_report_scores_two_judges_three_ways_and_chance(tmp_path, monkeypatch):
    """Notebook 01 trains the judge on real tiles and on reconstructions (same recipe, two folders),
    and judge.json holds real_on_real, real_on_recon, recon_on_recon (the ceiling) and chance, each
    recomputable from the stored judges."""
    import yaml
    from discnb.core import layout, params, paths
    from discnb.grading import adherence
    from discnb.pipelines import train_ldm
    from ldm_fixture import prepared

    monkeypatch.setattr(paths, "OUTPUTS", tmp_path / "outputs")
    monkeypatch.delenv("DISCNB_FIGURES", raising=False)
    monkeypatch.setattr(paths, "FIGURES", tmp_path / "figures")
    P = params.validate("01_train_ldm", yaml.safe_load(prepared(tmp_path).read_text()) | {
        "judge": {"seed": 0, "input": "first_stage", "model": MODEL, "train": TRAIN}, "judge_seeds": [1, 0]})
    train_ldm.first_stage(P, ldm_training.load_split(P, progress=False), progress=False)
    judges = train_ldm.train_judges(P, progress=False)
    assert list(judges["seeds"]) == [0, 1] and (train_ldm.judge_folder(P, "real", 1) / "judge.json").exists()
    assert train_ldm.judge_folder(P, "first_stage") == layout.of(P, train_ldm.NOTEBOOK).judge
    assert (train_ldm.judge_folder(P, "real") / "judge.json").exists()
    assert judges["real"].info["input"] == "real" and judges["first_stage"].info["input"] == "first_stage"
    rep = train_ldm.judge_report(P, judges)
    assert set(rep) >= {"real_on_real", "real_on_recon", "recon_on_recon", "chance"} and rep["judge_seeds"] == [0, 1]
    tiles = judges["tiles"]
    recon = jg.first_stage_view(tiles["imgs"], train_ldm.ck.first_stage_folder(P))
    shuffled = tiles["masks"][adherence.chance_order(len(tiles["masks"]))]
    ways = {"real_on_recon": lambda j: j["real"](recon, tiles["masks"]),
            "recon_on_recon": lambda j: j["first_stage"](recon, tiles["masks"]),
            "chance": lambda j: j["first_stage"](recon, shuffled),
            "real_on_real": lambda j: j["real"](tiles["imgs"], tiles["masks"])}
    for way, score in ways.items():  # each seed recomputable; the report is their mean and std
        mine = [score(judges["seeds"][s])["mean_iou"] for s in (0, 1)]
        assert [rep[way]["per_seed"][s]["mean_iou"] for s in ("0", "1")] == pytest.approx(mine)
        assert rep[way]["mean_iou"] == pytest.approx(np.mean(mine)) and rep[way]["mean_iou_std"] == pytest.approx(np.std(mine))
    assert json.loads((paths.results_dir("smoke") / "judge.json").read_text()) == json.loads(json.dumps(rep))
    assert str(paths.results_dir("smoke")).startswith(str(tmp_path))
    again = train_ldm.train_judges(P, progress=False)  # stored: loaded, not retrained
    assert again["real"].info["fit"] == judges["real"].info["fit"]
    train_ldm.judge_figure(P)
    assert (tmp_path / "figures" / "smoke" / "01_judge_curves.png").exists()
