"""Train the first stage and SD (paper Sec. 2.1, Eq. 1): ``python -m discnb.pipelines.train_ldm``.

    python -m discnb.pipelines.train_ldm --params params/demo/01_train_ldm.yaml
    accelerate launch --config_file params/accelerate/multi_gpu.yaml -m discnb.pipelines.train_ldm --params params/paper/01_train_ldm.yaml

Notebook 01 calls :func:`run` in-process with the same parameters. Every stage resumes: a
finished first stage is reused, SD continues from its latest checkpoint (``resume: latest``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from discnb.generative import autoencoder as ae
from discnb.data import sicap as data
from discnb.generative import ldm
from discnb.core import params
from discnb.core import paths
from discnb.pipelines import prep
from discnb.core.train import FitConfig, TensorData, fit

NOTEBOOK = "01_train_ldm"


def data_dir(P) -> Path:
    return paths.param_dir(P, "data_dir", "data")


def out_dir(P) -> Path:
    return paths.param_dir(P, "output_dir", "ldm")


def prep_params(ddir: Path) -> dict:
    p = ddir / "params.resolved.yaml"
    if not p.exists():
        raise FileNotFoundError(f"{p}: no data prep for this profile; run notebooks/00_data_prep.ipynb first")
    return yaml.safe_load(p.read_text())


def load_split(P, progress: bool = True) -> dict:
    """Tiles and masks of the training and validation split, in memory at the model's size."""
    ddir = data_dir(P)
    size = prep_params(ddir)["image_size"]
    index = prep.read_index(ddir)
    if not (index.split == "train").any():
        raise data.DataError(f"{ddir}/index.csv: the training split is empty (no official-train tiles)")
    parts = data.fold_split(index, P.val_fold)
    if len(parts["train"]) == 0:
        raise data.DataError(f"{ddir}/index.csv: the training split (official train minus fold {P.val_fold}) is empty")
    out = {"image_size": size}
    for name in ("train", "val"):
        imgs, masks = data.load_tiles(parts[name], size, progress=progress)
        out[name] = {"imgs": imgs, "masks": masks,
                     "slide": parts[name][["slide_primary_label", "slide_secondary_label"]].to_numpy(np.int64)}
    return out


def held_out(split: dict) -> dict:
    """The validation part of :func:`load_split` (the training part when there is no validation fold)."""
    return split["val"] if len(split["val"]["imgs"]) else split["train"]


def fit_config(P, out: Path, section: dict, desc: str, signature: dict, progress: bool = True) -> FitConfig:
    return FitConfig(out_dir=str(out), max_steps=section["steps"], global_batch=section["batch"],
                     grad_accum=section.get("grad_accum", 1), lr=section["lr"], scale_lr=section.get("scale_lr", False),
                     ema_decay=section.get("ema_decay", 0.0), mixed_precision=P.mixed_precision, cpu=P.device == "cpu",
                     checkpoint_every=P.checkpoint_every, checkpoints_total_limit=P.checkpoints_total_limit,
                     resume=P.resume or None, seed=P.seed, desc=desc, signature=signature, progress=progress)


def first_stage(P, split: dict, progress: bool = True) -> tuple:
    """Load the first stage from ``autoencoder.path`` or train it (reused once finished)."""
    A = P.autoencoder
    if A["path"]:
        return ae.load_vq(paths.resolve(A["path"])), {"source": A["path"]}
    out = out_dir(P) / "autoencoder"
    sig = {"kind": "vq", "channels": A["channels"], "layers_per_block": A["layers_per_block"],
           "n_embed": A["n_embed"], "image_size": split["image_size"]}
    done = out / "done.json"
    if done.exists() and json.loads(done.read_text()).get("signature") == sig and (out / "final").exists():
        return ae.load_vq(out / "final"), json.loads(done.read_text())
    vq = ae.build_vq(A["channels"], A["layers_per_block"], A["n_embed"])
    tr = TensorData({"x": ae.to_tensor(split["train"]["imgs"])}, augment=lambda b: ae.dihedral(b, ("x",)))
    va = TensorData({"x": ae.to_tensor(split["val"]["imgs"])})
    summary = fit(vq, ae.vq_loss, tr, fit_config(P, out, A, "autoencoder", sig, progress), val=va,
                  save_fn=lambda m, d: m.save_pretrained(d))
    vq = ae.load_vq(out / "best")
    info = {"signature": sig, "fit": summary, "source": "trained here (L1 + L2 + codebook; no LPIPS/GAN)"}
    if len(split["val"]["imgs"]):
        info["val_reconstruction"] = ae.reconstruction_metrics(vq, split["val"]["imgs"])
    prep.write_json(done, info)
    return vq, info


