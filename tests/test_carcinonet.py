"""CarcinoNet (Sec. 2.4): model, losses, Eq. 4 in the training loss, augmentation, one training run,
and notebook 04's pipeline (synthetic-tile plumbing, run cache, evaluation, the Fig. 8 file)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file

from discnb import LABELS, K, plots
from discnb.core import params, paths
from discnb.generative import generators
from discnb.generative.checkpoints import check_ldm, ldm_params
from discnb.grading import carcinonet as gc
from discnb.grading.eq4 import check_lam
from discnb.grading.metrics import confusion, metrics_from_confusion
from discnb.pipelines import train_carcinonet as cn
from ldm_fixture import prepared

pytestmark = pytest.mark.usefixtures("one_thread")


TINY_MODEL = {"encoder": "resnet18", "encoder_width": 8, "encoder_path": "", "decoder_channels": 16, "pool_grids": [1, 2, 3]}


def tiny():
    torch.manual_seed(0)
    return gc.build_model(TINY_MODEL)


class Stub(torch.nn.Module):
    """A BatchNorm-free per-pixel model: a sample's logits do not depend on the rest of the batch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, K, 1)

    def forward(self, x):
        return self.conv(gc.to_unit(x))


def toy_batch(n=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, K, (n, size, size), generator=g).to(torch.uint8))


# ------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("h,w", [(32, 32), (48, 48), (64, 64), (40, 56), (100, 100)])
def test_output_shape_for_several_sizes(h, w):
    m = tiny().eval()
    with torch.no_grad():
        out = m(torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8))
    assert out.shape == (2, K, h, w) and torch.isfinite(out).all()


def test_uint8_and_unit_float_inputs_agree():
    m = tiny().eval()
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(m(x), m(x.float() / 255), atol=1e-5)


def test_architecture_parts():
    m = tiny()
    assert m.ppm.grids == (1, 2, 3)
    assert m.encoder.feature_info.channels() == [8, 8, 16, 32, 64]  # width 8: deep stem 8, stages 8..64
    assert len(m.lateral) == len(m.blocks) == 4
    with pytest.raises(ValueError, match="encoder_width"):
        gc.build_model({**TINY_MODEL, "encoder_width": 7})
    with pytest.raises(ValueError, match="cannot build encoder 'resnet_nope'"):
        gc.build_model({**TINY_MODEL, "encoder": "resnet_nope"})


def test_save_load_roundtrip(tmp_path):
    m = tiny().eval()
    gc.save_model(m, tmp_path / "m")
    m2 = gc.load_model(tmp_path / "m")
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    with pytest.raises(FileNotFoundError, match="04_carcinonet"):
        gc.load_model(tmp_path / "absent")


def test_encoder_weights_from_a_local_file(tmp_path):
    full = timm.create_model("resnet18", pretrained=False, channels=(8, 16, 32, 64), stem_type="deep", stem_width=4)
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(tmp_path / "enc.safetensors"))
    m = gc.build_model({**TINY_MODEL, "encoder_path": str(tmp_path / "enc.safetensors")})
    assert torch.equal(m.encoder.state_dict()["conv1.0.weight"], full.state_dict()["conv1.0.weight"])
    other = timm.create_model("resnet18", pretrained=False)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match="does not fit the encoder"):
        gc.build_model({**TINY_MODEL, "encoder_path": str(tmp_path / "other.pth")})
    with pytest.raises(FileNotFoundError, match="encoder_path"):
        gc.build_model({**TINY_MODEL, "encoder_path": str(tmp_path / "missing.pth")})


# ------------------------------------------------------------------------------------ losses
def test_focal_loss_known_values():
    y = torch.zeros(1, 2, 2, dtype=torch.long)
    uniform = torch.zeros(1, K, 2, 2)
    assert gc.focal_loss(uniform, y, gamma=2.0).item() == pytest.approx(0.75 ** 2 * math.log(4), rel=1e-6)
    assert gc.focal_loss(uniform, y, gamma=0.0).item() == pytest.approx(math.log(4), rel=1e-6)  # = cross-entropy
    perfect = 30 * torch.nn.functional.one_hot(y, K).permute(0, 3, 1, 2).float()
    assert gc.focal_loss(perfect, y).item() < 1e-12


