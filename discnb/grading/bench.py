"""What the pipeline costs, measured in one run on one machine: ``python -m discnb.grading.bench``.

    python -m discnb.grading.bench --profile demo                    # -> outputs/demo/bench.json
    python -m discnb.grading.bench --profile demo --n-tiles 4 --n-adherence 16 --out /tmp/bench.json
    python -m discnb.grading.bench --untrained params/paper/01_train_ldm.yaml --image-size 256 --bf16   # GPU, paper-size model

On the profile's trained SD (notebook 01, ``outputs/<profile>/ldm``), through the generator
registry (:mod:`discnb.generative.generators`):

- **UNet evaluations / s**: forward passes of SD's U-Net (with tau) on a batch of latents;
- **seconds per tile** (and UNet evaluations per tile) for SD with DDIM (paper Sec. 2.2: 200 steps),
  SD-SC (Sec. 2.3, Eq. 2) on masks with 1, 2, 3 and 4 labels, SD-DISC (when notebook 02 trained it)
  and SD with DPM-Solver++ at 20 steps, all on the same masks and seeds;
- **DPM-Solver++-20 vs DDIM-200**: speed ratio, and the mask-adherence difference measured with
  notebook 01's pattern judge on a fixed set of held-out validation masks, same seeds for both;
- **training images / s**: a few optimizer steps of Eq. 1 (``train_ldm``'s loss) on random
  latents at the profile's model size, and of CarcinoNet's Eq. 4 loss (real + synthetic halves)
  with notebook 04's parameters;
- **peak memory**: the process's maximum resident set size and, on a GPU, ``max_memory_allocated``.

The JSON describes the device (CPU model, threads, torch; GPU name). On shared CPUs absolute
times move with the load: the ratios, measured in the same run, are what to compare.
``--untrained`` times a randomly initialised model of a notebook-01 parameter file's size
(e.g. the paper's on a GPU): costs only, no adherence.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from discnb import K
from discnb.core import io, layout, params, paths
from discnb.core.train import pick_device
from discnb.generative import autoencoder as ae
from discnb.generative import checkpoints as ck
from discnb.generative import generators, ldm_training
from discnb.generative.disc import SCGenerator, downsample_mask
from discnb.generative.ldm import make_condition, noise_scheduler
from discnb.generative.sampling import SDGenerator
from discnb.grading import carcinonet as gc
from discnb.grading import judge as jg

NOTEBOOK04 = "04_carcinonet"  # the CarcinoNet whose training is timed: notebook 04's parameters


@dataclass
class Settings:
    n_tiles: int = 4            # tiles per timed sampler (SD, each SD-SC label count, SD-DISC, DPM++)
    n_adherence: int = 16       # held-out validation masks judged for DDIM vs DPM-Solver++ (0 = skip)
    steps: int = 200            # DDIM steps (paper: 200)
    dpm_steps: int = 20         # DPM-Solver++ steps
    sc_labels: tuple = (1, 2, 3, 4)
    batch_size: int = 16        # tiles per sampling batch; also the batch of the UNet-evaluations timing
    unet_reps: int = 10         # timed forward passes for UNet evaluations / s
    train_steps: int = 3        # timed optimizer steps (after one warm-up step) per trained model
    ldm_batch: int = 0          # 0 = notebook 01's sd.batch
    carcinonet_batch: int = 0   # 0 = notebook 04's train.batch (real tiles; as many synthetic ones)
    seed: int = 0
    device: str = "auto"        # auto | cpu | cuda
    bf16: bool = False          # bf16 autocast on a GPU (the paper profile's mixed precision)


# ====================================================================================== device
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict:
    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", ""), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "device": str(device),
            "gpu": None}
    try:
        info["load_average_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info |= {"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1), "cuda": torch.version.cuda,
                 "gpu_capability": f"{p.major}.{p.minor}"}
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> dict:
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


# ======================================================================================= models
def load_sd(ldir: Path, S: Settings, device: torch.device):
    """Notebook 01's trained SD through the registry: (generator, notebook-01 params, image size)."""
    P01 = ck.ldm_params(ldir)
    summary = ldir / "summary.json"
    if not summary.exists():
        raise FileNotFoundError(f"{summary}: notebook 01 did not finish; run notebooks/01_train_ldm.ipynb "
                                f"(profile {P01.profile}) first")
    size = int(json.loads(summary.read_text())["image_size"])
    ctx = generators.GeneratorContext(ldir, size, S.steps, "ddim", S.batch_size, str(device), S.bf16)
    sd, _ = generators.build_generator("SD", ctx)
    return sd, P01, size


