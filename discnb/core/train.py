"""ONE training loop for every model of the project (first stage, SD, SD-DISC, CarcinoNet).

Plain code in the spirit of nanoGPT and the diffusers training examples, on accelerate:
mixed precision, gradient accumulation, DDP over processes/GPUs/nodes, an EMA of the weights,
``checkpoint-{step}`` folders written atomically with a rotation limit, ``resume: latest|PATH``,
validation with a fixed generator, best-by-validation selection (the paper keeps the model with
the lowest validation error) and a clear stop when the loss stops being finite.

Data are in-memory tensors (:class:`TensorData`): each optimizer step takes the next
``global_batch`` indices of a per-epoch permutation seeded by (seed, epoch), and every process
takes its slice. So the data order is a pure function of (seed, epoch, batch): resuming restores
it exactly, and 1 or N processes see the same global batches.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn as nn
from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from discnb.core.io import atomic_dir

CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


@dataclass
class FitConfig:
    out_dir: str
    max_steps: int                      # optimizer steps
    global_batch: int                   # samples per optimizer step, over all processes and accumulation
    grad_accum: int = 1
    lr: float = 1e-4
    scale_lr: bool = False              # LDM: lr = base lr x global batch
    weight_decay: float = 0.0
    warmup_steps: int = 0
    ema_decay: float = 0.0              # 0 = no EMA
    mixed_precision: str = "no"         # no | bf16 | fp16 (trainable weights stay fp32)
    cpu: bool = False                   # force the CPU even where a GPU is visible
    checkpoint_every: int = 500
    checkpoints_total_limit: int = 3
    validate_every: int = 0             # optimizer steps; 0 = once per epoch
    resume: str | None = None           # None/"" | "latest" | path to a checkpoint-N folder
    seed: int = 0
    max_grad_norm: float | None = 1.0   # clip the gradients' global norm; 0 or None = no clipping
    log_every: int = 10
    progress: bool = True
    desc: str = "train"
    signature: dict = field(default_factory=dict)  # what the model is; a resume must match it


class TensorData:
    """Samples held in memory as tensors with a common first dimension.

    ``transform(batch) -> batch`` turns stored samples into model inputs on every batch, training
    and validation alike (e.g. uint8 pixels to floats, so a set is held at a quarter of the size);
    ``augment(batch) -> batch`` then runs on each drawn training batch (random flips etc., from
    torch's RNG, which the checkpoints save and restore).
    """

    def __init__(self, tensors: dict[str, torch.Tensor], augment: Callable[[dict], dict] | None = None,
                 transform: Callable[[dict], dict] | None = None):
        sizes = {k: len(v) for k, v in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"tensors differ in length: {sizes}")
        self.tensors, self.augment, self.transform = tensors, augment, transform

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def batch(self, idx: torch.Tensor, device=None, augment: bool = True) -> dict:
        b = {k: v[idx] for k, v in self.tensors.items()}
        if self.transform is not None:
            b = self.transform(b)
        if augment and self.augment is not None:
            b = self.augment(b)
        return {k: v.to(device) for k, v in b.items()} if device is not None else b


class EMA:
    """Exponential moving average of trainable weights, with LDM's warm-up
    (decay_n = min(decay, (1 + n) / (10 + n))) so short runs are not dominated by the init.

    Our own rather than ``diffusers.training_utils.EMAModel`` or ``torch.optim.swa_utils``: its
    state is saved inside each checkpoint folder before that folder is renamed into place (so a
    kill never pairs weights with another step's EMA), and the resume test checks it bit for bit."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.num_updates = decay, 0
        self.shadow = {n: p.detach().clone().float() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for n, p in model.named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach().float(), 1 - d)

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """Temporarily swap the EMA weights into ``model``."""
        saved = {n: p.detach().clone() for n, p in model.named_parameters() if n in self.shadow}
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in self.shadow:
                    p.copy_(self.shadow[n])
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in saved:
                        p.copy_(saved[n])

    def save(self, path: Path) -> None:
        save_file({k: v.contiguous() for k, v in self.shadow.items()}, str(path),
                  metadata={"num_updates": str(self.num_updates), "decay": str(self.decay)})

    def load(self, path: Path) -> None:
        with safe_open(str(path), "pt") as f:
            self.num_updates = int(f.metadata()["num_updates"])
        loaded = load_file(str(path))
        if set(loaded) != set(self.shadow):
            raise ValueError(f"{path}: EMA weights do not match this model")
        self.shadow = loaded


# ------------------------------------------------------------------------------ checkpoints
def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints (a half-written one is still named ``*.tmp``), oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out_dir.iterdir()
             if (m := CKPT_RE.match(p.name)) and (p / "trainer_state.json").exists()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, out_dir: Path) -> Path | None:
    if not resume:
        return None
    if resume == "latest":
        ckpts = list_checkpoints(out_dir)
        return ckpts[-1] if ckpts else None  # nothing yet: start fresh
    p = Path(resume)
    if not p.is_dir() or not (p / "trainer_state.json").exists():
        raise FileNotFoundError(f"resume={resume!r}: no checkpoint there (expected a checkpoint-N folder with "
                                f"trainer_state.json; or use resume: latest)")
    return p


# ------------------------------------------------------------------------------------ loop
def pick_device(name: str) -> torch.device:
    """The device a stage's ``device`` parameter names: "auto" (CUDA when visible, else the CPU),
    "cuda" (an error when no GPU is visible) or "cpu"."""
    if name not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda': no GPU is visible to torch (use 'auto' or 'cpu')")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def use_cpu(force: bool) -> bool:
    """Run on the CPU when asked or when no GPU is visible. accelerate only sets up multi-process
    CPU training (gloo) when told ``cpu=True``; otherwise each process thinks it is alone."""
    return force or not torch.cuda.is_available()


def process_state(force_cpu: bool = False):
    return PartialState(cpu=use_cpu(force_cpu))


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


def _lr_at(step: int, cfg: FitConfig, base: float) -> float:
    return base * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else base


def fit(model: nn.Module, loss_fn: Callable, train: TensorData, cfg: FitConfig, *,
        val: TensorData | None = None, save_fn: Callable[[nn.Module, Path], None] | None = None,
        params: list[nn.Parameter] | None = None) -> dict:
    """Train ``model`` on ``loss_fn(model, batch, generator=None) -> scalar`` for ``cfg.max_steps``.

    ``save_fn(model, folder)`` writes a usable model (e.g. ``save_pretrained``); it is called
    with EMA weights (when EMA is on) for ``best/`` (lowest validation loss) and ``final/``.
    Returns a summary (steps, best step/val loss, throughput, where it resumed from).
    """
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    acc = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                      log_with="tensorboard", cpu=use_cpu(cfg.cpu),
                      project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")))
    world, rank = acc.num_processes, acc.process_index
    per_proc, rem = divmod(cfg.global_batch, world * cfg.grad_accum)
    if rem or per_proc == 0:
        raise ValueError(f"global_batch {cfg.global_batch} must be a multiple of processes ({world}) x "
                         f"grad_accum ({cfg.grad_accum})")
    steps_per_epoch = len(train) // cfg.global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"the training split has {len(train)} samples, fewer than global_batch {cfg.global_batch}: "
                         "add data or lower the batch size")
    set_seed(cfg.seed, device_specific=True)  # different noise per process, same across restarts

    base_lr = cfg.lr * cfg.global_batch if cfg.scale_lr else cfg.lr
    trainable = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=base_lr, weight_decay=cfg.weight_decay)
    model, opt = acc.prepare(model, opt)
    raw = acc.unwrap_model(model)
    ema = EMA(raw, cfg.ema_decay) if cfg.ema_decay > 0 else None

    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_val": math.inf, "best_step": -1,
             "signature": cfg.signature, "global_batch": cfg.global_batch}
    start_ckpt = resolve_resume(cfg.resume, out)
    if start_ckpt is not None:
        saved = json.loads((start_ckpt / "trainer_state.json").read_text())
        if saved.get("signature") != cfg.signature:
            diff = {k for k in set(saved.get("signature", {})) | set(cfg.signature)
                    if saved.get("signature", {}).get(k) != cfg.signature.get(k)}
            raise ValueError(f"{start_ckpt} holds another model (config differs in {sorted(diff)}): "
                             "resume from a checkpoint of this configuration or start fresh (resume: null)")
        if saved["global_batch"] != cfg.global_batch:
            raise ValueError(f"{start_ckpt} was trained with global_batch {saved['global_batch']}, not {cfg.global_batch}")
        acc.load_state(str(start_ckpt))
        if ema is not None:
            ema.load(start_ckpt / "ema.safetensors")
        state.update({k: saved[k] for k in ("step", "epoch", "batch_in_epoch", "best_val", "best_step")})
    metrics_path = out / "metrics.csv"
    _truncate_metrics(metrics_path, state["step"], acc.is_main_process)

    # Our own rotation rather than accelerate's (ProjectConfiguration(automatic_checkpoint_naming=True,
    # total_limit=N)): that one writes checkpoint_N in place, so a kill mid-save leaves a folder that
    # looks complete. Here a checkpoint is complete only once renamed from *.tmp, with
    # trainer_state.json written last, and the oldest go only after the new one exists.
    def save_checkpoint() -> Path:
        final = out / f"checkpoint-{state['step']}"
        tmp = final.with_name(final.name + ".tmp")
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        # save_state has no barrier at its end: without this one the main process could rename tmp while another
        # process is still writing its random_states_<rank>.pkl there (seen on a loaded 2-core machine)
        acc.wait_for_everyone()
        if acc.is_main_process:
            if ema is not None:
                ema.save(tmp / "ema.safetensors")
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))  # written last: marks it complete
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in list_checkpoints(out)[:-cfg.checkpoints_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def save_model(name: str) -> None:
        if save_fn is None or not acc.is_main_process:
            return
        ctx = ema.applied(raw) if ema is not None else contextlib.nullcontext(raw)
        with ctx as m:
            atomic_dir(lambda d: save_fn(m, d), out / name)

    @torch.no_grad()
    def validate() -> float:
        raw.eval()
        g = torch.Generator().manual_seed(cfg.seed + 7919)  # same t and eps at every validation
        ctx = ema.applied(raw) if ema is not None else contextlib.nullcontext(raw)
        tot = n = 0
        with ctx as m, acc.autocast():
            for s in range(0, len(val), per_proc):
                idx = torch.arange(s, min(s + per_proc, len(val)))
                b = val.batch(idx, acc.device, augment=False)
                tot += float(loss_fn(m, b, generator=g)) * len(idx)
                n += len(idx)
        raw.train()
        return tot / max(n, 1)

    if acc.is_main_process:
        acc.init_trackers("train", config={k: v for k, v in asdict(cfg).items() if isinstance(v, (int, float, str, bool))})
    bar = tqdm(total=cfg.max_steps, initial=state["step"], desc=cfg.desc, disable=not (cfg.progress and acc.is_main_process),
               mininterval=2, dynamic_ncols=True)
    validate_every = cfg.validate_every or steps_per_epoch
    model.train()
    t0, step0, loss_v = time.perf_counter(), state["step"], float("nan")
    while state["step"] < cfg.max_steps:
        perm = epoch_permutation(len(train), cfg.seed, state["epoch"])
        for b in range(state["batch_in_epoch"], steps_per_epoch):
            mine = perm[b * cfg.global_batch:(b + 1) * cfg.global_batch][rank * per_proc * cfg.grad_accum:
                                                                         (rank + 1) * per_proc * cfg.grad_accum]
            for g in opt.param_groups:
                g["lr"] = _lr_at(state["step"], cfg, base_lr)
            loss_sum = torch.zeros((), device=acc.device)
            for a in range(cfg.grad_accum):
                batch = train.batch(mine[a * per_proc:(a + 1) * per_proc], acc.device)
                with acc.accumulate(model):
                    with acc.autocast():
                        loss = loss_fn(model, batch)
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.max_grad_norm:
                        acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                loss_sum += loss.detach().float()
            loss_v = float(acc.gather((loss_sum / cfg.grad_accum).reshape(1)).mean())
            if not math.isfinite(loss_v):
                last = list_checkpoints(out)
                _finish_trackers(acc)
                raise TrainingDiverged(f"{cfg.desc}: loss became {loss_v} at step {state['step'] + 1}; nothing after the "
                                       f"last good checkpoint ({last[-1] if last else 'none'}) was saved. Lower lr "
                                       f"({base_lr:g}), use mixed_precision 'no', or check the data.")
            if ema is not None:
                ema.step(raw)
            state["step"] += 1
            state["batch_in_epoch"] = b + 1
            row = {"step": state["step"], "epoch": state["epoch"], "loss": loss_v, "lr": opt.param_groups[0]["lr"]}
            if state["step"] % validate_every == 0 and val is not None and len(val):
                row["val_loss"] = v = validate() if acc.is_main_process else float("nan")
                if acc.is_main_process and v < state["best_val"]:
                    state["best_val"], state["best_step"] = v, state["step"]
                    save_model("best")
                acc.wait_for_everyone()
            if state["step"] % cfg.log_every == 0 or "val_loss" in row or state["step"] == cfg.max_steps:
                row["elapsed_s"] = time.perf_counter() - t0
                _log(acc, metrics_path, row)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_v:.4f}", epoch=state["epoch"])
            if state["step"] % cfg.checkpoint_every == 0 or state["step"] == cfg.max_steps:
                save_checkpoint()
            if state["step"] >= cfg.max_steps:
                break
        else:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    bar.close()
    elapsed = time.perf_counter() - t0
    if not list_checkpoints(out) or list_checkpoints(out)[-1].name != f"checkpoint-{state['step']}":
        save_checkpoint()
    if val is None or not len(val):
        save_model("best")  # nothing to select on: the final weights
    elif _on_main_says(acc, state["best_step"] < 0):  # shorter than one validation interval (the paper dry run): judge the final weights
        v = validate() if acc.is_main_process else float("nan")
        if acc.is_main_process:
            state["best_val"], state["best_step"] = v, state["step"]
            save_model("best")
            _log(acc, metrics_path, {"step": state["step"], "epoch": state["epoch"], "loss": loss_v,
                                     "lr": opt.param_groups[0]["lr"], "val_loss": v,
                                     "elapsed_s": time.perf_counter() - t0})
        acc.wait_for_everyone()
    save_model("final")
    _finish_trackers(acc)
    steps_done = state["step"] - step0
    return {"steps": state["step"], "epochs": state["epoch"], "best_step": state["best_step"],
            "best_val_loss": state["best_val"], "final_loss": loss_v, "resumed_from": str(start_ckpt or ""),
            "processes": world, "train_seconds": elapsed,
            "steps_per_s": steps_done / elapsed if elapsed > 0 else float("nan"),
            "samples_per_s": steps_done * cfg.global_batch / elapsed if elapsed > 0 else float("nan")}


