"""Generators of synthetic tiles: one registry that every consumer shares (CarcinoNet's synthetic
tiles, tile sets, the SC/DISC comparison, the benchmark).

A generator NAME maps to ``builder(ctx) -> (generator, fingerprint)``. The generator is a
:class:`discnb.generative.protocol.Generator` (``generate(masks, seeds) -> (N,H,W,3) uint8``, ``name``,
``device``, ``nfe``, ``needs_slide_labels``); the fingerprint
changes whenever its weights or sampling settings do, and keys every cache of its tiles.

Every generator is a :class:`discnb.generative.disc_pipeline.DISCPipeline`'s (``pipe.sampler()``):

- "SD" (Sec. 2.1, Fig. 4 top): notebook 01's model, :class:`discnb.generative.sampling.SDGenerator`;
- "SD-tile", "SD-tile+slide": the Fig. 7 conditioning ablation, also from notebook 01;
- "SD-SC" (Sec. 2.3, Eq. 2): SD's weights sampled with :class:`discnb.generative.disc.SCGenerator`;
- "SD-DISC", "SD-DISC-CoTrain" (Sec. 2.3, Eq. 3): SD fine-tuned by notebook 02 (``disc/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from discnb.core import layout
from discnb.core.io import fingerprint
from discnb.generative import checkpoints
from discnb.generative.disc_pipeline import DISCPipeline, load_pipeline


@dataclass
class GeneratorContext:
    """What a generator builder gets: where notebook 01 wrote the LDM and how to sample."""
    ldm_dir: Path
    image_size: int
    steps: int = 200
    scheduler: str = "ddim"
    batch_size: int = 16
    device: str = "cpu"
    bf16: bool = False


GENERATORS: dict[str, Callable[[GeneratorContext], tuple]] = {}


def register_generator(name: str):
    """Decorator: ``builder(ctx) -> (generator, fingerprint)``; the generator is a
    :class:`discnb.generative.protocol.Generator` and the fingerprint (a str) changes whenever
    its weights or sampling settings do (it keys the tile cache)."""
    def deco(builder):
        GENERATORS[name] = builder
        return builder
    return deco


def build_generator(name: str, ctx: GeneratorContext) -> tuple:
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; available: {sorted(GENERATORS)}")
    return GENERATORS[name](ctx)


def _sampler(ctx: GeneratorContext, pipe: DISCPipeline, name: str, separated: bool = False):
    """The generator of a :class:`DISCPipeline`: one sampling path for the registry, the pipeline and
    ``python -m discnb.generate``."""
    gen = pipe.sampler(separated, ctx.steps, ctx.batch_size, scheduler=ctx.scheduler, device=ctx.device,
                         bf16=ctx.bf16)
    gen.name = name
    return gen


def _sd_like(ctx: GeneratorContext, name: str, condition: str | None) -> tuple:
    P01 = checkpoints.ldm_params(ctx.ldm_dir)
    checkpoints.check_ldm(ctx.ldm_dir, P01, ctx.image_size)
    pipe = checkpoints.sd_pipeline(P01, condition=condition)
    g = pipe.config.guidance_scale
    key = fingerprint([name, ctx.steps, ctx.scheduler] + ([g] if g != 1 else []), checkpoints.sd_folder(P01, condition))
    return _sampler(ctx, pipe, name), key


@register_generator("SD")
def _sd_generator(ctx: GeneratorContext) -> tuple:
    return _sd_like(ctx, "SD", None)


# Fig. 7's conditioning ablation: SD's recipe conditioned on the tile's majority label ("tile") or
# on that and the slide's primary + secondary grades ("tile+slide"); trained by notebook 01 when
# listed in its ``ablation_conditions``. They take the same masks as SD (and read only the majority
# label from them), so tile sets and the lambda sweep treat them like any other generator.
@register_generator("SD-tile")
def _sd_tile_generator(ctx: GeneratorContext) -> tuple:
    return _sd_like(ctx, "SD-tile", "tile")


@register_generator("SD-tile+slide")
def _sd_tile_slide_generator(ctx: GeneratorContext) -> tuple:
    return _sd_like(ctx, "SD-tile+slide", "tile+slide")


# Sec. 2.3: SC samples SD's own weights (Eq. 2); SD-DISC and SD-DISC-CoTrain are SD fine-tuned by
# notebook 02 (Eq. 3), which writes them to disc/<FINETUNED[name]>/ beside notebook 01's ldm/.
FINETUNED = {"SD-DISC": "sd-disc", "SD-DISC-CoTrain": "sd-disc-cotrain"}


@register_generator("SD-SC")
def _sc_generator(ctx: GeneratorContext) -> tuple:
    sd, key = build_generator("SD", ctx)
    return _sampler(ctx, DISCPipeline.from_models(sd.model, sd.vq), "SD-SC", separated=True), fingerprint("SC", key)


def finetuned_folder(ldm_dir: Path, name: str, which: str = "best") -> Path:
    """Notebook 02's DISCPipeline folder of fine-tuned model ``name`` (checkpoint ``which``: best or final)."""
    return layout.disc_beside(ldm_dir) / FINETUNED[name] / which


def _finetuned(name: str):
    def builder(ctx: GeneratorContext) -> tuple:
        sd, key = build_generator("SD", ctx)
        folder = finetuned_folder(ctx.ldm_dir, name)
        if not (folder / "model_index.json").exists():
            raise FileNotFoundError(f"{folder}: no {name} model; run notebooks/02_sc_disc.ipynb for this profile first")
        pipe = load_pipeline(folder)
        pipe.register_to_config(guidance_scale=sd.model.guidance_scale)  # one guidance scale for SD, SD-SC and SD-DISC
        return _sampler(ctx, pipe, name), fingerprint(name, key, folder)
    return builder


for _name in FINETUNED:
    register_generator(_name)(_finetuned(_name))


def available() -> list[str]:
    return sorted(GENERATORS)
