"""``DISCPipeline``: a mask-conditioned LDM as a ``diffusers.DiffusionPipeline`` (paper Sec. 2.1-2.3).

Components, as diffusers pipelines hold them: ``vqvae`` (the f = 4 first stage, a ``VQModel``),
``unet`` (eps_theta, a ``UNet2DConditionModel``), ``mask_encoder`` (tau_theta,
:class:`discnb.generative.ldm.MaskEncoder`) and ``scheduler``. The LDM's own settings (condition,
latent scale, concatenated mask, eps/v prediction, classifier-free guidance) are the pipeline's
config, so ``save_pretrained`` / ``from_pretrained`` round-trip the whole model in one folder
(``model_index.json`` + one sub-folder of safetensors per component). Notebooks 01 and 02 save SD,
the Fig. 7 ablation SDs, SD-DISC and SD-DISC-CoTrain in this format (:meth:`DISCPipeline.saver`), and
the shipped ``weights/<profile>/`` folders are the same. The scheduler can be swapped the diffusers way::

    pipe = DISCPipeline.from_pretrained("weights/demo/SD-DISC")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    tiles = pipe(masks, num_inference_steps=200, seeds=range(len(masks))).images

Sampling is not written again here: ``__call__`` runs :class:`discnb.generative.sampling.SDGenerator`
(or, with ``separated=True``, SD-SC's :class:`discnb.generative.disc.SCGenerator`, Eq. 2) on the
pipeline's components, so a pipeline and the generator registry draw the same tiles for the same
seeds (noise from one CPU generator per tile).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel, VQModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from discnb import K
from discnb.data.shapes import resize_mask
from discnb.data.sicap import MASK_VALUES, grades_to_labels
from discnb.generative.disc import SCGenerator
from discnb.generative.ldm import MaskEncoder, MaskLDM
from discnb.generative.sampling import SDGenerator, make_scheduler

COMPONENTS = ("vqvae", "unet", "mask_encoder", "scheduler")
MANIFEST_NAME = "MANIFEST.json"
MASK_FORMATS = ("auto", "labels", "sicap")


class DISCPipeline(DiffusionPipeline):
    """SD / SD-SC / SD-DISC / SD-DISC-CoTrain as one diffusers pipeline (which one: the weights)."""

    model_cpu_offload_seq = "mask_encoder->unet->vqvae"

    def __init__(self, vqvae: VQModel, unet: UNet2DConditionModel, mask_encoder: MaskEncoder,
                 scheduler: SchedulerMixin, condition: str = "pixel", latent_scale: float = 1.0,
                 concat_mask: bool = False, prediction: str = "eps", cond_drop: float = 0.0,
                 guidance_scale: float = 1.0, snr_gamma: float = 0.0):
        super().__init__()
        self.register_modules(vqvae=vqvae, unet=unet, mask_encoder=mask_encoder, scheduler=scheduler)
        self.register_to_config(condition=condition, latent_scale=float(latent_scale), concat_mask=bool(concat_mask),
                                prediction=prediction, cond_drop=float(cond_drop),
                                guidance_scale=float(guidance_scale), snr_gamma=float(snr_gamma))
        self.ldm  # noqa: B018  checks the settings and the components' shapes now, not at the first call

    @classmethod
    def from_models(cls, model: MaskLDM, vq: VQModel, scheduler: str | SchedulerMixin = "ddim") -> "DISCPipeline":
        """A pipeline on a trained :class:`MaskLDM` and its first stage (the modules are shared, not copied)."""
        sched = make_scheduler(scheduler) if isinstance(scheduler, str) else scheduler
        return cls(vq, model.unet, model.tau, sched, model.condition, model.latent_scale, model.concat_mask,
                   model.prediction, model.cond_drop, model.guidance_scale, model.snr_gamma)

    @classmethod
    def saver(cls, vq: VQModel):
        """``save_fn(model, folder)`` for :func:`discnb.core.train.fit` of a :class:`MaskLDM` trained on ``vq``'s
        latents: every ``best/`` and ``final/`` it writes is a pipeline folder holding that first stage, the one
        format notebooks 01 and 02 save their models in and every reader loads."""
        return lambda model, folder: cls.from_models(model, vq).save_pretrained(folder)

    @property
    def ldm(self) -> MaskLDM:
        """The components as the :class:`MaskLDM` that trains and samples them (same modules)."""
        c = self.config
        if self.vqvae.config.latent_channels != self.unet.config.out_channels:
            raise ValueError(f"vqvae makes {self.vqvae.config.latent_channels}-channel latents but unet predicts "
                             f"{self.unet.config.out_channels}: the components do not belong together")
        return MaskLDM(self.unet, self.mask_encoder, c.condition, c.latent_scale, c.concat_mask, c.prediction,
                       c.cond_drop, c.guidance_scale, c.snr_gamma).to(self.unet.device)

    @property
    def image_size(self) -> int:
        return int(self.mask_encoder.config.image_size)

    def sampler(self, separated: bool = False, num_inference_steps: int = 200, batch_size: int = 16,
                guidance_scale: float | None = None, fuse_every_step: bool = False, scheduler=None,
                device=None, bf16: bool | None = None) -> SDGenerator:
        """The project's generator on these components: SD, or SD-SC (Eq. 2) with ``separated``.
        ``scheduler``: a name (the registry's, recorded in its manifests) instead of ``self.scheduler``."""
        kw = dict(steps=num_inference_steps, scheduler=self.scheduler if scheduler is None else scheduler,
                  batch_size=batch_size, device=self.unet.device if device is None else device,
                  bf16=self.unet.dtype == torch.bfloat16 if bf16 is None else bf16, guidance_scale=guidance_scale)
        if separated:
            return SCGenerator(self.ldm, self.vqvae, fuse_every_step=fuse_every_step, **kw)
        if fuse_every_step:
            raise ValueError("fuse_every_step is an option of Separated Conditions: pass separated=True")
        return SDGenerator(self.ldm, self.vqvae, **kw)

    @torch.no_grad()
    def __call__(self, masks, num_inference_steps: int = 200, generator=None, seeds=None, separated: bool = False,
                 output_type: str = "pil", batch_size: int = 16, guidance_scale: float | None = None,
                 mask_format: str = "auto", fuse_every_step: bool = False, return_dict: bool = True):
        """Tiles for ``masks``: label maps 0..3 or SICAPv2 0/3/4/5 arrays ((N,H,W), (H,W) or a list),
        or PIL images (``mask_format`` says which when the values cannot: see :func:`to_labels`),
        resized to the model's tile size with nearest.

        Noise: ``seeds`` (one int per mask) or ``generator`` (a ``torch.Generator`` or one per mask);
        neither gives seeds 0..N-1. ``separated=True`` samples with Separated Conditions (SD-SC).
        ``output_type``: "pil" (a list of images), "np" (floats in [0, 1], (N,H,W,3)) or "latent".
        """
        labels = prepare_masks(masks, self.image_size, mask_format)
        noise = noise_sources(len(labels), seeds, generator)
        gen = self.sampler(separated, num_inference_steps, batch_size, guidance_scale, fuse_every_step)
        z0 = gen.latents(labels, noise)
        if output_type == "latent":
            images = z0
        else:
            tiles = gen.decode(z0)
            if output_type == "pil":
                images = [Image.fromarray(t) for t in tiles]
            elif output_type == "np":
                images = tiles.astype(np.float32) / 255.0
            else:
                raise ValueError(f"output_type must be 'pil', 'np' or 'latent', got {output_type!r}")
        self.nfe = gen.nfe
        return ImagePipelineOutput(images=images) if return_dict else (images,)


# ================================================================================ inputs
def to_labels(mask: np.ndarray, mask_format: str = "auto", name: str = "<mask>") -> np.ndarray:
    """One mask (H,W) -> labels 0..3 (uint8). ``labels``: values 0..3 as they are; ``sicap``:
    SICAPv2's 0/3/4/5 (NC, GG3, GG4, GG5); ``auto``: 4 or 5 present -> SICAPv2, 1 or 2 present ->
    labels, only 0 -> NC, only 0 and 3 -> an error (GG5 in labels or GG3 in SICAPv2: say which)."""
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"{name}: a mask is one channel (H, W), got shape {m.shape}")
    if m.dtype.kind == "f":
        if not np.all(m == np.round(m)):
            raise ValueError(f"{name}: mask values must be integer labels, got floats")
        m = m.astype(np.int64)
    found = set(np.unique(m).tolist())
    unknown = found - set(range(K)) - set(MASK_VALUES)
    if unknown:
        raise ValueError(f"{name}: unknown mask values {sorted(unknown)} (labels are 0..{K - 1}, SICAPv2 grades "
                         f"{'/'.join(map(str, MASK_VALUES))})")
    if mask_format == "auto":
        if found & {4, 5}:
            mask_format = "sicap"
        elif found & {1, 2}:
            mask_format = "labels"
        elif found <= {0}:
            mask_format = "labels"
        else:
            raise ValueError(f"{name}: values {sorted(found)} could be labels 0..3 (3 = GG5) or SICAPv2 grades "
                             "(3 = GG3); say which with mask_format='labels' or 'sicap' (--mask-format)")
    allowed = set(range(K)) if mask_format == "labels" else set(MASK_VALUES)
    if not found <= allowed:
        raise ValueError(f"{name}: unknown mask values {sorted(found - allowed)} for {mask_format} masks "
                         f"(expected {sorted(allowed)})")
    if mask_format == "labels":
        return m.astype(np.uint8)
    return grades_to_labels(m)


