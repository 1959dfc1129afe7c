"""Separated Conditions, DISC data and L_DISC (paper Sec. 2.3, Eqs. 2-3)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from discnb import K

from discnb.core import io
from discnb.generative import autoencoder as ae

from discnb.generative import disc

from discnb.generative import ldm
from discnb.generative.disc_pipeline import DISCPipeline
from discnb.generative.sampling import SDGenerator
from ldm_fixture import TINY, tiny_model

HERE = Path(__file__).parent


def tiny(seed=0, concat_mask=False):
    torch.manual_seed(seed)
    model = tiny_model(concat_mask=concat_mask)
    vq = ae.build_vq(TINY["autoencoder"]["channels"], 1, 32)
    return model.eval(), vq.eval()


def two_label_mask(a=0, b=2, size=32):
    m = np.full((size, size), a, np.uint8)
    m[:, size // 2:] = b
    return m


def test_fuse_one_label_returns_that_branch_exactly():
    z_sep = torch.randn(3, K, 3, 8, 8)
    for k in range(K):
        out = disc.fuse(z_sep, torch.full((3, 8, 8), k))
        assert torch.equal(out, z_sep[:, k])


def test_fuse_picks_branch_per_region():
    z_sep = torch.randn(1, K, 3, 8, 8)
    m = disc.downsample_mask(torch.from_numpy(two_label_mask(1, 3))[None], 8)
    out = disc.fuse(z_sep, m)
    assert torch.equal(out[0, :, :, :4], z_sep[0, 1, :, :, :4])
    assert torch.equal(out[0, :, :, 4:], z_sep[0, 3, :, :, 4:])


class Spy(torch.nn.Module):
    """Wraps a MaskLDM and records the condition images of every call."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.calls = model, []
        self.condition, self.latent_scale, self.unet, self.tau = model.condition, model.latent_scale, model.unet, model.tau
        self.cond_drop, self.guidance_scale, self.snr_gamma = model.cond_drop, model.guidance_scale, model.snr_gamma

    def forward(self, z, t, cond):
        self.calls.append(cond.argmax(1).flatten(1).mode(1).values.tolist())
        return self.inner(z, t, cond)


def test_branches_only_for_present_labels_in_one_batch():
    model, vq = tiny()
    spy = Spy(model)
    g = disc.SCGenerator(spy, vq, steps=2, batch_size=4)
    masks = np.stack([two_label_mask(0, 2), np.full((32, 32), 3, np.uint8)])
    g.latents(masks, [1, 2])
    assert len(spy.calls) == 2  # one stacked batch per step, not one call per branch
    assert sorted(spy.calls[0]) == [0, 2, 3]  # labels 1 (absent everywhere) and 0/1 for tile 2 not computed
    assert g.nfe == 2 * 3
    g_all = disc.SCGenerator(Spy(model), vq, steps=2, batch_size=4, all_labels=True)
    g_all.latents(masks, [1, 2])
    assert g_all.nfe == 2 * 2 * K


def test_stacked_sc_equals_separate_runs_with_same_noise():
    model, vq = tiny()
    mask = two_label_mask(1, 2)
    sc = disc.SCGenerator(model, vq, steps=3, batch_size=4).latents(mask[None], [7])
    sd = SDGenerator(model, vq, steps=3, batch_size=1)
    z1 = sd.latents(np.full((1, 32, 32), 1, np.uint8), [7])
    z2 = sd.latents(np.full((1, 32, 32), 2, np.uint8), [7])
    expect = disc.fuse(torch.stack([z1, z1, z2, z2], 1), disc.downsample_mask(torch.from_numpy(mask)[None], 8))
    torch.testing.assert_close(sc, expect, rtol=1e-4, atol=1e-5)


def test_separated_latents_match_sc_and_are_seeded():
    model, vq = tiny()
    g = SDGenerator(model, vq, steps=2, batch_size=8)
    a = disc.separated_latents(g, [5, 6])
    assert a.shape == (2, K, 3, 8, 8)
    assert torch.equal(a, disc.separated_latents(g, [5, 6]))
    one = disc.SCGenerator(model, vq, steps=2).latents(np.full((1, 32, 32), 2, np.uint8), [6])
    torch.testing.assert_close(a[1, 2], one[0], rtol=1e-4, atol=1e-5)


