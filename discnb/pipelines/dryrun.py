"""The paper profile's dry run: every notebook at the paper's model sizes and settings, with step,
sample and slide counts capped to a handful, on stand-in data in the real formats.

The paper path trains for weeks on a GPU; nothing in it may crash after a week because a code path
only ever ran at toy sizes. This runs notebooks 00-06 headlessly (papermill, as ``run_all.sh``) with
``params/paper/NN.yaml`` overridden by ``params/dryrun/NN.yaml`` (the caps; every overridden key
must exist in the paper file, so a cap cannot silently miss), on

* a SICAPv2-layout folder of 512-px tiles (:func:`discnb.data.fixtures.write_sicapv2`),
* a PANDA-layout folder of pyramidal TIFFs (:func:`discnb.data.fixtures.write_panda`),
* a ViT-S/16 weights file in the layout of Lunit's (random weights: it proves loading only),

all under ``outputs/dryrun/`` (``DISCNB_OUTPUTS``/``DISCNB_FIGURES`` point there, so a real
``outputs/paper`` is never touched). Per notebook it records the wall time and the peak resident
memory of the notebook's process tree (``os.wait4``'s ``ru_maxrss``: papermill and the kernel it
reaps) in ``outputs/dryrun/report.json``. It also checks the DDIM-200 schedule the paper samples
with (the notebooks themselves sample 2 steps).

    python -m discnb.pipelines.dryrun [--only NN] [--from NN] [--fresh]
    ./run_all.sh --profile paper --dry-run      # the same
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
import yaml

from discnb.core import io, params, paths
from discnb.data import fixtures
from discnb.generative import autoencoder as ae
from discnb.generative import sampling

ROOT = paths.REPO / "outputs" / "dryrun"
OVERLAYS = paths.PARAMS / "dryrun"
SICAP = ROOT / "data" / "SICAPv2"
PANDA = ROOT / "data" / "PANDA"
VIT = ROOT / "weights" / "dino_vit_small_patch16_ep200.torch"


def notebooks() -> list[str]:
    return sorted(p.stem for p in paths.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def merge(base: dict, over: dict, where: str, defaults: dict | None = None) -> dict:
    """``base`` with ``over``'s values, nested dicts merged key by key; a key of ``over`` that
    neither ``base`` nor the notebook's ``defaults`` has is an error (a mistyped cap would otherwise
    leave the paper's value running)."""
    out = dict(base)
    for k, v in over.items():
        if k not in base and k not in (defaults or {}):
            raise params.ParamError(f"{where}: {k!r} is not a key of the paper parameters it overrides")
        b = base.get(k, (defaults or {}).get(k))
        out[k] = merge(b, v, f"{where}.{k}") if isinstance(v, dict) and isinstance(b, dict) else v
    return out


def resolved_params(name: str) -> dict:
    """The paper parameters of notebook ``name`` with the dry run's caps, validated as the notebook would."""
    base = params.load_yaml(paths.PARAMS / "paper" / f"{name}.yaml")
    over_file = OVERLAYS / f"{name}.yaml"
    over = params.load_yaml(over_file) if over_file.exists() else {}
    P = merge(base, over, str(over_file.relative_to(paths.REPO)), params.defaults(name))
    return {k: P[k] for k in params.validate(name, P) if k in P}  # validated; only the keys the files set