def test_dice_loss_known_values():
    y = torch.randint(0, K, (2, 8, 8))
    perfect = 30 * torch.nn.functional.one_hot(y, K).permute(0, 3, 1, 2).float()
    assert gc.dice_loss(perfect, y).item() < 1e-4
    # everything predicted as class 1 where the truth is class 0: Dice ~ 1/17 for classes 0 and 1,
    # 1 for the classes in neither (smoothing eps = 1)
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    wrong = 30 * torch.nn.functional.one_hot(torch.ones_like(t), K).permute(0, 3, 1, 2).float()
    expected = 1 - (2 / 17 + 2) / 4
    assert gc.dice_loss(wrong, t).item() == pytest.approx(expected, abs=1e-4)


def test_one_batch_overfit_reaches_near_zero_loss():
    torch.manual_seed(0)
    x, _ = toy_batch(2, 32)
    y = torch.zeros(2, 32, 32, dtype=torch.uint8)
    y[0, :16] = 1
    y[0, 16:, :10] = 3
    y[1, :, 20:] = 2
    m = tiny()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    loss_fn = gc.make_loss(0.0)
    first = None
    for _ in range(120):
        loss = loss_fn(m, {"image": x, "mask": y})
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 1.0 and loss.item() < 0.05, (first, loss.item())


# --------------------------------------------------------------------- Eq. 4 in the training loss
def test_training_loss_is_eq4_of_its_real_and_synthetic_parts():
    """make_loss (what fit minimises) on a batch drawn by MixedData, the training data of a run with
    lambda > 0, against its real and synthetic parts computed through the model."""
    model = Stub()
    x, y = toy_batch(4, 16, 0)
    xs, _ = toy_batch(3, 16, 1)
    ys = torch.full((3, 16, 16), 2, dtype=torch.uint8)  # synthetic tiles all GG4: a loss unlike the real one
    d = gc.MixedData({"image": x, "mask": y}, {"image": xs, "mask": ys})
    torch.manual_seed(3)
    batch = d.batch(torch.tensor([0, 2]))
    a = gc.seg_loss(model(batch["image"]), batch["mask"])
    b = gc.seg_loss(model(batch["syn_image"]), batch["syn_mask"])
    assert abs(a.item() - b.item()) > 0.05  # the two parts differ, so a wrong weighting shows
    for lam in (0.1, 0.5, 0.9):
        got = gc.make_loss(lam)(model, batch)
        assert got.item() == pytest.approx(((1 - lam) * a + lam * b).item(), rel=1e-6, abs=1e-7)
    # lambda = 0 ignores the synthetic half entirely (even NaN images would not reach the loss)
    nan_batch = dict(batch, syn_image=torch.full((2, 3, 16, 16), float("nan")))
    assert gc.make_loss(0.0)(model, nan_batch).item() == pytest.approx(a.item(), rel=1e-7)
    # no synthetic keys (validation): the real loss
    assert gc.make_loss(0.5)(model, {"image": batch["image"], "mask": batch["mask"]}).item() == \
        pytest.approx(a.item(), rel=1e-7)


def test_training_run_uses_synthetic_tiles_exactly_when_lambda_positive(tmp_path):
    """Synthetic masks with an impossible label: harmless at lambda = 0 (never drawn), an error at
    lambda > 0 (the training loss reads them)."""
    D = tiny_data(4)
    bad = (D["train"]["imgs"][:2], np.full((2, 32, 32), 200, np.uint8))
    recipe = {"model": TINY_MODEL, "train": dict(tiny_params(tmp_path).train, steps=1)}
    tiles = (D["train"]["imgs"], D["train"]["masks"]), (D["val"]["imgs"], D["val"]["masks"])
    fit = gc.train_carcinonet(tmp_path / "a", recipe, *tiles, 0, synth=bad, lam=0.0, progress=False)
    assert fit["steps"] == 1
    with pytest.raises((RuntimeError, IndexError)):
        gc.train_carcinonet(tmp_path / "b", recipe, *tiles, 0, synth=bad, lam=0.5, progress=False)
    with pytest.raises(ValueError, match="synthetic tiles"):
        gc.train_carcinonet(tmp_path / "c", recipe, *tiles, 0, lam=0.5, progress=False)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), float("inf"), True, "0.5", None])
def test_lambda_outside_0_1_is_rejected(bad):
    with pytest.raises(ValueError, match=r"lambda \(balance weight of Eq. 4\)"):
        check_lam(bad)
    with pytest.raises(ValueError, match="balance weight"):
        gc.make_loss(bad)
    with pytest.raises(ValueError, match="balance weight"):
        cn.spec("SD", bad, 0)


