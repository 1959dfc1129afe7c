"""discnb.grading.bench on a tiny trained LDM (seconds): the relations its numbers must keep.

Counts are exact (SD-SC's U-Net evaluations = labels x SD's; DDIM-S makes S per tile, DPM++-S' makes S');
every rate is the count over the time it was measured in; the measured intervals fit inside the total;
and DPM-Solver++ at a tenth of DDIM's steps is faster on the same model. That last one is a timing, so its
margin leaves room for a loaded machine: expected about 10x, asserted > 2x in at least one of the two runs
that time it (the cost table's and the adherence run's). A timer that reads the wrong interval, a count
divided by the wrong number of tiles or swapped rows break one of them.
"""

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

# DDIM-20 vs DPM++-2: the paper's 200 vs 20 steps at a tenth, so the speed ratio stands out of timing noise
FAST = bench.Settings(n_tiles=2, n_adherence=3, steps=20, dpm_steps=2, sc_labels=(1, 2, 4), batch_size=4,
                      unet_reps=2, train_steps=2, ldm_batch=2, carcinonet_batch=2, device="cpu")
MIN_DDIM_OVER_DPM = 2.0  # of an expected ~10x (20 vs 2 U-Net evaluations per tile, plus decoding)


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


def _rates_match_counts_and_times(rows: list[dict]) -> None:
    """Each sampling row's rates are its counts over its own measured time."""
    for r in rows:
        assert _positive(r["seconds"]) and _positive(r["nfe_per_tile"]), r
        assert r["sec_per_tile"] == pytest.approx(r["seconds"] / r["tiles"]), r
        assert r["unet_evals_per_s"] == pytest.approx(r["nfe_per_tile"] * r["tiles"] / r["seconds"]), r


def _nfe_relations(rows: list[dict], S: bench.Settings) -> None:
    """U-Net evaluations per tile: DDIM-S makes S, DPM++-S' makes S', SD-SC k labels k x SD's (Eq. 2),
    SD-DISC as many as SD."""
    by = {r["method"]: r for r in rows}
    sd = by[f"SD DDIM-{S.steps}"]["nfe_per_tile"]
    assert sd == S.steps and by[f"SD DPM++-{S.dpm_steps}"]["nfe_per_tile"] == S.dpm_steps
    sc = [r for r in rows if r["generator"] == "SD-SC"]
    assert sorted(r["labels"] for r in sc) == sorted(S.sc_labels)
    for r in sc:
        assert r["nfe_per_tile"] == r["labels"] * sd, r
    for r in rows:
        if r["generator"] == "SD-DISC":
            assert r["nfe_per_tile"] == sd, r