def prepare_masks(masks, size: int, mask_format: str = "auto") -> np.ndarray:
    """Masks in any of :meth:`DISCPipeline.__call__`'s forms -> (N, size, size) uint8 labels."""
    if isinstance(masks, (Image.Image, np.ndarray, torch.Tensor)):
        arr = np.asarray(masks.convert("L") if isinstance(masks, Image.Image) and masks.mode != "L" else masks)
        masks = [arr] if arr.ndim == 2 else list(arr)
    out = []
    for i, m in enumerate(masks):
        if isinstance(m, Image.Image):
            if m.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"mask {i}: a {m.mode} image; masks are one-channel label maps (mode L)")
            m = np.asarray(m)
        out.append(resize_mask(to_labels(np.asarray(m), mask_format, f"mask {i}"), size))
    if not out:
        raise ValueError("no masks given")
    return np.stack(out)


def noise_sources(n: int, seeds=None, generator=None) -> list:
    """One noise source per tile for :func:`discnb.generative.sampling.initial_noise`: the seeds,
    or the generator(s) (one ``torch.Generator`` drawn in tile order, or a list of one per tile)."""
    if seeds is not None and generator is not None:
        raise ValueError("give seeds or generator, not both")
    if generator is None:
        seeds = list(range(n)) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != n:
            raise ValueError(f"{n} masks but {len(seeds)} seeds: give one seed per mask")
        return seeds
    gens = list(generator) if isinstance(generator, (list, tuple)) else [generator] * n
    if len(gens) != n:
        raise ValueError(f"{n} masks but {len(gens)} generators: give one generator, or one per mask")
    if any(g.device.type != "cpu" for g in gens):
        raise ValueError("noise comes from CPU generators (the same tiles on any device): use torch.Generator()")
    return gens