def test_lambda_zero_is_the_baseline_run():
    assert cn.spec("SD", 0.0, 3) == cn.spec(None, 0.0, 3)
    assert cn.spec("SD", 0.3, 3).tag == "SD-lam0.3" and cn.spec(None, 0, 1).tag == "real"
    assert check_lam(0) == 0.0 and check_lam(0.95) == 0.95


# ------------------------------------------------------------------------------ augmentation
def test_augmentation_keeps_tiles_and_masks_aligned():
    torch.manual_seed(0)
    x = torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
    m = torch.zeros(4, 16, 16, dtype=torch.uint8)
    x[:, :, :4, :8] = 255  # a bright block where the mask says 3
    m[:, :4, :8] = 3
    out = gc.augment_fn(0.0)({"image": x, "mask": m})
    assert out["image"].dtype == torch.float32 and out["image"].max() <= 1
    assert torch.equal(out["image"][:, 0] > 0.5, out["mask"] == 3)
    j = gc.color_jitter(torch.rand(8, 3, 16, 16), 0.3)
    assert j.min() >= 0 and j.max() <= 1
    same = torch.rand(2, 3, 4, 4)
    assert torch.equal(gc.color_jitter(same, 0.0), same)


def test_mixed_data_batches_hold_a_real_and_a_synthetic_half():
    x, y = toy_batch(6, 16, 0)
    xs, ys = toy_batch(4, 16, 1)
    d = gc.MixedData({"image": x, "mask": y}, {"image": xs, "mask": ys}, augment=gc.augment_fn(0.05))
    assert len(d) == 6
    b = d.batch(torch.tensor([0, 2, 5]))
    assert b["image"].shape == b["syn_image"].shape == (3, 3, 16, 16)
    assert b["mask"].shape == b["syn_mask"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="keys"):
        gc.MixedData({"image": x, "mask": y}, {"image": xs})


# ---------------------------------------------------------------------------------- tables
def test_tidy_rows_leave_nc_out_of_precision():
    t = np.array([[0, 0, 1, 1]])
    p = np.array([[0, 1, 1, 1]])
    rows = cn.tidy_rows(metrics_from_confusion(confusion(t, p)), model="CarcinoNet", generator="none", lam=0.0, seed=0,
                        test_set="test")
    assert not [r for r in rows if r["metric"] == "precision" and r["label"] == "NC"]  # NC omitted from precision
    assert {r["label"] for r in rows if r["metric"] == "iou"} == set(LABELS) | {"mean"}
    assert all(set(r) == {"model", "generator", "lam", "seed", "test_set", "metric", "label", "value"} for r in rows)


def test_summary_mean_and_std_over_seeds():
    rows = []
    for seed, v in ((0, 0.4), (1, 0.6)):
        rows.append({"model": "CarcinoNet", "generator": "none", "lam": 0.0, "seed": seed, "test_set": "test",
                     "metric": "iou", "label": "mean", "value": v})
    s = gc.summarize(pd.DataFrame(rows))
    assert s["mean"].item() == pytest.approx(0.5) and s["std"].item() == pytest.approx(0.1) and s["n_seeds"].item() == 2
    assert gc.metric_table(s).loc[("test", "none", 0.0), "iou mean"] == "0.500 ± 0.100"


