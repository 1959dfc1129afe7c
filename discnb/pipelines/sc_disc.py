"""Notebook 02's pipeline: DISC data, SD-DISC / SD-DISC-CoTrain fine-tuning, and the measured
comparison of SD, SD-SC, SD-DISC and SD-DISC-CoTrain (paper Sec. 2.3, Fig. 4-5).

    python -m discnb.pipelines.sc_disc --params params/demo/02_sc_disc.yaml
    accelerate launch --config_file params/accelerate/multi_gpu.yaml -m discnb.pipelines.sc_disc --params ... --stage finetune

The paper shows pictures only; we measure, on fixed held-out validation masks (real annotation
shapes, multi-label ones first) with the same seeds for every model:
- mask adherence: the pattern judge's (the real-only CarcinoNet notebook 01 trains) segmentation of each
  tile against its guiding mask, IoU per class and mean;
- realism: KID to real validation tiles passed through the same first stage, on the judge encoder's features
  (:func:`discnb.grading.metrics.kid`);
- cost: UNet evaluations and wall time per tile.
Mean ± std over seeds. Outputs go to ``outputs/<profile>/disc/``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from discnb import LABELS, plots
from discnb.core import io, layout, paths, shards
from discnb.core.notebook import cli
from discnb.core.train import TensorData, fit, pick_device, process_state
from discnb.data import shapes
from discnb.data.augment import dihedral
from discnb.generative import checkpoints as ck
from discnb.generative import disc, generators, ldm, ldm_training
from discnb.generative import disc_pipeline as pl
from discnb.generative.sampling import evals_per_step
from discnb.grading import adherence
from discnb.grading import judge as jg
from discnb.grading import metrics
from discnb.grading.comparison import CHANCE, summarize, table

NOTEBOOK = "02_sc_disc"
MODELS = ("SD", "SD-SC", "SD-DISC", "SD-DISC-CoTrain")
VARIANTS = generators.FINETUNED  # fine-tuned model -> its folder under disc/


def device_of(P) -> str:
    return str(pick_device(P.device))


def context(P, section: dict) -> generators.GeneratorContext:
    L = layout.of(P, NOTEBOOK)
    summary = json.loads((L.ldm / "summary.json").read_text()) if (L.ldm / "summary.json").exists() else {}
    return generators.GeneratorContext(L.ldm, int(summary.get("image_size", 0)), section["steps"],
                                       section["scheduler"], section["batch_size"], device_of(P),
                                       P.mixed_precision == "bf16")


def check_out_dir(P) -> None:
    """Notebook 02 writes beside notebook 01's LDM (``disc/``); the SD-DISC generators read there."""
    L = layout.of(P, NOTEBOOK)
    if P.output_dir and paths.resolve(P.output_dir) != layout.disc_beside(L.ldm):
        warnings.warn(f"output_dir {P.output_dir} is not {layout.disc_beside(L.ldm)}: the SD-DISC generators of "
                      "notebooks 03/04 will not find these models")


# ================================================================================ DISC data
def make_disc_data(P, progress: bool = True) -> dict:
    """Generate (or finish) the DISC data: ``disc_data.n`` sets of separated z_0^k, in shards.
    Under ``accelerate launch`` the unfinished shards are split over the processes (the same bytes
    as one process: :func:`discnb.generative.disc.generate_disc_data`); every process returns the data."""
    L = layout.of(P, NOTEBOOK)
    D = P.disc_data
    procs = shards.processes(P.device == "cpu")  # before SD goes to a GPU: each process has its own
    sd, key = generators.build_generator("SD", context(P, D))
    t0 = time.perf_counter()
    manifest = disc.generate_disc_data(sd, L.out / "disc_data", D["n"], D["seed"], D["shard_size"], key, progress,
                                       procs=procs)
    data = disc.load_disc_data(L.out / "disc_data")
    secs = sum(s["seconds"] for s in manifest["shards"].values())
    return data | {"seconds_total": secs, "sec_per_set": secs / max(1, D["n"]), "this_call_s": time.perf_counter() - t0}


