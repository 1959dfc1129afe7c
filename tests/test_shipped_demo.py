"""The shipped demo models of ``weights/demo``: loadable as diffusers pipelines, the same tiles as the
registry's generators on the restored folders, and a changed byte refused. They are part of the repository, so
their absence is a failure, not a skip."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from discnb.core import params, paths
from discnb.generative import generators
from discnb.generative.disc_pipeline import DISCPipeline, check_pipeline_folder, load_pipeline
from discnb.grading import shipped

pytestmark = pytest.mark.usefixtures("one_thread")
WEIGHTS = paths.REPO / "weights" / "demo"
MODELS = ("SD", "SD-DISC", "SD-DISC-CoTrain")


def _masks(n: int = 4, size: int = 64) -> np.ndarray:
    """Multi-label masks (quadrants of labels 0..3, rotated) and one constant one."""
    m = np.zeros((n, size, size), np.uint8)
    h = size // 2
    for i in range(n):
        q = np.roll(np.arange(4), i)
        m[i, :h, :h], m[i, :h, h:], m[i, h:, :h], m[i, h:, h:] = q
    m[-1] = 3
    return m


@pytest.fixture(scope="module")
def manifest():
    f = WEIGHTS / "MANIFEST.json"
    assert f.exists(), f"{f} is missing: the demo's shipped models belong to the repository (./run_all.sh --train)"
    return json.loads(f.read_text())


def test_manifest_lists_the_shipped_models_within_40_mb(manifest):
    assert set(MODELS) | {"judge"} <= set(manifest["models"])
    assert not list(WEIGHTS.rglob("ldm.json"))  # one model format: every model is a DISCPipeline folder
    for name, entry in manifest["models"].items():
        if entry["kind"] == "DISCPipeline":
            check_pipeline_folder(WEIGHTS / name)
    for name, entry in manifest["models"].items():
        assert entry["commit"] and entry["params_hash"] and entry["command"], name
        assert (WEIGHTS / name / "README.md").exists(), name
    total = sum(f.stat().st_size for f in WEIGHTS.rglob("*") if f.is_file())
    assert total <= 40 * 2**20, f"weights/demo is {total / 2**20:.1f} MB"
    for name in MODELS:
        assert "normalized" in json.dumps(manifest["models"][name]["adherence"]), name
    # what notebooks 03-07 read besides the models, so that the default run trains nothing and benchmarks nothing
    assert {"ldm/params.resolved.yaml", "disc/comparison_samples.npz", "bench.json"} <= set(manifest["state"]["files"])


def test_the_shipped_pipelines_draw_the_registrys_tiles(manifest, tmp_path):
    """The default run's path (restore, then the registry) draws what the pipelines draw."""
    P01 = params.check_file("01_train_ldm", paths.PARAMS / "demo" / "01_train_ldm.yaml")
    root = tmp_path / "outputs"
    shipped.restore("demo", WEIGHTS, P01, root=root, data=False)  # the data check needs notebook 00's run
    # restored = copied: the folders the notebooks read are the shipped pipeline folders, file for file
    for name, where in (("SD", root / "ldm" / "sd" / "best"), ("SD-DISC", root / "disc" / "sd-disc" / "best"),
                        ("SD-DISC-CoTrain", root / "disc" / "sd-disc-cotrain" / "best"),
                        ("SD-tile", root / "ldm" / "sd-tile" / "best"),
                        ("SD-tile+slide", root / "ldm" / "sd-tile-slide" / "best")):
        files = {k: v for k, v in manifest["models"][name]["files"].items() if k != "README.md"}
        assert shipped._file_hashes(check_pipeline_folder(where)) == files, name
    masks, seeds = _masks(), [0, 1, 2, 3]
    ctx = generators.GeneratorContext(ldm_dir=root / "ldm", image_size=64, steps=4, batch_size=4)
    for name in MODELS:
        pipe = DISCPipeline.from_pretrained(WEIGHTS / name)
        tiles = pipe(masks, num_inference_steps=4, seeds=seeds, output_type="np", mask_format="labels").images
        ref = generators.build_generator(name, ctx)[0].generate(masks, seeds)
        assert np.array_equal(np.round(tiles * 255).astype(np.uint8), ref), name


def test_a_changed_byte_in_a_shipped_file_is_refused(tmp_path):
    w = tmp_path / "weights"
    shutil.copytree(WEIGHTS / "SD-DISC", w / "SD-DISC")
    shutil.copy2(WEIGHTS / "MANIFEST.json", w / "MANIFEST.json")
    load_pipeline(w / "SD-DISC")  # intact: loads
    f = w / "SD-DISC" / "unet" / "diffusion_pytorch_model.safetensors"
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 1
    f.write_bytes(bytes(b))
    with pytest.raises(ValueError, match=r"SD-DISC/unet/diffusion_pytorch_model.safetensors: its sha256 does not "
                                         r"match .*MANIFEST.json.*rebuild with ./run_all.sh"):
        load_pipeline(w / "SD-DISC")