def _truncate_metrics(path: Path, step: int, main: bool) -> None:
    """On resume, drop rows logged after the checkpoint (they are about to be redone)."""
    if not main or not path.exists():
        return
    with path.open() as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if int(r["step"]) <= step]
    if len(keep) != len(rows):
        _write_rows(path, keep)


_FIELDS = ["step", "epoch", "loss", "val_loss", "lr", "elapsed_s"]


def _write_rows(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, _FIELDS)
        w.writeheader()
        w.writerows(rows)


def _on_main_says(acc, flag: bool) -> bool:
    """The main process's ``flag`` on every process: state only the main process updates (best
    step) must not send the processes down different paths, or their collectives pair up wrongly."""
    if acc.num_processes == 1:
        return flag
    box = [flag]
    broadcast_object_list(box, from_process=0)
    return bool(box[0])


def _log(acc, path: Path, row: dict) -> None:
    acc.log({k: v for k, v in row.items() if k not in ("step", "epoch") and not (isinstance(v, float) and math.isnan(v))},
            step=row["step"])
    if acc.is_main_process:
        new = not path.exists()
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, _FIELDS)
            if new:
                w.writeheader()
            w.writerow(row)


def read_metrics(out_dir: str | Path) -> pd.DataFrame:
    p = Path(out_dir) / "metrics.csv"
    if not p.exists():
        raise FileNotFoundError(f"{p}: no training log")
    return pd.read_csv(p)


def _finish_trackers(acc) -> None:
    """Close the loggers but keep the process group: ``Accelerator.end_training`` would destroy
    it, and the next model trained in the same process (SD after the first stage) needs it."""
    for tracker in acc.trackers:
        tracker.finish()
