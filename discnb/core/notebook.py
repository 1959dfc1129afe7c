"""The setup cell of every notebook: validated params, seed, the stage folders, provenance.

    P, L = setup("00_data_prep", globals())   # L: discnb.core.layout.Layout; L.out is this notebook's folder

Every output folder gets ``params.resolved.yaml`` and ``provenance.json`` (git commit, package
versions, machine), so any artifact can be traced to the code and settings that made it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import yaml

from discnb.core import layout
from discnb.core import params
from discnb.core import paths

PACKAGES = ("torch", "torchvision", "diffusers", "accelerate", "timm", "numpy", "scipy", "pandas",
            "scikit-learn", "pillow", "papermill", "nbval", "seaborn", "matplotlib", "safetensors")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
        torch.manual_seed(seed)
    except ImportError:  # data prep does not need torch
        pass


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=paths.REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def provenance() -> dict:
    return {
        "git_commit": git_commit(),
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": package_versions(),
    }


def record(out_dir: Path, P: dict, name: str) -> None:
    """Write ``params.resolved.yaml`` and ``provenance.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "params.resolved.yaml").write_text(
        f"# resolved parameters of notebook {name}\n" + yaml.safe_dump(dict(P), sort_keys=False))
    (out_dir / "provenance.json").write_text(json.dumps(provenance(), indent=2) + "\n")


def setup(name: str, g: dict) -> tuple[params.Params, layout.Layout]:
    """Validate the notebook's parameters, seed everything, and stamp its output folder (created).
    Returns the parameters and the stage folders they describe (:mod:`discnb.core.layout`).

    ``P.profile`` picks the output folders (``outputs/<profile>/<stage>/``), so a smoke run never
    overwrites demo or paper results.
    """
    P = params.from_globals(name, g)
    paths.check_profile(P.profile)
    seed_everything(P.seed)
    L = layout.of(P, name)
    record(L.out, P, name)
    return P, L


def failed_cell(nb_path: str | Path) -> str:
    """The first cell of an executed notebook that raised, with its error, for ``run_all.sh``."""
    nb = json.loads(Path(nb_path).read_text())
    for i, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if out.get("output_type") == "error":
                src = "".join(cell.get("source", ""))
                head = "\n".join("    " + ln for ln in src.splitlines()[:8])
                return (f"cell {i} (execution count {cell.get('execution_count')}):\n{head}\n"
                        f"  -> {out.get('ename')}: {out.get('evalue')}")
    return "no cell with an error output (the kernel may have died: out of memory?)"


def cli(notebook: str, module: str, description: str, argv=None, configure=None, main_process=None):
    """The command line of a notebook's module (``python -m discnb.<module> --params FILE``):
    ``--params`` (default: the notebook's parameters cell), ``--no-progress`` and ``--no-checks``, plus whatever
    ``configure(parser)`` adds. Validates the parameters, seeds, and records params + provenance
    in the notebook's folder (:attr:`discnb.core.layout.Layout.out`; under several processes only where
    ``main_process(P)`` is true). Returns (P, args)."""
    ap = argparse.ArgumentParser(prog=f"python -m discnb.{module}", description=description)
    ap.add_argument("--params", help=f"YAML file of notebook {notebook}'s parameters (defaults: its parameters cell)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--no-checks", action="store_true",
                    help="skip the notebook's sanity checks (for trial runs at sizes they were not set for)")
    if configure is not None:
        configure(ap)
    a = ap.parse_args(argv)
    P = params.check_file(notebook, a.params) if a.params else params.validate(notebook, {})
    paths.check_profile(P.profile)
    seed_everything(P.seed)
    if main_process is None or main_process(P):
        record(layout.of(P, notebook).out, P, notebook)
    return P, a


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "failed":
        print(failed_cell(sys.argv[2]))
    else:
        print("usage: python -m discnb.core.notebook failed EXECUTED.ipynb", file=sys.stderr)
        sys.exit(2)
