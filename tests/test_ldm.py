"""SD (Sec. 2.1): conditioning, Eq. 1, DDIM sampling, and the training loop's guarantees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from discnb.data.augment import dihedral
from discnb.data.image_metrics import psnr, ssim
from discnb.generative import autoencoder as ae
from discnb.data import sicap as data
from discnb.generative import ldm, ldm_training
from discnb.core import params
from discnb.generative import sampling
from discnb.generative.disc_pipeline import DISCPipeline, load_pipeline
from discnb.core import train
from discnb.pipelines import train_ldm
from discnb.core.paths import REPO
from ldm_fixture import TINY, prepared, tiny_model

PY = sys.executable


# --------------------------------------------------------------------------- conditioning
def test_make_condition_modes():
    m = torch.zeros(2, 8, 8, dtype=torch.long)
    m[0, :, :5] = 2
    c = ldm.make_condition(m, "pixel")
    assert c.shape == (2, 4, 8, 8) and (c.sum(1) == 1).all() and c[0, 2, 0, 0] == 1
    t = ldm.make_condition(m, "tile")
    assert (t[0, 2] == 1).all() and (t[1, 0] == 1).all()
    ts = ldm.make_condition(m, "tile+slide", torch.tensor([[2, 1], [0, 0]]))
    assert ts.shape == (2, 12, 8, 8) and ts[0, 4 + 2, 0, 0] == 1 and ts[0, 8 + 1, 0, 0] == 1
    with pytest.raises(ValueError, match="needs slide_labels"):
        ldm.make_condition(m, "tile+slide")
    with pytest.raises(ValueError, match="condition must be one of"):
        ldm.make_condition(m, "layout")


def test_mask_labels_outside_range_are_rejected():
    with pytest.raises(ValueError, match=r"mask labels must be in 0..3; found \[0, 5\]"):
        ldm.make_condition(torch.tensor([[[0, 5]]]), "pixel")
    with pytest.raises(TypeError, match="integer labels"):
        ldm.make_condition(torch.zeros(1, 2, 2), "pixel")


def test_forward_shape_and_save_load(tmp_path):
    torch.manual_seed(0)
    model = tiny_model().eval()
    z, cond = torch.randn(2, 3, 8, 8), ldm.make_condition(torch.randint(0, 4, (2, 32, 32)))
    out = model(z, torch.tensor([10, 500]), cond)
    assert out.shape == z.shape
    DISCPipeline.saver(ae.build_vq([8, 16, 16], 1, 32))(model, tmp_path / "m")  # as notebooks 01 and 02 save it
    back = load_pipeline(tmp_path / "m").ldm.eval()
    assert torch.equal(back(z, torch.tensor([10, 500]), cond), out)
    assert not (tmp_path / "m" / "ldm.json").exists()
    with pytest.raises(FileNotFoundError, match="not a DISCPipeline folder"):
        load_pipeline(tmp_path)


def test_ldm_loss_on_known_input():
    """With eps_theta = 0 the loss is exactly E[eps^2] of the generator's noise."""
    class Zero(torch.nn.Module):
        def forward(self, z, t, cond, raw=False):
            return torch.zeros_like(z)

        def target(self, z0, noise, t):
            return noise
    ab = ldm.noise_scheduler().alphas_cumprod
    z0 = torch.randn(4, 3, 8, 8)
    loss = ldm.ldm_loss(Zero(), {"z": z0, "cond": None}, ab, torch.Generator().manual_seed(3))
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(3))
    assert loss.item() == pytest.approx(noise.pow(2).mean().item(), rel=1e-6)