def check_pipeline_folder(folder: str | Path) -> Path:
    """A folder that ``DISCPipeline.from_pretrained`` can load, or an error naming what is missing."""
    folder = Path(folder)
    if not (folder / "model_index.json").exists():
        raise FileNotFoundError(f"{folder}: not a DISCPipeline folder (no model_index.json); give a folder written by "
                                "DISCPipeline.save_pretrained, e.g. weights/demo/SD-DISC")
    for c in COMPONENTS:
        cfg = folder / c / ("scheduler_config.json" if c == "scheduler" else "config.json")
        if not cfg.exists():
            raise FileNotFoundError(f"{folder}: component {c!r} is missing ({cfg.relative_to(folder)} not found)")
    return folder


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_manifest(folder: str | Path) -> dict | None:
    """The files of a shipped model ``folder`` against the ``MANIFEST.json`` beside it (its entry
    ``models[<folder name>]``): every listed file present with its sha256, no other files. Returns the
    entry, or None when there is no manifest (a folder of one's own)."""
    folder = Path(folder)
    f = folder.parent / MANIFEST_NAME
    if not f.exists():
        return None
    entry = json.loads(f.read_text()).get("models", {}).get(folder.name)
    if entry is None:
        raise ValueError(f"{f} has no entry for {folder.name!r}: the folder was not shipped with it")
    rebuild = f"rebuild with {json.loads(f.read_text()).get('command', './run_all.sh --profile demo')}"
    for rel, digest in entry["files"].items():
        p = folder / rel
        if not p.exists():
            raise FileNotFoundError(f"{p}: listed in {f} but missing; {rebuild}")
        if sha256(p) != digest:
            raise ValueError(f"{p}: its sha256 does not match {f} (the file changed after it was shipped); {rebuild}")
    extra = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
                   and str(p.relative_to(folder)) not in entry["files"])
    if extra:
        raise ValueError(f"{folder}: files not in {f}: {extra[:5]}; {rebuild}")
    return entry


def load_pipeline(folder: str | Path, device: str = "cpu") -> DISCPipeline:
    """``DISCPipeline.from_pretrained`` after :func:`check_pipeline_folder` and, for a shipped model,
    :func:`verify_manifest`; float32 weights (fp16-stored ones are upcast) on ``device``."""
    folder = check_pipeline_folder(folder)
    verify_manifest(folder)
    pipe = DISCPipeline.from_pretrained(folder, dtype=torch.float32)
    return pipe.to(device)


