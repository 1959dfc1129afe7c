"""Classifier-free guidance on the mask and min-SNR-gamma weighting (beyond the paper):
trained and sampled as MaskLDM's docstring says, stored with the model, off by default."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers.training_utils import compute_snr

from discnb.core import params
from discnb.generative import autoencoder as ae
from discnb.generative import disc, ldm, sampling
from discnb.generative.disc_pipeline import DISCPipeline
from discnb.generative import checkpoints as ck
from ldm_fixture import TINY, tiny_model


def test_settings_round_trip_and_old_models_load_with_both_off(tmp_path):
    m = tiny_model(cond_drop=0.15, guidance_scale=2.5, snr_gamma=5.0)
    DISCPipeline.from_models(m, ae.build_vq(TINY["autoencoder"]["channels"], 1, 32)).save_pretrained(tmp_path / "m")
    back = DISCPipeline.from_pretrained(tmp_path / "m").ldm
    assert (back.cond_drop, back.guidance_scale, back.snr_gamma) == (0.15, 2.5, 5.0)
    meta = json.loads((tmp_path / "m" / "model_index.json").read_text())
    for k in ("cond_drop", "guidance_scale", "snr_gamma"):
        meta.pop(k)
    (tmp_path / "m" / "model_index.json").write_text(json.dumps(meta))  # a model saved before these options
    old = DISCPipeline.from_pretrained(tmp_path / "m").ldm
    assert (old.cond_drop, old.guidance_scale, old.snr_gamma) == (0.0, 1.0, 0.0)


def test_guidance_without_a_trained_null_branch_is_an_error():
    with pytest.raises(ValueError, match="needs a model trained with cond_drop > 0"):
        tiny_model(guidance_scale=2.0)
    vq = ae.build_vq(TINY["autoencoder"]["channels"], 1, 32)
    with pytest.raises(ValueError, match="cond_drop > 0"):
        sampling.SDGenerator(tiny_model(), vq, steps=2, guidance_scale=3.0)
    with pytest.raises(ValueError, match="cond_drop"):
        tiny_model(cond_drop=1.0)
    with pytest.raises(ValueError, match="guidance_scale must be >= 1"):
        tiny_model(cond_drop=0.1, guidance_scale=0.5)


def test_guided_eps_is_null_plus_scale_times_the_difference():
    torch.manual_seed(0)
    m = tiny_model(cond_drop=0.1).eval()
    z, t = torch.randn(2, 3, 8, 8), torch.tensor([700, 700])
    cond = ldm.make_condition(torch.randint(0, 4, (2, 32, 32)))
    with torch.no_grad():
        e_c, e_0 = m(z, t, cond), m(z, t, torch.zeros_like(cond))
        got = sampling.guided_eps(m, z, t, cond, 3.0)
        torch.testing.assert_close(got, e_0 + 3.0 * (e_c - e_0), rtol=1e-4, atol=1e-5)
        assert torch.equal(sampling.guided_eps(m, z, t, cond, 1.0), e_c)
    assert not torch.allclose(e_c, e_0)  # the null condition is another input


@pytest.mark.filterwarnings("ignore:SD.*far out of range")  # an untrained model's samples
def test_guided_sampling_costs_two_evaluations_and_changes_the_tiles():
    torch.manual_seed(0)
    vq = ae.build_vq(TINY["autoencoder"]["channels"], 1, 32)
    m = tiny_model(cond_drop=0.1)
    masks = np.random.default_rng(0).integers(0, 4, (2, 32, 32)).astype(np.uint8)
    plain = sampling.SDGenerator(m, vq, steps=3, batch_size=2)
    guided = sampling.SDGenerator(m, vq, steps=3, batch_size=2, guidance_scale=2.0)
    a, b = plain.generate(masks, [1, 2]), guided.generate(masks, [1, 2])
    assert plain.nfe == 3 * 2 and guided.nfe == 2 * 3 * 2
    assert not np.array_equal(a, b)
    assert np.array_equal(b, guided.generate(masks, [1, 2]))  # still seeded per tile
    sc = disc.SCGenerator(m, vq, steps=3, batch_size=2, guidance_scale=2.0)
    stripes = np.zeros((1, 32, 32), np.uint8)
    stripes[:, :, 16:] = 2
    sc.generate(stripes, [0])
    assert sc.nfe == 2 * 3 * 2  # two branches, each guided


def test_condition_drop_only_in_training_and_at_its_rate():
    cond = torch.ones(4000, 4, 2, 2)
    torch.manual_seed(0)
    dropped = ldm.drop_condition(cond, 0.15)
    zero = (dropped.flatten(1).sum(1) == 0).float().mean().item()
    assert 0.13 < zero < 0.17
    assert ((dropped.flatten(1).sum(1) == 0) | (dropped.flatten(1).sum(1) == 16)).all()  # whole items only
    m = tiny_model(cond_drop=0.5)
    ab = ldm.noise_scheduler().alphas_cumprod
    batch = {"z": torch.randn(4, 3, 8, 8), "cond": ldm.make_condition(torch.randint(0, 4, (4, 32, 32)))}
    m.eval()
    v1 = ldm.ldm_loss(m, batch, ab, torch.Generator().manual_seed(1))
    v2 = ldm.ldm_loss(m, batch, ab, torch.Generator().manual_seed(1))
    assert v1 == v2  # validation: no drop


def test_min_snr_weights_follow_diffusers_and_change_only_training_losses():
    t = torch.tensor([1, 100, 500, 999])
    snr = compute_snr(ldm.noise_scheduler(), t)
    torch.testing.assert_close(ldm.min_snr_weights(t, 5.0, "eps"), torch.clamp(snr, max=5.0) / snr)
    torch.testing.assert_close(ldm.min_snr_weights(t, 5.0, "v"), torch.clamp(snr, max=5.0) / (snr + 1))
    assert ldm.min_snr_weights(t, 5.0, "eps")[0] < 0.02 and ldm.min_snr_weights(t, 5.0, "eps")[-1] == 1.0
    ab = ldm.noise_scheduler().alphas_cumprod
    batch = {"z": torch.randn(4, 3, 8, 8), "cond": ldm.make_condition(torch.randint(0, 4, (4, 32, 32)))}
    torch.manual_seed(0)
    plain = tiny_model()
    weighted = tiny_model(snr_gamma=5.0)
    weighted.load_state_dict(plain.state_dict())
    for m in (plain, weighted):
        m.eval()
    assert ldm.ldm_loss(plain, batch, ab, torch.Generator().manual_seed(2)) == \
        ldm.ldm_loss(weighted, batch, ab, torch.Generator().manual_seed(2))  # validation: Eq. 1
    plain.train(), weighted.train()
    torch.manual_seed(3)
    lp = ldm.ldm_loss(plain, batch, ab)
    torch.manual_seed(3)
    lw = ldm.ldm_loss(weighted, batch, ab)
    assert lw < lp  # weights <= 1, and < 1 at small t


def test_notebook_01_passes_its_settings_to_every_sd_and_the_paper_keeps_them_off():
    P = params.validate("01_train_ldm", {"sd": {"cond_drop": 0.2, "snr_gamma": 5.0}, "guidance_scale": 2.0})
    m = ck.build_model(P, 32, 8, 1.0)
    assert (m.cond_drop, m.snr_gamma, m.guidance_scale) == (0.2, 5.0, 2.0)
    paper = params.validate("01_train_ldm", params.load_yaml("params/paper/01_train_ldm.yaml"))
    assert (paper.sd["cond_drop"], paper.sd["snr_gamma"], paper.guidance_scale) == (0.0, 0.0, 1.0)