def test_fuse_every_step_differs_from_final_fusion_but_not_for_one_label():
    model, vq = tiny()
    m2 = two_label_mask(0, 3)[None]
    a = disc.SCGenerator(model, vq, steps=3).latents(m2, [3])
    b = disc.SCGenerator(model, vq, steps=3, fuse_every_step=True).latents(m2, [3])
    assert not torch.allclose(a, b)
    m1 = np.full((1, 32, 32), 1, np.uint8)
    torch.testing.assert_close(disc.SCGenerator(model, vq, steps=3).latents(m1, [3]),
                               disc.SCGenerator(model, vq, steps=3, fuse_every_step=True).latents(m1, [3]))


def test_random_masks_use_distinct_labels_per_rank():
    maps = torch.zeros(5, 16, 16, dtype=torch.uint8)
    maps[:, :, 8:] = 1
    maps[:, :4, :4] = 2
    g = torch.Generator().manual_seed(0)
    masks, ids = disc.random_masks(maps, 50, g)
    for m in masks:
        labels = [int(m[0, 15]), int(m[0, 0]), int(m[8, 0])]  # rank 1, 2, 0 regions
        assert len(set(labels)) == 3
    again, _ = disc.random_masks(maps, 50, torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)


def test_disc_loss_on_known_input():
    model, _ = tiny()
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    sched = ldm.noise_scheduler()
    z = torch.randn(4, 3, 8, 8)
    mask = torch.zeros(4, 32, 32, dtype=torch.uint8)
    # a zero network predicts eps = 0, so the loss is E[eps^2] ~ 1 for any z_t^mixed
    loss = disc.disc_loss(sched.alphas_cumprod)(model, {"z": z, "mask": mask}, torch.Generator().manual_seed(0))
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(eps.pow(2).mean().item(), rel=1e-5)
    co = disc.disc_loss(sched.alphas_cumprod)(model, {"z": z, "mask": mask, "disc_z": z, "disc_mask": mask},
                                             torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    e1 = torch.randn(z.shape, generator=g)
    torch.randint(0, 1000, (4,), generator=g)
    e2 = torch.randn(z.shape, generator=g)
    assert co.item() == pytest.approx(0.5 * (e1.pow(2).mean() + e2.pow(2).mean()).item(), rel=1e-5)


def test_disc_data_fuses_stored_sets_with_library_masks():
    z_sep = torch.randn(6, K, 3, 8, 8)
    maps = torch.zeros(3, 32, 32, dtype=torch.uint8)
    maps[:, 16:] = 1
    d = disc.DISCData(z_sep, maps, 32)
    torch.manual_seed(0)
    b = d.batch(torch.tensor([0, 1, 2]))
    assert b["z"].shape == (3, 3, 8, 8) and b["mask"].shape == (3, 32, 32)
    for i in range(3):
        lat = disc.downsample_mask(b["mask"][i:i + 1], 8)
        torch.testing.assert_close(b["z"][i], disc.fuse(z_sep[i:i + 1], lat)[0])
    real = {"z": torch.randn(4, 3, 8, 8), "mask": torch.zeros(4, 32, 32, dtype=torch.uint8),
            "slide": torch.zeros(4, 2, dtype=torch.long)}
    co = disc.DISCData(z_sep, maps, 32, real=real)
    cb = co.batch(torch.tensor([1, 2]))
    assert set(cb) == {"z", "mask", "slide", "disc_z", "disc_mask", "disc_slide"} and len(co) == 4
    with pytest.raises(ValueError, match="px"):
        disc.DISCData(z_sep, maps, 64)


GEN_SCRIPT = """
import sys, time, torch
sys.path.insert(0, {tests!r})
from test_disc import tiny
from discnb.generative import disc
from discnb.generative.sampling import SDGenerator
model, vq = tiny()
g = SDGenerator(model, vq, steps=2, batch_size=8)
slow = disc.separated_latents
def slowed(*a, **k):
    time.sleep({sleep})
    return slow(*a, **k)
disc.separated_latents = slowed
disc.generate_disc_data(g, {out!r}, n=7, seed=3, shard_size=2, fingerprint="tiny", progress=False)
"""


def _run_gen(out, sleep):
    code = GEN_SCRIPT.format(tests=str(HERE), out=str(out), sleep=sleep)
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_disc_generation_resumes_after_kill(tmp_path):
    out = tmp_path / "disc_data"
    p = _run_gen(out, 1.0)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("shard-*.safetensors")):
        time.sleep(0.1)
    assert list(out.glob("shard-*.safetensors")), "generation never wrote a shard"
    p.send_signal(signal.SIGKILL)
    p.wait()
    done_before = sorted(x.name for x in out.glob("shard-*.safetensors"))
    assert 0 < len(done_before) < 4
    assert (out / "manifest.rank-0.json").exists()  # the process's own record; merged by the next run
    assert _run_gen(out, 0.0).wait() == 0
    data = disc.load_disc_data(out)
    assert len(data["seeds"]) == 7 and len(set(data["seeds"].tolist())) == 7
    # the resumed folder holds exactly what an uninterrupted run writes
    ref = tmp_path / "ref"
    assert _run_gen(ref, 0.0).wait() == 0
    assert torch.equal(disc.load_disc_data(ref)["z0"], data["z0"])
    assert not list(out.glob(io.TMP_GLOB))
    assert sorted(x.name for x in out.iterdir()) == ["manifest.json"] + [f"shard-{s:05d}.safetensors" for s in range(4)]
    assert list(data["manifest"]["shards"]) == ["0", "1", "2", "3"]  # in order, whatever order they were made in


