"""Notebook 01 (paper Sec. 2.1, Eq. 1): the first stage, the pattern judge, SD and the Fig. 7
ablation SDs, then the reports (reconstructions, loss curves, samples, conditioning gap, latent
drift, ``throughput.json``) as named steps.

    python -m discnb.pipelines.train_ldm --params params/demo/01_train_ldm.yaml
    accelerate launch --config_file params/accelerate/multi_gpu.yaml -m discnb.pipelines.train_ldm --params params/paper/01_train_ldm.yaml

Notebook 01 calls the same steps cell by cell; :func:`run` calls them in order (the reports in one
process). Every step resumes: a finished first stage and a judge of the same signature are
reused, SD continues from its latest checkpoint (``resume: latest``). The judge is trained here,
once, before notebook 02, the benchmark and notebook 04 use it (``outputs/<profile>/judge/``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from discnb import plots
from discnb.core import io, layout, params, paths
from discnb.core.notebook import cli
from discnb.core.train import TensorData, fit, pick_device, process_state, read_metrics
from discnb.data import prepared, shapes
from discnb.data.augment import dihedral, random_crop
from discnb.generative import autoencoder as ae
from discnb.generative import checkpoints as ck
from discnb.generative import ldm
from discnb.generative.ldm_training import (conditioning_report, encode_split, fit_config, inputs_of, ldm_batch_loss,
                                            ldm_signature, load_split, report_inputs)
from discnb.generative.disc_pipeline import DISCPipeline
from discnb.generative.sampling import SDGenerator
from discnb.grading import adherence
from discnb.grading import judge as jg

NOTEBOOK = "01_train_ldm"
# the first stage's training settings that its ``autoencoder`` section does not declare (core.train.FitConfig's
# defaults): no gradient accumulation, no EMA, no weight decay, gradients clipped at norm 1
FIRST_STAGE_FIT = {"grad_accum": 1, "ema_decay": 0.0, "weight_decay": 0.0, "max_grad_norm": 1.0}


def first_stage(P, split: dict, progress: bool = True) -> tuple:
    """Load the first stage from ``autoencoder.path`` or train it (reused once finished)."""
    A = P.autoencoder
    if A["path"]:
        return ae.load_vq(paths.resolve(A["path"])), {"source": A["path"]}
    out = layout.of(P, NOTEBOOK).out / "autoencoder"
    sig = {"kind": "vq", "channels": A["channels"], "layers_per_block": A["layers_per_block"],
           "n_embed": A["n_embed"], "image_size": split["image_size"]}
    gan = A["disc_weight"] > 0
    if gan:  # only then: first stages trained without the discriminator keep their signature
        sig |= {k: A[k] for k in ("disc_weight", "disc_channels", "disc_layers")}
    if A.get("crop"):  # likewise: trained on crops (beyond the paper; the demo's 2 cores, docs/cost.md)
        sig["crop"] = A["crop"]
    if not A.get("mid_attention", True):  # and without the mid-blocks' self-attention (LDM's vq-f4 has it)
        sig["mid_attention"] = False
    done = out / "done.json"
    if done.exists() and json.loads(done.read_text()).get("signature") == sig and (out / "final").exists():
        return ae.load_vq(out / "best"), json.loads(done.read_text())  # the one a fresh run continues with
    vq = ae.build_vq(A["channels"], A["layers_per_block"], A["n_embed"], mid_attention=A.get("mid_attention", True))
    # uint8 in memory, floats per batch (float32 tiles would take ~10 GB per process at SICAPv2's size)
    tr = TensorData({"x": ae.pixels(split["train"]["imgs"])},
                    augment=lambda b: random_crop(dihedral(b, ("x",)), ("x",), A.get("crop", 0)), transform=ae.pixels_to_model)
    va = TensorData({"x": ae.pixels(split["val"]["imgs"])}, transform=ae.pixels_to_model)
    cfg = fit_config(P, out, {**A, **FIRST_STAGE_FIT}, "autoencoder", sig, progress)
    if gan:  # LDM's vq-f4 recipe without LPIPS: patch-GAN with taming's adaptive weight, from step 0
        summary = fit(ae.VQGAN(vq, ae.PatchDiscriminator(A["disc_channels"], A["disc_layers"])),
                      ae.vqgan_loss(A["disc_weight"]), tr, cfg, val=va, save_fn=lambda m, d: m.vq.save_pretrained(d))
    else:
        summary = fit(vq, ae.vq_loss, tr, cfg, val=va, save_fn=lambda m, d: m.save_pretrained(d))
    vq = ae.load_vq(out / "best")
    losses = "L1 + L2 + codebook + patch-GAN (adaptive weight); no LPIPS" if gan else "L1 + L2 + codebook; no LPIPS/GAN"
    info = {"signature": sig, "fit": summary, "source": f"trained here ({losses})"}
    if len(split["val"]["imgs"]):
        info["val_reconstruction"] = ae.reconstruction_metrics(vq, split["val"]["imgs"])
    io.write_json(done, info)
    return vq, info


def check_conditions(P) -> None:
    ldm.check_condition(P.condition)
    for c in P.ablation_conditions:
        if ldm.check_condition(c) == P.condition:
            raise params.ParamError(f"ablation_conditions: {c!r} is SD's own condition; list only the others")


def train_judge(P, progress: bool = True, D: dict | None = None, recipe_input: str | None = None,
                seed: int | None = None) -> jg.Judge:
    """The pattern judge (the real-only CarcinoNet, frozen; ``judge``: its recipe) trained once, here,
    before any notebook uses it: on real tiles, or (``input: first_stage``) on real tiles passed
    through this notebook's first stage, the domain of every generated tile. Stored in
    ``outputs/<profile>/judge/`` and reused while its signature matches. ``recipe_input`` other than
    ``judge.input``: the second judge of :func:`train_judges` (same recipe, the other input),
    stored in ``judge-<input>/``; ``seed`` other than ``judge.seed``: a judge of ``judge_seeds``
    that only ``judge.json`` uses (:func:`judge_folder`)."""
    J = dict(P.judge)
    J["seed"] = J["seed"] if seed is None else seed
    J["input"] = recipe_input or J["input"]
    seed = J.pop("seed")
    if D is None:
        D = prepared.split_tiles(layout.of(P, NOTEBOOK).data, P.val_fold, ood_split="", progress=progress)
    return jg.train_judge(D, J, judge_folder(P, J["input"], seed), seed=seed,
                          first_stage=ck.first_stage_folder(P) if J["input"] == "first_stage" else None,
                          device=P.device, mixed_precision=P.mixed_precision, checkpoint_every=P.checkpoint_every,
                          checkpoints_total_limit=P.checkpoints_total_limit, resume=P.resume, progress=progress)


def judge_seeds(P) -> list[int]:
    """The judge seeds ``judge.json`` averages over: ``judge.seed`` (the adherence judge later notebooks load) first,
    then the other ``judge_seeds`` (one judge per run moved GG5 by 0.12 between two seeds of one recipe)."""
    if P.judge["seed"] not in P.judge_seeds:
        raise params.ParamError(f"judge_seeds {P.judge_seeds} must contain judge.seed {P.judge['seed']} (the adherence "
                                "judge, which judge.json scores with the others)")
    return [P.judge["seed"]] + [s for s in dict.fromkeys(P.judge_seeds) if s != P.judge["seed"]]


def train_judges(P, progress: bool = True) -> dict:
    """Both judges of the measurement (beyond the paper), the same recipe, for every seed of :func:`judge_seeds`:
    ``first_stage``, trained on first-stage reconstructions of the real training tiles (the
    adherence judge every later notebook loads when ``judge.input`` is ``first_stage``, and the
    ceiling), and ``real``, trained on the untouched tiles (how much of what tells the grades apart
    the first stage keeps). Returns {input: the Judge of ``judge.seed``, "seeds": {seed: {input: Judge}},
    "tiles": the held-out split they are scored on}."""
    D = prepared.split_tiles(layout.of(P, NOTEBOOK).data, P.val_fold, ood_split="", progress=progress)
    on = "val" if len(D["val"]["imgs"]) else "test"
    adherence.check_chance_separable(D[on]["masks"], f"{layout.of(P, NOTEBOOK).data}/index.csv, the {on} split "
                                     f"(val_fold {P.val_fold})")  # before training judges it could not score
    seeds = {s: {i: train_judge(P, progress, D, i, s) for i in ("real", "first_stage")} for s in judge_seeds(P)}
    return seeds[P.judge["seed"]] | {"seeds": seeds, "tiles": D[on]}


def judge_report(P, judges: dict) -> dict:
    """``judge.json`` (also in :func:`discnb.core.paths.results_dir`): the judges scored three ways on
    the held-out tiles, each {mean_iou, iou per class, pixel_agreement}, averaged over the seeds of
    :func:`judge_seeds` (with ``mean_iou_std``, ``iou_std`` over seeds, ddof 0, and ``per_seed``):

    - ``real_on_real``: the real-trained judge on the real tiles (can the grades be told apart?);
    - ``real_on_recon``: the same judge on their first-stage reconstructions (what the first stage keeps);
    - ``recon_on_recon``: the judge trained on reconstructions, on the reconstructions: the **ceiling**
      no generator can beat, since every generated tile is decoded by the same first stage;
    - ``chance``: that judge on the reconstructions against a fixed permutation of the masks.
    """
    tiles = judges["tiles"]
    fs0 = judges["first_stage"]
    adherence.check_chance_separable(tiles["masks"], f"judge report on {fs0.info['scored_on']}")
    recon = jg.first_stage_view(tiles["imgs"], ck.first_stage_folder(P))
    per_seed = {s: judge_three_ways(j["real"], j["first_stage"], recon, tiles["masks"])
                for s, j in judges.get("seeds", {P.judge["seed"]: judges}).items()}
    rep = over_seeds(per_seed) | {
        "scored_on": fs0.info["scored_on"], "judge_steps": int(P.judge["train"]["steps"]),
        "judge_seeds": list(per_seed),
        "first_stage": ck.first_stage_folder(P).name if P.autoencoder["path"] else "trained by notebook 01"}
    rep["ratio_real_on_recon_to_real_on_real"] = rep["real_on_recon"]["mean_iou"] / max(rep["real_on_real"]["mean_iou"], 1e-9)
    io.write_json(layout.of(P, NOTEBOOK).judge / "judge_report.json", rep)
    io.write_json(paths.results_dir(P.profile) / "judge.json", rep)
    return rep


def over_seeds(per_seed: dict) -> dict:
    """{way: scores} per seed -> {way: mean over seeds of mean_iou, iou, pixel_agreement; their std (ddof 0);
    n_tiles; per_seed mean_iou and iou}. One seed: its own scores, std 0."""
    out = {}
    for way in next(iter(per_seed.values())):
        rows = [r[way] for r in per_seed.values()]
        iou = pd.DataFrame([r["iou"] for r in rows])
        out[way] = {"mean_iou": float(np.mean([r["mean_iou"] for r in rows])),
                    "iou": {k: float(v) for k, v in iou.mean().items()},
                    "pixel_agreement": float(np.mean([r["pixel_agreement"] for r in rows])),
                    "n_tiles": rows[0]["n_tiles"],
                    "mean_iou_std": float(np.std([r["mean_iou"] for r in rows])),
                    "iou_std": {k: float(v) for k, v in iou.std(ddof=0).items()},
                    "per_seed": {str(s): {"mean_iou": r[way]["mean_iou"], "iou": r[way]["iou"]} for s, r in per_seed.items()}}
    return out


def judge_three_ways(real, fs, recon: np.ndarray, masks: np.ndarray) -> dict:
    """The scores of :func:`judge_report` for the real-tile judge ``real`` and the first-stage judge ``fs`` (None:
    leave out ``recon_on_recon`` and ``chance``) on held-out tiles whose reconstructions are ``recon``; ``real`` and
    ``fs`` were scored on those tiles when trained (``info["real"]``), so only the reconstructions are judged here."""
    def keep(r):
        return {k: r[k] for k in ("mean_iou", "iou", "pixel_agreement", "n_tiles")}
    rep = {"real_on_real": keep(real.info["real"]), "real_on_recon": keep(real(recon, masks))}
    if fs is not None:
        rep |= {"recon_on_recon": keep(fs.info["real"]),
                "chance": keep(fs(recon, masks[adherence.chance_order(len(masks), 0)]))}
    return rep


def judge_report_table(rep: dict) -> pd.DataFrame:
    """:func:`judge_report` as a table: one row per way of scoring, IoU per class and mean."""
    rows = {k: {**{f"IoU {lab}": v for lab, v in rep[k]["iou"].items()}, "mean IoU": rep[k]["mean_iou"],
                "std over seeds": rep[k].get("mean_iou_std", 0.0)}
            for k in ("real_on_real", "real_on_recon", "recon_on_recon", "chance")}
    return pd.DataFrame.from_dict(rows, orient="index")


def judge_folder(P, recipe_input: str, seed: int | None = None) -> Path:
    """Where the judge of ``recipe_input`` is stored: ``judge/`` for ``judge.input`` (the one later
    notebooks load), ``judge-<input>/`` for the other one; ``-seed<k>`` added for a seed other than ``judge.seed``."""
    d = layout.of(P, NOTEBOOK).judge
    d = d if recipe_input == P.judge["input"] else d.with_name(f"judge-{recipe_input}")
    return d if seed in (None, P.judge["seed"]) else d.with_name(f"{d.name}-seed{seed}")


def judge_figure(P):
    """Figure ``01_judge_curves``: both judges' training and validation loss (their curves)."""
    runs = {f"judge trained on {label}": sorted(judge_folder(P, i).glob("run-*"))[0]
            for i, label in (("real", "real tiles"), ("first_stage", "reconstructions"))}
    fig = plots.loss_curves(runs, smooth=5, log=False, title="pattern judges (CarcinoNet recipe)")
    plots.save(fig, paths.figures_dir(P.profile) / "01_judge_curves")
    return fig