def encode_split(vq, split: dict, latent_scale: float | None = None) -> tuple[dict, float]:
    """Pre-quantisation latents of train/val tiles, scaled to unit std when ``latent_scale`` is None."""
    z = {k: ae.encode(vq, ae.to_tensor(split[k]["imgs"])) for k in ("train", "val")}
    if latent_scale is None:
        latent_scale = float(1.0 / z["train"].std())
    return {k: v * latent_scale for k, v in z.items()}, latent_scale


def ablation_folder(condition: str) -> str:
    """Where the Fig. 7 ablation SD of ``condition`` lives under notebook 01's output folder."""
    return "sd-" + ldm.check_condition(condition).replace("+", "-")


def ldm_signature(P, image_size: int, condition: str | None = None) -> dict:
    # options left at their default are not part of the signature (models trained before the option stay valid)
    unet = {k: v for k, v in P.unet.items() if not (k in ldm.OPTION_DEFAULTS and v == ldm.OPTION_DEFAULTS[k])}
    return {"kind": "ldm", "condition": condition or P.condition, "unet": unet, "image_size": image_size,
            "autoencoder": {k: v for k, v in P.autoencoder.items() if k in ("path", "channels", "layers_per_block", "n_embed")}}


def build_model(P, image_size: int, latent_size: int, latent_scale: float, condition: str | None = None) -> ldm.MaskLDM:
    return ldm.MaskLDM.from_config({**P.unet, "condition": condition or P.condition}, image_size, latent_size, latent_scale)


def ldm_batch_loss(condition: str, alphas_cumprod: torch.Tensor):
    """Eq. 1 on a batch of stored latents and masks (condition images are built on the fly)."""
    def loss(model, batch, generator=None):
        cond = ldm.make_condition(batch["mask"], condition, batch["slide"]).to(batch["z"].device)
        return ldm.ldm_loss(model, {"z": batch["z"], "cond": cond}, alphas_cumprod, generator)
    return loss


def run(P, progress: bool = True) -> dict:
    """First stage -> latents -> SD (-> the Fig. 7 ablation SDs of ``ablation_conditions``, same
    settings, same first stage, other condition). Returns a summary (also written to ``summary.json``)."""
    ldm.check_condition(P.condition)
    for c in P.ablation_conditions:
        if ldm.check_condition(c) == P.condition:
            raise params.ParamError(f"ablation_conditions: {c!r} is SD's own condition; list only the others")
    out = out_dir(P)
    out.mkdir(parents=True, exist_ok=True)
    split = load_split(P, progress)
    vq, ae_info = first_stage(P, split, progress)
    z, latent_scale = encode_split(vq, split, None if P.latent_scale_by_std else 1.0)
    size = split["image_size"]
    model = build_model(P, size, z["train"].shape[-1], latent_scale)

    def tensors(k):
        return {"z": z[k], "mask": torch.from_numpy(split[k]["masks"]), "slide": torch.from_numpy(split[k]["slide"])}
    tr = TensorData(tensors("train"), augment=lambda b: ae.dihedral(b, ("z", "mask")))
    va = TensorData(tensors("val"))
    sched = ldm.noise_scheduler()
    summary = fit(model, ldm_batch_loss(P.condition, sched.alphas_cumprod), tr,
                  fit_config(P, out / "sd", P.sd, "SD", ldm_signature(P, size), progress), val=va,
                  save_fn=lambda m, d: m.save_pretrained(d))
    ablation = {}
    for c in P.ablation_conditions:  # Fig. 7: the same SD recipe, conditioned on tile (+ slide) labels only
        m = build_model(P, size, z["train"].shape[-1], latent_scale, c)
        ablation[c] = fit(m, ldm_batch_loss(c, sched.alphas_cumprod), tr,
                          fit_config(P, out / ablation_folder(c), P.sd, f"SD ({c})", ldm_signature(P, size, c), progress),
                          val=va, save_fn=lambda m, d: m.save_pretrained(d))
    result = {"autoencoder": ae_info, "sd": summary, "latent_scale": latent_scale, "image_size": size,
              "latent_shape": list(z["train"].shape[1:]), "n_train": len(tr), "n_val": len(va),
              "unet_parameters": sum(p.numel() for p in model.unet.parameters()),
              "tau_parameters": sum(p.numel() for p in model.tau.parameters()),
              "ablation": ablation}
    prep.write_json(out / "summary.json", result)
    return result