# ================================================================================ fine-tuning
def finetune(P, variant: str, data: dict, progress: bool = True) -> dict:
    """SD-DISC (Eq. 3 only) or SD-DISC-CoTrain (mean of L_LDM on real tiles and L_DISC), both
    starting from SD's best weights, through the project's one training loop."""
    L = layout.of(P, NOTEBOOK)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    P01 = ck.ldm_params(L.ldm)
    summary01 = ck.check_ldm(L.ldm, P01, json.loads((L.ldm / "summary.json").read_text())["image_size"])
    size = summary01["image_size"]
    model, vq = ck.load_trained(P01)
    split = ldm_training.load_split(P01, progress=False)
    z, _ = ldm_training.encode_split(vq, split, model.latent_scale)
    lib = shapes.load_library(layout.of(P01).data / "shape_maps.npz")
    maps = torch.from_numpy(np.stack([shapes.resize_mask(m, size) for m in lib["maps"]]))

    def tensors(k):
        return {"z": z[k], "mask": torch.from_numpy(split[k]["masks"]), "slide": torch.from_numpy(split[k]["slide"])}
    aug = lambda b: dihedral(b, ("z", "mask"))  # noqa: E731
    cot = variant == "SD-DISC-CoTrain"
    train = disc.DISCData(data["z0"], maps, size, real=tensors("train") if cot else None, augment=aug)
    val = TensorData(tensors("val")) if len(split["val"]["imgs"]) else None  # L_LDM on real validation tiles
    F = P.finetune
    sig = {"kind": variant, "disc_data": data["manifest"]["plan"], "finetune": F}  # the plan names SD's fingerprint
    cfg = ldm_training.fit_config(P, L.out / VARIANTS[variant], F, variant, sig, progress)
    sched = ldm.noise_scheduler()
    res = fit(model, disc.disc_loss(sched.alphas_cumprod, cot), train, cfg, val=val,
              save_fn=pl.DISCPipeline.saver(vq))
    return res


# ================================================================================ comparison
def build(P, name: str, section: dict):
    """A generator by name; ``SD-SC-step`` is SD-SC fusing at every step (the project page's drawing)."""
    if name == "SD-SC-step":
        sd, key = generators.build_generator("SD", context(P, section))
        g = disc.SCGenerator(sd.model, sd.vq, steps=section["steps"], scheduler=section["scheduler"],
                             batch_size=section["batch_size"], device=device_of(P), bf16=P.mixed_precision == "bf16",
                             fuse_every_step=True)
        g.name = name
        return g, key + "-step"
    return generators.build_generator(name, context(P, section))


def load_judge(P) -> jg.Judge:
    """The pattern judge notebook 01 trained (``outputs/<profile>/judge``); the error says to run it."""
    return jg.load_judge(layout.of(P, NOTEBOOK).judge, device=device_of(P))


def ceiling(P, judge: jg.Judge) -> float:
    """The adherence ceiling: notebook 01's ``recon_on_recon`` (the judge on first-stage
    reconstructions of held-out real tiles), from its ``judge_report.json``: the adherence judge's own (the first of
    ``judge_seeds``), not the mean over seeds, since adherence is scored by that judge."""
    f = layout.of(P, NOTEBOOK).judge / "judge_report.json"
    if not f.exists():
        raise FileNotFoundError(f"{f}: no judge report; run notebooks/01_train_ldm.ipynb for this profile to the end")
    rep = json.loads(f.read_text())
    if "judge_seeds" in rep:
        return float(rep["recon_on_recon"]["per_seed"][str(rep["judge_seeds"][0])]["mean_iou"])
    return float(rep["recon_on_recon"]["mean_iou"])


