"""DISCPipeline (a diffusers pipeline on the project's components) and ``python -m discnb.generate``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from PIL import Image
from safetensors.torch import load_file

import discnb
from discnb import generate
from discnb.core import params
from discnb.core.io import fingerprint
from discnb.generative import checkpoints, generators
from discnb.generative.autoencoder import build_vq
from discnb.generative.disc import SCGenerator
from discnb.generative.disc_pipeline import DISCPipeline, check_pipeline_folder, load_pipeline, prepare_masks, to_labels
from discnb.generative.sampling import SDGenerator
from discnb.generative import masks_to_tiles
from discnb.grading import shipped
from discnb.pipelines import train_ldm
from discnb.core.notebook import record
from ldm_fixture import prepared, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
MASKS = np.random.default_rng(0).integers(0, 4, (3, 32, 32)).astype(np.uint8)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.round(x * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An untrained tiny guided model and first stage (seeded) and its pipeline folder."""
    torch.manual_seed(0)
    model, vq = tiny_model(cond_drop=0.1, guidance_scale=2.0), build_vq([8, 16, 16], 1, 32)
    d = tmp_path_factory.mktemp("pipe") / "SD"
    DISCPipeline.from_models(model, vq).save_pretrained(d)
    return model, vq, d


def test_round_trip_draws_the_generators_tiles(saved):
    model, vq, d = saved
    pipe = DISCPipeline.from_pretrained(d)
    assert discnb.DISCPipeline is DISCPipeline
    assert pipe.config.guidance_scale == 2.0 and pipe.config.cond_drop == 0.1 and pipe.image_size == 32
    ref = SDGenerator(model, vq, steps=3, batch_size=2).generate(MASKS, [5, 6, 7])
    out = pipe(MASKS, num_inference_steps=3, seeds=[5, 6, 7], output_type="np", batch_size=2).images
    assert out.dtype == np.float32 and np.array_equal(_u8(out), ref)
    assert pipe.nfe == 3 * 3 * 2  # steps x tiles x 2 with guidance
    # one CPU generator per tile is the same noise as its seed; a batch of 3 the same as 2 + 1
    gens = [torch.Generator().manual_seed(s) for s in (5, 6, 7)]
    assert np.array_equal(_u8(pipe(MASKS, num_inference_steps=3, generator=gens, output_type="np").images), ref)
    # SD-SC: the same pipeline with separated=True is SCGenerator's Eq. 2
    sc = SCGenerator(model, vq, steps=3).generate(MASKS, [5, 6, 7])
    assert np.array_equal(_u8(pipe(MASKS, num_inference_steps=3, seeds=[5, 6, 7], separated=True,
                                   output_type="np").images), sc)
    pil = pipe(MASKS[:1], num_inference_steps=2, seeds=[5]).images
    assert isinstance(pil[0], Image.Image) and pil[0].size == (32, 32)
    with pytest.raises(ValueError, match="one seed per mask"):
        pipe(MASKS, num_inference_steps=2, seeds=[1])


def test_the_scheduler_swaps_the_diffusers_way(saved, tmp_path):
    model, vq, d = saved
    pipe = DISCPipeline.from_pretrained(d)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    ref = SDGenerator(model, vq, steps=3, scheduler="dpm++").generate(MASKS, [0, 1, 2])
    assert np.array_equal(_u8(pipe(MASKS, num_inference_steps=3, output_type="np").images), ref)
    pipe.save_pretrained(tmp_path / "dpm")
    assert type(DISCPipeline.from_pretrained(tmp_path / "dpm").scheduler).__name__ == "DPMSolverMultistepScheduler"


