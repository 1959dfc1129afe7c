"""ONE training loop for every model of the project (first stage, SD, SD-DISC, CarcinoNet).

Plain code in the spirit of nanoGPT and the diffusers training examples, on accelerate:
mixed precision, gradient accumulation, DDP over processes/GPUs/nodes, an EMA of the weights
(diffusers' ``EMAModel``, saved in accelerate's checkpoint),
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
import functools
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
from diffusers.training_utils import EMAModel
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



@dataclass
class TrainerState:
    """Where a run stands: saved as a checkpoint's ``trainer_state.json`` (written last, so its presence
    marks the folder complete) beside accelerate's files."""
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0             # global batches of this epoch already trained on
    best_val: float = math.inf
    best_step: int = -1
    signature: dict = field(default_factory=dict)
    global_batch: int = 0


@dataclass
class _Run:
    """One fit's moving parts, set up once by :func:`_prepare` (the locals of a diffusers training script)."""
    cfg: FitConfig
    out: Path
    acc: Accelerator
    model: nn.Module                    # as prepared (wrapped in DDP over several processes)
    raw: nn.Module                      # the model itself: EMA, validation and saving use it
    opt: torch.optim.Optimizer
    ema: EMAModel | None
    ema_params: list[nn.Parameter]      # what the EMA averages: the model's trainable weights, in a fixed order
    per_proc: int                       # samples per process in one micro-batch
    steps_per_epoch: int
    base_lr: float
    state: TrainerState
    t0: float = 0.0                     # when training (after set-up and resume) began


SaveFn = Callable[[nn.Module, Path], None]


def fit(model: nn.Module, loss_fn: Callable, train: TensorData, cfg: FitConfig, *,
        val: TensorData | None = None, save_fn: SaveFn | None = None,
        params: list[nn.Parameter] | None = None) -> dict:
    """Train ``model`` on ``loss_fn(model, batch, generator=None) -> scalar`` for ``cfg.max_steps``.

    ``save_fn(model, folder)`` writes a usable model (e.g. ``save_pretrained``); it is called
    with EMA weights (when EMA is on) for ``best/`` (lowest validation loss) and ``final/``.
    ``params`` are the weights to optimise (default: every parameter that requires a gradient).
    Returns a summary (steps, best step/val loss, throughput, where it resumed from).
    """
    run = _prepare(model, train, cfg, params)
    resumed_from = _resume(run)
    acc, state = run.acc, run.state
    if acc.is_main_process:
        acc.init_trackers("train", config={k: v for k, v in asdict(cfg).items() if isinstance(v, (int, float, str, bool))})
    bar = tqdm(total=cfg.max_steps, initial=state.step, desc=cfg.desc, disable=not (cfg.progress and acc.is_main_process),
               mininterval=2, dynamic_ncols=True)
    validate_every = cfg.validate_every or run.steps_per_epoch
    has_val = val is not None and len(val) > 0
    run.model.train()
    step0, loss = state.step, float("nan")
    run.t0 = time.perf_counter()
    while state.step < cfg.max_steps:
        if state.batch_in_epoch == run.steps_per_epoch:  # epoch done: the next one, in its own order
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        loss = _train_step(run, loss_fn, train)
        state.step += 1
        state.batch_in_epoch += 1
        row = {"step": state.step, "epoch": state.epoch, "loss": loss, "lr": run.opt.param_groups[0]["lr"]}
        if has_val and state.step % validate_every == 0:
            row["val_loss"] = _validate_and_keep_best(run, loss_fn, val, save_fn)
        if state.step % cfg.log_every == 0 or "val_loss" in row or state.step == cfg.max_steps:
            _log(run, row)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", epoch=state.epoch)
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.max_steps:
            _save_checkpoint(run)
    bar.close()
    elapsed = time.perf_counter() - run.t0
    if not list_checkpoints(run.out) or list_checkpoints(run.out)[-1].name != f"checkpoint-{state.step}":
        _save_checkpoint(run)
    _save_best_if_unselected(run, loss_fn, val if has_val else None, save_fn, loss)
    _save_model(run, save_fn, "final")
    _finish_trackers(acc)
    steps_done = state.step - step0
    return {"steps": state.step, "epochs": state.epoch, "best_step": state.best_step,
            "best_val_loss": state.best_val, "final_loss": loss, "resumed_from": str(resumed_from or ""),
            "processes": acc.num_processes, "train_seconds": elapsed,
            "steps_per_s": steps_done / elapsed if elapsed > 0 else float("nan"),
            "samples_per_s": steps_done * cfg.global_batch / elapsed if elapsed > 0 else float("nan")}


