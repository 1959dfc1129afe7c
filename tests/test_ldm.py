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
from safetensors import safe_open

from discnb.generative import autoencoder as ae
from discnb.data import sicap as data
from discnb.generative import ldm
from discnb.core import params
from discnb.generative import sampling
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
    model.save_pretrained(tmp_path / "m")
    back = ldm.MaskLDM.from_pretrained(tmp_path / "m").eval()
    assert torch.equal(back(z, torch.tensor([10, 500]), cond), out)
    with pytest.raises(FileNotFoundError, match="not a saved MaskLDM"):
        ldm.MaskLDM.from_pretrained(tmp_path)


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
    ldm.MaskLDM.from_config({**TINY["unet"], "condition": "pixel", "prediction": "v"}, 32, 8).save_pretrained(back_dir)
    assert ldm.MaskLDM.from_pretrained(back_dir).prediction == "v"
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


def test_dihedral_moves_latents_and_masks_together():
    z = torch.arange(16.0).view(1, 1, 4, 4).repeat(8, 1, 1, 1)
    m = torch.arange(16).view(1, 4, 4).repeat(8, 1, 1)
    torch.manual_seed(1)
    out = ae.dihedral({"z": z, "mask": m}, ("z", "mask"))
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
    assert ae.psnr(imgs, imgs)[0] > 90 and ae.ssim(imgs, imgs)[0] == pytest.approx(1.0)
    assert ae.psnr(imgs, 255 - imgs)[0] < 10


# --------------------------------------------------------------------------- the loop
def _toy(n=16):
    x = torch.randn(n, 4)
    return train.TensorData({"x": x, "y": x @ torch.tensor([1.0, -2.0, 0.5, 3.0])})


def _mse(model, batch, generator=None):
    return torch.nn.functional.mse_loss(model(batch["x"]).squeeze(-1), batch["y"])


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
        train_ldm.load_split(P, progress=False)


# ---------------------------------------------------------------- whole runs (subprocess)
def _run(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, **kw)


def test_kill_and_resume_continues_step_and_ema(tmp_path):
    # gradient accumulation + EMA + resume together: a known source of resume bugs (diffusers #3467)
    f = prepared(tmp_path, sd={**TINY["sd"], "steps": 60, "grad_accum": 2}, checkpoint_every=2, checkpoints_total_limit=50)
    sd = tmp_path / "ldm" / "sd"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([PY, "-m", "discnb.pipelines.train_ldm", "--params", str(f), "--no-progress"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and len(train.list_checkpoints(sd)) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # a real kill, mid-run
    proc.wait()
    killed_at = train.list_checkpoints(sd)
    assert 3 <= len(killed_at) and json.loads((killed_at[-1] / "trainer_state.json").read_text())["step"] < 60
    for ck in killed_at:  # every checkpoint written before the kill is complete and loadable
        st = json.loads((ck / "trainer_state.json").read_text())
        with safe_open(str(ck / "ema.safetensors"), "pt") as g:
            assert int(g.metadata()["num_updates"]) == st["step"]
    last = json.loads((killed_at[-1] / "trainer_state.json").read_text())["step"]
    done = tmp_path / "ldm" / "autoencoder" / "done.json"
    first_stage_written = done.stat().st_mtime_ns
    r = _run([PY, "-m", "discnb.pipelines.train_ldm", "--params", str(f), "--no-progress"], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "ldm" / "summary.json").read_text())["sd"]
    assert summary["steps"] == 60 and summary["resumed_from"].endswith(f"checkpoint-{last}")
    with safe_open(str(sd / "checkpoint-60" / "ema.safetensors"), "pt") as g:
        assert int(g.metadata()["num_updates"]) == 60  # the EMA continued, it did not restart
    steps = __import__("pandas").read_csv(sd / "metrics.csv").step.tolist()
    assert steps == sorted(set(steps)) and steps[-1] == 60  # no duplicated or lost log rows
    # the finished first stage was reused, not retrained
    assert done.stat().st_mtime_ns == first_stage_written


def test_two_cpu_processes_match_one(tmp_path):
    f = prepared(tmp_path, sd={**TINY["sd"], "steps": 6})
    r = _run([PY, "-m", "accelerate.commands.launch", "--config_file", "params/accelerate/cpu_2proc.yaml", "-m", "discnb.pipelines.train_ldm",
              "--params", str(f), "--no-progress"], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads((tmp_path / "ldm" / "summary.json").read_text())["sd"]
    assert two["processes"] == 2 and two["steps"] == 6
    cfg = yaml.safe_load(f.read_text())
    cfg["output_dir"] = str(tmp_path / "ldm1")
    f1 = tmp_path / "one.yaml"
    f1.write_text(yaml.safe_dump(cfg))
    r = _run([PY, "-m", "discnb.pipelines.train_ldm", "--params", str(f1), "--no-progress"], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    one = json.loads((tmp_path / "ldm1" / "summary.json").read_text())["sd"]
    assert one["processes"] == 1 and (one["steps"], one["epochs"]) == (two["steps"], two["epochs"])
    # and the two-process run resumes from its own checkpoint
    cfg["output_dir"], cfg["sd"]["steps"] = str(tmp_path / "ldm"), 8
    f.write_text(yaml.safe_dump(cfg))
    r = _run([PY, "-m", "accelerate.commands.launch", "--config_file", "params/accelerate/cpu_2proc.yaml", "-m", "discnb.pipelines.train_ldm",
              "--params", str(f), "--no-progress"], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads((tmp_path / "ldm" / "summary.json").read_text())["sd"]
    assert again["steps"] == 8 and again["resumed_from"].endswith("checkpoint-6")