def test_disc_data_refuses_other_settings(tmp_path):
    model, vq = tiny()
    g = SDGenerator(model, vq, steps=1, batch_size=8)
    disc.generate_disc_data(g, tmp_path, n=2, seed=0, shard_size=2, fingerprint="a", progress=False)
    with pytest.raises(ValueError, match="other settings"):
        disc.generate_disc_data(g, tmp_path, n=2, seed=0, shard_size=2, fingerprint="b", progress=False)
    with pytest.raises(FileNotFoundError, match="02_sc_disc"):
        disc.load_disc_data(tmp_path / "none")


def test_conditioning_gap_is_zero_for_a_model_that_ignores_the_mask():
    model, _ = tiny()
    z = torch.randn(6, 3, 8, 8)
    masks = torch.from_numpy(np.stack([two_label_mask(i % 4, (i + 1) % 4) for i in range(6)]))
    rows = ldm.conditioning_gap(model, z, masks, batch_size=4)
    assert {r["t_from"] for r in rows} == {0, 300, 700}
    assert any(abs(r["gap_shuffled"]) > 0 for r in rows)  # a random tau does react to the mask
    for p in model.tau.parameters():  # tokens now carry no mask information at all
        torch.nn.init.zeros_(p)
    for r in ldm.conditioning_gap(model, z, masks, batch_size=4):
        assert r["loss_true"] == pytest.approx(r["loss_shuffled"]) == pytest.approx(r["loss_all_nc"])


def test_concat_mask_reaches_the_unet_without_tau_and_saves(tmp_path):
    model, vq = tiny(concat_mask=True)
    assert model.unet.config.in_channels == 3 + K and model.concat_mask
    for p in model.tau.parameters():  # tau's tokens now carry nothing: only the concatenated mask can
        torch.nn.init.zeros_(p)
    z, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 500])
    a = torch.from_numpy(np.stack([two_label_mask(0, 2), two_label_mask(0, 2)]))
    b = torch.from_numpy(np.stack([two_label_mask(3, 1), two_label_mask(0, 2)]))
    out_a, out_b = model(z, t, ldm.make_condition(a)), model(z, t, ldm.make_condition(b))
    assert not torch.allclose(out_a[0], out_b[0]) and torch.allclose(out_a[1], out_b[1])
    DISCPipeline.from_models(model, vq).save_pretrained(tmp_path / "m")
    back = DISCPipeline.from_pretrained(tmp_path / "m").ldm.eval()
    assert back.concat_mask
    torch.testing.assert_close(back(z, t, ldm.make_condition(a)), model.eval()(z, t, ldm.make_condition(a)))
