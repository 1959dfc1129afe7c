"""One anchor for every path.

Notebooks run with cwd = repo root under papermill and cwd = ``notebooks/`` under nbval and
JupyterLab, so nothing may depend on the working directory: every path is resolved from the
location of this file.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
PARAMS = REPO / "params"
# DISCNB_OUTPUTS / DISCNB_FIGURES move every stage's outputs and figures elsewhere (a second run of the
# same profile that must not touch the first: tests/test_stage_files.py runs the modules that way).
OUTPUTS = Path(os.environ["DISCNB_OUTPUTS"]).resolve() if os.environ.get("DISCNB_OUTPUTS") else REPO / "outputs"
FIGURES = Path(os.environ["DISCNB_FIGURES"]).resolve() if os.environ.get("DISCNB_FIGURES") else REPO / "figures"

PROFILES = ("smoke", "demo", "paper")


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r} is not one of {PROFILES}")
    return profile


def resolve(path: str | Path) -> Path:
    """A user-given path: absolute as is, relative to the repository root otherwise."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (REPO / p)


def output_dir(profile: str, *parts: str, create: bool = True) -> Path:
    """``outputs/<profile>/<parts...>``: profiles never share an output folder."""
    d = OUTPUTS.joinpath(check_profile(profile), *parts)
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d


def results_dir(profile: str, create: bool = True) -> Path:
    """Where a profile's small result tables go (the ones a README cites, e.g. ``judge.json``).

    Like :func:`figures_dir`: the committed ``results/demo/`` and ``results/paper/``; smoke runs
    write under ``outputs/smoke/results/``. With ``DISCNB_FIGURES`` set (tests, the dry run) they go
    beside those figures, so such runs never touch the committed tables.
    """
    if os.environ.get("DISCNB_FIGURES"):
        return _made(FIGURES / "results" / check_profile(profile), create)
    return _committed_or_output(profile, "results", create)


def weights_dir(profile: str, create: bool = True) -> Path:
    """Where a profile's shipped models go (notebook 07): the committed ``weights/demo/`` (and the
    git-ignored ``weights/paper/``); smoke runs, and any run with ``DISCNB_OUTPUTS`` set (tests, the
    dry run), write ``outputs/<profile>/weights/``, so they never touch the shipped ones."""
    if os.environ.get("DISCNB_OUTPUTS"):
        return _made(OUTPUTS / check_profile(profile) / "weights", create)
    return _committed_or_output(profile, "weights", create)


def _committed_or_output(profile: str, kind: str, create: bool) -> Path:
    """``<kind>/<profile>`` in the repository for demo and paper, ``outputs/<profile>/<kind>`` otherwise."""
    d = REPO / kind / profile if check_profile(profile) in ("demo", "paper") else OUTPUTS / profile / kind
    return _made(d, create)


def _made(d: Path, create: bool) -> Path:
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d


def figures_dir(profile: str, create: bool = True) -> Path:
    """Where a profile's figures go.

    The committed ``figures/`` come from the demo profile; the paper profile writes to
    ``figures/paper/`` and smoke runs (tests, CI) to ``figures/smoke/`` (git-ignored), so they
    never overwrite the committed figures.
    """
    d = FIGURES if check_profile(profile) == "demo" else FIGURES / profile
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d


def notebook_path(name: str) -> Path:
    """``notebooks/<name>.ipynb`` for a notebook name such as ``00_data_prep``."""
    p = NOTEBOOKS / f"{name}.ipynb"
    if not p.exists():
        known = sorted(q.stem for q in NOTEBOOKS.glob("*.ipynb"))
        raise FileNotFoundError(f"no notebook {p}; known notebooks: {known}")
    return p