def test_v_prediction_gives_eps_and_trains_on_v(tmp_path):
    """prediction: v (beyond the paper): forward() still returns eps, and the loss is v's MSE."""
    model = ldm.MaskLDM.from_config({**TINY["unet"], "condition": "pixel", "prediction": "v"}, 32, 8).eval()
    ab = ldm.noise_scheduler().alphas_cumprod
    z0, noise, t = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8), torch.tensor([5, 500, 990])
    a = ab[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
    v = a.sqrt() * noise - (1 - a).sqrt() * z0
    torch.testing.assert_close(model.target(z0, noise, t), v)
    model.predict = lambda z, tt, c: v  # a perfect v-predictor is a perfect eps-predictor
    torch.testing.assert_close(model(z_t, t, None), noise, rtol=1e-4, atol=1e-4)
    back_dir = tmp_path / "m"
    DISCPipeline.from_models(ldm.MaskLDM.from_config({**TINY["unet"], "condition": "pixel", "prediction": "v"}, 32, 8),
                             ae.build_vq([8, 16, 16], 1, 32)).save_pretrained(back_dir)
    assert load_pipeline(back_dir).ldm.prediction == "v"
    with pytest.raises(ValueError, match="prediction"):
        ldm.MaskLDM.from_config({**TINY["unet"], "condition": "pixel", "prediction": "x0"}, 32, 8)


def test_schedulers_are_set_up_as_ldm():
    d = sampling.make_scheduler("ddim").config
    assert (d.clip_sample, d.set_alpha_to_one, d.steps_offset, d.timestep_spacing) == (False, False, 1, "leading")
    assert (d.beta_start, d.beta_end, d.beta_schedule) == (0.0015, 0.0195, "scaled_linear")
    s = sampling.make_scheduler("ddim")
    s.set_timesteps(200)
    assert s.timesteps[0] == 996 and s.timesteps[-1] == 1
    assert sampling.make_scheduler("dpm++").config.algorithm_type == "dpmsolver++"
    with pytest.raises(ValueError, match="scheduler must be one of"):
        sampling.make_scheduler("euler")


@pytest.mark.filterwarnings("ignore:SD.*far out of range")  # an untrained model's samples
def test_sampling_is_seeded_per_tile():
    torch.manual_seed(0)
    vq = ae.build_vq(TINY["autoencoder"]["channels"], 1, 32)
    gen = sampling.SDGenerator(tiny_model(), vq, steps=3, batch_size=2)
    masks = np.random.default_rng(0).integers(0, 4, (3, 32, 32)).astype(np.uint8)
    a = gen.generate(masks, [1, 2, 3])
    b = gen.generate(masks, [1, 2, 3])
    assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b), "same seeds must give bit-identical tiles"
    c = gen.generate(masks, [4, 5, 6])
    assert not np.array_equal(a, c), "different seeds must give different tiles"
    alone = gen.generate(masks[2:], [3])  # another batch composition, same tile
    assert np.array_equal(alone[0], a[2])
    assert gen.nfe == 3 * (3 + 3 + 3 + 1)
    with pytest.raises(ValueError, match="one seed per tile"):
        gen.generate(masks, [1])
    with pytest.raises(ValueError, match="mask labels must be in 0..3"):
        gen.generate(masks + 4, [1, 2, 3])


def test_latent_drift_samples_on_the_device_the_profile_names(monkeypatch):
    """train_ldm.latent_drift hands P.device to the sampler (it used to sample on the CPU whatever
    the profile said): the device its SDGenerator gets is pick_device(P.device)."""
    seen = {}

    class Spy(sampling.SDGenerator):
        def __init__(self, *a, device="cpu", **k):
            seen["device"] = device
            super().__init__(*a, device="cpu", **k)  # this machine has no GPU: sample here all the same

    monkeypatch.setattr(train_ldm, "SDGenerator", Spy)
    monkeypatch.setattr(train_ldm, "pick_device", lambda name: torch.device("meta") if name == "cuda" else torch.device("cpu"))
    torch.manual_seed(0)
    model = tiny_model().eval()
    vq = ae.build_vq([8, 8, 8], 1, 16)
    rng = np.random.default_rng(0)
    src = {"imgs": rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8), "masks": rng.integers(0, 4, (3, 32, 32)).astype(np.uint8),
           "slide": np.zeros((3, 2), np.int64)}
    P = params.Params({"device": "cuda", "mixed_precision": "no"})
    out = train_ldm.latent_drift(P, n=16, steps=2, inputs={"src": src, "model": model, "vq": vq, "which": "best"})
    assert seen["device"] == torch.device("meta")
    assert out["n"] == 3  # no more samples than held-out masks


