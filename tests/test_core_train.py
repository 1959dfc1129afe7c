"""The training loop's headline guarantees (discnb.core.train.fit), checked on the numbers: a run
killed and resumed equals an uninterrupted one, and 2 processes equal 1."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

import fit_toy  # tests/ is on sys.path (conftest.py)
from discnb.core import io, train
from discnb.core.paths import REPO

SCRIPT = Path(__file__).with_name("fit_toy.py")
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _fit(out: Path, *args, launch: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *(launch or []), str(SCRIPT), str(out), *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path, exact: bool = False) -> None:
    wa, wb = _weights(a), _weights(b)
    assert set(wa) == set(wb)
    for k in wa:
        if exact:
            assert torch.equal(wa[k], wb[k]), k
        else:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")


def _ema_state(checkpoint: Path) -> dict:
    """The EMA's state (diffusers' EMAModel.state_dict) that accelerate saved with the checkpoint."""
    return torch.load(checkpoint / "custom_checkpoint_0.pkl", weights_only=False)


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    """Kill (SIGKILL) in step 6 of 10, after checkpoint 4 and the logged step 5; resume. With
    gradient accumulation, EMA, validation and torch-RNG noise + augmentation (a known source of
    resume bugs, diffusers #3467), the per-step losses, the raw weights and the EMA weights must
    equal those of a run that was never interrupted, bit for bit."""
    args = ("--steps", 10, "--grad-accum", 2, "--noise")
    ref, run = tmp_path / "ref", tmp_path / "run"
    r = _fit(ref, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    killed = _fit(run, *args, "--kill-at-call", 2 * 5 + 1)  # first micro-batch of step 6
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert [p.name for p in train.list_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]
    assert pd.read_csv(run / "metrics.csv").step.max() == 5  # step 5 was logged, then lost
    r = _fit(run, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = pd.read_csv(ref / "metrics.csv"), pd.read_csv(run / "metrics.csv")
    assert b.step.tolist() == list(range(1, 11))  # no duplicated or missing rows
    pd.testing.assert_series_equal(a.loss, b.loss, check_exact=True)
    pd.testing.assert_series_equal(a.val_loss, b.val_loss, check_exact=True)
    _assert_same_weights(ref / "checkpoint-10", run / "checkpoint-10", exact=True)  # raw weights
    _assert_same_weights(ref / "final", run / "final", exact=True)  # EMA weights
    ema_ref, ema_run = _ema_state(ref / "checkpoint-10"), _ema_state(run / "checkpoint-10")
    assert ema_ref["optimization_step"] == ema_run["optimization_step"] == 10
    assert all(map(torch.equal, ema_ref["shadow_params"], ema_run["shadow_params"]))
    final = _weights(run / "final")  # saved with the EMA's weights swapped in
    names = [n for n, _ in fit_toy.toy_model().named_parameters()]
    assert all(torch.equal(final[n], p) for n, p in zip(names, ema_run["shadow_params"], strict=True))


@pytest.mark.slow
def test_two_cpu_processes_equal_one(tmp_path):
    """The same global batches, split over 2 processes (gloo, gradients averaged by DDP), give the
    weights of 1 process with 2 accumulation steps after N optimizer steps (float tolerance)."""
    one, two = tmp_path / "one", tmp_path / "two"
    r = _fit(one, "--steps", 6, "--grad-accum", 2)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _fit(two, "--steps", 6, launch=["-m", "accelerate.commands.launch", "--config_file",
                                         str(REPO / "params/accelerate/cpu_2proc.yaml")])
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_weights(one / "checkpoint-6", two / "checkpoint-6")
    _assert_same_weights(one / "final", two / "final")
    pd.testing.assert_series_equal(pd.read_csv(one / "metrics.csv").loss, pd.read_csv(two / "metrics.csv").loss,
                                   rtol=1e-5)


def test_pick_device():
    assert train.pick_device("cpu") == torch.device("cpu")
    assert train.pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        train.pick_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no GPU is visible"):
            train.pick_device("cuda")


# ------------------------------------------------------------------------------ core.io
def test_atomic_writers_leave_old_or_new(tmp_path):
    f = io.write_json(tmp_path / "a.json", {"x": 1})
    assert f.read_text() == '{\n  "x": 1\n}\n'

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")
    with pytest.raises(OSError):
        io.atomic_file(f, broken)
    assert f.read_text() == '{\n  "x": 1\n}\n'  # the old file, whole
    assert [p.name for p in tmp_path.glob(io.TMP_GLOB)] == ["a.tmp.json"]  # what a cleanup finds

    d = tmp_path / "d"
    io.atomic_dir(lambda t: (t.mkdir(), (t / "v").write_text("1")), d)

    def half(t):
        t.mkdir()
        (t / "v").write_text("2")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        io.atomic_dir(half, d)
    assert (d / "v").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("d")) == ["d"]
    io.atomic_dir(lambda t: (t.mkdir(), (t / "v").write_text("3")), d)
    assert (d / "v").read_text() == "3"


def test_fingerprint_follows_content_names_and_settings(tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    (d / "a.bin").write_bytes(b"\x00\x01")
    base = io.fingerprint({"steps": 2, "lr": 0.1}, d)
    assert base == io.fingerprint({"lr": 0.1, "steps": 2}, d) and len(base) == 16  # key order does not count
    assert io.fingerprint({"steps": 3, "lr": 0.1}, d) != base
    (d / "a.bin").write_bytes(b"\x00\x02")
    assert io.fingerprint({"steps": 2, "lr": 0.1}, d) != base
    before = io.fingerprint(d)
    (d / "a.bin").rename(d / "b.bin")
    assert io.fingerprint(d) != before  # a folder also hashes its file names
    assert io.fingerprint("ab", "c") != io.fingerprint("a", "bc")  # parts are delimited
    assert len(io.fingerprint("x", n=8)) == 8
    with pytest.raises(FileNotFoundError):
        io.fingerprint(tmp_path / "missing")


def test_load_state_dict_unwraps_and_strips(tmp_path):
    sd = {"weight": torch.ones(2)}
    torch.save({"state_dict": {"module.weight": torch.ones(2)}}, tmp_path / "w.pth")
    torch.testing.assert_close(io.load_state_dict(tmp_path / "w.pth"), sd)
    save_file({"backbone.weight": torch.ones(2)}, str(tmp_path / "w.safetensors"))
    torch.testing.assert_close(io.load_state_dict(tmp_path / "w.safetensors"), sd)
    with pytest.raises(FileNotFoundError, match="no such weights file. get it from X"):
        io.load_state_dict(tmp_path / "none.pth", hint="get it from X")


def test_a_run_shorter_than_one_validation_still_selects_best(tmp_path):
    """The paper dry run trains 2 steps with validation once per epoch (never reached): ``best``
    must still exist (it used to be missing, and notebook 01 failed loading it), from the final weights."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g)
    data, val = train.TensorData({"x": x[:32]}), train.TensorData({"x": x[32:]})
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    cfg = train.FitConfig(out_dir=str(tmp_path), max_steps=2, global_batch=4, lr=0.01, cpu=True, validate_every=0,
                          checkpoint_every=100, progress=False)
    saved = []

    def save(m, d):
        d.mkdir(parents=True, exist_ok=True)
        torch.save(m.state_dict(), d / "w.pt")
        saved.append(d.name)
    s = train.fit(model, lambda m, b, generator=None: m(b["x"]).pow(2).mean(), data, cfg, val=val, save_fn=save)
    assert (tmp_path / "best" / "w.pt").exists() and s["best_step"] == 2 and math.isfinite(s["best_val_loss"])
    assert torch.equal(torch.load(tmp_path / "best" / "w.pt")["weight"], torch.load(tmp_path / "final" / "w.pt")["weight"])


def test_resume_needs_the_ema_state(tmp_path):
    """A checkpoint without EMAModel's state (e.g. one holding the earlier ema.safetensors) is refused with
    what to do, not resumed with a fresh EMA."""
    data = train.TensorData({"x": torch.randn(8, 4, generator=torch.Generator().manual_seed(0))})
    cfg = train.FitConfig(out_dir=str(tmp_path), max_steps=1, global_batch=4, ema_decay=0.9, cpu=True,
                          resume="latest", progress=False)

    def loss(m, b, generator=None):
        return m(b["x"]).pow(2).mean()
    train.fit(torch.nn.Linear(4, 1), loss, data, cfg)
    (tmp_path / "checkpoint-1" / "custom_checkpoint_0.pkl").unlink()
    with pytest.raises(ValueError, match="holds no EMAModel state"):
        train.fit(torch.nn.Linear(4, 1), loss, data, replace(cfg, max_steps=2))
