"""Masks you bring -> tiles: ``python -m discnb.generate`` (the command) and :func:`run` (the same from a notebook).

A folder of mask PNGs (SICAPv2 0/3/4/5 or label maps 0..3, any size: resized to the model's tile size with
nearest) is drawn by a :class:`discnb.generative.disc_pipeline.DISCPipeline` folder, one PNG tile per mask under the
mask's stem, plus ``manifest.json`` (the model's hash, the settings, each tile's mask and seed, what was skipped
and why). Mask i of the sorted folder gets seed ``seed + i`` (bad masks keep their number, so skipping one
does not change the others' tiles).

The batch size is one of the settings: on the CPU it changes which convolution kernels run, and so a tile
may differ by a few grey levels in a few pixels between batch sizes (the shipped SD-DISC, 16 masks,
DPM-Solver++ 20, 2 threads: batch 16 vs 1 left 9 of 16 tiles identical, 0.28 % of pixels differing, by at
most 10 grey levels; tests/test_batch_size.py holds the bound). The same model, masks, seed and settings,
batch size included, give byte-identical tiles on one machine.

Resuming: tiles are written one batch at a time, each file atomically, and the manifest after every batch; a
second run with the same model and settings draws only the masks that have no tile yet. A run with another
model or other settings into the same ``--out`` is refused (it would mix tiles), and nothing in ``--out`` is
deleted or overwritten half-way.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from discnb.core.io import atomic_file, fingerprint, write_json
from discnb.data.shapes import resize_mask
from discnb.generative import disc_pipeline as pl
from discnb.generative.sampling import SCHEDULERS, make_scheduler

MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
MANIFEST = "manifest.json"


class MaskError(ValueError):
    """A mask file that cannot be used (unreadable, colour, unknown values)."""


def read_mask(path: Path) -> np.ndarray:
    """A mask file -> (H, W) integer values; a grey image saved as RGB is accepted (equal channels)."""
    try:
        with Image.open(path) as im:
            im.load()
            a = np.asarray(im)
    except (UnidentifiedImageError, OSError) as e:
        raise MaskError(f"{path}: cannot read it as an image ({e})") from None
    if a.ndim == 3:
        if a.shape[-1] == 4:
            a = a[..., :3]
        if np.any(a != a[..., :1]):
            raise MaskError(f"{path}: a colour image; a mask is one channel of labels 0..3 or SICAPv2 grades 0/3/4/5")
        a = a[..., 0]
    if a.ndim != 2:
        raise MaskError(f"{path}: shape {a.shape} is not a mask (H, W)")
    return a


def folder_format(values: dict[str, set], mask_format: str) -> str:
    """One format for the whole folder: the one asked for, or what the values say (4/5 -> SICAPv2, 1/2 ->
    labels); a folder holding both is an error, and one with only 0 and 3 needs ``--mask-format``."""
    if mask_format != "auto":
        return mask_format
    known = set(range(6))  # a file with other values is reported on its own, and says nothing about the format
    values = {n: v for n, v in values.items() if v <= known}
    sicap = sorted(n for n, v in values.items() if v & {4, 5})
    labels = sorted(n for n, v in values.items() if v & {1, 2})
    if sicap and labels:
        raise MaskError(f"masks disagree on their format: {sicap[:3]} hold SICAPv2 grades 4/5, {labels[:3]} hold "
                        "labels 1/2; put them in separate folders or give --mask-format")
    if sicap:
        return "sicap"
    if labels or all(v <= {0} for v in values.values()):
        return "labels"
    raise MaskError("the masks hold only 0 and 3, which is GG5 as a label map and GG3 in SICAPv2: say which with "
                    "--mask-format labels|sicap")


def load_masks(folder: Path, size: int, mask_format: str = "auto", skip_bad: bool = False) -> tuple[dict, dict]:
    """(stem -> (index, labels (size, size) uint8), file -> why skipped) for the mask files of ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of masks")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in MASK_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{folder}: no mask files ({', '.join(MASK_SUFFIXES)})")
    stems = [p.stem for p in files]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise MaskError(f"{folder}: masks {dup[:5]} share a stem (their tiles would share a name)")
    raw, bad = {}, {}
    for i, p in enumerate(files):
        try:
            raw[p.name] = (i, read_mask(p))
        except MaskError as e:
            bad[p.name] = str(e)
    fmt = folder_format({n: set(np.unique(a).tolist()) for n, (_, a) in raw.items()}, mask_format) if raw else "labels"
    out = {}
    for name, (i, a) in raw.items():
        try:
            out[Path(name).stem] = (i, resize_mask(pl.to_labels(a, fmt, str(folder / name)), size))
        except ValueError as e:
            bad[name] = str(e)
    if bad and not skip_bad:
        lines = "\n".join(f"  {why}" for why in bad.values())
        raise MaskError(f"{len(bad)} of {len(files)} masks cannot be used (nothing was drawn; pass --skip-bad to draw "
                        f"the others):\n{lines}")
    return out, bad


