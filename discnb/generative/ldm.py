"""The mask-conditioned latent diffusion model "SD" (paper Sec. 2.1, Fig. 3, Eq. 1).

eps_theta is a diffusers ``UNet2DConditionModel`` on first-stage latents; the condition goes
through tau_theta (:class:`MaskEncoder`), a small conv encoder of the one-hot mask whose output
grid becomes cross-attention tokens. Both are trained jointly on

    L_LDM = E ||eps - eps_theta(z_t, t, tau_theta(m))||^2,   z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps

with LDM's "linear" schedule (diffusers "scaled_linear", beta 0.0015 -> 0.0195, T = 1000).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.training_utils import compute_snr

from discnb import K

T_TRAIN = 1000
BETA_START, BETA_END, BETA_SCHEDULE = 0.0015, 0.0195, "scaled_linear"
CONDITIONS = ("pixel", "tile", "tile+slide")
PREDICTIONS = ("eps", "v")


def cond_channels(condition: str) -> int:
    """Channels of the condition image for each conditioning of the Fig. 7 ablation."""
    return {"pixel": K, "tile": K, "tile+slide": 3 * K}[check_condition(condition)]


def check_condition(condition: str) -> str:
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    return condition


def check_mask(mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype.is_floating_point:
        raise TypeError(f"masks must be integer labels 0..{K - 1}, got dtype {mask.dtype}")
    if mask.numel() and (int(mask.min()) < 0 or int(mask.max()) >= K):
        raise ValueError(f"mask labels must be in 0..{K - 1}; found {sorted(torch.unique(mask).tolist())}")
    return mask


def make_condition(mask: torch.Tensor, condition: str = "pixel", slide_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Label masks (B,H,W) -> the condition image tau_theta reads.

    ``pixel``: the one-hot mask (the paper's choice). ``tile``: the tile's majority label,
    one-hot, everywhere. ``tile+slide``: that plus the slide's primary and secondary labels
    (``slide_labels`` (B,2)), as constant planes.
    """
    check_mask(mask)
    B, H, W = mask.shape
    if check_condition(condition) == "pixel":
        return F.one_hot(mask.long(), K).permute(0, 3, 1, 2).float()
    counts = F.one_hot(mask.long().flatten(1), K).sum(1)
    planes = [F.one_hot(counts.argmax(1), K)]
    if condition == "tile+slide":
        if slide_labels is None:
            raise ValueError("condition 'tile+slide' needs slide_labels (primary, secondary) per tile")
        planes += [F.one_hot(slide_labels[:, 0].long(), K), F.one_hot(slide_labels[:, 1].long(), K)]
    return torch.cat(planes, 1).float()[:, :, None, None].expand(B, -1, H, W).contiguous()


