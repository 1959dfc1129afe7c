"""Each script in experiments/ runs end to end at a tiny size: the shipped models of weights/demo/ on the tiny
SICAPv2-layout fixture, a few steps each. Their numbers at full size are in docs/ with the commands that give them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from discnb.core import paths
from ldm_fixture import prepared

pytestmark = pytest.mark.usefixtures("one_thread")
EXPERIMENTS = paths.REPO / "experiments"


def script(name: str):
    """experiments/<name>.py as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", EXPERIMENTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A notebook-00 data folder of the fixture's tiles at the shipped models' 64 px (training and validation split)."""
    tmp = tmp_path_factory.mktemp("exp")
    prepared(tmp)
    (tmp / "data" / "params.resolved.yaml").write_text(yaml.safe_dump({"image_size": 64}))
    return tmp / "data"


@pytest.fixture(scope="module")
def real_judge(data, tmp_path_factory) -> tuple[Path, list]:
    """experiments/judge_seeds.py with one seed, 2 judge steps and the ceiling: its folder and rows."""
    out = tmp_path_factory.mktemp("judge_seeds")
    rows = script("judge_seeds").main(["--seeds", "0", "--first-stage", "weights/demo/SD/vqvae", "--ceiling",
                                       "--data", str(data), "--judge-steps", "2", "--judge-batch", "4", "--out", str(out)])
    return out, rows


def test_experiment_scripts_have_main_and_no_machine_paths():
    for f in sorted(EXPERIMENTS.glob("*.py")):
        text = f.read_text()
        assert 'if __name__ == "__main__":\n    main()' in text and "def main(argv=None)" in text, f.name
        assert "/work/" not in text and "/home/" not in text, f"{f.name} names a path of one machine"
        assert callable(script(f.stem).main)


def test_judge_seeds(real_judge):
    out, rows = real_judge
    assert len(rows) == 1 and rows[0]["seed"] == 0
    assert {"real_on_real", "real_on_recon", "recon_on_recon", "chance"} <= set(rows[0])
    assert json.loads((out / "judge_seeds.json").read_text())[0]["first_stage"] == "weights/demo/SD/vqvae"
    assert (out / "real-seed0" / "model").is_dir()


@pytest.mark.parametrize("lever", ["plain", "msssim", "perceptual"])
def test_first_stage_levers(lever, data, real_judge, tmp_path):
    res = script("first_stage_levers").main(["--lever", lever, "--steps", "2", "--batch", "4", "--data", str(data),
                                             "--judge-real", str(real_judge[0] / "real-seed0"), "--cellnet-steps", "2",
                                             "--out", str(tmp_path / "run-of-lever")])
    assert set(res) - {"cellnet_val_acc"} == {"start", "2"}
    assert res["start"]["codebook"]["n_embed"] == 512  # the shipped first stage's codebook
    assert (tmp_path / "run-of-lever" / "run" / "final").is_dir()
    stored = json.loads((tmp_path / "run-of-lever" / "res.json").read_text())
    assert stored["2"]["real_on_recon"] == res["2"]["real_on_recon"]


def test_sampler_adherence(data, tmp_path):
    rep = script("sampler_adherence").main(["--data", str(data), "--n", "4", "--models", "SD,SD-SC",
                                            "--settings", "ddim:2", "--batch-size", "4",
                                            "--out", str(tmp_path / "s.json")])
    assert rep["n_masks"] >= 1 and [r["model"] for r in rep["runs"]] == ["SD", "SD-SC"]
    assert all(0 <= r["mean_iou"] <= 1 for r in rep["runs"])
    assert json.loads((tmp_path / "s.json").read_text()) == rep


def test_cpu_bf16(tmp_path):
    rep = script("cpu_bf16").main(["--rounds", "1", "--steps", "1", "--threads", "1", "--batch", "2",
                                   "--out", str(tmp_path / "b.json")])
    assert set(rep["speedup_bf16"]) == {"first stage", "SD"} and all(v > 0 for v in rep["speedup_bf16"].values())


def test_judge_fp16_on_the_shipped_judge():
    out = script("judge_fp16").main([])
    assert {"SD", "SD-SC", "SD-DISC", "SD-DISC-CoTrain"} <= set(out)
    # docs/reproducing.md: rounding the judge to fp16 moves a model's mean IoU by at most about 0.0002
    assert all(abs(v["fp32"] - v["fp16"]) < 1e-3 and v["pixels_differ"] < 5e-3 for v in out.values())


def test_cpu_threads():
    n = torch.get_num_threads()
    try:
        # one thread only: two OpenMP threads on a busy shared machine can take minutes for these few steps
        rep = script("cpu_threads").main(["--transmil-steps", "2", "--carcinonet-steps", "1", "--threads", "1"])
    finally:
        torch.set_num_threads(n)
    assert set(rep) == {"TransMIL 1 thread(s) s/step", "CarcinoNet 1 thread(s) s/step"}
    assert all(v > 0 for v in rep.values())


def test_scale_cost(tmp_path):
    n = torch.get_num_threads()
    try:
        df = script("scale_cost").main(["--threads", "1", "--steps", "1", "--batch", "2", "--sample-batch", "1",
                                        "--out", str(tmp_path / "c.csv")])
    finally:
        torch.set_num_threads(n)
    assert len(df) == 13 and (df.seconds > 0).all() and (tmp_path / "c.csv").exists()
    assert set(df.model) == {"first stage", "judge", "SD"}


def test_sd_crop_vs_whole(data, tmp_path):
    df = script("sd_crop_vs_whole").main(["--data", str(data), "--first-stage", "weights/demo/SD/vqvae",
                                          "--judge", "weights/demo/judge", "--crop", "8", "--crop-steps", "2",
                                          "--whole-steps", "1", "--n-masks", "4", "--masks", "complex-real", "--seeds", "0",
                                          "--sample-steps", "2", "--batch", "4",
                                          "--out", str(tmp_path / "cw")])
    assert list(df.setting) == ["crop", "whole"] and list(df.steps) == [2, 1]
    assert df[["mean_iou", "interior_mean_iou"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (tmp_path / "cw" / "crop" / "sd" / "best" / "model_index.json").exists()
    assert (tmp_path / "cw" / "crop_vs_whole.csv").exists()
