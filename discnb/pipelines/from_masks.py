"""Notebook 07: the shipped models, and tiles for masks you bring (``python -m discnb.pipelines.from_masks``).

1. **Export** (``export: true``): notebook 01's SD and first stage, notebook 02's SD-DISC and SD-DISC-CoTrain and
   the pattern judge as :class:`discnb.generative.disc_pipeline.DISCPipeline` folders with a ``MANIFEST.json``
   (:mod:`discnb.grading.shipped`), into ``weights/<profile>/`` (smoke: ``outputs/smoke/weights/``).
2. **Masks you bring**: ``n_masks`` held-out annotation masks (most labels first) written as SICAPv2 PNGs
   (grades 0/3/4/5) at twice the model's tile size, then drawn by the shipped ``model`` through
   ``python -m discnb.generate``'s code (:func:`discnb.generative.masks_to_tiles.run`): tiles, manifest, resume.
3. **Judged**: the shipped judge's IoU of those tiles with their masks, and chance (the masks permuted).
4. **fp16**: SD from notebook 01's float32 weights vs the shipped (fp16-stored) SD, same masks and seeds.
5. **Manifest check**: a copy of the shipped model with one byte changed must fail to load, naming the file.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from discnb.core import layout, paths
from discnb.core.io import fingerprint, write_json
from discnb.core.notebook import cli
from discnb.data.sicap import GRADE_TO_LABEL
from discnb.data.shapes import most_labels_first
from discnb.generative import checkpoints, ldm_training
from discnb.generative import masks_to_tiles
from discnb.generative import disc_pipeline as pl
from discnb.grading import adherence
from discnb.grading import judge as jg
from discnb.grading import shipped
from discnb import plots

NOTEBOOK = "07_generate_from_masks"
LABEL_TO_GRADE = np.array([g for g, _ in sorted(GRADE_TO_LABEL.items(), key=lambda kv: kv[1])], np.uint8)


def export(P) -> dict:
    """Step 1: write the shipped models from this profile's notebook 01 and 02 outputs."""
    L = layout.of(P, NOTEBOOK)
    ldir = L.ldm
    return shipped.export(P.profile, ldir, L.weights, P.models, P.dtype,
                          adherence_csv=L.disc / "adherence.csv")


def held_out_masks(P) -> np.ndarray:
    """``n_masks`` masks of notebook 01's held-out tiles, most labels first (labels 0..3)."""
    split = ldm_training.load_split(checkpoints.ldm_params(layout.of(P, NOTEBOOK).ldm), progress=False)
    masks = ldm_training.held_out(split)["masks"]
    return masks[np.sort(most_labels_first(masks, min(P.n_masks, len(masks)), P.seed))]


def write_masks(masks: np.ndarray, folder: Path) -> list[Path]:
    """Masks as SICAPv2-style PNGs (grades 0/3/4/5, one channel) at twice their size (any size is accepted);
    the folder is this notebook's own and is rewritten whole (a smaller ``n_masks`` leaves no stale masks)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    files = []
    for i, m in enumerate(masks):
        f = folder / f"mask_{i:03d}.png"
        Image.fromarray(np.kron(LABEL_TO_GRADE[m], np.ones((2, 2), np.uint8))).save(f)
        files.append(f)
    return files


def fresh_tiles(tiles_dir: Path, model_dir: Path, n_masks: int) -> None:
    """This notebook's own tiles folder is redrawn when the shipped model changed (re-exported) or it holds
    tiles of more masks than asked now; ``python -m discnb.generate`` instead refuses to mix models in one ``--out``."""
    f = tiles_dir / masks_to_tiles.MANIFEST
    if f.exists():
        man = json.loads(f.read_text())
        if man.get("model_hash") != fingerprint(model_dir) or len(man.get("tiles", {})) > n_masks:
            shutil.rmtree(tiles_dir)


def judged(model_dir: Path, judge_dir: Path, masks_dir: Path, tiles_dir: Path, seed: int = 0) -> dict:
    """Step 3: the judge's IoU of the tiles in ``tiles_dir`` with the masks they were drawn from."""
    man = json.loads((tiles_dir / masks_to_tiles.MANIFEST).read_text())
    pl.verify_manifest(judge_dir)
    judge = jg.load_judge(judge_dir)
    size = pl.load_pipeline(model_dir).image_size
    labels, _ = masks_to_tiles.load_masks(masks_dir, size, man["settings"]["mask_format"], skip_bad=True)
    stems = sorted(man["tiles"], key=lambda s: labels[s][0])
    tiles = np.stack([np.asarray(Image.open(tiles_dir / man["tiles"][s]["file"]).convert("RGB")) for s in stems])
    masks = np.stack([labels[s][1] for s in stems])
    s = adherence.score(judge, tiles, masks, seed)
    return {"n_tiles": len(stems), "mean_iou": s["mean_iou"], "iou": s["iou"], "chance_mean_iou": s["chance_mean_iou"],
            "tiles": tiles, "masks": masks}