def settings_of(steps: int, sampler: str, separated: bool, seed: int, guidance_scale: float | None,
                mask_format: str, batch_size: int) -> dict:
    """What decides the tiles besides the model and the masks, the batch size included (module docstring)."""
    if sampler not in SCHEDULERS:
        raise ValueError(f"--sampler must be one of {SCHEDULERS}, got {sampler!r}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {batch_size}")
    return {"steps": int(steps), "sampler": sampler, "separated": bool(separated), "seed": int(seed),
            "guidance_scale": guidance_scale, "mask_format": mask_format, "batch_size": int(batch_size)}


def start_manifest(out: Path, model: Path, model_hash: str, settings: dict) -> dict:
    """The manifest of ``out``: a new one, or the one a previous run left there (same model and settings)."""
    f = out / MANIFEST
    if not f.exists():
        return {"model": str(model), "model_hash": model_hash, "settings": settings, "tiles": {}, "skipped": {}}
    try:
        man = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: not a readable manifest ({e}); give a new --out") from None
    for key, mine in (("model_hash", model_hash), ("settings", settings)):
        if man.get(key) != mine:
            raise ValueError(f"{out} holds tiles of another {key.replace('_', ' ')} ({man.get(key)} vs {mine}); "
                             "give a new --out or the same model and settings to resume")
    return man


def run(model: str | Path, masks: str | Path, out: str | Path, *, steps: int = 200, sampler: str = "ddim",
        separated: bool = False, seed: int = 0, batch_size: int = 16, guidance_scale: float | None = None,
        mask_format: str = "auto", skip_bad: bool = False, device: str = "cpu", progress: bool = True) -> dict:
    """Draw a tile for every usable mask of ``masks`` that ``out`` does not hold yet; returns the manifest."""
    model, out = Path(model), Path(out)
    pipe = pl.load_pipeline(model, device)
    pipe.scheduler = make_scheduler(sampler)
    settings = settings_of(steps, sampler, separated, seed, guidance_scale, mask_format, batch_size)
    labels, bad = load_masks(Path(masks), pipe.image_size, mask_format, skip_bad)
    out.mkdir(parents=True, exist_ok=True)
    man = start_manifest(out, model, fingerprint(model), settings)
    man["skipped"] = bad
    todo = [s for s in sorted(labels, key=lambda s: labels[s][0])
            if s not in man["tiles"] or not (out / man["tiles"][s]["file"]).exists()]
    t0 = time.perf_counter()
    bar = tqdm(total=len(labels), initial=len(labels) - len(todo), desc="tiles", unit="tile", disable=not progress)
    for b in range(0, len(todo), batch_size):
        stems = todo[b:b + batch_size]
        seeds = [seed + labels[s][0] for s in stems]
        tiles = pipe(np.stack([labels[s][1] for s in stems]), num_inference_steps=steps, seeds=seeds,
                     separated=separated, output_type="pil", batch_size=batch_size, guidance_scale=guidance_scale,
                     mask_format="labels").images
        for s, sd, img in zip(stems, seeds, tiles):
            atomic_file(out / f"{s}.png", lambda tmp, img=img: img.save(tmp, format="PNG"))
            man["tiles"][s] = {"file": f"{s}.png", "seed": sd}
        write_json(out / MANIFEST, man)
        bar.update(len(stems))
    bar.close()
    man["seconds_this_run"] = time.perf_counter() - t0
    write_json(out / MANIFEST, man)
    if bad:
        print(f"skipped {len(bad)} masks:\n" + "\n".join(f"  {why}" for why in bad.values()))
    return man
