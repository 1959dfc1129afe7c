"""discnb.grading.bench on a tiny trained LDM (seconds): every key is there and every number is positive."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from discnb.grading import bench
from discnb.pipelines import sc_disc
from discnb.core import params
from discnb.pipelines import train_ldm
from discnb.core.notebook import record
from ldm_fixture import prepared

TINY_CN = {"encoder": "resnet18", "encoder_width": 8, "encoder_path": "", "decoder_channels": 16, "pool_grids": [1, 2, 3]}
TINY_JUDGE = {"seed": 0, "input": "first_stage", "model": TINY_CN,
              "train": {"steps": 2, "batch": 4, "lr": 0.001, "weight_decay": 0.0001, "warmup_steps": 0, "ema_decay": 0.0,
                        "validate_every": 0, "focal_gamma": 2.0, "dice_weight": 1.0, "jitter": 0.05}}
pytestmark = pytest.mark.filterwarnings("ignore:.*sampled latents are far out of range")

FAST = bench.Settings(n_tiles=2, n_adherence=3, steps=3, dpm_steps=2, sc_labels=(1, 2, 4), batch_size=4,
                      unet_reps=2, train_steps=1, ldm_batch=2, carcinonet_batch=2, device="cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained LDM folder and pattern judge (as notebook 01's training steps leave them), an
    SD-DISC beside them and notebook-04 parameters with a tiny CarcinoNet."""
    tmp = tmp_path_factory.mktemp("bench")
    P = params.check_file("01_train_ldm", prepared(tmp, judge=TINY_JUDGE))
    record(tmp / "ldm", P, "01_train_ldm")
    train_ldm.train(P, progress=False)
    shutil.copytree(tmp / "ldm" / "sd" / "best", tmp / "disc" / "sd-disc" / "best")  # stands in for notebook 02's
    p04 = tmp / "04.yaml"
    p04.write_text(json.dumps({"model": TINY_CN, "lams": [0.5]}))
    return tmp


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and np.isfinite(x) and x > 0


def test_bench_on_a_tiny_model_measures_everything(trained):
    b = bench.run("smoke", FAST, ldm_dir=trained / "ldm", judge_dir=trained / "judge",
                  carcinonet_params_file=trained / "04.yaml", progress=False)
    for k in ("device", "settings", "model", "unet_evals_per_s", "sampling", "sec_per_tile", "ratios", "adherence",
              "training", "memory", "total_seconds"):
        assert k in b, k
    assert b["device"]["cpu"] and b["device"]["torch"] and b["device"]["torch_threads"] >= 1
    methods = [r["method"] for r in b["sampling"]]
    assert methods == ["SD DDIM-3", "SD DPM++-2", "SD-SC DDIM-3 (1 label)", "SD-SC DDIM-3 (2 labels)",
                       "SD-SC DDIM-3 (4 labels)", "SD-DISC DDIM-3"]
    for r in b["sampling"]:
        assert _positive(r["sec_per_tile"]) and _positive(r["nfe_per_tile"]) and _positive(r["unet_evals_per_s"])
    nfe = {r["method"]: r["nfe_per_tile"] for r in b["sampling"]}
    assert nfe["SD DDIM-3"] == 3 and nfe["SD DPM++-2"] == 2 and nfe["SD-SC DDIM-3 (4 labels)"] == 12
    assert b["ratios"]["sc_over_sd_nfe_by_labels"] == {"1": 1.0, "2": 2.0, "4": 4.0}
    assert _positive(b["unet_evals_per_s"]) and _positive(b["ratios"]["ddim_over_dpm_time"])
    a = b["adherence"]
    assert a["masks"] == 3 and 0 <= a["DDIM-3"]["mean_iou"] <= 1 and 0 <= a["DPM++-2"]["mean_iou"] <= 1
    assert a["mean_iou_difference_dpm_minus_ddim"] == pytest.approx(a["DPM++-2"]["mean_iou"] - a["DDIM-3"]["mean_iou"])
    for m in ("ldm", "carcinonet"):
        assert _positive(b["training"][m]["images_per_s"]) and _positive(b["training"][m]["sec_per_step"])
    assert b["training"]["carcinonet"]["images_per_step"] == 4  # 2 real + 2 synthetic (Eq. 4)
    assert _positive(b["memory"]["peak_rss_mib"]) and _positive(b["total_seconds"])
    json.dumps(b)  # JSON-ready
    assert any("SD-DISC" in ln for ln in bench.summary_lines(b))


def test_cli_untrained_writes_json_and_skips_adherence(trained, tmp_path):
    out = tmp_path / "b.json"
    rc = bench.main(["--untrained", str(trained / "01.yaml"), "--image-size", "32", "--n-tiles", "1", "--steps", "2",
                     "--dpm-steps", "2", "--sc-labels", "2", "--batch-size", "2", "--unet-reps", "1", "--train-steps", "1",
                     "--ldm-batch", "2", "--carcinonet-batch", "2", "--carcinonet-params", str(trained / "04.yaml"),
                     "--device", "cpu", "--out", str(out), "--no-progress"])
    b = json.loads(out.read_text())
    assert rc == 0 and b["model"]["trained"] is False and b["adherence"] is None
    assert [r["method"] for r in b["sampling"]] == ["SD DDIM-2", "SD DPM++-2", "SD-SC DDIM-2 (2 labels)"]
    assert all(_positive(v) for v in b["sec_per_tile"].values())


def test_missing_ldm_names_notebook_01(tmp_path):
    with pytest.raises(FileNotFoundError, match="01_train_ldm"):
        bench.run("smoke", FAST, ldm_dir=tmp_path / "nothing", progress=False)


def test_a_missing_judge_says_run_notebook_01(tmp_path):
    """Notebook 02 (and the benchmark) read the judge notebook 01 stored; none there names notebook 01."""
    P02 = params.validate("02_sc_disc", {"ldm_dir": str(tmp_path / "ldm")})
    with pytest.raises(FileNotFoundError, match="01_train_ldm"):
        sc_disc.load_judge(P02)