def tamper_check(model_dir: Path, work: Path) -> dict:
    """Step 5: a copy of ``model_dir`` (with its manifest) whose U-Net file has one byte changed must not load."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(model_dir, work / model_dir.name)
    shutil.copy2(model_dir.parent / pl.MANIFEST_NAME, work / pl.MANIFEST_NAME)
    f = next((work / model_dir.name / "unet").glob("*.safetensors"))
    b = bytearray(f.read_bytes())
    b[-1] ^= 0xFF
    f.write_bytes(bytes(b))
    try:
        pl.load_pipeline(work / model_dir.name)
        msg = None
    except ValueError as e:
        msg = str(e)
    shutil.rmtree(work)
    return {"changed": str(f.relative_to(work)), "refused": msg is not None, "message": msg}


def figure(masks: np.ndarray, tiles: np.ndarray, model: str, path: Path, n: int = 8) -> Path:
    """Masks (NC green, GG3 blue, GG4 yellow, GG5 red) above the shipped model's tiles."""
    n = min(n, len(tiles))
    fig = plots.image_grid({"mask": [plots.colorize(m) for m in masks[:n]], model: list(tiles[:n])})
    return plots.save(fig, path)


def run(P, progress: bool = True, checks: bool = True) -> dict:
    """Notebook 07, steps 1-5; writes ``report.json`` (and the figure) and returns the report."""
    L = layout.of(P, NOTEBOOK)
    out = L.out
    out.mkdir(parents=True, exist_ok=True)
    W = L.weights
    rep = {"weights_dir": str(W), "model": P.model}
    if P.export:
        man = export(P)
        rep["exported"] = sorted(man["models"])
    model_dir = W / P.model
    masks = held_out_masks(P)
    rep["n_masks"] = len(masks)
    write_masks(masks, out / "masks")
    fresh_tiles(out / "tiles", model_dir, len(masks))
    man = masks_to_tiles.run(model_dir, out / "masks", out / "tiles", steps=P.steps, sampler=P.sampler,
                             seed=P.seed, batch_size=P.batch_size, mask_format="sicap", progress=progress)
    rep["tiles"] = {"n": len(man["tiles"]), "skipped": len(man["skipped"]), "seconds": man["seconds_this_run"]}
    j = judged(model_dir, W / "judge", out / "masks", out / "tiles", P.seed)
    rep["judged"] = {k: j[k] for k in ("n_tiles", "mean_iou", "iou", "chance_mean_iou")}
    if P.export and P.fp16_masks and P.dtype == "fp16":
        rep["fp16"] = shipped.fp16_effect(L.ldm, W / "SD", W / "judge", masks[:P.fp16_masks], P.steps,
                                          P.batch_size)
    rep["tamper"] = tamper_check(model_dir, out / "tamper")
    rep["figure"] = str(figure(j["masks"], j["tiles"], P.model, paths.figures_dir(P.profile) / "07_tiles_from_masks.png"))
    write_json(out / "report.json", rep)
    if checks:
        check(P, rep)
    return rep


def check(P, rep: dict) -> None:
    assert rep["tiles"]["n"] == rep["judged"]["n_tiles"] == rep["n_masks"] and rep["tiles"]["skipped"] == 0, rep["tiles"]
    assert 0.0 <= rep["judged"]["mean_iou"] <= 1.0, rep["judged"]
    assert rep["tamper"]["refused"] and "sha256" in rep["tamper"]["message"], rep["tamper"]
    assert Path(rep["figure"]).exists()
    if "fp16" in rep:
        assert all(np.isfinite(rep["fp16"][k]) for k in ("fp32_mean_iou", "shipped_mean_iou")), rep["fp16"]


def main(argv: list[str] | None = None) -> int:
    P, a = cli(NOTEBOOK, "pipelines.from_masks", __doc__.split("\n\n")[0], argv)
    rep = run(P, progress=not a.no_progress, checks=not a.no_checks)
    print(json.dumps({k: rep[k] for k in ("tiles", "judged")}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