class MaskEncoder(ModelMixin, ConfigMixin):
    """tau_theta: the condition image -> cross-attention tokens.

    Strided convs bring the mask to a ``token_side`` x ``token_side`` grid; a learned 2-D
    position embedding tells the U-Net *where* each token is (without it, cross-attention is
    permutation-invariant over tokens and learns the layout very slowly).

    A mask smaller than ``image_size`` (a training crop, :func:`discnb.data.augment.random_crop`)
    gives a smaller token grid; it takes the window of the position embedding where the crop lies
    (``offset``: the crop's top-left corner in mask pixels, on a token's edge), so a model trained
    on crops samples whole tiles with the positions it learned.
    """

    @register_to_config
    def __init__(self, in_channels: int = K, image_size: int = 64, token_side: int = 8,
                 channels: tuple[int, ...] = (32, 64), width: int = 64):
        super().__init__()
        n_down = (image_size // token_side).bit_length() - 1
        if token_side << n_down != image_size:
            raise ValueError(f"image_size {image_size} must be token_side {token_side} times a power of two")
        layers, c_in = [], in_channels
        for i in range(n_down):
            c = channels[min(i, len(channels) - 1)]
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(min(8, c), c), nn.SiLU()]
            c_in = c
        layers += [nn.Conv2d(c_in, width, 1)]
        self.net = nn.Sequential(*layers)
        self.pos = nn.Parameter(torch.randn(1, token_side * token_side, width) * 0.02)

    @property
    def token_px(self) -> int:
        """Mask pixels per token side."""
        return self.config.image_size // self.config.token_side

    def forward(self, cond: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        h = self.net(cond)  # (B, width, s, s)
        S, s = self.config.token_side, h.shape[-1]
        if s == S:
            return h.flatten(2).transpose(1, 2) + self.pos
        if s > S or offset is None:
            raise ValueError(f"mask of {cond.shape[-1]} px for a mask encoder of {self.config.image_size}-px tiles: "
                             "a smaller mask is a training crop and needs its offset")
        ty, tx = (torch.as_tensor(offset).long().cpu() // self.token_px).unbind(1)
        grid = self.pos.view(S, S, -1)
        pos = torch.stack([grid[y:y + s, x:x + s].reshape(s * s, -1) for y, x in zip(ty.tolist(), tx.tolist())])
        return h.flatten(2).transpose(1, 2) + pos


def build_unet(sample_size: int, block_out_channels: list[int], attention: list[bool], layers_per_block: int,
               cross_attention_dim: int, head_channels: int = 32, transformer_layers: int = 1,
               latent_channels: int = 3, extra_in_channels: int = 0) -> UNet2DConditionModel:
    """eps_theta. ``attention[i]`` puts cross-attention in level i (LDM attends at several
    resolutions); ``head_channels`` per head as LDM (diffusers' ``attention_head_dim`` is the
    *number* of heads, so it is computed per block)."""
    if len(attention) != len(block_out_channels):
        raise ValueError("attention needs one flag per level of block_out_channels")
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=latent_channels + extra_in_channels, out_channels=latent_channels,
        down_block_types=down, up_block_types=up, block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block, cross_attention_dim=cross_attention_dim,
        attention_head_dim=tuple(max(1, c // head_channels) for c in block_out_channels),
        transformer_layers_per_block=transformer_layers, norm_num_groups=norm_groups(block_out_channels),
    )


def norm_groups(channels) -> int:
    """The largest GroupNorm group count <= 32 that divides every level's channels."""
    g = math.gcd(*channels)
    return max(d for d in range(1, min(32, g) + 1) if g % d == 0)


class MaskLDM(nn.Module):
    """eps_theta(z_t, t, tau_theta(condition)). Saved and loaded as a
    :class:`discnb.generative.disc_pipeline.DISCPipeline` folder, with the first stage it was trained on.

    ``prediction`` "eps" (the paper, Eq. 1) or "v" (beyond the paper; Salimans & Ho 2022, as in
    SD 2.x): the U-Net outputs v = sqrt(abar) eps - sqrt(1 - abar) z_0 and is trained on v's MSE.
    :meth:`forward` always returns eps (eps = sqrt(1 - abar) z_t + sqrt(abar) v), so samplers, SC
    and DISC do not change. Why: an under-trained eps-U-Net's small errors at high t are amplified
    1/sqrt(abar)-fold (~60x at t = 950) in DDIM's x_0 estimate, and the eps loss puts almost no
    weight on low-noise-to-signal steps, where the layout (and so the mask) is decided; on the CPU
    demo this made samples drift to ~4x the latents' std and ignore their masks (docs/mask-adherence.md).

    ``cond_drop`` and ``guidance_scale`` (beyond the paper; off in the paper profile) are classifier-free
    guidance on the mask (Ho & Salimans 2022): training replaces the condition image of a share
    ``cond_drop`` of the batch items by the null condition (all zeros: no label anywhere, a value no
    real one-hot mask takes), and sampling (:func:`discnb.generative.sampling.denoise`) returns
    eps_null + s (eps_mask - eps_null). The null condition is used only in that unconditional
    branch; SC's constant masks and DISC's fused masks are ordinary conditions. ``snr_gamma`` > 0
    weights Eq. 1 per item with min-SNR-gamma (Hang et al. 2023). All three are stored with the
    model, so SD-SC (SD's weights) and SD-DISC (SD fine-tuned) train and sample the same way.

    ``concat_mask`` (beyond the paper's Sec. 2.1; off in the paper profile) is LDM's "hybrid"
    conditioning: the condition image, area-averaged to the latent grid (label fractions per latent
    pixel), is also concatenated to z_t, as LDM does for its own semantic-map-to-image f4 model
    (Rombach et al. 2022, Sec. 4.3.2). Cross-attention to tau_theta's tokens stays. On the CPU demo
    a cross-attention-only SD learns the layout too slowly to follow its masks (docs/mask-adherence.md, "Why the demo SD
    predicts v and concatenates its mask"); the concatenated mask gives every latent pixel its own label directly.
    """

    def __init__(self, unet: UNet2DConditionModel, tau: MaskEncoder, condition: str = "pixel",
                 latent_scale: float = 1.0, concat_mask: bool = False, prediction: str = "eps",
                 cond_drop: float = 0.0, guidance_scale: float = 1.0, snr_gamma: float = 0.0):
        super().__init__()
        self.unet, self.tau = unet, tau
        self.condition = check_condition(condition)
        self.latent_scale = float(latent_scale)
        self.concat_mask = bool(concat_mask)
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.prediction = prediction
        self.cond_drop, self.guidance_scale, self.snr_gamma = check_guidance(cond_drop, guidance_scale, snr_gamma)
        self.register_buffer("alphas_cumprod", noise_scheduler().alphas_cumprod.clone().float(), persistent=False)

    @classmethod
    def from_config(cls, cfg: dict, image_size: int, latent_size: int, latent_scale: float = 1.0) -> "MaskLDM":
        """SD from notebook 01's ``unet`` parameters (every key given) and its ``condition``."""
        condition, concat = cfg["condition"], bool(cfg["concat_mask"])
        guidance = {k: cfg[k] for k in ("cond_drop", "guidance_scale", "snr_gamma") if k in cfg}
        tau = MaskEncoder(in_channels=cond_channels(condition), image_size=image_size,
                          token_side=cfg["token_side"], channels=tuple(cfg["tau_channels"]), width=cfg["context_dim"])
        unet = build_unet(latent_size, cfg["channels"], cfg["attention"], cfg["layers_per_block"],
                          cfg["context_dim"], cfg["head_channels"], cfg["transformer_layers"],
                          extra_in_channels=cond_channels(condition) if concat else 0)
        return cls(unet, tau, condition, latent_scale, concat, cfg["prediction"], **guidance)

    @property
    def latent_channels(self) -> int:
        return self.unet.config.out_channels

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, raw: bool = False,
                offset: torch.Tensor | None = None) -> torch.Tensor:
        """eps_theta(z_t, t, condition), whatever the U-Net predicts; ``raw``: the U-Net's own output
        (eps or v: what the loss compares with :meth:`target`; through forward so DDP syncs it);
        ``offset``: where a training crop lies in its tile (:class:`MaskEncoder`)."""
        out = self.predict(z_t, t, cond) if offset is None else self.predict(z_t, t, cond, offset)
        if raw or self.prediction == "eps":
            return out
        ab = self._abar(t, z_t)
        return (1 - ab).sqrt() * z_t + ab.sqrt() * out.to(z_t.dtype)

    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=like.device).long().reshape(-1)
        return self.alphas_cumprod.to(like.device)[t].view(-1, 1, 1, 1).to(like.dtype)

    def target(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What :meth:`predict` is trained to output: eps, or v = sqrt(abar) eps - sqrt(1 - abar) z_0."""
        if self.prediction == "eps":
            return noise
        ab = self._abar(t, z0)
        return ab.sqrt() * noise - (1 - ab).sqrt() * z0

    def predict(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                offset: torch.Tensor | None = None) -> torch.Tensor:
        """The U-Net's raw output (eps or v, see ``prediction``)."""
        if self.concat_mask:
            z_t = torch.cat([z_t, F.adaptive_avg_pool2d(cond, z_t.shape[-2:]).to(z_t.dtype)], 1)
        return self.unet(z_t, t, encoder_hidden_states=self.tau(cond, offset)).sample


def check_guidance(cond_drop: float, guidance_scale: float, snr_gamma: float) -> tuple[float, float, float]:
    """The classifier-free-guidance and min-SNR settings, checked: a guidance scale other than 1
    needs a model trained with ``cond_drop`` > 0 (otherwise its null-condition branch never saw
    training and the guided sample extrapolates from noise)."""
    if not 0.0 <= cond_drop < 1.0:
        raise ValueError(f"cond_drop (share of training items with the null mask) must be in [0, 1), got {cond_drop}")
    if guidance_scale < 1.0:
        raise ValueError(f"guidance_scale must be >= 1 (1 = no guidance), got {guidance_scale}")
    if guidance_scale != 1.0 and cond_drop == 0.0:
        raise ValueError(f"guidance_scale {guidance_scale} needs a model trained with cond_drop > 0 (its unconditional "
                         "branch); set sd.cond_drop (e.g. 0.15) or guidance_scale 1.0")
    if snr_gamma < 0:
        raise ValueError(f"snr_gamma must be >= 0 (0 = plain Eq. 1), got {snr_gamma}")
    return float(cond_drop), float(guidance_scale), float(snr_gamma)


def null_condition(cond: torch.Tensor) -> torch.Tensor:
    """The classifier-free-guidance null condition: no label anywhere (all-zero planes)."""
    return torch.zeros_like(cond)


def drop_condition(cond: torch.Tensor, p: float) -> torch.Tensor:
    """Training with classifier-free guidance: each item's condition becomes the null one with
    probability ``p`` (torch's global RNG, which fit seeds and its checkpoints restore)."""
    if p <= 0:
        return cond
    keep = (torch.rand(len(cond)) >= p).to(cond.device).view(-1, *([1] * (cond.dim() - 1)))
    return cond * keep.to(cond.dtype)


def noise_scheduler() -> DDPMScheduler:
    """The training schedule of LDM's f4 models."""
    return DDPMScheduler(num_train_timesteps=T_TRAIN, beta_schedule=BETA_SCHEDULE, beta_start=BETA_START,
                         beta_end=BETA_END, prediction_type="epsilon", clip_sample=False)


def ldm_loss(model: MaskLDM, batch: dict, alphas_cumprod: torch.Tensor,
             generator: torch.Generator | None = None, t_range: tuple[int, int] | None = None) -> torch.Tensor:
    """Eq. 1 on a batch of (scaled) latents ``z`` and condition images ``cond``.

    ``generator`` (CPU) fixes t and eps, for a validation loss that is comparable across epochs;
    ``t_range`` (lo, hi) restricts t to [lo, hi) (default: all of 0..T-1). A v-predicting model
    (``prediction: v``, beyond the paper) is trained on the MSE of v instead of eps.

    ``batch["offset"]`` (optional): where each item's crop lies in its tile, in mask pixels (:class:`MaskEncoder`).

    Beyond the paper, from the model's settings (:class:`MaskLDM`), in training mode only (so
    validation losses stay Eq. 1's): ``cond_drop`` replaces some items' conditions by the null one
    (classifier-free guidance), and ``snr_gamma`` > 0 weights each item with min-SNR-gamma, as the
    diffusers training examples do: min(SNR_t, gamma) / SNR_t for eps, / (SNR_t + 1) for v.
    """
    net = getattr(model, "module", model)  # DDP-wrapped under accelerate
    train_mode = net.training and generator is None
    gamma = net.snr_gamma if train_mode else 0.0
    z0, cond = batch["z"], batch["cond"]
    kw = {"offset": batch["offset"]} if batch.get("offset") is not None else {}  # a crop's place (sd.crop)
    if train_mode:
        cond = drop_condition(cond, net.cond_drop)
    B = z0.shape[0]
    lo, hi = t_range or (0, len(alphas_cumprod))
    noise = torch.randn(z0.shape, generator=generator).to(z0.device, z0.dtype)
    t = torch.randint(lo, hi, (B,), generator=generator).to(z0.device)
    ab = alphas_cumprod.to(z0.device)[t].view(B, 1, 1, 1).to(z0.dtype)
    z_t = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
    if not gamma > 0:
        return F.mse_loss(model(z_t, t, cond, raw=True, **kw).float(), net.target(z0, noise, t).float())
    per_item = F.mse_loss(model(z_t, t, cond, raw=True, **kw).float(), net.target(z0, noise, t).float(),
                          reduction="none").mean((1, 2, 3))
    return (per_item * min_snr_weights(t, gamma, net.prediction)).mean()


_SCHEDULER = None


def min_snr_weights(t: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) of timesteps ``t``, with diffusers' ``compute_snr``
    on the training schedule: min(SNR, gamma) / SNR for eps prediction, / (SNR + 1) for v."""
    global _SCHEDULER
    _SCHEDULER = _SCHEDULER or noise_scheduler()
    snr = compute_snr(_SCHEDULER, t.cpu()).to(t.device)
    w = torch.clamp(snr, max=gamma)
    return w / snr if prediction == "eps" else w / (snr + 1)


@torch.no_grad()
def conditioning_gap(model: MaskLDM, z0: torch.Tensor, masks: torch.Tensor, batch_size: int = 64, seed: int = 0,
                     t_ranges=((0, 1000), (0, 300), (300, 700), (700, 1000))) -> list[dict]:
    """Does eps_theta use its condition? Eq. 1's loss on the same (z_0, t, eps) with the true
    masks, with masks of other tiles (a fixed shift of the batch order) and with an all-NC mask.
    A model that ignores tau_theta scores the same on all three; the relative gap
    (shuffled - true) / true is how much the mask tells it. Returned per range of t."""
    model.eval()
    dev = next(model.parameters()).device
    ac = noise_scheduler().alphas_cumprod
    n = len(z0)
    shift = torch.roll(torch.arange(n), max(1, n // 3))
    rows = []
    for lo, hi in t_ranges:
        out = {}
        for name, m in (("true", masks), ("shuffled", masks[shift]), ("all_nc", torch.zeros_like(masks))):
            g = torch.Generator().manual_seed(seed)  # the same (t, eps) for the three mask sets
            tot = 0.0
            for s in range(0, n, batch_size):
                z = z0[s:s + batch_size].to(dev)
                cond = make_condition(m[s:s + batch_size].long(), model.condition).to(dev)
                tot += len(z) * float(ldm_loss(model, {"z": z, "cond": cond}, ac, g, (lo, hi)))
            out[name] = tot / n
        rows.append({"t_from": lo, "t_to": hi, "loss_true": out["true"], "loss_shuffled": out["shuffled"],
                     "loss_all_nc": out["all_nc"], "gap_shuffled": (out["shuffled"] - out["true"]) / out["true"]})
    return rows
