"""The first stage: a VQ-regularised autoencoder with f = 4 (paper Sec. 2.1; LDM's vq-f4).

Two ways in: load a diffusers-format ``VQModel`` from a local folder (e.g. a converted copy of
LDM's vq-f4), or train one here on the training tiles. The paper's first stage was trained with
L1 + LPIPS + patch-GAN + codebook losses (taming's ``VQLPIPSWithDiscriminator``). LPIPS needs
ImageNet VGG weights that cannot be downloaded on this project's machines, so the offline trainer
uses L1 + L2 reconstruction and the codebook/commitment loss, plus, when ``disc_weight`` > 0, the
patch-GAN term with taming's adaptive weight (its recipe with perceptual weight 0: :class:`VQGAN`).

The diffusion model works on PRE-quantisation latents (``encode(x).latents``); ``decode``
quantises, then decodes. LDM uses latent scale 1.0 for VQ models (diffusers' ``VQModel``
defaults to 0.18215: forced to 1.0 here); for a first stage trained here the latents are
additionally divided by their std (``latent_scale``, stored with the LDM).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import VQModel

from discnb.generative.ldm import norm_groups
from discnb.data.image_metrics import psnr, ssim

def build_vq(channels: list[int], layers_per_block: int, n_embed: int, latent_channels: int = 3,
             mid_attention: bool = True) -> VQModel:
    """A VQModel whose downsampling factor is 2^(levels-1) (3 levels: f = 4). ``mid_attention`` False drops the
    self-attention of the encoder's and decoder's mid-blocks (LDM's vq-f4 has it): a first stage trained on crops
    then has nothing whose output depends on the tile's size but GroupNorm (docs/demo-v3.md)."""
    return VQModel(in_channels=3, out_channels=3, latent_channels=latent_channels, num_vq_embeddings=n_embed,
                   block_out_channels=tuple(channels), layers_per_block=layers_per_block,
                   down_block_types=("DownEncoderBlock2D",) * len(channels),
                   up_block_types=("UpDecoderBlock2D",) * len(channels),
                   norm_num_groups=norm_groups(channels), scaling_factor=1.0, mid_block_add_attention=mid_attention)


def factor(vq: VQModel) -> int:
    return 2 ** (len(vq.config.block_out_channels) - 1)


def load_vq(path: str | Path, latent_channels: int = 3, f: int = 4) -> VQModel:
    """A local diffusers-format VQModel, checked for the latent channels and factor we need."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no diffusers VQModel here (config.json missing). Convert LDM's vq-f4 "
                                "to diffusers format, or leave autoencoder.path empty to train one")
    vq = VQModel.from_pretrained(path)
    if vq.config.latent_channels != latent_channels or factor(vq) != f:
        raise ValueError(f"{path}: first stage has {vq.config.latent_channels} latent channels and factor "
                         f"{factor(vq)}; the LDM needs {latent_channels} channels and f = {f}")
    vq.register_to_config(scaling_factor=1.0)  # LDM's scale for VQ models (diffusers issue #6725)
    return vq


def to_tensor(imgs: np.ndarray) -> torch.Tensor:
    """(N,H,W,3) uint8 -> (N,3,H,W) float in [-1, 1]. Four bytes per value: convert a batch at a
    time (:func:`pixels` + :func:`pixels_to_model`), never a whole training set."""
    return torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def pixels(imgs: np.ndarray) -> torch.Tensor:
    """(N,H,W,3) uint8 -> (N,3,H,W) uint8 tensor, how a training set is held: a quarter of the float32
    copy (SICAPv2's 12,000 256-px tiles: 2.4 GB instead of 9.4 GB per process)."""
    return torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).contiguous()


def pixels_to_model(batch: dict, keys=("x",)) -> dict:
    """A batch of :func:`pixels` -> floats in [-1, 1] (``TensorData``'s per-batch ``transform``)."""
    return {**batch, **{k: batch[k].float().div(127.5).sub(1) for k in keys}}


def _model_batches(x, batch_size: int):
    """Batches of images in [-1, 1] from (N,H,W,3) uint8 (converted one batch at a time) or (N,3,H,W) floats."""
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        yield to_tensor(xb) if isinstance(xb, np.ndarray) else xb


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N,3,H,W) in [-1, 1] -> (N,H,W,3) uint8 (clamped)."""
    return x.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def vq_loss(vq: VQModel, batch: dict, generator=None) -> torch.Tensor:
    """Reconstruction (L1 + L2) + codebook/commitment loss."""
    x = batch["x"]
    dec = vq(x)
    return F.l1_loss(dec.sample, x) + F.mse_loss(dec.sample, x) + dec.commit_loss.mean()


class PatchDiscriminator(nn.Module):
    """The pix2pix / taming ``NLayerDiscriminator``: strided 4x4 convs with BatchNorm and LeakyReLU
    0.2 to a map of real/fake logits, one per receptive-field patch (weights N(0, 0.02), BatchNorm
    scales N(1, 0.02), as taming's ``weights_init``)."""

    def __init__(self, channels: int = 64, n_layers: int = 3):
        super().__init__()
        layers, mult = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)], 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(channels * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VQGAN(nn.Module):
    """The first stage and its discriminator, trained together by :func:`vqgan_loss` with one
    optimizer. ``forward`` returns the reconstruction, the codebook loss, the discriminator's logits
    on real tiles and on detached reconstructions (its own hinge loss), and its logits on the
    reconstructions through frozen (detached) discriminator weights (the generator's loss): so one
    backward pass moves each network only by its own objective, and DDP sees every use in forward."""

    def __init__(self, vq: VQModel, disc: PatchDiscriminator):
        super().__init__()
        self.vq, self.disc = vq, disc

    def forward(self, x: torch.Tensor) -> dict:
        dec = self.vq(x)
        rec = dec.sample
        frozen = {k: v.detach() for k, v in self.disc.named_parameters()}
        return {"rec": rec, "commit": dec.commit_loss.mean(), "real": self.disc(x), "fake": self.disc(rec.detach()),
                "fake_for_g": torch.func.functional_call(self.disc, frozen, (rec,))}


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss (taming ``hinge_d_loss``)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last: torch.Tensor, disc_weight: float) -> torch.Tensor:
    """taming's ``calculate_adaptive_weight``: ||grad rec_loss|| / (||grad g_loss|| + 1e-4) at the
    decoder's last layer, clamped to [0, 1e4], times ``disc_weight`` (no gradient through it)."""
    g_rec = torch.autograd.grad(rec_loss, last, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach() * disc_weight


def vqgan_loss(disc_weight: float):
    """``loss(model, batch, generator=None)`` of a :class:`VQGAN` for the training loop: L1 + L2 +
    codebook + adaptive weight x the generator's loss (-mean logits on reconstructions) + the
    discriminator's hinge loss, the discriminator on from step 0 (LDM's vq-f4: ``disc_start: 0``).
    Deviation from LDM: no LPIPS term (perceptual weight 0), and L2 added to L1 as in :func:`vq_loss`.
    Validation (no gradients) returns the reconstruction + codebook loss only, as :func:`vq_loss`."""
    def loss(model, batch: dict, generator=None) -> torch.Tensor:
        x = batch["x"]
        out = model(x)
        rec_loss = F.l1_loss(out["rec"], x) + F.mse_loss(out["rec"], x)
        if not torch.is_grad_enabled():
            return rec_loss + out["commit"]
        g_loss = -out["fake_for_g"].mean()
        last = getattr(model, "module", model).vq.decoder.conv_out.weight
        w = adaptive_weight(rec_loss, g_loss, last, disc_weight)
        return rec_loss + out["commit"] + w * g_loss + hinge_d_loss(out["real"], out["fake"])
    return loss


@torch.no_grad()
def encode(vq: VQModel, x: np.ndarray | torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Pre-quantisation latents of images: (N,H,W,3) uint8 tiles (converted a batch at a time) or
    (N,3,H,W) floats in [-1, 1]."""
    vq.eval()
    dev = next(vq.parameters()).device
    return torch.cat([vq.encode(xb.to(dev)).latents.float().cpu() for xb in _model_batches(x, batch_size)])


@torch.no_grad()
def decode(vq: VQModel, z: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Latents -> images in [-1, 1] (quantised on the way, as LDM does)."""
    vq.eval()
    dev = next(vq.parameters()).device
    return torch.cat([vq.decode(z[i:i + batch_size].to(dev)).sample.float().cpu() for i in range(0, len(z), batch_size)])


def reconstruction_metrics(vq: VQModel, imgs: np.ndarray, batch_size: int = 64) -> dict:
    """PSNR / SSIM of encode -> decode on uint8 tiles (mean and std over tiles)."""
    return reconstruction_scores(imgs, reconstruct(vq, imgs, batch_size))


def reconstruction_scores(imgs: np.ndarray, rec: np.ndarray) -> dict:
    """:func:`reconstruction_metrics` for reconstructions already made (``rec``, uint8, as :func:`reconstruct`)."""
    p, s = psnr(imgs, rec), ssim(imgs, rec)
    return {"psnr": float(p.mean()), "psnr_std": float(p.std()), "ssim": float(s.mean()), "ssim_std": float(s.std()),
            "n": len(imgs)}


@torch.no_grad()
def reconstruct(vq: VQModel, imgs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 tiles -> encode, quantise, decode -> uint8 tiles, a batch at a time (no float copy of the set)."""
    if not len(imgs):
        return imgs
    return np.concatenate([to_uint8(decode(vq, encode(vq, imgs[i:i + batch_size], batch_size), batch_size))
                           for i in range(0, len(imgs), batch_size)])
