"""Issue 16's must-show for ``python -m discnb.generate``: a folder of N masks, a run SIGKILLed mid-way, a resume
that finishes without duplicates, the same tiles as an uninterrupted run, and the judge's mean IoU of the tiles.

    python experiments/issue16_generate_kill.py --model weights/demo/SD-DISC --judge weights/demo/judge
        --masks-from outputs/demo/generate/masks --out outputs/exp16/kill [--n 20] [--steps 200]
"""
import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from discnb.core import paths
from discnb.pipelines import from_masks

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--judge", required=True)
ap.add_argument("--masks-from", required=True, help="a folder of mask PNGs (e.g. notebook 07's outputs/<profile>/generate/masks)")
ap.add_argument("--out", required=True)
ap.add_argument("--n", type=int, default=20)
ap.add_argument("--steps", type=int, default=200)
ap.add_argument("--batch-size", type=int, default=4)
ap.add_argument("--kill-after", type=int, default=8, help="SIGKILL the first run once this many tiles exist")
a = ap.parse_args()
out = paths.resolve(a.out)
shutil.rmtree(out, ignore_errors=True)
masks = out / "masks"
masks.mkdir(parents=True)
for f in sorted(paths.resolve(a.masks_from).glob("*.png"))[:a.n]:
    shutil.copy2(f, masks / f.name)
cmd = [sys.executable, "-m", "discnb.generate", "--model", str(paths.resolve(a.model)), "--masks", str(masks),
       "--steps", str(a.steps), "--batch-size", str(a.batch_size)]
rep = {"n_masks": len(list(masks.glob("*.png"))), "command": " ".join(cmd[1:]) + " --out DIR"}

t0 = time.perf_counter()
p = subprocess.Popen(cmd + ["--out", str(out / "tiles")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while p.poll() is None and len(list((out / "tiles").glob("mask_*.png"))) < a.kill_after:
    time.sleep(0.5)
p.send_signal(signal.SIGKILL)
p.wait()
rep["killed_with"] = len(list((out / "tiles").glob("mask_*.png")))
rep["first_run_s"] = time.perf_counter() - t0
rep["in_manifest_after_kill"] = len(json.loads((out / "tiles" / "manifest.json").read_text())["tiles"])
t1 = time.perf_counter()
r = subprocess.run(cmd + ["--out", str(out / "tiles")], capture_output=True, text=True)
rep["resume_rc"], rep["resume_s"], rep["resume_stdout"] = r.returncode, time.perf_counter() - t1, r.stdout.strip()
man = json.loads((out / "tiles" / "manifest.json").read_text())
files = sorted(p.name for p in (out / "tiles").iterdir())
rep["tiles_in_manifest"] = len(man["tiles"])
rep["png_files"] = len([f for f in files if f.endswith(".png")])
rep["leftover_tmp"] = [f for f in files if ".tmp" in f]
t2 = time.perf_counter()
r2 = subprocess.run(cmd + ["--out", str(out / "uninterrupted")], capture_output=True, text=True)
rep["uninterrupted_rc"], rep["uninterrupted_s"] = r2.returncode, time.perf_counter() - t2
same = [(out / "tiles" / f"{s}.png").read_bytes() == (out / "uninterrupted" / f"{s}.png").read_bytes()
        for s in man["tiles"]]
rep["identical_to_uninterrupted"] = f"{sum(same)} / {len(same)}"
j = from_masks.judged(paths.resolve(a.model), paths.resolve(a.judge), masks, out / "tiles")
rep["judged"] = {k: j[k] for k in ("n_tiles", "mean_iou", "iou", "chance_mean_iou")}
(out / "report.json").write_text(json.dumps(rep, indent=1, default=float))
print(json.dumps(rep, indent=1, default=float))