def adherence_sets(P, src: dict, latent_side: int) -> dict:
    """:func:`discnb.grading.adherence.mask_sets` for this notebook: ``adherence``'s sizes, notebook
    00's shape-map library at SD's tile size, the held-out masks ``src``; plus ``real_index``."""
    P01 = ck.ldm_params(layout.of(P, NOTEBOOK).ldm)
    size = src["masks"].shape[-1]
    lib = shapes.load_library(layout.of(P01).data / "shape_maps.npz")
    maps = np.stack([shapes.resize_mask(m, size) for m in lib["maps"]])
    A = P.adherence
    sets = adherence.mask_sets(maps, src["masks"], A["n_multi"], A["n_single"], A["n_real"], P.seed, latent_side,
                               n_complex=A["n_complex"])
    return {"sets": sets, "real_index": adherence.real_choice(len(src["masks"]), A["n_real"], P.seed)}


def compare(P, progress: bool = True) -> dict:
    """Sample every model on the same masks and seeds; judge, KID, cost. Returns tidy rows + samples.

    The masks are :mod:`discnb.grading.adherence`'s sets: ``multi`` and ``complex-real`` (the paper's
    claim, each mask with every seed of ``compare.seeds``), ``single`` and ``real`` (the first seed). Every
    (model, set, seed) is a row of ``adherence``; the long ``results`` rows (IoU per class, KID,
    cost; read by notebook 06) are those of the multi-label set. KID compares the generated tiles
    with the held-out real tiles passed through the same first stage (encode, quantise, decode):
    every generator decodes with it, so against untouched real tiles its blur would dominate the
    distance and every model would score alike. ``ranking``: the same on the first
    ``adherence.ranking_masks`` multi-label masks at ``adherence.ranking_steps`` DDIM steps (the
    paper's 200), one seed, to show that the table's fewer steps keep the models' order."""
    P01 = ck.ldm_params(layout.of(P, NOTEBOOK).ldm)
    split = ldm_training.load_split(P01, progress=False)
    src = ldm_training.held_out(split)
    C, A = P.compare, P.adherence
    judge = load_judge(P)
    top = ceiling(P, judge)
    first, first_key = build(P, "SD", C)
    S = adherence_sets(P, src, first.latent_shape[-1])
    band = src["masks"].shape[-1] // first.latent_shape[-1]  # one latent cell: the interior columns of adherence.csv
    sets, real_index = S["sets"], S["real_index"]
    f_real = jg.kid_reference(judge, src["imgs"], first.vq)
    rows, adh, ranking, samples, meta = [], [], [], {}, {}
    runs = sum(len(adherence.set_seeds(k, C["seeds"])) for k in sets)
    bar = tqdm(total=len(P.models) * runs, desc="adherence (model x set x seed)", disable=not progress)
    for name in P.models:
        gen, key = (first, first_key) if name == "SD" else build(P, name, C)
        meta[name] = {"fingerprint": key, "guidance_scale": gen.guidance_scale}
        for set_name, masks in sets.items():
            for s in adherence.set_seeds(set_name, C["seeds"]):
                seeds = [int(s) * 100_000 + i for i in range(len(masks))]
                gen.nfe = 0
                t0 = time.perf_counter()
                tiles = gen.generate(masks, seeds)
                sec = (time.perf_counter() - t0) / len(masks)
                sc = adherence.score(judge, tiles, masks, int(s), band)
                adh.append(adherence.row(name, set_name, int(s), len(masks), sc, top, sec, gen.nfe / len(masks)))
                bar.update(1)
                if set_name == "real" and s == C["seeds"][0]:
                    samples[name] = tiles
                if set_name != "multi":
                    continue
                k_mean, _ = metrics.kid(f_real, judge.features(tiles), seed=s)
                base = {"model": name, "seed": int(s)}
                rows += [base | {"metric": "iou", "label": lab, "value": sc["iou"][lab]} for lab in LABELS]
                rows += [base | {"metric": "mean_iou", "label": "all", "value": sc["mean_iou"]},
                         base | {"metric": "pixel_agreement", "label": "all", "value": sc["pixel_agreement"]},
                         base | {"metric": "kid", "label": "all", "value": k_mean},
                         base | {"metric": "sec_per_tile", "label": "all", "value": sec},
                         base | {"metric": "nfe_per_tile", "label": "all", "value": gen.nfe / len(masks)}]
                if name == "SD" and s == C["seeds"][0]:  # chance level: SD's tiles against other tiles' masks
                    rows.append({"model": CHANCE, "seed": int(s), "metric": "mean_iou", "label": "all",
                                 "value": sc["chance_mean_iou"]})
    bar.close()
    if A["ranking_masks"]:
        R = {**C, "steps": A["ranking_steps"]}
        masks = sets["multi"][:A["ranking_masks"]]
        s = int(C["seeds"][0])
        for name in tqdm(P.models, desc=f"ranking check (DDIM-{R['steps']})", disable=not progress):
            gen, _ = build(P, name, R)
            gen.nfe = 0
            t0 = time.perf_counter()
            tiles = gen.generate(masks, [s * 100_000 + i for i in range(len(masks))])
            sec = (time.perf_counter() - t0) / len(masks)
            ranking.append(adherence.row(name, "multi", s, len(masks), adherence.score(judge, tiles, masks, s, band), top, sec,
                                         gen.nfe / len(masks)) | {"steps": R["steps"]})
    # Fig. 5: real annotation masks (most labels first) with their real tiles
    order = np.argsort([-len(np.unique(m)) for m in sets["real"]], kind="stable")
    df = pd.DataFrame(rows)
    return {"results": df, "masks": sets["real"][order], "real": src["imgs"][real_index][order],
            "samples": {k: v[order] for k, v in samples.items()}, "meta": meta, "judge": judge.info,
            "adherence": pd.DataFrame(adh, columns=adherence.COLUMNS),
            "ranking": pd.DataFrame(ranking), "ceiling": top}