def test_dihedral_moves_latents_and_masks_together():
    z = torch.arange(16.0).view(1, 1, 4, 4).repeat(8, 1, 1, 1)
    m = torch.arange(16).view(1, 4, 4).repeat(8, 1, 1)
    torch.manual_seed(1)
    out = dihedral({"z": z, "mask": m}, ("z", "mask"))
    assert torch.equal(out["z"][:, 0].long(), out["mask"])


# ------------------------------------------------------------------------ first stage
def test_first_stage_checks_and_metrics(tmp_path):
    vq = ae.build_vq([8, 16, 16], 1, 32)
    assert ae.factor(vq) == 4 and vq.config.scaling_factor == 1.0
    vq.save_pretrained(tmp_path / "vq")
    assert ae.load_vq(tmp_path / "vq").config.latent_channels == 3
    ae.build_vq([8, 16], 1, 32).save_pretrained(tmp_path / "f2")
    with pytest.raises(ValueError, match="factor 2; the LDM needs 3 channels and f = 4"):
        ae.load_vq(tmp_path / "f2")
    ae.build_vq([8, 16, 16], 1, 32, latent_channels=4).save_pretrained(tmp_path / "c4")
    with pytest.raises(ValueError, match="4 latent channels"):
        ae.load_vq(tmp_path / "c4")
    with pytest.raises(FileNotFoundError, match="config.json missing"):
        ae.load_vq(tmp_path / "nothing")
    imgs = np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    assert psnr(imgs, imgs)[0] > 90 and ssim(imgs, imgs)[0] == pytest.approx(1.0)
    assert psnr(imgs, 255 - imgs)[0] < 10


# --------------------------------------------------------------------------- the loop
def _toy(n=16):
    x = torch.randn(n, 4)
    return train.TensorData({"x": x, "y": x @ torch.tensor([1.0, -2.0, 0.5, 3.0])})


def _mse(model, batch, generator=None):
    return torch.nn.functional.mse_loss(model(batch["x"]).squeeze(-1), batch["y"])


def _vqgan(seed=0):
    torch.manual_seed(seed)
    return ae.VQGAN(ae.build_vq([8, 8, 8], 1, 16), ae.PatchDiscriminator(8, 2)), torch.rand(4, 3, 32, 32) * 2 - 1


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in model.named_parameters()}


def test_patch_gan_moves_each_network_by_its_own_objective():
    """One backward pass of vqgan_loss: the discriminator's gradient is its hinge loss's alone (the
    generator term reaches it only through frozen weights) and the first stage's is that of
    reconstruction + codebook + adaptive weight x generator loss."""
    m, x = _vqgan()
    total = _grads(m, ae.vqgan_loss(0.75)(m, {"x": x}))
    out = m(x)
    d_only = _grads(m, ae.hinge_d_loss(out["real"], out["fake"]))
    out = m(x)
    rec = torch.nn.functional.l1_loss(out["rec"], x) + torch.nn.functional.mse_loss(out["rec"], x)
    w = ae.adaptive_weight(rec, -out["fake_for_g"].mean(), m.vq.decoder.conv_out.weight, 0.75)
    g_only = _grads(m, rec + out["commit"] + w * -out["fake_for_g"].mean())
    for k in total:
        ref = d_only[k] if k.startswith("disc.") else g_only[k]
        torch.testing.assert_close(total[k], ref, rtol=1e-4, atol=1e-6, msg=k)
    assert any(d_only[k].abs().sum() > 0 for k in d_only if k.startswith("disc."))
    with torch.no_grad():  # validation: reconstruction + codebook only, as the plain first stage
        out = m(x)
        assert torch.isclose(ae.vqgan_loss(0.75)(m, {"x": x}), torch.nn.functional.l1_loss(out["rec"], x)
                             + torch.nn.functional.mse_loss(out["rec"], x) + out["commit"])