def load_sd(P, which: str = "best", condition: str | None = None) -> ldm.MaskLDM:
    """SD as trained by :func:`run` for these parameters; ``condition`` other than SD's own: the
    Fig. 7 ablation SD of that condition."""
    folder = out_dir(P) / ("sd" if condition in (None, P.condition) else ablation_folder(condition)) / which
    if condition not in (None, P.condition) and not (folder / "ldm.json").exists():
        raise FileNotFoundError(f"{folder}: no {condition}-conditioned SD; add {condition!r} to ablation_conditions in "
                                f"notebook 01's parameters (profile {P.profile}) and run it again (SD itself is reused)")
    return ldm.MaskLDM.from_pretrained(folder)


def load_trained(P, which: str = "best", condition: str | None = None) -> tuple:
    """(SD, first stage): :func:`load_sd` and the first stage it was trained on."""
    sd = load_sd(P, which, condition)  # first: a missing ablation SD is the error to report
    vq = ae.load_vq(paths.resolve(P.autoencoder["path"])) if P.autoencoder["path"] else \
        ae.load_vq(out_dir(P) / "autoencoder" / "best")
    return sd, vq


def report_inputs(P, which: str = "best") -> dict:
    """What notebook 01's reports share, loaded once: the held-out tiles (``src``), SD and its first
    stage (``model``, ``vq``; checkpoint ``which``). Pass it as ``inputs=`` to the report functions."""
    model, vq = load_trained(P, which)
    return {"src": held_out(load_split(P, progress=False)), "model": model, "vq": vq, "which": which}


def _inputs(P, inputs: dict | None, which: str) -> tuple:
    if inputs is None:
        inputs = report_inputs(P, which)
    elif inputs["which"] != which:
        raise ValueError(f"inputs hold the {inputs['which']!r} SD, not {which!r}")
    return inputs["src"], inputs["model"], inputs["vq"]


