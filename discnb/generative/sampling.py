"""Sampling tiles from a mask-conditioned LDM (paper Sec. 2.2: DDIM, T_DDIM = 200, eta = 0).

DDIM is set up exactly as LDM samples: scaled-linear betas 0.0015 -> 0.0195, no x0 clipping
(diffusers' default clip_sample=True would clamp VQ latents to [-1, 1]), "leading" spacing,
steps_offset 1, set_alpha_to_one False. DPM-Solver++ is the fast option. A fresh scheduler is
made for every call: multistep schedulers keep state between steps.

Noise comes from one CPU ``torch.Generator`` per tile, seeded by that tile's seed, so a tile's
noise depends only on its seed: not on the batch it was drawn in, nor on the hardware's random
streams. The tile itself may still differ slightly with the batch size: on the CPU the batch size
changes which convolution kernels run, and 20 to 200 denoising steps carry the rounding on (the
shipped SD-DISC, DPM-Solver++ 20: up to 10 grey levels in 0.28 % of pixels between batch 16 and 1;
:mod:`discnb.generative.masks_to_tiles`). Same seed and batch size, same tile.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from discnb.generative.autoencoder import decode, to_uint8
from discnb.generative.ldm import (BETA_END, BETA_SCHEDULE, BETA_START, T_TRAIN, MaskLDM, check_guidance, check_mask,
                                   make_condition, null_condition)

SCHEDULERS = ("ddim", "dpm++")


def make_scheduler(name):
    """A fresh scheduler: by name (LDM's settings), or a copy of a given one (a pipeline's, which
    diffusers users swap with ``from_config``), so no state carries over between calls."""
    if isinstance(name, SchedulerMixin):
        return type(name).from_config(name.config)
    common = dict(num_train_timesteps=T_TRAIN, beta_schedule=BETA_SCHEDULE, beta_start=BETA_START,
                  beta_end=BETA_END, prediction_type="epsilon")
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                             timestep_spacing="leading")
    if name == "dpm++":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                           timestep_spacing="leading", steps_offset=1)
    raise ValueError(f"scheduler must be one of {SCHEDULERS} or a diffusers scheduler, got {name!r}")


def initial_noise(seeds, shape: tuple[int, ...]) -> torch.Tensor:
    """z_T for each seed, from a CPU generator per tile: (len(seeds), *shape). A seed may also be
    a ``torch.Generator`` (a pipeline's ``generator=``), drawn from as it is."""
    return torch.stack([torch.randn(shape, generator=s if isinstance(s, torch.Generator)
                                    else torch.Generator().manual_seed(int(s))) for s in seeds])


def evals_per_step(guidance_scale: float) -> int:
    """U-Net evaluations per tile and step: 2 with classifier-free guidance (the null branch), else 1."""
    return 2 if guidance_scale != 1.0 else 1


def guided_eps(model: MaskLDM, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, guidance_scale: float = 1.0):
    """eps_theta(z_t, t, c); with classifier-free guidance (beyond the paper, :class:`MaskLDM`)
    eps_null + s (eps_c - eps_null), both branches in one batch."""
    if guidance_scale == 1.0:
        return model(z, t, cond)
    e_null, e_cond = model(torch.cat([z, z]), torch.cat([t, t]), torch.cat([null_condition(cond), cond])).chunk(2)
    return e_null + guidance_scale * (e_cond - e_null)


@torch.no_grad()
def denoise(model: MaskLDM, z: torch.Tensor, cond: torch.Tensor, steps: int, scheduler: str = "ddim",
            eta: float = 0.0, callback=None, guidance_scale: float | None = None) -> torch.Tensor:
    """Run the reverse process from z_T; one timestep serves the whole batch.

    ``callback(i, t, z)`` (optional) sees the latents after each step (SC fuses there when
    asked to fuse at every timestep). ``guidance_scale``: classifier-free guidance on the mask
    (None: the model's own, :attr:`MaskLDM.guidance_scale`; 1 = none)."""
    s = model.guidance_scale if guidance_scale is None else float(guidance_scale)
    if s != 1.0:  # for direct callers; SDGenerator has checked its scale already
        check_guidance(model.cond_drop, s, model.snr_gamma)
    sched = make_scheduler(scheduler)
    sched.set_timesteps(steps)
    kw = {"eta": eta} if isinstance(sched, DDIMScheduler) else {}
    for i, t in enumerate(sched.timesteps):
        eps = guided_eps(model, z, t.expand(len(z)).to(z.device), cond, s)
        z = sched.step(eps.float(), t, z, **kw).prev_sample
        if callback is not None:
            z = callback(i, t, z)
    return z


def _seed_name(s):
    return f"<generator {s.initial_seed()}>" if isinstance(s, torch.Generator) else int(s)


class SDGenerator:
    """SD: the vanilla denoising process conditioned on the whole mask (Fig. 4, top).

    ``generate(masks, seeds) -> tiles`` is the interface every generator shares (SD, SD-SC,
    SD-DISC, SD-DISC-CoTrain; :class:`discnb.generative.protocol.Generator`), so tile sets and
    benchmarks never care which one they use.
    """

    name = "SD"

    def __init__(self, model: MaskLDM, vq, steps: int = 200, scheduler: str = "ddim", batch_size: int = 16,
                 device: str | torch.device = "cpu", bf16: bool = False, guidance_scale: float | None = None):
        self.model, self.vq = model.eval(), vq.eval()
        # classifier-free guidance on the mask: the model's own scale unless given (1 = none)
        self.guidance_scale = check_guidance(model.cond_drop, model.guidance_scale if guidance_scale is None
                                             else float(guidance_scale), model.snr_gamma)[1]
        self.steps, self.scheduler, self.batch_size = steps, scheduler, batch_size
        self.device = torch.device(device)
        self.bf16 = bf16 and self.device.type == "cuda"
        self.nfe = 0  # UNet evaluations (summed over tiles; x2 with guidance), the cost measure
        self.model.to(self.device)
        self.vq.to(self.device)
        if self.device.type == "cuda":
            self.model.unet.to(memory_format=torch.channels_last)

    @property
    def needs_slide_labels(self) -> bool:
        """A tile+slide-conditioned model (Fig. 7) also needs each tile's slide (primary, secondary)."""
        return self.model.condition == "tile+slide"

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = self.model.unet.config
        return (c.out_channels, c.sample_size, c.sample_size)

    def _cond(self, masks: torch.Tensor, slide_labels) -> torch.Tensor:
        return make_condition(masks, self.model.condition, slide_labels).to(self.device)

    @property
    def evals_per_step(self) -> int:
        return evals_per_step(self.guidance_scale)

    def _denoise(self, z: torch.Tensor, masks: torch.Tensor, slide_labels) -> torch.Tensor:
        self.nfe += self.steps * len(z) * self.evals_per_step
        with torch.autocast("cuda", torch.bfloat16, enabled=self.bf16):
            return denoise(self.model, z, self._cond(masks, slide_labels), self.steps, self.scheduler,
                           guidance_scale=self.guidance_scale)

    def latents(self, masks, seeds, slide_labels=None) -> torch.Tensor:
        """z_0 (in the LDM's scaled latent space) for label masks (N,H,W) and one seed per tile."""
        masks = check_mask(torch.as_tensor(np.asarray(masks)))
        if len(seeds) != len(masks):
            raise ValueError(f"{len(masks)} masks but {len(seeds)} seeds: give one seed per tile")
        if slide_labels is not None:
            slide_labels = torch.as_tensor(np.asarray(slide_labels))
        out = []
        for s in range(0, len(masks), self.batch_size):
            z = initial_noise(seeds[s:s + self.batch_size], self.latent_shape).to(self.device)
            sl = None if slide_labels is None else slide_labels[s:s + self.batch_size]
            out.append(self._denoise(z, masks[s:s + self.batch_size], sl).float().cpu())
        z0 = torch.cat(out)
        bad = ~torch.isfinite(z0).flatten(1).all(1)
        if bad.any():
            raise FloatingPointError(f"{self.name}: sampling diverged (NaN/inf latents) for seeds "
                                     f"{[_seed_name(seeds[i]) for i in torch.nonzero(bad).flatten()[:10]]}")
        far = (z0.abs().flatten(1).amax(1) > 20).sum().item()
        if far:
            warnings.warn(f"{self.name}: {far} of {len(z0)} sampled latents are far out of range (|z| > 20)")
        return z0

    def decode(self, z0: torch.Tensor) -> np.ndarray:
        return to_uint8(decode(self.vq, z0 / self.model.latent_scale, self.batch_size))

    def generate(self, masks, seeds, slide_labels=None) -> np.ndarray:
        """Tiles (N,H,W,3) uint8 for label masks (N,H,W) in 0..3, one seed per tile."""
        return self.decode(self.latents(masks, seeds, slide_labels))