def test_bench_on_a_tiny_model_keeps_its_relations(trained):
    S = FAST
    b = bench.run("smoke", S, ldm_dir=trained / "ldm", judge_dir=trained / "judge",
                  carcinonet_params_file=trained / "04.yaml", progress=False)
    rows = b["sampling"]
    ddim, dpm = f"DDIM-{S.steps}", f"DPM++-{S.dpm_steps}"
    assert [r["method"] for r in rows] == [f"SD {ddim}", f"SD {dpm}", f"SD-SC {ddim} (1 label)",
                                           f"SD-SC {ddim} (2 labels)", f"SD-SC {ddim} (4 labels)", f"SD-DISC {ddim}"]
    assert all(r["tiles"] == S.n_tiles for r in rows)
    _rates_match_counts_and_times(rows)
    _nfe_relations(rows, S)

    # the summaries are the rows' own numbers, each beside the right row
    sd_row = rows[0]
    assert b["sec_per_tile"] == {r["method"]: r["sec_per_tile"] for r in rows}
    for r in rows:
        assert r["time_vs_sd_ddim"] == pytest.approx(r["sec_per_tile"] / sd_row["sec_per_tile"])
    ratios = b["ratios"]
    assert ratios["ddim_over_dpm_time"] == pytest.approx(rows[0]["sec_per_tile"] / rows[1]["sec_per_tile"])
    assert ratios["sc_over_sd_nfe_by_labels"] == {str(k): float(k) for k in S.sc_labels}
    assert ratios["sc_over_sd_time_by_labels"] == {str(r["labels"]): r["time_vs_sd_ddim"] for r in rows[2:5]}

    # U-Net evaluations / s: batch x reps forward passes over their time
    u = b["unet"]
    assert (u["batch"], u["reps"]) == (S.batch_size, S.unet_reps)
    assert b["unet_evals_per_s"] == u["evals_per_s"] == pytest.approx(u["batch"] * u["reps"] / u["seconds"])

    # DDIM vs DPM-Solver++ on the same masks and seeds, judged
    a = b["adherence"]
    assert a["masks"] == S.n_adherence and set(a) >= {ddim, dpm}
    assert 0 <= a[ddim]["mean_iou"] <= 1 and 0 <= a[dpm]["mean_iou"] <= 1 and 0 <= a["chance_mean_iou"] <= 1
    assert a["mean_iou_difference_dpm_minus_ddim"] == pytest.approx(a[dpm]["mean_iou"] - a[ddim]["mean_iou"])
    assert a["pixel_agreement_difference_dpm_minus_ddim"] == pytest.approx(
        a[dpm]["pixel_agreement"] - a[ddim]["pixel_agreement"])
    assert a["ddim_over_dpm_time"] == pytest.approx(a[ddim]["sec_per_tile"] / a[dpm]["sec_per_tile"])
    assert ratios["ddim_over_dpm_time_adherence_run"] == a["ddim_over_dpm_time"]
    # DPM-Solver++ faster than DDIM on the same model: the one timing relation (see the module docstring)
    both = (ratios["ddim_over_dpm_time"], a["ddim_over_dpm_time"])
    assert max(both) > MIN_DDIM_OVER_DPM, f"DDIM-{S.steps} / DPM++-{S.dpm_steps} time ratios {both}"

    # training throughput: images per step over seconds per step
    t = b["training"]
    assert t["ldm"]["images_per_step"] == S.ldm_batch
    assert t["carcinonet"]["images_per_step"] == 2 * S.carcinonet_batch  # real + synthetic halves (Eq. 4)
    assert (t["carcinonet"]["real_per_step"], t["carcinonet"]["synthetic_per_step"]) == (S.carcinonet_batch,) * 2
    for m in ("ldm", "carcinonet"):
        assert t[m]["steps"] == S.train_steps and _positive(t[m]["sec_per_step"])
        assert t[m]["images_per_s"] == pytest.approx(t[m]["images_per_step"] / t[m]["sec_per_step"])

    # every measured interval lies inside the run, none overlapping
    measured = (sum(r["seconds"] for r in rows) + u["seconds"]
                + S.n_adherence * (a[ddim]["sec_per_tile"] + a[dpm]["sec_per_tile"])
                + S.train_steps * (t["ldm"]["sec_per_step"] + t["carcinonet"]["sec_per_step"]))
    assert measured <= b["total_seconds"], (measured, b["total_seconds"])

    # peak RSS in MiB: a process that imported torch holds more than 100 MiB and less than 100 GiB
    assert 100 < b["memory"]["peak_rss_mib"] < 100 * 1024
    assert b["device"]["cpu"] and b["device"]["torch"] and b["device"]["torch_threads"] >= 1
    json.dumps(b)  # JSON-ready
    lines = bench.summary_lines(b)
    assert any(ln.strip().startswith(f"SD-DISC {ddim}") for ln in lines)


def test_cli_untrained_writes_json_and_skips_adherence(trained, tmp_path):
    out = tmp_path / "b.json"
    rc = bench.main(["--untrained", str(trained / "01.yaml"), "--image-size", "32", "--n-tiles", "1", "--steps", "2",
                     "--dpm-steps", "2", "--sc-labels", "2", "--batch-size", "2", "--unet-reps", "1", "--train-steps", "1",
                     "--ldm-batch", "2", "--carcinonet-batch", "2", "--carcinonet-params", str(trained / "04.yaml"),
                     "--device", "cpu", "--out", str(out), "--no-progress"])
    b = json.loads(out.read_text())
    assert rc == 0 and b["model"]["trained"] is False and b["adherence"] is None
    assert [r["method"] for r in b["sampling"]] == ["SD DDIM-2", "SD DPM++-2", "SD-SC DDIM-2 (2 labels)"]
    S = bench.Settings(n_tiles=1, steps=2, dpm_steps=2, sc_labels=(2,))
    _rates_match_counts_and_times(b["sampling"])
    _nfe_relations(b["sampling"], S)
    assert b["model"]["image_size"] == 32 and b["settings"]["steps"] == 2


def test_missing_ldm_names_notebook_01(tmp_path):
    with pytest.raises(FileNotFoundError, match="01_train_ldm"):
        bench.run("smoke", FAST, ldm_dir=tmp_path / "nothing", progress=False)


def test_a_missing_judge_says_run_notebook_01(tmp_path):
    """Notebook 02 (and the benchmark) read the judge notebook 01 stored; none there names notebook 01."""
    P02 = params.validate("02_sc_disc", {"ldm_dir": str(tmp_path / "ldm")})
    with pytest.raises(FileNotFoundError, match="01_train_ldm"):
        sc_disc.load_judge(P02)