def adherence_summary(adh: pd.DataFrame) -> pd.DataFrame:
    """``adherence.csv`` as mean ± std over seeds per (masks, model): mean IoU, normalized, per-class
    IoU, cost; multi-label masks first (the paper's claim)."""
    cols = ["mean_iou", "normalized"] + [c for c in adherence.COLUMNS if c.startswith("iou_")] + \
        ["chance_mean_iou", "sec_per_tile", "unet_evals_per_tile"] + \
        [c for c in ("interior_mean_iou", "interior_chance_mean_iou") if c in adh and adh[c].notna().any()]
    g = adh.groupby(["masks", "model"], sort=False)
    out = g[cols].agg(lambda x: f"{x.mean():.3f} ± {x.std():.3f}" if len(x) > 1 else f"{x.mean():.3f}")
    out["seeds"] = g.size()
    return out.reindex([k for k in adherence.SETS if k in out.index.get_level_values(0)], level=0)


def paired_vs_sd(adh: pd.DataFrame, sets=("multi", "complex-real")) -> pd.DataFrame:
    """The paper's claim (Sec. 2.3) per seed: each model minus SD on the same masks and seeds (``adherence.csv``'s
    rows of ``sets``), for mean IoU, normalized adherence, the interior mean IoU (away from region boundaries) and
    GG5 IoU; one row per (masks, model, seed), then the mean and std (ddof 1) of the differences over seeds, with
    the cost per tile relative to SD's."""
    metrics = [c for c in ("mean_iou", "normalized", "interior_mean_iou", "iou_GG5") if c in adh and adh[c].notna().any()]
    rows = []
    for set_name in [k for k in sets if k in set(adh.masks)]:
        a = adh[adh.masks == set_name].set_index(["model", "seed"])
        base = a.loc["SD"]
        for model in [m for m in a.index.get_level_values(0).unique() if m != "SD"]:
            d = (a.loc[model][metrics] - base[metrics]).dropna(how="all")
            cost = float(a.loc[model].sec_per_tile.mean() / base.sec_per_tile.mean())
            rows += [{"masks": set_name, "model": model, "seed": str(int(seed)), **{f"d_{m}": v for m, v in r.items()},
                      "cost_vs_SD": cost} for seed, r in d.iterrows()]
            rows.append({"masks": set_name, "model": model, "seed": f"mean ± std of {len(d)}",
                         **{f"d_{m}": f"{d[m].mean():+.3f} ± {d[m].std():.3f}" for m in metrics}, "cost_vs_SD": cost})
    return pd.DataFrame(rows)


