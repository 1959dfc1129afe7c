"""A tiny run of discnb.core.train.fit, as its own process (for the kill/resume and multi-process tests).

    python tests/fit_toy.py OUT --steps 10 [--grad-accum 2] [--noise] [--kill-at-call N]
    python -m accelerate.commands.launch --config_file params/accelerate/cpu_2proc.yaml tests/fit_toy.py OUT ...

``--noise`` draws target noise and a random sign flip from torch's RNG on every batch (as Eq. 1's
eps and the dihedral augmentation do), so a resume must restore the RNG, not only the weights.
``--kill-at-call N`` SIGKILLs the process at its N-th training loss evaluation (a real kill at a
known point, not a timed one).
"""

from __future__ import annotations

import argparse
import os
import signal

import torch
from safetensors.torch import save_file

from discnb.core import train


def toy_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--noise", action="store_true")
    ap.add_argument("--kill-at-call", type=int, default=0)
    a = ap.parse_args()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g)
    y = torch.tanh(x @ torch.tensor([1.0, -2.0, 0.5, 3.0])) + 0.1 * x[:, 0] ** 2
    flip = (lambda b: {**b, "x": b["x"] * torch.where(torch.rand(len(b["x"]), 1) < 0.5, -1.0, 1.0)}) if a.noise else None
    data = train.TensorData({"x": x[:32], "y": y[:32]}, augment=flip)
    val = train.TensorData({"x": x[32:], "y": y[32:]})
    calls = {"n": 0}

    def loss(model, batch, generator=None):
        if torch.is_grad_enabled():  # a training step, not validation
            calls["n"] += 1
            if calls["n"] == a.kill_at_call:
                os.kill(os.getpid(), signal.SIGKILL)
        target = batch["y"]
        if a.noise:
            target = target + 0.1 * torch.randn(target.shape, generator=generator).to(target.device)
        return torch.nn.functional.mse_loss(model(batch["x"]).squeeze(-1), target)

    model = toy_model()
    cfg = train.FitConfig(out_dir=a.out, max_steps=a.steps, global_batch=8, grad_accum=a.grad_accum, lr=0.02,
                          ema_decay=0.9, cpu=True, checkpoint_every=2, checkpoints_total_limit=100, validate_every=3,
                          resume="latest", seed=3, log_every=1, progress=False, signature={"kind": "toy"})

    def save(m, d):
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in m.state_dict().items()}, str(d / "model.safetensors"))
    train.fit(model, loss, data, cfg, val=val, save_fn=save)


if __name__ == "__main__":
    main()