def test_masks_in_every_form():
    lab = np.array([[0, 1], [2, 3]], np.uint8)
    assert np.array_equal(to_labels(np.array([[0, 3], [4, 5]]), "auto"), lab)  # SICAPv2 grades
    assert np.array_equal(to_labels(lab, "auto"), lab)
    assert np.array_equal(to_labels(np.array([[0, 3]]), "sicap"), [[0, 1]])
    with pytest.raises(ValueError, match="could be labels 0..3 .* or SICAPv2"):
        to_labels(np.array([[0, 3]]), "auto")
    with pytest.raises(ValueError, match=r"unknown mask values \[7\]"):
        to_labels(np.array([[0, 7]]), "auto")
    with pytest.raises(ValueError, match=r"unknown mask values \[4\] for labels"):
        to_labels(np.array([[0, 4]]), "labels")
    big = np.kron(lab, np.ones((8, 8), np.uint8))  # 16 px -> 4 px: nearest keeps the labels
    out = prepare_masks([Image.fromarray(big), big], 4)
    assert out.shape == (2, 4, 4) and np.array_equal(out[0], out[1]) and set(np.unique(out)) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="RGB image"):
        prepare_masks([Image.new("RGB", (4, 4))], 4)


def test_a_folder_that_is_not_a_pipeline_is_named(saved, tmp_path):
    _, _, d = saved
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        load_pipeline(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(d, broken)
    shutil.rmtree(broken / "mask_encoder")
    with pytest.raises(FileNotFoundError, match="component 'mask_encoder' is missing"):
        load_pipeline(broken)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="4-channel latents but unet predicts 3"):
        DISCPipeline.from_models(tiny_model(), build_vq([8, 16, 16], 1, 32, latent_channels=4))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reg")
    P = params.check_file("01_train_ldm", prepared(tmp))
    record(tmp / "ldm", P, "01_train_ldm")
    train_ldm.train(P, progress=False)
    return tmp / "ldm"


def _tensors(folder):
    """Every safetensors file under ``folder``: {relative path: {key: tensor}}."""
    return {str(f.relative_to(folder)): load_file(f) for f in sorted(folder.rglob("*.safetensors"))}


def test_notebook_01_saves_its_models_as_pipeline_folders(trained):
    """One model format: SD's and the Fig. 7 SDs' best/ and final/ are DISCPipeline folders holding the first
    stage they were trained on; the training state (optimizer, EMA, step) stays in checkpoint-<step>/."""
    for sub in ("sd", "sd-tile", "sd-tile-slide"):
        for which in ("best", "final"):
            d = check_pipeline_folder(trained / sub / which)
            assert json.loads((d / "model_index.json").read_text())["_class_name"] == "DISCPipeline"
            assert sorted(_tensors(d)) == [f"{c}/diffusion_pytorch_model.safetensors" for c in
                                           ("mask_encoder", "unet", "vqvae")], d
        assert list((trained / sub).glob("checkpoint-*/optimizer.bin")), sub
    assert not list(trained.rglob("ldm.json"))
    inside = _tensors(trained / "sd" / "best")["vqvae/diffusion_pytorch_model.safetensors"]
    trained_vq = _tensors(trained / "autoencoder" / "best")["diffusion_pytorch_model.safetensors"]
    assert inside.keys() == trained_vq.keys() and all(torch.equal(inside[k], trained_vq[k]) for k in inside)


def test_the_registry_samples_through_the_pipeline(trained, tmp_path):
    ctx = generators.GeneratorContext(ldm_dir=trained, image_size=32, steps=3)
    for name in ("SD", "SD-SC"):
        gen, _ = generators.build_generator(name, ctx)
        ref = gen.generate(MASKS, [3, 4, 5])
        DISCPipeline.from_models(gen.model, gen.vq).save_pretrained(tmp_path / name)
        pipe = DISCPipeline.from_pretrained(tmp_path / name)
        out = pipe(MASKS, num_inference_steps=3, seeds=[3, 4, 5], separated=name == "SD-SC", output_type="np")
        assert np.array_equal(_u8(out.images), ref), name


# --------------------------------------------------------------------- python -m discnb.generate
def _mask_folder(d, n=6):
    d.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        g = np.array([0, 3, 4, 5], np.uint8)[rng.integers(0, 4, (8, 8))]
        Image.fromarray(np.kron(g, np.ones((6, 6), np.uint8))).save(d / f"m{i:02d}.png")  # 48 px: resized to 32
    return d