def ranking_table(adh: pd.DataFrame, ranking: pd.DataFrame) -> pd.DataFrame:
    """The DDIM-``steps`` ranking check beside the table's multi-label rows (same masks, first seed):
    mean IoU and rank of each model at both step counts."""
    if ranking.empty:
        return pd.DataFrame()
    s = int(ranking.seed.iloc[0])
    table = adh.query("masks == 'multi' and seed == @s").set_index("model")["mean_iou"]
    r = ranking.set_index("model")["mean_iou"]
    out = pd.DataFrame({"table mean IoU": table, f"DDIM-{int(ranking.steps.iloc[0])} mean IoU": r})
    for c in list(out.columns):
        out[c.replace("mean IoU", "rank")] = out[c].rank(ascending=False).astype(int)
    return out


def conditioning(P, n: int = 256) -> pd.DataFrame:
    """:func:`discnb.generative.ldm_training.conditioning_report` of SD and of each fine-tuned model on the same
    real validation latents: how much each model's noise prediction depends on the mask at all."""
    L = layout.of(P, NOTEBOOK)
    P01 = ck.ldm_params(L.ldm)
    inputs = ldm_training.report_inputs(P01)
    folders = {v: L.out / VARIANTS[v] / "best" for v in VARIANTS if v in P.models}
    models = {"SD": inputs["model"]} | {v: pl.load_pipeline(f).ldm for v, f in folders.items()
                                        if (f / "model_index.json").exists()}
    return ldm_training.conditioning_report(P01, n, inputs=inputs, models=models)