def write_inputs(progress: bool = True) -> dict:
    """The stand-in datasets and weights (written once; ``--fresh`` deletes them)."""
    made = {}
    for folder, write in ((SICAP, fixtures.write_sicapv2), (PANDA, fixtures.write_panda)):
        if not (folder / "done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            t0 = time.perf_counter()
            write(folder)
            (folder / "done").write_text("")
            made[folder.name] = round(time.perf_counter() - t0, 1)
    if not VIT.exists():
        torch.manual_seed(0)
        vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
        VIT.parent.mkdir(parents=True, exist_ok=True)
        io.atomic_file(VIT, lambda tmp: torch.save({"teacher": {f"backbone.{k}": v for k, v in vit.state_dict().items()}}, tmp))
        made["vit"] = str(VIT)
    if progress and made:
        print(f"[dryrun] wrote stand-in inputs: {made}", flush=True)
    return made


def ddim200_check() -> dict:
    """The paper's sampler at 200 steps (DDIM, LDM's 'leading' spacing, offset 1): 200 distinct
    timesteps from 996 down to 1, every fifth of the 1,000 training steps."""
    s = sampling.make_scheduler("ddim")
    s.set_timesteps(200)
    t = s.timesteps.tolist()
    ok = len(t) == len(set(t)) == 200 and t[0] == 996 and t[-1] == 1 and all(a - b == 5 for a, b in zip(t, t[1:]))
    if not ok:
        raise AssertionError(f"DDIM-200 timesteps are not LDM's: {t[:3]} ... {t[-3:]} ({len(t)})")
    return {"n": len(t), "first": t[0], "last": t[-1], "stride": t[0] - t[1]}


def first_stage_memory(n_tiles: int = 12_000, size: int = 256) -> dict:
    """The first stage's training set in memory at SICAPv2's size, as it was (float32) and as it
    is (uint8, :func:`discnb.generative.autoencoder.pixels`), in GB: computed from the dtypes."""
    per = size * size * 3
    return {"n_tiles": n_tiles, "image_size": size, "float32_gb": round(n_tiles * per * 4 / 1e9, 2),
            "uint8_gb": round(n_tiles * per / 1e9, 2),
            "dtype_now": str(ae.pixels(np.zeros((1, 2, 2, 3), np.uint8)).dtype)}


def run_notebook(name: str, progress: bool = True) -> dict:
    """Run one notebook with its capped parameters; wall time and peak RSS of its process tree."""
    P = resolved_params(name)
    pdir, edir = ROOT / "params", ROOT / "executed"
    pdir.mkdir(parents=True, exist_ok=True)
    edir.mkdir(parents=True, exist_ok=True)
    pfile = pdir / f"{name}.yaml"
    io.write_text(pfile, yaml.safe_dump(P, sort_keys=False))
    env = {**os.environ, "DISCNB_OUTPUTS": str(ROOT), "DISCNB_FIGURES": str(ROOT / "figures"),
           "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    cmd = [sys.executable, "-m", "papermill", "-k", "python3", "--cwd", ".", "--log-output", "--no-progress-bar",
           str(paths.notebook_path(name)), str(edir / f"{name}.ipynb"), "-f", str(pfile), "-p", "profile", "paper"]
    log = edir / f"{name}.log"
    if progress:
        print(f"[dryrun] {time.strftime('%H:%M:%S')} {name} (log {log.relative_to(paths.REPO)})", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=paths.REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    row = {"notebook": name, "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
           "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 2)}  # Linux reports KiB
    if progress:
        print(f"[dryrun] {name}: rc {rc}, {row['seconds']} s, peak RSS {row['peak_rss_gb']} GB", flush=True)
    return row


def run(only: str = "", start: str = "", fresh: bool = False, progress: bool = True) -> dict:
    if fresh:
        shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir(parents=True, exist_ok=True)
    names = [n for n in notebooks() if (not only or n[:2] == only) and (not start or n[:2] >= start)]
    if not names:
        raise ValueError(f"no notebook matched (--only {only!r} --from {start!r}); notebooks: {notebooks()}")
    for n in names:  # every cap file is checked before hours of work start
        resolved_params(n)
    report_file = ROOT / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {"notebooks": {}}
    report.update(inputs=write_inputs(progress) or report.get("inputs", {}), ddim200=ddim200_check(),
                  first_stage_memory=first_stage_memory())
    t0 = time.perf_counter()
    failed = None
    for n in names:
        row = run_notebook(n, progress)
        report["notebooks"][n] = row
        io.write_json(report_file, report)
        if row["rc"]:
            failed = n
            break
    report["seconds_this_run"] = round(time.perf_counter() - t0, 1)
    report["ok"] = failed is None and all(r["rc"] == 0 for r in report["notebooks"].values())
    io.write_json(report_file, report)
    if progress:
        print(f"[dryrun] {'FAILED at ' + failed if failed else 'passed'} in {report['seconds_this_run']} s; "
              f"report {report_file.relative_to(paths.REPO)}", flush=True)
        for r in report["notebooks"].values():
            print(f"  {r['notebook']:<20} rc {r['rc']}  {r['seconds']:>7} s  peak RSS {r['peak_rss_gb']:>5} GB")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m discnb.pipelines.dryrun", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="run one notebook, e.g. 01")
    ap.add_argument("--from", dest="start", default="", help="start at this notebook, e.g. 03")
    ap.add_argument("--fresh", action="store_true", help="delete outputs/dryrun first (stand-in data included)")
    a = ap.parse_args(argv)
    try:
        rep = run(a.only, a.start, a.fresh)
    except params.ParamError as e:
        print(f"[dryrun] {e}", file=sys.stderr)
        return 2
    if not rep["ok"]:
        failed = [r["notebook"] for r in rep["notebooks"].values() if r["rc"]]
        print(f"[dryrun] failed: {failed}; see outputs/dryrun/executed/<notebook>.log", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