def test_generate_command_writes_resumes_and_refuses(saved, tmp_path, monkeypatch, capsys):
    _, _, model = saved
    masks = _mask_folder(tmp_path / "masks")
    args = ["--model", str(model), "--masks", str(masks), "--steps", "2", "--batch-size", "2"]
    assert generate.main(args + ["--out", str(tmp_path / "ref")]) == 0
    ref = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    assert sorted(ref["tiles"]) == [f"m{i:02d}" for i in range(6)] and ref["model_hash"] == fingerprint(model)
    assert [ref["tiles"][f"m{i:02d}"]["seed"] for i in range(6)] == list(range(6))
    # a run killed after its second batch, then resumed: only the missing tiles are drawn, the same ones
    calls = {"n": 0}
    real = DISCPipeline.__call__

    def dying(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(DISCPipeline, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        masks_to_tiles.run(model, masks, tmp_path / "out", steps=2, batch_size=2, progress=False)
    assert len(json.loads((tmp_path / "out" / "manifest.json").read_text())["tiles"]) == 4
    monkeypatch.setattr(DISCPipeline, "__call__", real)
    drawn = []
    monkeypatch.setattr(DISCPipeline, "__call__", lambda self, m, **k: drawn.append(len(m)) or real(self, m, **k))
    man = masks_to_tiles.run(model, masks, tmp_path / "out", steps=2, batch_size=2, progress=False)
    assert drawn == [2] and sorted(man["tiles"]) == sorted(ref["tiles"])
    for s in ref["tiles"]:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / f"{s}.png")),
                              np.asarray(Image.open(tmp_path / "ref" / f"{s}.png"))), s
    assert not list((tmp_path / "out").glob("*.tmp*"))
    # other settings into the same folder would mix tiles: refused, nothing touched
    before = (tmp_path / "out" / "manifest.json").read_bytes()
    assert generate.main(args + ["--out", str(tmp_path / "out"), "--seed", "9"]) == 2
    assert "another settings" in capsys.readouterr().err
    assert (tmp_path / "out" / "manifest.json").read_bytes() == before


