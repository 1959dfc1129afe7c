"""Generators of synthetic tiles: one registry that every consumer shares (CarcinoNet's synthetic
tiles, tile sets, the SC/DISC comparison, the benchmark).

A generator NAME maps to ``builder(ctx) -> (generator, fingerprint)``. The generator has
``generate(masks, seeds) -> (N,H,W,3) uint8`` (and ``latents``/``decode``, ``nfe``); the fingerprint
changes whenever its weights or sampling settings do, and keys every cache of its tiles.
"SD" is notebook 01's model (:class:`discnb.generative.sampling.SDGenerator`); "SD-SC", "SD-DISC" and
"SD-DISC-CoTrain" are registered by :mod:`discnb.generative.disc` (notebook 02).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from discnb.core import params

from discnb.core import paths


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
# Generators that later notebooks add; asking for one before it exists names what to run.
PLANNED = {"SD-SC": "notebooks/02_sc_disc.ipynb", "SD-DISC": "notebooks/02_sc_disc.ipynb",
           "SD-DISC-CoTrain": "notebooks/02_sc_disc.ipynb"}


def register_generator(name: str):
    """Decorator: ``builder(ctx) -> (generator, fingerprint)``; the generator has
    ``generate(masks, seeds) -> (N,H,W,3) uint8`` and the fingerprint (a str) changes whenever
    its weights or sampling settings do (it keys the tile cache)."""
    def deco(builder):
        GENERATORS[name] = builder
        return builder
    return deco


def build_generator(name: str, ctx: GeneratorContext) -> tuple:
    _load_plugins()
    if name not in GENERATORS:
        if name in PLANNED:
            raise ValueError(f"generator {name!r} is not available in this checkout yet (it comes with {PLANNED[name]}); "
                             f"available: {sorted(GENERATORS)}")
        raise ValueError(f"unknown generator {name!r}; available: {sorted(GENERATORS)}")
    return GENERATORS[name](ctx)


def hash_tree(h, root: Path) -> None:
    """Feed every file under ``root`` (relative name + bytes) into the hash ``h``."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(root) if p != root else p.name).encode())
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)


def ldm_params(ldir: Path) -> params.Params:
    """Notebook 01's resolved parameters for the LDM in ``ldir``, validated."""
    import yaml
    p = Path(ldir) / "params.resolved.yaml"
    if not p.exists():
        raise FileNotFoundError(f"{p}: no trained LDM for this profile; run notebooks/01_train_ldm.ipynb first")
    try:
        P01 = params.validate("01_train_ldm", yaml.safe_load(p.read_text()) or {})
    except params.ParamError as e:
        raise params.ParamError(f"{p} no longer fits notebook 01's parameters ({e}); re-run "
                                "notebooks/01_train_ldm.ipynb for this profile") from None
    return params.Params({**P01, "output_dir": str(ldir)})


def check_ldm(ldir: Path, P01, image_size: int) -> dict:
    """The LDM in ``ldir`` exists, finished, is pixel-conditioned, makes tiles of ``image_size``
    and still has the first stage it was trained with. Returns its ``summary.json``."""
    ldir = Path(ldir)
    run01 = f"run notebooks/01_train_ldm.ipynb (profile {P01.profile})"
    if not (ldir / "sd" / "best" / "ldm.json").exists():
        raise FileNotFoundError(f"{ldir / 'sd' / 'best'}: no trained SD model; {run01} first")
    if not (ldir / "summary.json").exists():
        raise FileNotFoundError(f"{ldir / 'summary.json'}: notebook 01 did not finish; {run01} to the end")
    summary = json.loads((ldir / "summary.json").read_text())
    if P01.condition != "pixel":
        raise ValueError(f"{ldir}: SD was trained with condition {P01.condition!r}; synthetic tiles need the mask "
                         f"itself as condition: set condition: pixel and {run01}")
    if int(summary.get("image_size", -1)) != int(image_size):
        raise ValueError(f"{ldir}: SD makes {summary.get('image_size')}-px tiles but the data (notebook 00) is now at "
                         f"{image_size} px; re-{run01}")
    A = P01.autoencoder
    if A["path"]:
        same = summary.get("autoencoder", {}).get("source") == A["path"]
    else:
        done = ldir / "autoencoder" / "done.json"
        same = done.exists() and (ldir / "autoencoder" / "best").exists() and \
            json.loads(done.read_text()) == summary.get("autoencoder")
    if not same:
        raise ValueError(f"{ldir}: SD was trained on the latents of another first stage than the one there now "
                         f"(autoencoder changed after SD was trained); {run01} again so SD and its first stage match")
    return summary


def _sd_like(ctx: GeneratorContext, name: str, condition: str | None) -> tuple:
    from discnb.generative.sampling import SDGenerator
    from discnb.pipelines.train_ldm import ablation_folder, load_trained
    P01 = ldm_params(ctx.ldm_dir)
    check_ldm(ctx.ldm_dir, P01, ctx.image_size)
    model, vq = load_trained(P01, condition=condition)
    h = hashlib.sha1(json.dumps([name, ctx.steps, ctx.scheduler]).encode())
    hash_tree(h, ctx.ldm_dir / ("sd" if condition is None else ablation_folder(condition)) / "best")
    hash_tree(h, paths.resolve(P01.autoencoder["path"]) if P01.autoencoder["path"] else ctx.ldm_dir / "autoencoder" / "best")
    gen = SDGenerator(model, vq, steps=ctx.steps, scheduler=ctx.scheduler, batch_size=ctx.batch_size,
                      device=ctx.device, bf16=ctx.bf16)
    gen.name = name
    return gen, h.hexdigest()[:16]


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


def available() -> list[str]:
    _load_plugins()
    return sorted(GENERATORS)


def _load_plugins() -> None:
    """Generators defined in other modules register on import."""
    import importlib
    for mod in ("discnb.generative.disc",):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
