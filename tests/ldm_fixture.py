"""A tiny prepared dataset + notebook-01 parameters for LDM tests (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import yaml

from discnb.data import sicap as data

from discnb.generative import ldm

from discnb.pipelines import prep
from sicap_fixture import write_sicap

TINY = {
    "profile": "smoke", "seed": 0, "val_fold": 1, "device": "cpu", "resume": "latest",
    "checkpoint_every": 2, "checkpoints_total_limit": 2,
    "autoencoder": {"path": "", "channels": [8, 16, 16], "layers_per_block": 1, "n_embed": 32, "steps": 4,
                    "batch": 4, "lr": 0.001, "scale_lr": False},
    "unet": {"channels": [16, 32], "attention": [True, True], "layers_per_block": 1, "head_channels": 16,
             "transformer_layers": 1, "context_dim": 16, "token_side": 4, "tau_channels": [8, 16],
             "concat_mask": False, "prediction": "eps"},
    "sd": {"steps": 6, "batch": 4, "grad_accum": 1, "lr": 0.001, "scale_lr": False, "ema_decay": 0.99},
    "ablation_steps": 0,
    "sample_steps": 3, "n_samples": 2,
}


def tiny_model(condition: str = "pixel", image_size: int = 32, **options) -> ldm.MaskLDM:
    """An untrained MaskLDM of TINY's U-Net for f = 4 latents (``options``: concat_mask, prediction)."""
    return ldm.MaskLDM.from_config({**TINY["unet"], "condition": condition, **options}, image_size, image_size // 4)


def prepared(tmp: Path, **overrides) -> Path:
    """Data dir (index.csv + params.resolved.yaml, 32-px tiles) and a params file; returns the file."""
    root = write_sicap(tmp / "SICAPv2", varied=True)
    ddir = tmp / "data"
    ddir.mkdir()
    index, skipped = data.build_index(root, progress=False)
    prep.write_index(index, skipped, ddir)
    (ddir / "params.resolved.yaml").write_text(yaml.safe_dump({"image_size": 32}))
    P = {**TINY, "data_dir": str(ddir), "output_dir": str(tmp / "ldm"), **overrides}
    f = tmp / "01.yaml"
    f.write_text(yaml.safe_dump(P))
    return f


def trained_generators(tmp: Path) -> Path:
    """A tiny LDM trained as notebook 01 trains it (2 SD steps, with the Fig. 7 ablation models), SD-DISC and
    SD-DISC-CoTrain standing in as SD fine-tuned for 0 steps: every registered generator builds on it.
    Returns its ``ldm/`` folder."""
    import shutil

    from discnb.core import layout, params
    from discnb.core.notebook import record
    from discnb.generative import generators
    from discnb.pipelines import train_ldm

    P = params.check_file("01_train_ldm", prepared(tmp, sd={"steps": 2, "batch": 4, "grad_accum": 1, "lr": 0.001,
                                                           "scale_lr": False, "ema_decay": 0.99}))
    record(tmp / "ldm", P, "01_train_ldm")
    train_ldm.train(P, progress=False)
    for folder in generators.FINETUNED.values():
        shutil.copytree(tmp / "ldm" / "sd" / "best", layout.disc_beside(tmp / "ldm") / folder / "best")
    return tmp / "ldm"
