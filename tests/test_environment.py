"""The repository's own hygiene: dependency lists agree, notebooks carry no outputs, and ``run_all.sh`` does
what the README and CI say it does.

``run_all.sh`` is run for real, in a copy of its inputs (the script, ``pyproject.toml``, ``params/``, empty
notebooks of the same names, ``.ci/run``), with a fake ``python``/``python3`` first on ``PATH`` that writes
down every command it is asked to run and succeeds: seconds, no install, no notebook run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from discnb.core import paths


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    pp = tomllib.loads((paths.REPO / "pyproject.toml").read_text())["project"]
    want = {_name(r) for r in pp["dependencies"] + pp["optional-dependencies"]["dev"]}
    env = yaml.safe_load((paths.REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    have = {_name(r) for r in pip if not r.startswith("-e")}
    assert want == have, f"only in pyproject: {want - have}; only in environment.yml: {have - want}"


def test_notebooks_are_committed_without_outputs():
    for nb_path in paths.NOTEBOOKS.glob("*.ipynb"):
        nb = json.loads(nb_path.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3", nb_path
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, \
                    f"{nb_path.name} has outputs: run `nbstripout {nb_path}`"


# a python that writes its arguments (tab-separated, one call a line) and succeeds; as python3 it makes the .venv
FAKE_PYTHON = """#!/usr/bin/env bash
{ printf '%s\t' "$@"; printf '\\n'; } >> "$FAKE_LOG"
if [ "${1:-}" = -m ] && [ "${2:-}" = venv ]; then
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python"
fi
exit 0
"""


def _calls(log: Path) -> list[list[str]]:
    return [ln.rstrip("\t").split("\t") for ln in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def run_all(tmp_path):
    """``run(args, venv=True)`` runs ``run_all.sh ARGS`` (or ``.ci/run`` with ``args=None``) in a copy of
    its inputs; returns (completed process, the fake python's calls). ``venv=True``: as from an active
    virtualenv that has discnb; ``False``: no environment, so the script makes ``.venv`` and installs."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for f in ("run_all.sh", "pyproject.toml"):
        shutil.copy2(paths.REPO / f, repo / f)
    shutil.copytree(paths.REPO / "params", repo / "params")
    shutil.copytree(paths.REPO / ".ci", repo / ".ci")
    (repo / "notebooks").mkdir()
    for nb in paths.NOTEBOOKS.glob("*.ipynb"):
        (repo / "notebooks" / nb.name).write_text("{}")
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("python", "python3"):
        (fake / name).write_text(FAKE_PYTHON)
        (fake / name).chmod(0o755)
    log = tmp_path / "calls.log"

    def run(args: list[str] | None, venv: bool = True):
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
        env |= {"PATH": f"{fake}:/usr/bin:/bin", "FAKE_LOG": str(log)} | ({"VIRTUAL_ENV": str(fake)} if venv else {})
        log.unlink(missing_ok=True)
        cmd = [str(repo / ".ci" / "run")] if args is None else [str(repo / "run_all.sh"), *args]
        r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=60)
        return r, _calls(log)
    return run


def _pytest_call(calls: list[list[str]]) -> list[str]:
    runs = [c for c in calls if c[:2] == ["-m", "pytest"]]
    assert len(runs) == 1, calls
    return runs[0]


def test_run_all_installs_the_torch_pins_of_environment_yml(run_all):
    env = yaml.safe_load((paths.REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = sorted(r for r in pip if _name(r) in ("torch", "torchvision"))
    assert len(pins) == 2 and all("==" in p for p in pins), pins
    r, calls = run_all(["test"], venv=False)
    assert r.returncode == 0, r.stderr
    assert calls[0] == ["-m", "venv", ".venv"], calls
    installs = [c[3:] for c in calls if c[:3] == ["-m", "pip", "install"]]
    assert sorted(installs[1]) == pins, f"run_all.sh installs {installs[1]}, environment.yml pins {pins}"
    assert installs[2] == ["-e", ".[dev]"]
    _pytest_call(calls)  # and then runs the tests in that .venv


def test_readme_and_ci_commands_run_what_they_say(run_all):
    """Every ``./run_all.sh`` line of the README's code blocks runs (fake python) and exits 0; the test
    command runs pytest over tests/ and the notebooks under nbval; the default command runs the notebooks
    on the shipped models (no 01/02); CI (``.ci/run``) runs the README's test command."""
    readme = (paths.REPO / "README.md").read_text()
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", readme, flags=re.M | re.S)
    commands = [shlex.split(ln, comments=True) for b in blocks for ln in b.splitlines()
                if ln.startswith("./run_all.sh")]
    assert ["./run_all.sh"] in commands and ["./run_all.sh", "test"] in commands, commands
    notebooks = sorted(p.stem for p in paths.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    for cmd in commands:
        r, calls = run_all(cmd[1:])
        assert r.returncode == 0, f"{shlex.join(cmd)}: {r.stderr}"
        if cmd == ["./run_all.sh", "test"]:
            test = _pytest_call(calls)
            assert test[2:4] == ["tests", "notebooks"] and {"--nbval-lax", "--nbval-current-env"} <= set(test)
        if cmd == ["./run_all.sh"]:
            ran = [Path(a).stem for c in calls if c[:2] == ["-m", "papermill"] for a in c if a.startswith("notebooks/")]
            assert ran == [n for n in notebooks if n[:2] not in ("01", "02")], ran
            assert ["-m", "discnb.grading.shipped", "restore", "--profile", "demo"] in calls
    r, ci = run_all(None)
    assert r.returncode == 0, r.stderr
    assert _pytest_call(ci) == _pytest_call(run_all(["test"])[1])


def test_run_all_help_and_bad_options(run_all):
    r, calls = run_all(["--help"])
    assert r.returncode == 0 and "./run_all.sh test" in r.stdout and not calls
    r, calls = run_all(["--profile", "nope"])
    assert r.returncode == 2 and "--profile must be smoke, demo or paper" in r.stderr and not calls
    r, calls = run_all(["--train", "--shipped"])
    assert r.returncode == 2 and not calls
