"""Mask adherence and cost per sampler on the most complex real masks (docs/mask-adherence.md, docs/cost.md).

SD, SD-SC, SD-DISC and SD-DISC-CoTrain, loaded as ``DISCPipeline`` folders (SD-SC is SD's folder sampled with
Separated Conditions, Eq. 2), draw the same held-out annotation masks with the same seeds at each sampler setting;
notebook 01's pattern judge scores the tiles. The masks are notebook 02's ``complex-real`` set: of the ``--n``
validation masks with the most labels, those with two or more. Tile i of seed s draws from noise seed
s x 100000 + i (notebook 02's rule). Prints and writes one row per (seed, setting, model): mean IoU, IoU per class
and seconds per tile. Also the check behind the demo's DPM-Solver++ 20 tile sets (``params/demo/03_tile_sets.yaml``):

    python experiments/sampler_adherence.py --seeds 0,1,2
    python experiments/sampler_adherence.py --models SD-DISC --settings ddim:50,dpm++:20,dpm++:25,ddim:25

Relative paths are read from the repository root; ``--data`` is notebook 00's data folder (``./run_all.sh`` writes
``outputs/demo/data``).
"""
from __future__ import annotations

import argparse
import time

from discnb.core import paths
from discnb.core.io import write_json
from discnb.generative.disc_pipeline import DISCPipeline, prepare_masks
from discnb.grading import adherence
from discnb.grading import judge as jg
from discnb.data import prepared

FOLDER = {"SD": "SD", "SD-SC": "SD", "SD-DISC": "SD-DISC", "SD-DISC-CoTrain": "SD-DISC-CoTrain"}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default="weights/demo", help="a folder with the models' DISCPipeline folders")
    ap.add_argument("--judge", default="weights/demo/judge")
    ap.add_argument("--data", default="outputs/demo/data", help="notebook 00's data folder")
    ap.add_argument("--val-fold", type=int, default=1)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--models", default="SD,SD-SC,SD-DISC,SD-DISC-CoTrain")
    ap.add_argument("--settings", default="ddim:50,dpm++:20", help="scheduler:steps, comma-separated")
    ap.add_argument("--seeds", default="0", help="noise seeds: tile i of seed s draws from s * 100000 + i")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default="outputs/experiments/sampler_adherence.json")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    names = a.models.split(",")
    unknown = set(names) - set(FOLDER)
    if unknown:
        raise SystemExit(f"unknown models {sorted(unknown)}; known: {list(FOLDER)}")
    pipes = {n: DISCPipeline.from_pretrained(paths.resolve(a.weights) / FOLDER[n]) for n in names}
    size = next(iter(pipes.values())).image_size
    held_out = prepared.split_tiles(paths.resolve(a.data), a.val_fold, progress=False)["val"]["masks"]
    masks = prepare_masks(held_out[adherence.complex_choice(held_out, a.n, 0)], size, "labels")
    judge = jg.load_judge(paths.resolve(a.judge))
    rep = {"n_masks": len(masks), "masks": "held-out annotation masks with the most labels (multi-label only)",
           "runs": []}
    for seed, s in [(int(x), y) for x in a.seeds.split(",") for y in a.settings.split(",")]:
        seeds = [seed * 100_000 + i for i in range(len(masks))]
        sched, steps = s.split(":")
        for name in names:
            gen = pipes[name].sampler(separated=name == "SD-SC", num_inference_steps=int(steps),
                                        batch_size=a.batch_size, scheduler=sched)
            t0 = time.perf_counter()
            tiles = gen.generate(masks, seeds)
            sec = (time.perf_counter() - t0) / len(masks)
            sc = judge(tiles, masks)
            rep["runs"].append({"seed": seed, "scheduler": sched, "steps": int(steps), "model": name,
                                "mean_iou": round(sc["mean_iou"], 4),
                                "iou": {k: round(v, 4) for k, v in sc["iou"].items()}, "sec_per_tile": round(sec, 3)})
            print(rep["runs"][-1], flush=True)
    out = paths.resolve(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, rep)
    return rep


if __name__ == "__main__":
    main()
