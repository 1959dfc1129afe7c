"""The repository's own hygiene: dependency lists agree, notebooks carry no outputs."""

from __future__ import annotations

import json
import re
import tomllib

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


def test_torch_pins_agree():
    env = (paths.REPO / "environment.yml").read_text()
    script = (paths.REPO / "run_all.sh").read_text()
    for pin in ("torch==2.14.1", "torchvision==0.29.1"):
        assert pin in env and pin in script


def test_notebooks_are_committed_without_outputs():
    for nb_path in paths.NOTEBOOKS.glob("*.ipynb"):
        nb = json.loads(nb_path.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3", nb_path
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, \
                    f"{nb_path.name} has outputs: run `nbstripout {nb_path}`"


def test_ci_runs_the_readme_test_command():
    readme = (paths.REPO / "README.md").read_text()
    ci = (paths.REPO / ".ci" / "run").read_text()
    assert "./run_all.sh test" in readme and "./run_all.sh test" in ci