def sample_report(P, n: int, steps: int, scheduler: str, seed: int = 0, which: str = "best",
                  inputs: dict | None = None) -> dict:
    """SD samples for ``n`` validation masks (two seeds each), timed: rows for a figure + numbers."""
    import time
    from discnb.plots import colorize
    from discnb.generative.sampling import SDGenerator
    src, model, vq = _inputs(P, inputs, which)
    rng = np.random.default_rng(seed)
    n_labels = np.array([len(np.unique(m)) for m in src["masks"]])
    order = np.argsort(-n_labels + rng.random(len(n_labels)) * 0.5, kind="stable")[:n]  # multi-label masks first
    gen = SDGenerator(model, vq, steps=steps, scheduler=scheduler, batch_size=max(1, n),
                      device="cuda" if torch.cuda.is_available() and P.device != "cpu" else "cpu",
                      bf16=P.mixed_precision == "bf16")
    masks = src["masks"][order]
    t0 = time.perf_counter()
    a = gen.generate(masks, [seed * 10_000 + i for i in range(len(masks))], src["slide"][order])
    sec_per_tile = (time.perf_counter() - t0) / len(masks)
    b = gen.generate(masks, [seed * 10_000 + 5_000 + i for i in range(len(masks))], src["slide"][order])
    rows = {"real tile": list(src["imgs"][order]), "mask": [colorize(m) for m in masks],
            "SD seed A": list(a), "SD seed B": list(b)}
    for c in P.ablation_conditions:  # Fig. 7's ablation SDs on the same masks and noise as seed A
        m_c = load_sd(P, which, condition=c)  # same first stage: only the U-Net is loaded
        g = SDGenerator(m_c, vq, steps=steps, scheduler=scheduler, batch_size=max(1, n), device=gen.device,
                        bf16=gen.bf16)
        rows[f"SD ({c} labels)"] = list(g.generate(masks, [seed * 10_000 + i for i in range(len(masks))],
                                                   src["slide"][order]))
    return {"rows": rows, "masks": masks, "samples": a, "sec_per_tile": sec_per_tile, "steps": steps,
            "scheduler": scheduler, "device": str(gen.device)}


def conditioning_report(P, n: int = 256, which: str = "best", inputs: dict | None = None,
                        models: dict | None = None):
    """:func:`discnb.generative.ldm.conditioning_gap` of SD (or of each of ``models``, name -> MaskLDM on SD's
    latents, e.g. the fine-tuned ones) on the same up to ``n`` validation latents, encoded once:
    does the noise prediction use the mask? (A relative gap near 0 means it ignores tau_theta.)"""
    import pandas as pd
    src, model, vq = _inputs(P, inputs, which)
    z = ae.encode(vq, ae.to_tensor(src["imgs"][:n])) * model.latent_scale
    masks = torch.from_numpy(src["masks"][:n])
    return pd.DataFrame([{"model": name, **r} for name, m in (models or {"SD": model}).items()
                         for r in ldm.conditioning_gap(m, z, masks)])


def latent_drift(P, n: int = 16, steps: int = 50, scheduler: str = "ddim", seed: int = 0, which: str = "best",
                 inputs: dict | None = None) -> dict:
    """Do SD's samples land where real latents are? The std and the median per-tile max |z| of
    ``n`` sampled latents (validation masks, seeded noise) next to those of the real validation
    latents. A model whose DDIM trajectories drift (the demo's eps-U-Net: ~4x the std) decodes to
    flat or saturated tiles whatever the mask; see README "Does SD follow the mask?"."""
    from discnb.generative.sampling import SDGenerator
    src, model, vq = _inputs(P, inputs, which)
    real = ae.encode(vq, ae.to_tensor(src["imgs"][:max(n, 64)])) * model.latent_scale
    gen = SDGenerator(model, vq, steps=steps, scheduler=scheduler, batch_size=n)
    z = gen.latents(src["masks"][:n], [seed * 10_000 + i for i in range(n)], src["slide"][:n])

    def stats(x):
        return {"std": float(x.std()), "median_max_abs": float(x.abs().flatten(1).amax(1).median())}
    return {"real": stats(real), "sampled": stats(z), "std_ratio": float(z.std() / real.std()),
            "n": n, "steps": steps, "scheduler": scheduler, "prediction": model.prediction}


def main(argv: list[str] | None = None) -> int:
    from discnb.core.notebook import cli
    from discnb.core.train import process_state

    def is_main(P):
        return process_state(P.device == "cpu").is_main_process
    P, a = cli(NOTEBOOK, "train_ldm", __doc__.split("\n\n")[0], out_dir, argv, main_process=is_main)
    res = run(P, progress=not a.no_progress)
    if is_main(P):
        print(json.dumps({"steps": res["sd"]["steps"], "best_val_loss": res["sd"]["best_val_loss"],
                          "samples_per_s": res["sd"]["samples_per_s"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