def train_sd(P, split: dict, vq, ae_info: dict, progress: bool = True) -> dict:
    """Latents of the first stage -> SD (Eq. 1) -> the Fig. 7 ablation SDs of ``ablation_conditions``
    (same settings, same first stage, other condition). Returns a summary (also ``summary.json``)."""
    check_conditions(P)
    out = layout.of(P, NOTEBOOK).out
    z, latent_scale = encode_split(vq, split, None if P.latent_scale_by_std else 1.0)
    size = split["image_size"]
    model = ck.build_model(P, size, z["train"].shape[-1], latent_scale)

    def tensors(k):
        return {"z": z[k], "mask": torch.from_numpy(split[k]["masks"]), "slide": torch.from_numpy(split[k]["slide"])}
    # sd.crop (beyond the paper): latent windows with their masks, on the edges of tau's tokens, so the mask
    # encoder's position embedding is cut where the window lies (generative.ldm.MaskEncoder)
    step = max(1, model.tau.token_px // (size // z["train"].shape[-1]))
    tr = TensorData(tensors("train"),
                    augment=lambda b: random_crop(dihedral(b, ("z", "mask")), ("z", "mask"), P.sd.get("crop", 0), step))
    va = TensorData(tensors("val"))
    sched = ldm.noise_scheduler()
    summary = fit(model, ldm_batch_loss(P.condition, sched.alphas_cumprod), tr,
                  fit_config(P, out / "sd", P.sd, "SD", ldm_signature(P, size), progress), val=va,
                  save_fn=DISCPipeline.saver(vq))
    ablation = {}
    A = {**P.sd, "steps": P.ablation_steps or P.sd["steps"]}  # smoke: fewer steps (only the pipeline is tested)
    for c in P.ablation_conditions:  # Fig. 7: the same SD recipe, conditioned on tile (+ slide) labels only
        m = ck.build_model(P, size, z["train"].shape[-1], latent_scale, c)
        ablation[c] = fit(m, ldm_batch_loss(c, sched.alphas_cumprod), tr,
                          fit_config(P, out / ck.ablation_folder(c), A, f"SD ({c})", ldm_signature(P, size, c), progress),
                          val=va, save_fn=DISCPipeline.saver(vq))
    result = {"autoencoder": ae_info, "sd": summary, "latent_scale": latent_scale, "image_size": size,
              "latent_shape": list(z["train"].shape[1:]), "n_train": len(tr), "n_val": len(va),
              "unet_parameters": sum(p.numel() for p in model.unet.parameters()),
              "tau_parameters": sum(p.numel() for p in model.tau.parameters()),
              "ablation": ablation}
    if process_state(P.device == "cpu").is_main_process:
        io.write_json(out / "summary.json", result)
    return result


def sample_report(P, n: int, steps: int, scheduler: str, seed: int = 0, which: str = "best",
                  inputs: dict | None = None) -> dict:
    """SD samples for ``n`` validation masks (two seeds each), timed: rows for a figure + numbers."""
    src, model, vq = inputs_of(P, inputs, which)
    order = shapes.most_labels_first(src["masks"], n, seed)
    gen = SDGenerator(model, vq, steps=steps, scheduler=scheduler, batch_size=max(1, n),
                      device=pick_device(P.device), bf16=P.mixed_precision == "bf16")
    masks = src["masks"][order]
    t0 = time.perf_counter()
    a = gen.generate(masks, [seed * 10_000 + i for i in range(len(masks))], src["slide"][order])
    sec_per_tile = (time.perf_counter() - t0) / len(masks)
    b = gen.generate(masks, [seed * 10_000 + 5_000 + i for i in range(len(masks))], src["slide"][order])
    rows = {"real tile": list(src["imgs"][order]), "mask": [plots.colorize(m) for m in masks],
            "SD seed A": list(a), "SD seed B": list(b)}
    for c in P.ablation_conditions:  # Fig. 7's ablation SDs on the same masks and noise as seed A
        m_c = ck.load_sd(P, which, condition=c)  # same first stage: only the U-Net is loaded
        g = SDGenerator(m_c, vq, steps=steps, scheduler=scheduler, batch_size=max(1, n), device=gen.device,
                        bf16=gen.bf16)
        rows[f"SD ({c} labels)"] = list(g.generate(masks, [seed * 10_000 + i for i in range(len(masks))],
                                                   src["slide"][order]))
    return {"rows": rows, "masks": masks, "samples": a, "sec_per_tile": sec_per_tile, "steps": steps,
            "scheduler": scheduler, "device": str(gen.device)}


def latent_drift(P, n: int = 16, steps: int = 50, scheduler: str = "ddim", seed: int = 0, which: str = "best",
                 inputs: dict | None = None) -> dict:
    """Do SD's samples land where real latents are? The std and the median per-tile max |z| of
    ``n`` sampled latents (validation masks, seeded noise) next to those of the real validation
    latents. A model whose DDIM trajectories drift (the demo's eps-U-Net: ~4x the std) decodes to
    flat or saturated tiles whatever the mask; see docs/mask-adherence.md "Why the demo SD predicts v and concatenates its mask". Sampled on
    ``P.device`` (the seeded noise is drawn on the CPU, so the latents do not depend on it)."""
    src, model, vq = inputs_of(P, inputs, which)
    n = min(n, len(src["masks"]))  # no more samples than held-out masks
    real = ae.encode(vq, src["imgs"][:max(n, 64)]) * model.latent_scale
    gen = SDGenerator(model, vq, steps=steps, scheduler=scheduler, batch_size=n, device=pick_device(P.device),
                      bf16=P.mixed_precision == "bf16")
    z = gen.latents(src["masks"][:n], [seed * 10_000 + i for i in range(n)], src["slide"][:n]).float().cpu()

    def stats(x):
        return {"std": float(x.std()), "median_max_abs": float(x.abs().flatten(1).amax(1).median())}
    return {"real": stats(real), "sampled": stats(z), "std_ratio": float(z.std() / real.std()),
            "n": n, "steps": steps, "scheduler": scheduler, "prediction": model.prediction}


# ================================================================================ reports
def reconstructions(P, inputs: dict) -> tuple[dict, object]:
    """The first stage's PSNR/SSIM on the held-out tiles and figure ``01_reconstructions`` (8 of them)."""
    imgs, vq = inputs["src"]["imgs"], inputs["vq"]
    recon = ae.reconstruction_metrics(vq, imgs)
    rec = ae.reconstruct(vq, imgs[:8])
    fig = plots.image_grid({"real": list(imgs[:8]), "encode -> decode": list(rec)})
    plots.save(fig, paths.figures_dir(P.profile) / "01_reconstructions")
    return recon, fig


def loss_figure(P):
    """Figure ``01_loss_curves``: the first stage's and SD's training and validation loss."""
    L = layout.of(P, NOTEBOOK)
    fig = plots.loss_curves({"first stage": L.out / "autoencoder", "SD, Eq. 1": L.out / "sd"})
    plots.save(fig, paths.figures_dir(P.profile) / "01_loss_curves")
    return fig


def samples(P, inputs: dict) -> tuple[dict, object]:
    """:func:`sample_report` with the notebook's settings and figure ``01_sd_samples``."""
    rep = sample_report(P, P.n_samples, P.sample_steps, P.scheduler, seed=P.seed, inputs=inputs)
    fig = plots.image_grid(rep["rows"])
    plots.save(fig, paths.figures_dir(P.profile) / "01_sd_samples")
    return rep, fig


def drift(P, inputs: dict) -> dict:
    """:func:`latent_drift` with the notebook's sampling settings."""
    return latent_drift(P, n=min(16, P.n_samples * 2), steps=P.sample_steps, scheduler=P.scheduler, seed=P.seed,
                        inputs=inputs)


def fit_table(result: dict) -> pd.DataFrame:
    """One row per trained SD (the main one and each Fig. 7 ablation SD): its training summary."""
    return pd.DataFrame({"SD": result["sd"]} | {f"SD ({c})": f for c, f in result["ablation"].items()}).T


def drift_table(dr: dict) -> pd.DataFrame:
    """:func:`latent_drift`'s std and median max |z| of real and sampled latents, one row each."""
    return pd.DataFrame({k: dr[k] for k in ("real", "sampled")}).T


def write_throughput(P, result: dict, rep: dict, recon: dict, gap: pd.DataFrame, dr: dict) -> dict:
    """``throughput.json``: training and sampling speed with the quality numbers they bought."""
    t = {"device": rep["device"], "train_samples_per_s": result["sd"]["samples_per_s"],
         "train_steps_per_s": result["sd"]["steps_per_s"], "global_batch": P.sd["batch"],
         "sample_sec_per_tile": rep["sec_per_tile"], "sample_steps": rep["steps"], "scheduler": rep["scheduler"],
         "first_stage_psnr": recon["psnr"], "first_stage_ssim": recon["ssim"],
         "best_val_loss": result["sd"]["best_val_loss"], "unet_parameters": result["unet_parameters"],
         "conditioning_gap_all_t": float(gap.gap_shuffled.iloc[0]), "sampled_latent_std_ratio": dr["std_ratio"]}
    io.write_json(layout.of(P, NOTEBOOK).out / "throughput.json", t)
    return t


def check(P, result: dict, rep: dict, recon: dict, gap: pd.DataFrame, dr: dict) -> None:
    """The notebook's sanity checks: SD trained to the end and its loss went down; samples, first
    stage, conditioning gap and drift are sane."""
    L = layout.of(P, NOTEBOOK)
    m = read_metrics(L.out / "sd")
    assert result["sd"]["steps"] == P.sd["steps"]
    assert m.loss.iloc[-5:].mean() < m.loss.iloc[:5].mean(), "SD's loss did not go down"
    assert rep["samples"].shape == (len(rep["masks"]), result["image_size"], result["image_size"], 3)
    assert recon["psnr"] > 15, recon
    assert gap[["loss_true", "loss_shuffled", "loss_all_nc"]].notna().all().all() and (gap.loss_true > 0).all(), gap
    assert 0 < dr["std_ratio"] < float("inf"), dr
    jr = json.loads((L.judge / "judge_report.json").read_text())
    assert all(0 <= jr[k]["mean_iou"] <= 1 for k in ("real_on_real", "real_on_recon", "recon_on_recon", "chance")), jr


def train(P, progress: bool = True) -> dict:
    """Notebook 01's training steps, in its order: first stage, judges, SD (+ ablation SDs). Returns
    :func:`train_sd`'s summary and the judges (``judges``, as :func:`train_judges` returns them)."""
    check_conditions(P)
    layout.of(P, NOTEBOOK).out.mkdir(parents=True, exist_ok=True)
    split = load_split(P, progress)
    vq, ae_info = first_stage(P, split, progress)
    judges = train_judges(P, progress)
    return train_sd(P, split, vq, ae_info, progress) | {"judges": judges}


def run(P, progress: bool = True, checks: bool = True) -> dict:
    """Every step of notebook 01, in its order: :func:`train`, then (one process) the reports, their
    figures, ``throughput.json`` and the sanity checks."""
    result = train(P, progress)
    if not process_state(P.device == "cpu").is_main_process:
        return result
    inputs = report_inputs(P)
    judge_report(P, result["judges"])
    judge_figure(P)
    recon, _ = reconstructions(P, inputs)
    loss_figure(P)
    rep, _ = samples(P, inputs)
    gap = conditioning_report(P, inputs=inputs)
    dr = drift(P, inputs)
    write_throughput(P, result, rep, recon, gap, dr)
    if checks:
        check(P, result, rep, recon, gap, dr)
    plt.close("all")
    return result


def main(argv: list[str] | None = None) -> int:
    def is_main(P):
        return process_state(P.device == "cpu").is_main_process
    P, a = cli(NOTEBOOK, "pipelines.train_ldm", __doc__.split("\n\n")[0], argv, main_process=is_main)
    res = run(P, progress=not a.no_progress, checks=not a.no_checks)
    if is_main(P):
        print(json.dumps({"steps": res["sd"]["steps"], "best_val_loss": res["sd"]["best_val_loss"],
                          "samples_per_s": res["sd"]["samples_per_s"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
