"""``python -m discnb.generate``: tiles for a folder of masks you bring (see :mod:`discnb.generative.masks_to_tiles`).

    python -m discnb.generate --model weights/demo/SD-DISC --masks DIR --out DIR [--steps 200]
        [--sampler ddim|dpm++] [--separated] [--seed 0] [--batch-size 16] [--skip-bad]
"""

from __future__ import annotations

import argparse
import sys

from discnb.generative import masks_to_tiles


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m discnb.generate", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a DISCPipeline folder (save_pretrained), e.g. weights/demo/SD-DISC")
    ap.add_argument("--masks", required=True, help="folder of mask PNGs: SICAPv2 0/3/4/5 or labels 0..3, any size")
    ap.add_argument("--out", required=True, help="folder for the tiles (<mask stem>.png) and manifest.json")
    ap.add_argument("--steps", type=int, default=200, help="denoising steps (the paper: DDIM-200)")
    ap.add_argument("--sampler", default="ddim", choices=["ddim", "dpm++"])
    ap.add_argument("--separated", action="store_true", help="Separated Conditions (SD-SC, Eq. 2)")
    ap.add_argument("--seed", type=int, default=0, help="mask i of the sorted folder gets seed + i")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--guidance-scale", type=float, default=None, help="default: the model's own")
    ap.add_argument("--mask-format", default="auto", choices=["auto", "labels", "sicap"])
    ap.add_argument("--skip-bad", action="store_true", help="draw the usable masks and report the others")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    try:
        man = masks_to_tiles.run(a.model, a.masks, a.out, steps=a.steps, sampler=a.sampler, separated=a.separated,
                                 seed=a.seed, batch_size=a.batch_size, guidance_scale=a.guidance_scale,
                                 mask_format=a.mask_format, skip_bad=a.skip_bad, device=a.device)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(man['tiles'])} tiles in {a.out} (manifest.json); {len(man['skipped'])} masks skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