def test_generate_command_names_bad_masks(saved, tmp_path, capsys):
    _, _, model = saved
    masks = _mask_folder(tmp_path / "masks", n=3)
    (masks / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.dstack([np.zeros((8, 8), np.uint8), np.full((8, 8), 3, np.uint8), np.zeros((8, 8), np.uint8)])
                    ).save(masks / "colour.png")
    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(masks / "nine.png")
    args = ["--model", str(model), "--masks", str(masks), "--steps", "2"]
    assert generate.main(args + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "3 of 6 masks cannot be used" in err and "--skip-bad" in err
    for name, why in (("broken.png", "cannot read"), ("colour.png", "a colour image"), ("nine.png", r"unknown mask values [9]")):
        assert f"{masks / name}: {why}" in err, name
    assert not (tmp_path / "out").exists()
    assert generate.main(args + ["--out", str(tmp_path / "out"), "--skip-bad"]) == 0
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(man["tiles"]) == ["m00", "m01", "m02"] and sorted(man["skipped"]) == ["broken.png", "colour.png",
                                                                                         "nine.png"]
    # seeds follow the sorted folder, bad files included: skipping one does not change the others' tiles
    assert [man["tiles"][s]["seed"] for s in ("m00", "m01", "m02")] == [2, 3, 4]
    assert "skipped 3 masks" in capsys.readouterr().out


def test_shipped_models_are_checked_against_their_manifest(trained, tmp_path):
    out = tmp_path / "weights"
    man = shipped.export("smoke", trained, out, models=["SD"], dtype="fp16")
    assert set(man["models"]) == {"SD", "SD-tile", "SD-tile+slide", "judge"} and man["dtype"] == "fp16"  # + Fig. 7 SDs
    entry = man["models"]["SD"]
    assert "unet/diffusion_pytorch_model.safetensors" in entry["files"] and "README.md" in entry["files"]
    assert "What it is not" in (out / "SD" / "README.md").read_text()
    pipe = load_pipeline(out / "SD")
    assert pipe.unet.dtype == torch.float32  # fp16 on disk, float32 to sample
    # fp16 storage rounds the weights: the tiles stay those of SD's fp16-rounded weights
    gen, _ = generators.build_generator("SD", generators.GeneratorContext(ldm_dir=trained, image_size=32, steps=3))
    for m in (gen.model, gen.vq):
        for p in m.parameters():
            p.data = p.data.half().float()
    ref = gen.generate(MASKS, [0, 1, 2])
    assert np.array_equal(_u8(pipe(MASKS, num_inference_steps=3, output_type="np").images), ref)
    f = out / "SD" / "unet" / "diffusion_pytorch_model.safetensors"
    good = f.read_bytes()
    f.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # one byte changed
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model.safetensors: its sha256 does not match .*MANIFEST"
                                         r".json.*rebuild with ./run_all.sh --profile smoke"):
        load_pipeline(out / "SD")
    f.write_bytes(good)
    (out / "SD" / "unet" / "extra.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"files not in .*MANIFEST.json: \['unet/extra.bin'\]"):
        load_pipeline(out / "SD")
    (out / "SD" / "unet" / "extra.bin").unlink()
    (out / "SD" / "README.md").unlink()
    with pytest.raises(FileNotFoundError, match="README.md: listed in .* but missing"):
        load_pipeline(out / "SD")


def test_restored_shipped_models_draw_the_shipped_tiles(trained, tmp_path):
    out = tmp_path / "weights"
    shipped.export("smoke", trained, out, models=["SD"], dtype="fp16")
    P01 = checkpoints.ldm_params(trained)
    root = tmp_path / "restored"
    man = shipped.restore("smoke", out, P01, root=root)
    assert (root / "ldm" / "restored.json").exists() and json.loads((root / "ldm" / "restored.json").read_text())[
        "commit"] == man["commit"]
    # the registry on the restored folder draws what the shipped pipeline draws (one sampling path)
    gen, _ = generators.build_generator("SD", generators.GeneratorContext(ldm_dir=root / "ldm", image_size=32, steps=3))
    pipe = load_pipeline(out / "SD")
    assert np.array_equal(gen.generate(MASKS, [4, 5, 6]),
                          _u8(pipe(MASKS, num_inference_steps=3, seeds=[4, 5, 6], output_type="np").images))
    assert (root / "judge" / "model").exists() and (root / "judge" / "judge.json").exists()
    # restored = copied: the shipped folders are what notebooks 01 and 02 write (their model cards aside)
    for name, where in (("SD", root / "ldm" / "sd" / "best"), ("SD-tile", root / "ldm" / "sd-tile" / "best")):
        assert shipped._file_hashes(where) == {k: v for k, v in man["models"][name]["files"].items()
                                               if k != "README.md"}, name
    # the state holds no folder of the training machine (its data_dir and output_dir were set)
    assert params.load_yaml(trained / "params.resolved.yaml")["data_dir"]
    assert {k: params.load_yaml(root / "ldm" / "params.resolved.yaml")[k] for k in ("data_dir", "output_dir")} == \
        {"data_dir": "", "output_dir": ""}
    # other notebook-01 settings than the shipped models': refused, naming what differs and the command
    other = params.Params({**P01, "unet": {**P01.unet, "channels": [16, 48]}})
    with pytest.raises(ValueError, match=r"do not match the current notebook-01 parameters \(differs: \['unet'\]\); "
                                         r"train them again with ./run_all.sh --profile smoke"):
        shipped.check_shipped("smoke", out, other)
    # other data (notebook 00 made something else): refused
    man_file = out / "MANIFEST.json"
    m = json.loads(man_file.read_text())
    m["state"]["data"]["patches"] = -1
    man_file.write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"trained on other smoke data .*differs: \['patches'\]"):
        shipped.check_shipped("smoke", out, P01)


def test_data_identity_is_made_of_the_parameters_that_make_the_data():
    """A check or a figure setting of notebook 00 (a new one such as min_fold_tiles included) leaves the shipped
    models valid; a parameter that draws other data does not."""
    P00 = dict(params.defaults("00_data_prep"))
    assert shipped.data_params(P00 | {"min_fold_tiles": 0, "figure_tiles": 2, "validity_check": False}) == \
        shipped.data_params(P00)
    assert shipped.data_params(P00 | {"demo_patients": 3}) != shipped.data_params(P00)
    assert set(shipped.NOT_DATA_PARAMS) < set(P00)  # every name there is one of notebook 00's parameters