def sc_cost(P, progress: bool = True) -> pd.DataFrame:
    """SD-SC's cost relative to SD for masks with 1, 2, 3 and 4 labels (vertical stripes), measured
    in one run: wall time per tile and UNet evaluations per tile."""
    C = P.cost
    sd, _ = build(P, "SD", C)
    sc, _ = build(P, "SD-SC", C)
    size = sd.model.tau.config.image_size
    rows = []
    sd.latents(np.zeros((1, size, size), np.uint8), [0])  # warm-up: the first call allocates
    for n_lab in C["labels"]:
        m = np.zeros((C["n_tiles"], size, size), np.uint8)
        for i in range(n_lab):
            m[:, :, i * size // n_lab:(i + 1) * size // n_lab] = i
        seeds = list(range(C["n_tiles"]))
        out = {}
        for name, g in (("SD", sd), ("SD-SC", sc)):
            g.nfe = 0
            t0 = time.perf_counter()
            g.latents(m, seeds)
            out[name] = ((time.perf_counter() - t0) / len(m), g.nfe / len(m))
        rows.append({"labels": n_lab, "sd_sec_per_tile": out["SD"][0], "sc_sec_per_tile": out["SD-SC"][0],
                     "time_ratio": out["SD-SC"][0] / out["SD"][0], "sd_nfe": out["SD"][1], "sc_nfe": out["SD-SC"][1],
                     "nfe_ratio": out["SD-SC"][1] / out["SD"][1]})
    return pd.DataFrame(rows)


def save(P, cmp: dict, cost: pd.DataFrame, extra: dict) -> dict:
    out = layout.of(P, NOTEBOOK).out
    out.mkdir(parents=True, exist_ok=True)
    cmp["results"].to_csv(out / "comparison.csv", index=False)
    cmp["adherence"].to_csv(out / "adherence.csv", index=False)
    cmp["ranking"].to_csv(out / "adherence_ranking.csv", index=False)
    res = paths.results_dir(P.profile)  # the table the README leads with
    cmp["adherence"].to_csv(res / "adherence.csv", index=False)
    cmp["ranking"].to_csv(res / "adherence_ranking.csv", index=False)
    paired_vs_sd(cmp["adherence"]).to_csv(res / "adherence_paired.csv", index=False)
    summarize(cmp["results"]).to_csv(out / "comparison_summary.csv", index=False)
    cost.to_csv(out / "sc_cost.csv", index=False)
    io.atomic_file(out / "comparison_samples.npz", lambda tmp: np.savez_compressed(
        tmp, masks=cmp["masks"], real=cmp["real"], models=np.array(list(cmp["samples"])),
        **{f"tiles_{i}": t for i, t in enumerate(cmp["samples"].values())}))
    io.write_json(out / "comparison.json", {"meta": cmp["meta"], "judge": cmp["judge"], **extra,
                                              "realism_features": "pattern judge encoder (real-only CarcinoNet, "
                                                                  "notebook 01), two deepest levels, GAP; KID cubic kernel "
                                                                  "against real tiles through the first stage"})
    return {"dir": str(out)}


# ================================================================================ named steps
def fit_table(fits: dict) -> pd.DataFrame:
    """One row per fine-tuned model: steps, best step and validation loss, time, resume point."""
    return pd.DataFrame({v: {k: f[k] for k in ("steps", "best_step", "best_val_loss", "train_seconds", "resumed_from")}
                         for v, f in fits.items()}).T


def finetune_all(P, data: dict, progress: bool = True) -> dict:
    """:func:`finetune` of each DISC variant listed in ``models`` (SD-DISC, SD-DISC-CoTrain)."""
    return {v: finetune(P, v, data, progress) for v in VARIANTS if v in P.models}


def finetune_figure(P, fits: dict):
    """Figure ``02_disc_finetune_loss`` (None when no DISC variant is listed)."""
    if not fits:
        return None
    fig = plots.loss_curves({v: layout.of(P, NOTEBOOK).out / VARIANTS[v] for v in fits}, smooth=10, log=False,
                            xlabel="fine-tuning step", ylabel="loss (L_LDM; val on real latents)", title="DISC fine-tuning")
    plots.save(fig, paths.figures_dir(P.profile) / "02_disc_finetune_loss")
    return fig


def conditioning_table(P) -> pd.DataFrame:
    """:func:`conditioning`, written to ``conditioning.csv``."""
    L = layout.of(P, NOTEBOOK)
    cond = conditioning(P)
    L.out.mkdir(parents=True, exist_ok=True)
    cond.to_csv(L.out / "conditioning.csv", index=False)
    return cond


def grid_figure(P, cmp: dict):
    """Figure ``02_sc_disc_grid``: Fig. 5's layout on the comparison's masks."""
    rows, titles = plots.fig5_rows(cmp, P.figure_rows)
    fig = plots.image_grid(rows, titles)
    plots.save(fig, paths.figures_dir(P.profile) / "02_sc_disc_grid")
    return fig


def adherence_figure(P, cmp: dict):
    """Figure ``02_adherence``: the judge's IoU per class, mean ± std over seeds."""
    fig = plots.fig_adherence(cmp["results"])
    plots.save(fig, paths.figures_dir(P.profile) / "02_adherence")
    return fig


def check(P, cmp: dict, summary: pd.DataFrame, cost: pd.DataFrame, cond: pd.DataFrame) -> None:
    """The notebook's sanity checks: every model scored, IoUs in [0, 1], UNet evaluations per tile as
    the method says (SC: one branch per label present; DISC: what SD costs), files written."""
    L = layout.of(P, NOTEBOOK)
    res = cmp["results"]
    assert set(P.models) <= set(res.model)
    assert res.query("metric == 'iou'").value.dropna().between(0, 1).all()
    nfe = summary.query("metric == 'nfe_per_tile'").set_index("model")["mean"]
    steps = P.compare["steps"] * evals_per_step(cmp["meta"]["SD"]["guidance_scale"])  # x2 with guidance
    assert nfe["SD"] == steps, (nfe, steps)
    if "SD-SC" in nfe:
        assert steps <= nfe["SD-SC"] <= 4 * steps
    assert all(nfe[v] == nfe["SD"] for v in VARIANTS if v in nfe), nfe  # DISC costs what SD costs
    assert (cost.nfe_ratio.round(6) == cost["labels"]).all()
    assert (L.out / "comparison.csv").exists() and (L.out / "comparison_samples.npz").exists()
    adh = cmp["adherence"]
    sets = adherence.set_names(P.adherence["n_complex"])
    assert set(adh.model) == set(P.models) and set(adh.masks) == set(sets), adh[["model", "masks"]]
    n_runs = adh.groupby(["model", "masks"]).size()
    assert all((n_runs.xs(k, level="masks") == len(adherence.set_seeds(k, P.compare["seeds"]))).all() for k in sets)
    # normalized is undefined (NaN) only where the ceiling is not above chance (an untrained smoke judge)
    assert adh.mean_iou.between(0, 1).all() and (adh.normalized.notna() | (adh.ceiling_mean_iou <= adh.chance_mean_iou)).all(), adh
    assert (cond.loss_true > 0).all() and set(cond.model) >= {"SD"}


def run(P, progress: bool = True, checks: bool = True) -> dict:
    """Every step of notebook 02, in its order (one process)."""
    check_out_dir(P)
    data = make_disc_data(P, progress)
    fits = finetune_all(P, data, progress)
    finetune_figure(P, fits)
    cond = conditioning_table(P)
    cmp = compare(P, progress)
    summary = summarize(cmp["results"])
    cost = sc_cost(P, progress)
    save(P, cmp, cost, {"disc_data_sec_per_set": data["sec_per_set"], "finetune": fits})
    grid_figure(P, cmp)
    adherence_figure(P, cmp)
    if checks:
        check(P, cmp, summary, cost, cond)
    plt.close("all")
    return {"data": data, "fits": fits, "conditioning": cond, "comparison": cmp, "summary": summary, "cost": cost}


def main(argv: list[str] | None = None) -> int:
    def is_main(P):
        return process_state(P.device == "cpu").is_main_process
    P, a = cli(NOTEBOOK, "pipelines.sc_disc", __doc__.split("\n\n")[0], argv, main_process=is_main,
               configure=lambda ap: ap.add_argument("--stage", choices=("all", "data", "finetune", "compare"),
                                                    default="all",
                                                    help="all = the notebook (one process); under accelerate launch "
                                                         "run data (shards split over the processes), then finetune, "
                                                         "then compare (one process)"))
    progress = not a.no_progress
    if a.stage == "all":
        res = run(P, progress, checks=not a.no_checks)
        print(table(res["summary"], P.models).to_string())
        print(res["cost"].to_string())
    elif a.stage == "data":  # every process: its part of the shards
        make_disc_data(P, progress)
    elif a.stage == "finetune":
        for v, f in finetune_all(P, disc.load_disc_data(layout.of(P, NOTEBOOK).out / "disc_data"), progress).items():
            print(v, json.dumps(f))
    elif a.stage == "compare" and is_main(P):
        cond = conditioning_table(P)
        cmp = compare(P, progress)
        cost = sc_cost(P, progress)
        save(P, cmp, cost, {})
        check(P, cmp, summarize(cmp["results"]), cost, cond)
        print(table(summarize(cmp["results"]), P.models).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
