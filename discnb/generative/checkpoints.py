"""Notebook 01's trained models, loaded from its folder (``outputs/<profile>/ldm/``): SD of paper
Sec. 2.1, the first stage it was trained on, and the Fig. 7 ablation SDs.

Everything that reads those models (the generator registry, notebook 02's fine-tuning, the
benchmark, notebook 01's own reports) finds them here, from notebook 01's resolved parameters, so
the layout of that folder is known in one place:

    ldm/params.resolved.yaml      notebook 01's parameters (:func:`ldm_params`)
    ldm/summary.json              written last: the run finished (:func:`check_ldm`)
    ldm/autoencoder/best/         the first stage trained here (unless ``autoencoder.path``), for notebook 01 itself
    ldm/sd/best/                  SD (:func:`sd_pipeline`)
    ldm/sd-tile/best/, ...        the ablation SDs (:func:`ablation_folder`)

Every model folder (``best/`` and ``final/``) is a :class:`discnb.generative.disc_pipeline.DISCPipeline` folder
holding the first stage the model was trained on; training state (optimizer, EMA, step) stays in the
``checkpoint-<step>/`` folders beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from discnb.core import layout, params, paths
from discnb.generative import ldm
from discnb.generative import disc_pipeline as pl

NOTEBOOK01 = "01_train_ldm"
RUN01 = f"notebooks/{NOTEBOOK01}.ipynb"


def ldm_params(ldir: Path) -> params.Params:
    """Notebook 01's resolved parameters for the LDM in ``ldir``, validated."""
    p = Path(ldir) / "params.resolved.yaml"
    if not p.exists():
        raise FileNotFoundError(f"{p}: no trained LDM for this profile; run {RUN01} first")
    try:
        P01 = params.validate(NOTEBOOK01, yaml.safe_load(p.read_text()) or {})
    except params.ParamError as e:
        raise params.ParamError(f"{p} no longer fits notebook 01's parameters ({e}); re-run {RUN01} for this "
                                "profile") from None
    return params.Params({**P01, "output_dir": str(ldir)})


def check_ldm(ldir: Path, P01, image_size: int) -> dict:
    """The LDM in ``ldir`` exists, finished, is pixel-conditioned, makes tiles of ``image_size``
    and still has the first stage it was trained with. Returns its ``summary.json``."""
    ldir = Path(ldir)
    run01 = f"run {RUN01} (profile {P01.profile})"
    if not (ldir / "sd" / "best" / "model_index.json").exists():
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
        same = done.exists() and json.loads(done.read_text()) == summary.get("autoencoder")
    if not same:
        raise ValueError(f"{ldir}: SD was trained on the latents of another first stage than the one there now "
                         f"(autoencoder changed after SD was trained); {run01} again so SD and its first stage match")
    return summary


def ablation_folder(condition: str) -> str:
    """Where the Fig. 7 ablation SD of ``condition`` lives under notebook 01's output folder."""
    return "sd-" + ldm.check_condition(condition).replace("+", "-")


def sd_folder(P01, condition: str | None = None, which: str = "best") -> Path:
    """SD's folder (checkpoint ``which``: best or final), or that of the ablation SD of ``condition``."""
    sub = "sd" if condition in (None, P01.condition) else ablation_folder(condition)
    return layout.of(P01, NOTEBOOK01).ldm / sub / which


def first_stage_folder(P01) -> Path:
    """The first stage SD was trained on: ``autoencoder.path``, or the one notebook 01 trained."""
    A = P01.autoencoder
    return paths.resolve(A["path"]) if A["path"] else layout.of(P01, NOTEBOOK01).ldm / "autoencoder" / "best"


def build_model(P01, image_size: int, latent_size: int, latent_scale: float, condition: str | None = None) -> ldm.MaskLDM:
    """An untrained SD of notebook 01's ``unet`` settings (condition: SD's own, or an ablation's)."""
    return ldm.MaskLDM.from_config({**P01.unet, **guidance(P01), "condition": condition or P01.condition}, image_size,
                                   latent_size, latent_scale)


def guidance(P01) -> dict:
    """Notebook 01's classifier-free-guidance and min-SNR settings (beyond the paper; see
    :class:`discnb.generative.ldm.MaskLDM`): ``sd.cond_drop``, ``sd.snr_gamma`` (training) and
    ``guidance_scale`` (sampling)."""
    return {"cond_drop": P01.sd["cond_drop"], "snr_gamma": P01.sd["snr_gamma"], "guidance_scale": P01.guidance_scale}


def sd_pipeline(P01, which: str = "best", condition: str | None = None) -> pl.DISCPipeline:
    """SD as notebook 01 trained it, with its first stage; ``condition`` other than SD's own: the Fig. 7
    ablation SD of that condition. Its guidance scale is notebook 01's current one (a sampling setting)."""
    folder = sd_folder(P01, condition, which)
    if condition not in (None, P01.condition) and not (folder / "model_index.json").exists():
        raise FileNotFoundError(f"{folder}: no {condition}-conditioned SD; add {condition!r} to ablation_conditions in "
                                f"notebook 01's parameters (profile {P01.profile}) and run it again (SD itself is reused)")
    pipe = pl.load_pipeline(folder)
    c = pipe.config
    pipe.register_to_config(guidance_scale=ldm.check_guidance(c.cond_drop, P01.guidance_scale, c.snr_gamma)[1])
    return pipe


def load_sd(P01, which: str = "best", condition: str | None = None) -> ldm.MaskLDM:
    """:func:`sd_pipeline`'s model as the :class:`MaskLDM` that trains and samples it."""
    return sd_pipeline(P01, which, condition).ldm


def load_trained(P01, which: str = "best", condition: str | None = None) -> tuple:
    """(SD, first stage) of :func:`sd_pipeline`."""
    pipe = sd_pipeline(P01, which, condition)
    return pipe.ldm, pipe.vqvae