def _prepare(model: nn.Module, train: TensorData, cfg: FitConfig, params: list[nn.Parameter] | None) -> _Run:
    """The accelerator, the batch geometry (checked), the seeds, AdamW and the EMA."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    acc = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                      log_with="tensorboard", cpu=use_cpu(cfg.cpu),
                      project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")))
    world = acc.num_processes
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
    ema, ema_params = None, [p for p in raw.parameters() if p.requires_grad]
    if cfg.ema_decay > 0:
        # LDM's warm-up, decay_n = min(decay, (1 + n) / (10 + n)) at the n-th update, so short runs are not
        # dominated by the init. EMAModel computes it from n = updates - update_after_step - 1 (and copies the
        # weights while that is 0): update_after_step=-1 makes n the number of updates, as in LDM's LitEma.
        ema = EMAModel(ema_params, decay=cfg.ema_decay, update_after_step=-1, foreach=True)  # foreach: one fused update
        acc.register_for_checkpointing(ema)  # saved by save_state inside the checkpoint's *.tmp folder
    return _Run(cfg=cfg, out=out, acc=acc, model=model, raw=raw, opt=opt, ema=ema, ema_params=ema_params,
                per_proc=per_proc, steps_per_epoch=steps_per_epoch, base_lr=base_lr,
                state=TrainerState(signature=cfg.signature, global_batch=cfg.global_batch))


def _resume(run: _Run) -> Path | None:
    """Load ``cfg.resume``'s checkpoint (weights, optimizer, RNGs, EMA, step and data position) when there is one,
    after checking that it holds this model; drop the metric rows logged after it."""
    cfg = run.cfg
    ckpt = resolve_resume(cfg.resume, run.out)
    if ckpt is not None:
        saved = json.loads((ckpt / "trainer_state.json").read_text())
        theirs = saved["signature"]
        if theirs != cfg.signature:
            diff = {k for k in set(theirs) | set(cfg.signature) if theirs.get(k) != cfg.signature.get(k)}
            raise ValueError(f"{ckpt} holds another model (config differs in {sorted(diff)}): "
                             "resume from a checkpoint of this configuration or start fresh (resume: null)")
        if saved["global_batch"] != cfg.global_batch:
            raise ValueError(f"{ckpt} was trained with global_batch {saved['global_batch']}, not {cfg.global_batch}")
        if run.ema is not None and not (ckpt / "custom_checkpoint_0.pkl").exists():
            raise ValueError(f"{ckpt} holds no EMAModel state (custom_checkpoint_0.pkl; an ema.safetensors there is the "
                             "format of the loop's own EMA that EMAModel replaced): start fresh (resume: null)")
        run.acc.load_state(str(ckpt))
        if run.ema is not None:
            run.ema.to(run.acc.device)  # accelerate loads registered objects' states onto the CPU
        for k in ("step", "epoch", "batch_in_epoch", "best_val", "best_step"):
            setattr(run.state, k, saved[k])
    _truncate_metrics(run.out / "metrics.csv", run.state.step, run.acc.is_main_process)
    return ckpt


_permutation = functools.lru_cache(maxsize=1)(epoch_permutation)  # one per epoch, not one per step


def _train_step(run: _Run, loss_fn: Callable, train: TensorData) -> float:
    """One optimizer step on global batch ``batch_in_epoch`` of the epoch's permutation: this process's slice,
    in ``grad_accum`` micro-batches. Returns the loss averaged over processes; raises when it is not finite."""
    cfg, acc, state = run.cfg, run.acc, run.state
    share = run.per_proc * cfg.grad_accum
    batch = _permutation(len(train), cfg.seed, state.epoch)[state.batch_in_epoch * cfg.global_batch:
                                                             (state.batch_in_epoch + 1) * cfg.global_batch]
    mine = batch[acc.process_index * share:(acc.process_index + 1) * share]
    for g in run.opt.param_groups:
        g["lr"] = _lr_at(state.step, cfg, run.base_lr)
    loss_sum = torch.zeros((), device=acc.device)
    for a in range(cfg.grad_accum):
        micro = train.batch(mine[a * run.per_proc:(a + 1) * run.per_proc], acc.device)
        with acc.accumulate(run.model):
            with acc.autocast():
                loss = loss_fn(run.model, micro)
            acc.backward(loss)
            if acc.sync_gradients and cfg.max_grad_norm:
                acc.clip_grad_norm_(run.model.parameters(), cfg.max_grad_norm)
            run.opt.step()
            run.opt.zero_grad(set_to_none=True)
        loss_sum += loss.detach().float()
    loss_v = float(acc.gather((loss_sum / cfg.grad_accum).reshape(1)).mean())
    if not math.isfinite(loss_v):
        last = list_checkpoints(run.out)
        _finish_trackers(acc)
        raise TrainingDiverged(f"{cfg.desc}: loss became {loss_v} at step {state.step + 1}; nothing after the "
                               f"last good checkpoint ({last[-1] if last else 'none'}) was saved. Lower lr "
                               f"({run.base_lr:g}), use mixed_precision 'no', or check the data.")
    if run.ema is not None:
        run.ema.step(run.ema_params)
    return loss_v


@contextlib.contextmanager
def _ema_weights(run: _Run):
    """``run.raw`` with the EMA weights in it (when EMA is on), its own weights back afterwards."""
    if run.ema is None:
        yield run.raw
        return
    run.ema.store(run.ema_params)
    run.ema.copy_to(run.ema_params)
    try:
        yield run.raw
    finally:
        run.ema.restore(run.ema_params)


@torch.no_grad()
def _validate(run: _Run, loss_fn: Callable, val: TensorData) -> float:
    """The mean validation loss of the EMA weights (when on), with the same t and eps at every validation."""
    run.raw.eval()
    g = torch.Generator().manual_seed(run.cfg.seed + 7919)
    tot = n = 0
    with _ema_weights(run) as m, run.acc.autocast():
        for s in range(0, len(val), run.per_proc):
            idx = torch.arange(s, min(s + run.per_proc, len(val)))
            tot += float(loss_fn(m, val.batch(idx, run.acc.device, augment=False), generator=g)) * len(idx)
            n += len(idx)
    run.raw.train()
    return tot / max(n, 1)


def _validate_and_keep_best(run: _Run, loss_fn: Callable, val: TensorData, save_fn: SaveFn | None) -> float:
    """Validate on the main process (nan on the others); a new lowest validation loss is saved as ``best/``."""
    v = _validate(run, loss_fn, val) if run.acc.is_main_process else float("nan")
    if run.acc.is_main_process and v < run.state.best_val:
        run.state.best_val, run.state.best_step = v, run.state.step
        _save_model(run, save_fn, "best")
    run.acc.wait_for_everyone()
    return v


def _save_best_if_unselected(run: _Run, loss_fn: Callable, val: TensorData | None, save_fn: SaveFn | None,
                             loss: float) -> None:
    """``best/`` when no validation chose one: without validation data, the final weights; in a run shorter
    than one validation interval (the paper dry run), the final weights too, validated once and logged."""
    state = run.state
    if val is None:
        _save_model(run, save_fn, "best")
    elif _on_main_says(run.acc, state.best_step < 0):
        v = _validate(run, loss_fn, val) if run.acc.is_main_process else float("nan")
        if run.acc.is_main_process:
            state.best_val, state.best_step = v, state.step
            _save_model(run, save_fn, "best")
        run.acc.wait_for_everyone()
        _log(run, {"step": state.step, "epoch": state.epoch, "loss": loss, "lr": run.opt.param_groups[0]["lr"],
                   "val_loss": v})


def _save_model(run: _Run, save_fn: SaveFn | None, name: str) -> None:
    """``save_fn`` with the EMA weights (when on) into ``out/name``, atomically, on the main process."""
    if save_fn is None or not run.acc.is_main_process:
        return
    with _ema_weights(run) as m:
        atomic_dir(lambda d: save_fn(m, d), run.out / name)


def _save_checkpoint(run: _Run) -> Path:
    """``checkpoint-{step}``: accelerate's state (model, optimizer, RNGs, EMA), then ``trainer_state.json``.

    Our own rotation rather than accelerate's (ProjectConfiguration(automatic_checkpoint_naming=True,
    total_limit=N)): that one writes checkpoint_N in place, so a kill mid-save leaves a folder that
    looks complete. Here a checkpoint is complete only once renamed from *.tmp, with
    trainer_state.json written last, and the oldest go only after the new one exists."""
    acc = run.acc
    final = run.out / f"checkpoint-{run.state.step}"
    tmp = final.with_name(final.name + ".tmp")
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    # save_state has no barrier at its end: without this one the main process could rename tmp while another
    # process is still writing its random_states_<rank>.pkl there (seen on a loaded 2-core machine)
    acc.wait_for_everyone()
    if acc.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps(asdict(run.state), indent=2))  # last: marks it complete
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in list_checkpoints(run.out)[:-run.cfg.checkpoints_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


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


def _log(run: _Run, row: dict) -> None:
    row = {**row, "elapsed_s": time.perf_counter() - run.t0}
    run.acc.log({k: v for k, v in row.items() if k not in ("step", "epoch") and not (isinstance(v, float) and math.isnan(v))},
                step=row["step"])
    if run.acc.is_main_process:
        path = run.out / "metrics.csv"
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