# ------------------------------------------------------------------------- synthetic plumbing
def fake_library(n=5, size=16):
    maps = np.zeros((n, size, size), np.uint8)
    n_ranks = np.array([1, 2, 3, 4, 2][:n], np.uint8)
    for i, r in enumerate(n_ranks):
        for k in range(1, r):  # rank k gets a smaller block than rank k-1
            maps[i, : size // (k + 1), : size // (k + 1)] = k
    return {"maps": maps, "n_ranks": n_ranks, "labels_by_rank": np.zeros((n, K), np.int8),
            "image_name": np.array([f"t{i}" for i in range(n)])}


def test_synthetic_masks_are_seeded_and_use_distinct_labels():
    lib = fake_library()
    m1, s1 = cn.synthetic_masks(lib, 20, seed=3, size=16)
    m2, s2 = cn.synthetic_masks(lib, 20, seed=3, size=16)
    m3, _ = cn.synthetic_masks(lib, 20, seed=4, size=16)
    assert np.array_equal(m1, m2) and np.array_equal(s1, s2) and not np.array_equal(m1, m3)
    assert m1.dtype == np.uint8 and m1.max() < K and len(set(s1.tolist())) == 20
    # each mask has as many distinct labels as its shape map has ranks
    for m in m1:
        assert len(np.unique(m)) in {1, 2, 3, 4}
    assert cn.synthetic_masks(lib, 4, 0, 8)[0].shape == (4, 8, 8)


def test_unknown_and_not_yet_available_generators():
    ctx = generators.GeneratorContext(ldm_dir=paths.REPO / "nowhere", image_size=32)
    with pytest.raises(ValueError, match=r"unknown generator 'XYZ'; available: \['SD', 'SD-DISC', 'SD-DISC-CoTrain', 'SD-SC', "
                                         r"'SD-tile', 'SD-tile\+slide'\]"):
        generators.build_generator("XYZ", ctx)
    with pytest.raises(FileNotFoundError, match="01_train_ldm.ipynb"):
        generators.build_generator("SD", ctx)
    with pytest.raises(FileNotFoundError, match="01_train_ldm.ipynb"):  # SC needs SD first
        generators.build_generator("SD-SC", ctx)


def fake_ldm(tmp_path, image_size=32, ae_sig_channels=(8, 16, 16)):
    """An LDM folder as notebook 01 leaves it, minus the weights (enough for check_ldm)."""
    d = tmp_path / "ldm"
    (d / "sd" / "best").mkdir(parents=True)
    (d / "sd" / "best" / "model_index.json").write_text(json.dumps({"_class_name": "DISCPipeline"}))
    (d / "autoencoder").mkdir(parents=True)
    P01 = params.validate("01_train_ldm", {"profile": "smoke"})
    (d / "params.resolved.yaml").write_text(yaml.safe_dump(dict(P01)))
    ae_info = {"signature": {"kind": "vq", "channels": list(ae_sig_channels)}, "fit": {"steps": 4}}
    (d / "autoencoder" / "done.json").write_text(json.dumps(ae_info))
    (d / "summary.json").write_text(json.dumps({"autoencoder": ae_info, "image_size": image_size}))
    return d


def test_ldm_checks_name_what_to_run(tmp_path):
    d = fake_ldm(tmp_path)
    P01 = ldm_params(d)
    assert check_ldm(d, P01, 32)["image_size"] == 32
    # Fig. 7's ablation SDs: asking for one that notebook 01 did not train says which parameter to set
    with pytest.raises(FileNotFoundError, match="sd-tile-slide.*ablation_conditions.*01"):
        generators.build_generator("SD-tile+slide", generators.GeneratorContext(ldm_dir=d, image_size=32))
    with pytest.raises(ValueError, match="32-px tiles .* 64 px; re-run notebooks/01_train_ldm.ipynb"):
        check_ldm(d, P01, 64)
    # the first stage was retrained after SD: SD's latents belong to another autoencoder
    (d / "autoencoder" / "done.json").write_text(json.dumps({"signature": {"kind": "vq", "channels": [1]}, "fit": {}}))
    with pytest.raises(ValueError, match="another first stage.*01_train_ldm.ipynb"):
        check_ldm(d, P01, 32)
    (d / "summary.json").unlink()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        check_ldm(d, P01, 32)
    with pytest.raises(FileNotFoundError, match="01_train_ldm.ipynb"):
        ldm_params(tmp_path / "empty")


# --------------------------------------------------------------------- training through fit
def tiny_params(tmp_path, **over):
    base = {"profile": "smoke", "output_dir": str(tmp_path / "cn"), "device": "cpu", "seeds": [0], "checkpoint_every": 2,
            "model": TINY_MODEL, "train": {"steps": 3, "batch": 2, "lr": 0.001, "weight_decay": 0.0, "warmup_steps": 0,
                                           "ema_decay": 0.0, "validate_every": 0, "focal_gamma": 2.0, "dice_weight": 1.0,
                                           "jitter": 0.05}}
    return params.validate("04_carcinonet", {**base, **over})


def tiny_data(n=6, size=32):
    rng = np.random.default_rng(0)

    def split(k, tag):
        return {"imgs": rng.integers(0, 256, (k, size, size, 3)).astype(np.uint8),
                "masks": rng.integers(0, K, (k, size, size)).astype(np.uint8),
                "names": np.array([f"{tag}{i}" for i in range(k)])}
    return {"image_size": size, "train": split(n, "tr"), "val": split(2, "va"), "test": split(2, "te")}


def test_train_run_caches_resumes_and_rejects_another_architecture(tmp_path):
    P, D = tiny_params(tmp_path), tiny_data()
    base = cn.train_run(P, D, cn.spec(None, 0.0, 0), progress=False)
    assert not base["reused"] and (tmp_path / "cn" / "runs").exists()
    assert cn.train_run(P, D, cn.spec(None, 0.0, 0), progress=False)["reused"]
    rng = np.random.default_rng(1)
    synth = {"images": rng.integers(0, 256, (4, 32, 32, 3)).astype(np.uint8),
             "masks": rng.integers(0, K, (4, 32, 32)).astype(np.uint8), "path": str(tmp_path / "SD-abc.npz")}
    mixed = cn.train_run(P, D, cn.spec("SD", 0.5, 0), synth, progress=False)
    assert mixed["dir"] != base["dir"] and mixed["fit"]["steps"] == 3
    with pytest.raises(ValueError, match="synthetic tiles"):
        cn.train_run(P, D, cn.spec("SD", 0.5, 0), None, progress=False)
    # an explicit resume from a checkpoint of another architecture: train.fit's signature check
    ckpt = sorted((tmp_path / "cn" / "runs").glob("real-*/checkpoint-*"))[-1]
    other = tiny_params(tmp_path, resume=str(ckpt), model={**TINY_MODEL, "decoder_channels": 8})
    with pytest.raises(ValueError, match="holds another model"):
        cn.train_run(other, D, cn.spec(None, 0.0, 0), progress=False)
    # evaluation: tidy rows for every run and test set
    df, cms = cn.evaluate(P, [base, mixed], D)
    assert set(df.generator) == {"none", "SD"} and set(df.test_set) == {"test"} and len(cms) == 2
    assert df.value.dropna().between(0, 1).all()
    fig = cn.plot_confusions(cms, [base, mixed], 0)
    assert len(fig.axes) == 2


def test_load_data_warns_about_empty_classes_and_missing_ood(tmp_path):
    prepared(tmp_path)  # data dir with a 32-px index (test split: slides 4+3 and 0+0: no GG5)
    P = tiny_params(tmp_path, data_dir=str(tmp_path / "data"), ood_split="")
    with pytest.warns(UserWarning) as rec:
        D = cn.load_data(P, progress=False)
    msgs = " | ".join(str(w.message) for w in rec)
    assert "the test split has no ['GG5'] pixels" in msgs  # fixture: no GG5 in the test slides
    assert "the training split has no ['GG3'] pixels" in msgs  # GG3 is only in the fold-1 slide
    assert D["image_size"] == 32 and D["train"]["imgs"].shape[1:] == (32, 32, 3) and "ood" not in D
    assert list(D["pixels"].columns) == [*LABELS, "tiles"]
    with pytest.raises(FileNotFoundError, match="ood_index.csv"):
        cn.load_data(tiny_params(tmp_path, data_dir=str(tmp_path / "data"), ood_split="all"), progress=False)


def test_fig8_file_holds_what_the_figure_shows(tmp_path):
    """fig8.npz: per test set the shown tiles, their truth and each shown run's label maps (what
    notebook 06 draws without running a model)."""
    P, D = tiny_params(tmp_path, figure_tiles=2, seeds=[0, 1]), tiny_data()
    runs = [cn.train_run(P, D, cn.spec(None, 0.0, s), progress=False) for s in (0, 1)]
    f8 = cn.fig8_arrays(P, runs, D)
    assert f8["test_sets"].tolist() == ["test"] and f8["runs"].tolist() == ["baseline"]  # seed seeds[0] only
    assert f8["test_tiles"].shape == (2, 32, 32, 3) and f8["test_pred"].shape == (1, 2, 32, 32)
    model = gc.load_model(runs[0]["dir"] + "/best")
    assert np.array_equal(f8["test_pred"][0], gc.predict(model, f8["test_tiles"]))
    i = [list(D["test"]["names"]).index(n) for n in f8["test_names"]]
    assert np.array_equal(f8["test_truth"], D["test"]["masks"][i])
    back = gc.load_fig8(cn.save_fig8(P, f8))
    assert set(back) == set(f8) and all(np.array_equal(back[k], f8[k]) for k in f8)
    rows, titles = plots.fig8_rows(back, "test")
    assert list(rows) == ["tile", "ground truth", "baseline"] and len(titles) == 2
    with pytest.raises(KeyError, match="ood"):
        plots.fig8_rows(back, "ood")