def untrained_sd(params01: str | Path, image_size: int, S: Settings, device: torch.device):
    """A randomly initialised SD (and first stage) of a notebook-01 parameter file's size: costs only."""
    P01 = params.check_file("01_train_ldm", params01)
    A = P01.autoencoder
    if A["path"] and paths.resolve(A["path"]).exists():
        vq = ae.load_vq(paths.resolve(A["path"]))
    else:
        vq = ae.build_vq(A["channels"], A["layers_per_block"], A["n_embed"])
    if image_size % ae.factor(vq):
        raise ValueError(f"--image-size {image_size} is not a multiple of the first stage's factor {ae.factor(vq)}")
    torch.manual_seed(S.seed)
    model = ck.build_model(P01, image_size, image_size // ae.factor(vq), 1.0)
    return SDGenerator(model, vq, steps=S.steps, scheduler="ddim", batch_size=S.batch_size, device=device,
                       bf16=S.bf16), P01, image_size


def stripes(n: int, size: int, n_labels: int) -> np.ndarray:
    """``n`` masks of ``n_labels`` vertical stripes (labels 0..n_labels-1), as notebook 02's cost table."""
    m = np.zeros((n, size, size), np.uint8)
    for i in range(n_labels):
        m[:, :, i * size // n_labels:(i + 1) * size // n_labels] = i
    return m


def comparison_masks(masks: np.ndarray, n: int, seed: int, latent: int) -> np.ndarray:
    """Indices of ``n`` held-out masks: three quarters multi-label (on the latent grid, where SC
    fuses), the rest any; fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    lat = downsample_mask(torch.from_numpy(masks), latent).numpy()
    n_labels = np.array([len(np.unique(m)) for m in lat])
    multi, rest = np.flatnonzero(n_labels > 1), np.flatnonzero(n_labels <= 1)
    k = min(len(multi), int(np.ceil(0.75 * n)))
    pick = list(rng.choice(multi, k, replace=False)) if k else []
    pick += list(rng.choice(rest if len(rest) else multi, min(n - k, len(rest) if len(rest) else len(multi) - k),
                            replace=False))
    return np.array(sorted(pick), dtype=np.int64)


def validation_masks(P01, n: int, seed: int, latent: int) -> np.ndarray:
    """``n`` held-out validation masks of notebook 01's split, picked as notebook 02 picks its
    comparison masks (three quarters multi-label), fixed by ``seed``."""
    src = ldm_training.held_out(ldm_training.load_split(P01, progress=False))
    return src["masks"][comparison_masks(src["masks"], n, seed, latent)]


# ==================================================================================== measures
def unet_evals_per_s(model, latent_shape, image_size: int, batch: int, reps: int, device, bf16: bool) -> dict:
    """Forward passes of eps_theta(z_t, t, tau(m)) per second on a batch of ``batch`` latents."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn((batch, *latent_shape), generator=g).to(device)
    masks = torch.randint(0, K, (batch, image_size, image_size), generator=g)
    cond = make_condition(masks, model.condition, torch.zeros(batch, 2, dtype=torch.long)).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=bf16 and device.type == "cuda"):
        model(z, t, cond)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(z, t, cond)
        _sync(device)
        dt = time.perf_counter() - t0
    return {"evals_per_s": batch * reps / dt, "batch": batch, "reps": reps, "seconds": dt}


def time_generate(gen, masks: np.ndarray, seeds: list[int], device) -> tuple[np.ndarray, dict]:
    gen.nfe = 0
    _sync(device)
    t0 = time.perf_counter()
    tiles = gen.generate(masks, seeds)
    _sync(device)
    dt = time.perf_counter() - t0
    return tiles, {"tiles": len(masks), "seconds": dt, "sec_per_tile": dt / len(masks),
                   "nfe_per_tile": gen.nfe / len(masks), "unet_evals_per_s": gen.nfe / dt}


def _judged(j: dict) -> dict:
    return {"mean_iou": j["mean_iou"], "pixel_agreement": j["pixel_agreement"],
            "iou": {k: (None if not np.isfinite(v) else v) for k, v in j["iou"].items()}}


def train_ldm_throughput(P01, image_size: int, latent_shape, S: Settings, device) -> dict:
    """Images / s of a few optimizer steps of Eq. 1 (``train_ldm``'s loss, AdamW) on random latents
    and masks, on a fresh model of notebook 01's size."""
    torch.manual_seed(S.seed)
    model = ck.build_model(P01, image_size, latent_shape[-1], 1.0).to(device).train()
    B = S.ldm_batch or int(P01.sd["batch"])
    g = torch.Generator().manual_seed(S.seed)
    batch = {"z": torch.randn((B, *latent_shape), generator=g).to(device),
             "mask": torch.randint(0, K, (B, image_size, image_size), generator=g).to(device),
             "slide": torch.randint(0, K, (B, 2), generator=g).to(device)}
    loss_fn = ldm_training.ldm_batch_loss(P01.condition, noise_scheduler().alphas_cumprod)
    return _train_steps(model, lambda: loss_fn(model, batch), B, S, device, float(P01.sd["lr"]))


def carcinonet_params(profile: str, path: str | Path | None = None):
    f = paths.resolve(path) if path else paths.PARAMS / profile / f"{NOTEBOOK04}.yaml"
    if f.exists():
        return params.check_file(NOTEBOOK04, f)
    return params.validate(NOTEBOOK04, {"profile": profile})


def train_carcinonet_throughput(P04, image_size: int, S: Settings, device) -> dict:
    """Images / s of a few optimizer steps of CarcinoNet (notebook 04's model; Eq. 4 with a real and a
    synthetic half per step, as its augmented runs train; augmentation included) on random tiles."""
    torch.manual_seed(S.seed)
    cfg = dict(P04.model, encoder_path="")  # weights do not change the cost
    model = gc.build_model(cfg).to(device).train()
    B = S.carcinonet_batch or int(P04.train["batch"])
    lam = max([float(x) for x in P04.lams if x > 0] or [0.5])
    g = torch.Generator().manual_seed(S.seed)
    real = {"image": torch.randint(0, 256, (B, 3, image_size, image_size), generator=g, dtype=torch.uint8),
            "mask": torch.randint(0, K, (B, image_size, image_size), generator=g)}
    syn = copy.deepcopy(real)
    aug = gc.augment_fn(P04.train["jitter"])
    loss_fn = gc.make_loss(lam, P04.train["focal_gamma"], P04.train["dice_weight"])

    def step():
        b = aug(dict(real))
        s = aug(dict(syn))
        batch = {**b, "syn_image": s["image"], "syn_mask": s["mask"]}
        return loss_fn(model, {k: v.to(device) for k, v in batch.items()})
    out = _train_steps(model, step, 2 * B, S, device, float(P04.train["lr"]))
    return out | {"real_per_step": B, "synthetic_per_step": B, "lam": lam}


def _train_steps(model, loss_of, images_per_step: int, S: Settings, device, lr: float) -> dict:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    amp = S.bf16 and device.type == "cuda"

    def one():
        with torch.autocast("cuda", torch.bfloat16, enabled=amp):
            loss = loss_of()
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()
        return float(loss.detach())
    one()  # warm-up (allocations, autotuning)
    _sync(device)
    t0 = time.perf_counter()
    losses = [one() for _ in range(S.train_steps)]
    _sync(device)
    dt = time.perf_counter() - t0
    if not np.isfinite(losses).all():
        raise FloatingPointError(f"benchmark training step gave a non-finite loss: {losses}")
    return {"images_per_s": images_per_step * S.train_steps / dt, "sec_per_step": dt / S.train_steps,
            "images_per_step": images_per_step, "steps": S.train_steps,
            "parameters": sum(p.numel() for p in model.parameters())}


# ========================================================================================== run
def load_model(ldir: Path | None, untrained: str | Path | None, image_size: int, S: Settings,
               device: torch.device) -> tuple[SDGenerator, params.Params, int, dict]:
    """The timed SD, notebook 01's parameters, the tile size and the model's description: notebook 01's
    trained SD from ``ldir``, or (``ldir`` None) a random one of the ``untrained`` parameter file's size."""
    if ldir is None:
        sd, P01, size = untrained_sd(untrained, image_size, S, device)
        info = {"source": f"untrained, sizes of {untrained}", "trained": False}
    else:
        sd, P01, size = load_sd(ldir, S, device)
        info = {"source": str(ldir), "trained": True}
    info |= {"image_size": size, "latent_shape": list(sd.latent_shape), "condition": sd.model.condition,
             "unet_parameters": sum(p.numel() for p in sd.model.unet.parameters()),
             "tau_parameters": sum(p.numel() for p in sd.model.tau.parameters())}
    return sd, P01, size, info


def bench_masks(ldir: Path | None, P01, size: int, latent: int, S: Settings, notes: list[str]) -> np.ndarray:
    """Held-out validation masks of notebook 01's split (trained SD: enough for the timings and the
    adherence comparison) or 2-label stripes (untrained SD, which has no split: costs only)."""
    if ldir is None:
        notes.append("untrained model: costs only, no mask adherence")
        return stripes(S.n_tiles, size, 2)
    masks = validation_masks(P01, max(S.n_tiles, S.n_adherence), S.seed, latent)
    if len(masks) < S.n_tiles:
        raise ValueError(f"only {len(masks)} validation masks; lower --n-tiles")
    return masks


def bench_judge(ldir: Path | None, judge_dir: str | Path | None, S: Settings, device: torch.device,
                notes: list[str]):
    """Notebook 01's pattern judge for the adherence comparison; None when there is nothing to judge
    (untrained SD, ``n_adherence`` 0) or, with a note, no judge."""
    if ldir is None or not S.n_adherence:
        return None
    try:
        return jg.load_judge(paths.resolve(judge_dir) if judge_dir else layout.judge_beside(ldir), device=str(device))
    except FileNotFoundError as e:
        notes.append(f"adherence skipped: {e}")
        return None


def time_unet(sd: SDGenerator, size: int, masks: np.ndarray, seeds: list[int], S: Settings, device) -> dict:
    """UNet evaluations / s, after a warm-up call (the first call allocates, and autotunes on a GPU)."""
    SDGenerator(sd.model, sd.vq, steps=2, batch_size=S.batch_size, device=device, bf16=S.bf16).generate(masks, seeds)
    return unet_evals_per_s(sd.model, sd.latent_shape, size, S.batch_size, S.unet_reps, device, S.bf16)


def dpm_generator(sd: SDGenerator, S: Settings, device) -> SDGenerator:
    """SD's weights sampled with DPM-Solver++ at ``S.dpm_steps``."""
    return SDGenerator(sd.model, sd.vq, steps=S.dpm_steps, scheduler="dpm++", batch_size=S.batch_size, device=device,
                       bf16=S.bf16)


def time_sd(sd: SDGenerator, dpm: SDGenerator, masks: np.ndarray, seeds: list[int], S: Settings, device) -> list[dict]:
    """Rows of SD with DDIM (``S.steps``) and with DPM-Solver++ (``S.dpm_steps``), same masks and seeds."""
    _, r = time_generate(sd, masks, seeds, device)
    _, rd = time_generate(dpm, masks, seeds, device)
    return [{"method": f"SD DDIM-{S.steps}", "generator": "SD", "scheduler": "ddim", "steps": S.steps, "labels": None} | r,
            {"method": f"SD DPM++-{S.dpm_steps}", "generator": "SD", "scheduler": "dpm++", "steps": S.dpm_steps,
             "labels": None} | rd]


def time_sc(sd: SDGenerator, size: int, seeds: list[int], S: Settings, device, notes: list[str]) -> list[dict]:
    """Rows of SD-SC (Eq. 2) with DDIM on stripe masks of each of ``S.sc_labels`` label counts (none, with
    a note, when SD is not pixel-conditioned)."""
    if sd.model.condition != "pixel":
        notes.append(f"SD-SC skipped: SD is {sd.model.condition}-conditioned (SC needs pixel)")
        return []
    sc = SCGenerator(sd.model, sd.vq, steps=S.steps, scheduler="ddim", batch_size=S.batch_size, device=device,
                     bf16=S.bf16)
    rows = []
    for n_lab in S.sc_labels:
        _, r = time_generate(sc, stripes(S.n_tiles, size, n_lab), seeds, device)
        rows.append({"method": f"SD-SC DDIM-{S.steps} ({n_lab} label{'s' if n_lab > 1 else ''})", "generator": "SD-SC",
                     "scheduler": "ddim", "steps": S.steps, "labels": n_lab} | r)
    return rows


def time_disc(ldir: Path | None, size: int, masks: np.ndarray, seeds: list[int], S: Settings, device,
              notes: list[str]) -> list[dict]:
    """The row of SD-DISC with DDIM when notebook 02 trained it (none, with a note, otherwise)."""
    if ldir is None or not (generators.finetuned_folder(ldir, "SD-DISC") / "model_index.json").exists():
        notes.append("SD-DISC not timed: no outputs/<profile>/disc/sd-disc (notebook 02); it costs what SD costs")
        return []
    ctx = generators.GeneratorContext(ldir, size, S.steps, "ddim", S.batch_size, str(device), S.bf16)
    dg, _ = generators.build_generator("SD-DISC", ctx)
    _, r = time_generate(dg, masks, seeds, device)
    return [{"method": f"SD-DISC DDIM-{S.steps}", "generator": "SD-DISC", "scheduler": "ddim", "steps": S.steps,
             "labels": None} | r]


def sampling_summary(rows: list[dict]) -> dict:
    """The sampling rows (each with its time relative to the first, SD DDIM), seconds per tile by method,
    and the ratios: DDIM over DPM-Solver++ time (the second row), SD-SC's time and evaluations over SD's."""
    base = rows[0]["sec_per_tile"]
    for r in rows:
        r["time_vs_sd_ddim"] = r["sec_per_tile"] / base
    sc = [r for r in rows if r["generator"] == "SD-SC"]
    return {"sampling": rows, "sec_per_tile": {r["method"]: r["sec_per_tile"] for r in rows},
            "ratios": {"ddim_over_dpm_time": rows[0]["sec_per_tile"] / rows[1]["sec_per_tile"],
                       "sc_over_sd_time_by_labels": {str(r["labels"]): r["time_vs_sd_ddim"] for r in sc},
                       "sc_over_sd_nfe_by_labels": {str(r["labels"]): r["nfe_per_tile"] / rows[0]["nfe_per_tile"]
                                                    for r in sc}}}


def compare_adherence(sd: SDGenerator, dpm: SDGenerator, judge, masks: np.ndarray, seeds: list[int], S: Settings,
                      device) -> dict:
    """DDIM-S vs DPM-Solver++: the same held-out masks and seeds, both judged, beside the judge's score
    of DDIM's tiles against other masks (chance)."""
    n = S.n_adherence
    ta, ra = time_generate(sd, masks[:n], seeds[:n], device)
    tb, rb = time_generate(dpm, masks[:n], seeds[:n], device)
    ja, jb = judge(ta, masks[:n]), judge(tb, masks[:n])
    chance = judge(ta, np.roll(masks[:n], 1, axis=0))
    return {"masks": int(n), "seeds": f"{seeds[0]}..{seeds[n - 1]}",
            "judge": {k: judge.info.get(k) for k in ("input", "scored_on", "source_run")},
            f"DDIM-{S.steps}": _judged(ja) | {"sec_per_tile": ra["sec_per_tile"]},
            f"DPM++-{S.dpm_steps}": _judged(jb) | {"sec_per_tile": rb["sec_per_tile"]},
            "chance_mean_iou": chance["mean_iou"],
            "mean_iou_difference_dpm_minus_ddim": jb["mean_iou"] - ja["mean_iou"],
            "pixel_agreement_difference_dpm_minus_ddim": jb["pixel_agreement"] - ja["pixel_agreement"],
            "ddim_over_dpm_time": ra["sec_per_tile"] / rb["sec_per_tile"]}


def training_throughput(P01, size: int, latent, S: Settings, device, profile: str,
             carcinonet_params_file: str | Path | None) -> dict:
    """Training throughput of the LDM (Eq. 1) and of CarcinoNet (Eq. 4, notebook 04's parameters)."""
    P04 = carcinonet_params(profile, carcinonet_params_file)
    return {"ldm": train_ldm_throughput(P01, size, latent, S, device),
            "carcinonet": train_carcinonet_throughput(P04, size, S, device) |
            {"params": str(carcinonet_params_file or f"params/{profile}/04_carcinonet.yaml"),
             "encoder": P04.model["encoder"]}}


def run(profile: str = "smoke", S: Settings | None = None, ldm_dir: str | Path | None = None,
        judge_dir: str | Path | None = None, carcinonet_params_file: str | Path | None = None,
        untrained: str | Path | None = None, image_size: int = 256, progress: bool = True) -> dict:
    """Measure everything listed in the module docstring, one job after the other; returns the JSON-ready dict."""
    S = S or Settings()
    if S.n_tiles < 1:
        raise ValueError("n_tiles must be >= 1")
    device = pick_device(S.device)
    torch.manual_seed(S.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_start = time.perf_counter()
    notes: list[str] = []
    out: dict = {"device": device_info(device), "settings": asdict(S) | {"sc_labels": list(S.sc_labels)},
                 "profile": profile, "notes": notes}
    ldir = None if untrained else layout.of({"profile": profile, "ldm_dir": str(ldm_dir or "")}).ldm
    sd, P01, size, out["model"] = load_model(ldir, untrained, image_size, S, device)
    masks = bench_masks(ldir, P01, size, sd.latent_shape[-1], S, notes)
    judge = bench_judge(ldir, judge_dir, S, device, notes)
    seeds = [S.seed * 100_000 + i for i in range(len(masks))]
    tmask, tseeds = masks[:S.n_tiles], seeds[:S.n_tiles]

    bar = tqdm(total=6, desc="bench", disable=not progress)
    out["unet"] = time_unet(sd, size, tmask, tseeds, S, device)
    out["unet_evals_per_s"] = out["unet"]["evals_per_s"]
    bar.update()
    dpm = dpm_generator(sd, S, device)
    rows = time_sd(sd, dpm, tmask, tseeds, S, device)
    bar.update()
    rows += time_sc(sd, size, tseeds, S, device, notes)
    bar.update()
    rows += time_disc(ldir, size, tmask, tseeds, S, device, notes)
    bar.update()
    out |= sampling_summary(rows)
    out["adherence"] = None if judge is None else compare_adherence(sd, dpm, judge, masks, seeds, S, device)
    if out["adherence"] is not None:
        out["ratios"]["ddim_over_dpm_time_adherence_run"] = out["adherence"]["ddim_over_dpm_time"]
    bar.update()
    out["training"] = training_throughput(P01, size, sd.latent_shape, S, device, profile, carcinonet_params_file)
    bar.update()
    bar.close()
    out["memory"] = peak_memory(device)
    out["total_seconds"] = time.perf_counter() - t_start
    return out


def summary_lines(b: dict) -> list[str]:
    """A short human-readable summary of a benchmark result."""
    d = b["device"]
    lines = [f"device: {d['gpu'] or d['cpu']} · {d['torch_threads']} torch threads · torch {d['torch']}",
             f"model: {b['model']['source']} ({b['model']['unet_parameters'] / 1e6:.2f} M UNet parameters, "
             f"{b['model']['image_size']} px)",
             f"UNet evaluations/s: {b['unet_evals_per_s']:.1f} (batch {b['unet']['batch']})"]
    lines += [f"  {r['method']:<28} {r['sec_per_tile']:9.3f} s/tile  {r['nfe_per_tile']:6.0f} evals/tile  "
              f"{r['time_vs_sd_ddim']:5.2f}x SD" for r in b["sampling"]]
    lines.append(f"DDIM/DPM++ time ratio: {b['ratios']['ddim_over_dpm_time']:.1f}x")
    a = b.get("adherence")
    if a:
        k = [x for x in a if x.startswith("DDIM")][0]
        kd = [x for x in a if x.startswith("DPM")][0]
        lines.append(f"adherence on {a['masks']} masks: mean IoU {k} {a[k]['mean_iou']:.3f}, {kd} {a[kd]['mean_iou']:.3f} "
                     f"(difference {a['mean_iou_difference_dpm_minus_ddim']:+.3f}; chance {a['chance_mean_iou']:.3f})")
    t = b["training"]
    lines.append(f"training: LDM {t['ldm']['images_per_s']:.1f} images/s, CarcinoNet {t['carcinonet']['images_per_s']:.1f} images/s")
    m = b["memory"]
    lines.append(f"peak memory: {m['peak_rss_mib']:.0f} MiB RSS" +
                 (f", {m['cuda_max_allocated_mib']:.0f} MiB CUDA" if "cuda_max_allocated_mib" in m else ""))
    lines.append(f"total: {b['total_seconds']:.0f} s")
    return lines


def save(b: dict, path: str | Path) -> Path:
    path = paths.resolve(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return io.write_json(path, b)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m discnb.grading.bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = Settings()
    ap.add_argument("--profile", default="smoke", choices=paths.PROFILES, help="whose trained models to time")
    ap.add_argument("--out", help="JSON file (default outputs/<profile>/bench.json)")
    ap.add_argument("--ldm-dir", help="notebook 01's output folder (default outputs/<profile>/ldm)")
    ap.add_argument("--judge", help="pattern judge folder (default outputs/<profile>/judge, notebook 01)")
    ap.add_argument("--carcinonet-params", help="notebook 04 parameters (default params/<profile>/04_carcinonet.yaml)")
    ap.add_argument("--untrained", help="time a random model of this notebook-01 parameter file's size instead")
    ap.add_argument("--image-size", type=int, default=256, help="tile size with --untrained")
    for f in ("n_tiles", "n_adherence", "steps", "dpm_steps", "batch_size", "unet_reps", "train_steps", "ldm_batch",
              "carcinonet_batch", "seed"):
        ap.add_argument("--" + f.replace("_", "-"), type=int, default=getattr(d, f))
    ap.add_argument("--sc-labels", type=int, nargs="+", default=list(d.sc_labels))
    ap.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"))
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on a GPU")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    S = Settings(**{f: getattr(a, f) for f in Settings.__dataclass_fields__ if f != "sc_labels"},
                 sc_labels=tuple(a.sc_labels))
    b = run(a.profile, S, a.ldm_dir, a.judge, a.carcinonet_params, a.untrained, a.image_size, not a.no_progress)
    out = save(b, a.out or paths.output_dir(a.profile) / "bench.json")
    print("\n".join(summary_lines(b)))
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
