"""Our DDIM sampler (discnb.generative.sampling.denoise) takes exactly LDM's steps (paper Sec. 2.2:
DDIM, T_DDIM = 200, eta = 0), checked against the update formula with alphas computed by hand."""

from __future__ import annotations

import math

import torch

from discnb.generative import sampling
from ldm_fixture import tiny_model

T, STEPS = 1000, 200


def ldm_alphas_cumprod() -> torch.Tensor:
    """LDM's "linear" schedule (diffusers "scaled_linear"): betas = linspace(sqrt(0.0015), sqrt(0.0195), T)^2."""
    betas = torch.linspace(math.sqrt(0.0015), math.sqrt(0.0195), T, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def ldm_timesteps() -> list[int]:
    """LDM's DDIM timesteps: "leading" spacing (c = T // steps) plus steps_offset 1: 996, 991, ..., 1."""
    c = T // STEPS
    return [i * c + 1 for i in reversed(range(STEPS))]


def ddim_step(z_t, eps, t: int, ab) -> torch.Tensor:
    """One DDIM step with eta = 0 (Song et al. 2021, Eq. 12), as LDM's DDIMSampler takes it; below
    the first timestep the "previous" alpha is abar_0 (set_alpha_to_one False), not 1."""
    a_t = ab[t]
    a_prev = ab[t - T // STEPS] if t - T // STEPS >= 0 else ab[0]
    x0 = (z_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


class KnownEps(torch.nn.Module):
    """eps_theta(z_t, t) = 0.3 z_t + 0.001 t + 0.1 sin(cond): a known, input-dependent prediction."""
    guidance_scale = 1.0  # MaskLDM's attribute: no classifier-free guidance

    def forward(self, z, t, cond):
        return 0.3 * z + 0.001 * t.view(-1, 1, 1, 1).float() + 0.1 * torch.sin(cond)


def _trajectory(model, z, cond):
    seen = []
    out = sampling.denoise(model, z, cond, STEPS, "ddim",
                           callback=lambda i, t, zz: seen.append((int(t), zz.clone())) or zz)
    return out, seen


def test_every_ddim_step_is_ldms_update_formula():
    ab = ldm_alphas_cumprod()
    z = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    out, seen = _trajectory(KnownEps(), z, cond)
    assert [t for t, _ in seen] == ldm_timesteps()
    prev = z.double()
    for t, got in seen:  # each step from the sampler's own previous latents
        eps = KnownEps()(prev.float(), torch.tensor([t] * len(z)), cond).double()
        torch.testing.assert_close(got.double(), ddim_step(prev, eps, t, ab), rtol=1e-5, atol=1e-5)
        prev = got.double()
    torch.testing.assert_close(out, seen[-1][1])


def test_ddim_step_of_a_v_predicting_model():
    """prediction: v (beyond the paper): the U-Net's v becomes eps = sqrt(1-abar) z_t + sqrt(abar) v
    in MaskLDM.forward, so the same DDIM update takes x0 = sqrt(abar) z_t - sqrt(1-abar) v."""
    ab = ldm_alphas_cumprod()
    model = tiny_model(prediction="v").eval()
    v_of = lambda z, t, cond: 0.5 * z - 0.2  # noqa: E731  a known v
    model.predict = v_of
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    cond = torch.zeros(2, 4, 32, 32)
    _, seen = _trajectory(model, z, cond)
    t0, z1 = seen[0]
    a_t, a_prev = ab[t0], ab[t0 - T // STEPS]
    v = v_of(z, None, None).double()
    x0 = a_t.sqrt() * z.double() - (1 - a_t).sqrt() * v
    eps = (1 - a_t).sqrt() * z.double() + a_t.sqrt() * v
    torch.testing.assert_close(z1.double(), a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps, rtol=1e-5, atol=1e-5)