def test_adaptive_weight_is_tamings_gradient_ratio():
    last = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    rec, gan = (3 * last).sum(), (last ** 2).sum()  # gradients (3, 3) and (2, 4)
    w = ae.adaptive_weight(rec, gan, last, 0.5)
    assert torch.isclose(w, torch.tensor(0.5 * (18 ** 0.5) / (20 ** 0.5 + 1e-4)))
    assert not w.requires_grad


def test_first_stage_with_the_patch_gan_trains_and_saves_a_vqmodel(tmp_path):
    f = prepared(tmp_path, autoencoder={**TINY["autoencoder"], "disc_weight": 0.75, "disc_channels": 8, "disc_layers": 2})
    P = params.check_file("01_train_ldm", f)
    split = ldm_training.load_split(P, progress=False)
    vq, info = train_ldm.first_stage(P, split, progress=False)
    assert info["signature"]["disc_weight"] == 0.75 and "patch-GAN" in info["source"]
    assert isinstance(ae.load_vq(tmp_path / "ldm" / "autoencoder" / "best"), type(vq))
    assert np.isfinite(info["fit"]["best_val_loss"])


def test_grad_accum_keeps_steps_and_data(tmp_path):
    res = {}
    for accum in (1, 2):
        torch.manual_seed(0)
        cfg = train.FitConfig(out_dir=str(tmp_path / f"a{accum}"), max_steps=6, global_batch=4, grad_accum=accum,
                              lr=0.05, checkpoint_every=3, progress=False, cpu=True)
        res[accum] = train.fit(torch.nn.Linear(4, 1), _mse, _toy(), cfg)
    assert res[1]["steps"] == res[2]["steps"] == 6 and res[1]["epochs"] == res[2]["epochs"] == 1
    # the same samples feed each optimizer step, so the loss trajectories agree
    assert res[1]["final_loss"] == pytest.approx(res[2]["final_loss"], rel=1e-4)


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def loss(model, batch, generator=None):
        calls["n"] += 1
        out = _mse(model, batch)
        return out * float("nan") if calls["n"] > 4 else out
    cfg = train.FitConfig(out_dir=str(tmp_path), max_steps=10, global_batch=4, lr=0.01, checkpoint_every=2,
                          progress=False, cpu=True)
    with pytest.raises(train.TrainingDiverged, match=r"loss became nan at step 5.*checkpoint-4"):
        train.fit(torch.nn.Linear(4, 1), loss, _toy(), cfg)
    assert [p.name for p in train.list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["step"] == 4


def test_resume_errors(tmp_path):
    cfg = train.FitConfig(out_dir=str(tmp_path / "a"), max_steps=2, global_batch=4, checkpoint_every=2,
                          progress=False, cpu=True, signature={"kind": "toy", "width": 1})
    train.fit(torch.nn.Linear(4, 1), _mse, _toy(), cfg)
    cfg.resume = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no checkpoint there"):
        train.fit(torch.nn.Linear(4, 1), _mse, _toy(), cfg)
    cfg.resume, cfg.signature = str(tmp_path / "a" / "checkpoint-2"), {"kind": "toy", "width": 2}
    with pytest.raises(ValueError, match=r"holds another model \(config differs in \['width'\]\)"):
        train.fit(torch.nn.Linear(4, 1), _mse, _toy(), cfg)
    cfg.resume, cfg.signature = None, {}
    cfg.global_batch = 64
    with pytest.raises(ValueError, match="fewer than global_batch 64"):
        train.fit(torch.nn.Linear(4, 1), _mse, _toy(), cfg)


def test_empty_training_split(tmp_path):
    f = prepared(tmp_path, val_fold=1)
    P = params.check_file("01_train_ldm", f)
    idx = Path(P.data_dir) / "index.csv"
    import pandas as pd
    df = pd.read_csv(idx)
    df[df.split == "test"].to_csv(idx, index=False)
    with pytest.raises(data.DataError, match="the training split is empty"):
        ldm_training.load_split(P, progress=False)


def test_sd_optimizer_follows_ldm_in_the_paper_profile():
    """The paper profile's SD: AdamW with weight decay 0.01, no clipping (LDM); demo and smoke keep
    weight decay 0 and clipping at 1.0 (named in params/demo/01_train_ldm.yaml)."""
    cfg = {}
    for profile in ("paper", "demo"):
        P = params.check_file("01_train_ldm", REPO / "params" / profile / "01_train_ldm.yaml")
        cfg[profile] = ldm_training.fit_config(P, Path("x"), P.sd, "SD", {})
    assert (cfg["paper"].weight_decay, cfg["paper"].max_grad_norm) == (0.01, None)
    assert (cfg["demo"].weight_decay, cfg["demo"].max_grad_norm) == (0.0, 1.0)
    smoke = params.validate("01_train_ldm", {})
    assert (smoke.sd["weight_decay"], smoke.sd["max_grad_norm"]) == (0.0, 1.0)


def test_first_stage_fit_config_is_fitconfigs_defaults():
    """The ``autoencoder`` section declares no accumulation, EMA, weight decay or clipping: its fit
    config takes them from train_ldm.FIRST_STAGE_FIT, which are FitConfig's defaults (no other recipe)."""
    P = params.validate("01_train_ldm", {})
    cfg = ldm_training.fit_config(P, Path("x"), {**P.autoencoder, **train_ldm.FIRST_STAGE_FIT}, "autoencoder", {})
    default = train.FitConfig(out_dir="x", max_steps=1, global_batch=1)
    for k in train_ldm.FIRST_STAGE_FIT:
        assert getattr(cfg, k) == getattr(default, k), k
    assert (cfg.lr, cfg.scale_lr) == (P.autoencoder["lr"], P.autoencoder["scale_lr"])


def test_fit_takes_torchs_adamw_steps_without_clipping(tmp_path):
    """max_grad_norm None: the loop's steps are torch's AdamW steps (weight decay applied, gradients
    not clipped) on its global batches; with clipping at 1.0 they are not."""
    data = _toy()
    perm = train.epoch_permutation(len(data), 0, 0)
    out = {}
    for clip in (None, 1.0):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        cfg = train.FitConfig(out_dir=str(tmp_path / str(clip)), max_steps=3, global_batch=4, lr=0.1, weight_decay=0.01,
                              max_grad_norm=clip, progress=False, cpu=True, checkpoint_every=10)
        train.fit(model, lambda m, b, generator=None: 100 * _mse(m, b), data, cfg)
        out[clip] = model.weight.detach().clone()
    torch.manual_seed(0)
    ref = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(ref.parameters(), lr=0.1, weight_decay=0.01)
    for b in range(3):
        opt.zero_grad()
        (100 * _mse(ref, data.batch(perm[b * 4:(b + 1) * 4]))).backward()
        assert ref.weight.grad.norm() > 1  # so that clipping at 1.0 changes the steps
        opt.step()
    torch.testing.assert_close(out[None], ref.weight.detach())
    assert not torch.allclose(out[1.0], ref.weight.detach())


# ---------------------------------------------------------------- whole runs (subprocess)
def _run(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, **kw)


@pytest.mark.slow
def test_cli_rerun_reuses_the_first_stage_and_resumes_sd(tmp_path):
    """``python -m discnb.pipelines.train_ldm`` run again with more SD steps: the finished first
    stage is reused, not retrained, and SD continues from its last checkpoint (the numbers of a
    resume are pinned by tests/test_core_train.py)."""
    f = prepared(tmp_path, sd={**TINY["sd"], "steps": 4})
    cmd = [PY, "-m", "discnb.pipelines.train_ldm", "--params", str(f), "--no-progress", "--no-checks"]  # a 4-step SD
    r = _run(cmd, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    done = tmp_path / "ldm" / "autoencoder" / "done.json"
    written = done.stat().st_mtime_ns
    cfg = yaml.safe_load(f.read_text())
    cfg["sd"]["steps"] = 6
    f.write_text(yaml.safe_dump(cfg))
    r = _run(cmd, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    sd = json.loads((tmp_path / "ldm" / "summary.json").read_text())["sd"]
    assert sd["steps"] == 6 and sd["resumed_from"].endswith("checkpoint-4")
    assert done.stat().st_mtime_ns == written


@pytest.mark.slow
def test_cli_killed_mid_training_continues_from_its_last_checkpoint(tmp_path):
    """The command that trains notebook 01's models (what ``./run_all.sh --train`` runs for it), killed with SIGKILL
    while SD trains on crops, run again unchanged: the first stage is reused and SD continues from its newest
    checkpoint to the same number of steps."""
    f = prepared(tmp_path, sd={**TINY["sd"], "steps": 150, "crop": 4}, checkpoint_every=5,
                 unet={**TINY["unet"], "token_side": 8})
    cmd = [PY, "-m", "discnb.pipelines.train_ldm", "--params", str(f), "--no-progress", "--no-checks"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sd_dir = tmp_path / "ldm" / "sd"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and len(train.list_checkpoints(sd_dir)) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, "SD finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(train.list_checkpoints(sd_dir)[-1].name.split("-")[1])  # a half-written one (.tmp) does not count
    assert 0 < killed_at < 150
    done = tmp_path / "ldm" / "autoencoder" / "done.json"
    written = done.stat().st_mtime_ns
    r = _run(cmd, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    sd = json.loads((tmp_path / "ldm" / "summary.json").read_text())["sd"]
    assert sd["steps"] == 150 and int(sd["resumed_from"].rsplit("-", 1)[1]) >= killed_at
    assert done.stat().st_mtime_ns == written


# ------------------------------------------------------------------------------------------ first-stage memory
def test_first_stage_holds_its_training_tiles_as_uint8(monkeypatch, tmp_path):
    """The first stage's training and validation sets stay uint8 (float32 was ~10 GB per process at
    SICAPv2's 12,000 256-px tiles) and become floats per batch, with the same values as before."""
    seen = {}

    def fake_fit(model, loss, tr, cfg, val=None, save_fn=None):
        seen["tr"], seen["va"] = tr, val
        save_fn(model, Path(cfg.out_dir) / "best")
        return {}
    monkeypatch.setattr(train_ldm, "fit", fake_fit)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    split = {"image_size": 16, "train": {"imgs": imgs}, "val": {"imgs": imgs[:2]}}
    P = params.Params({"profile": "smoke", "output_dir": str(tmp_path), "seed": 0, "device": "cpu", "mixed_precision": "no",
                       "resume": "", "checkpoint_every": 10, "checkpoints_total_limit": 1,
                       "autoencoder": {"path": "", "channels": [8, 8, 8], "layers_per_block": 1, "n_embed": 16,
                                       "steps": 1, "batch": 2, "lr": 1e-3, "scale_lr": False, "disc_weight": 0.0,
                                       "disc_channels": 8, "disc_layers": 1}})
    train_ldm.first_stage(P, split, progress=False)
    for d in (seen["tr"], seen["va"]):
        assert d.tensors["x"].dtype == torch.uint8
    b = seen["va"].batch(torch.arange(2), augment=False)["x"]
    assert b.dtype == torch.float32 and torch.equal(b, ae.to_tensor(imgs[:2]))


def test_encode_and_reconstruct_take_uint8_tiles_a_batch_at_a_time():
    torch.manual_seed(0)
    vq = ae.build_vq([8, 8, 8], 1, 16).eval()
    imgs = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    assert torch.equal(ae.encode(vq, imgs, batch_size=2), ae.encode(vq, ae.to_tensor(imgs), batch_size=2))
    old = ae.to_uint8(ae.decode(vq, ae.encode(vq, ae.to_tensor(imgs))))
    assert np.array_equal(ae.reconstruct(vq, imgs, batch_size=2), old)
    assert ae.reconstruct(vq, imgs[:0]).shape == (0, 16, 16, 3)
