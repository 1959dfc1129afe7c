"""The package stands without its notebooks: ``discnb`` installed from its wheel alone checks every
stage's parameters, answers every stage's ``python -m discnb.pipelines.<stage> --help``, trains a
tiny LDM and builds every registered generator, with any read under a ``notebooks`` folder (or of
an ``.ipynb``) refused. A second run, on an install whose parameter check reads the notebook again,
shows that such a read is seen."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from discnb.core import paths

TESTS = Path(__file__).resolve().parent

# Runs in a fresh interpreter on the copy: argv = tmp folder, repository root (for its params/ files).
SCRIPT = r'''
import contextlib, io, json, runpy, shutil, sys
from pathlib import Path

tmp, repo = Path(sys.argv[1]), Path(sys.argv[2])
seen = []


def refuse_notebooks(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes, Path)):
        p = Path(args[0].decode() if isinstance(args[0], bytes) else args[0])
        if "notebooks" in p.parts or p.suffix == ".ipynb":
            seen.append(str(p))
            raise RuntimeError(f"read {p}: the package must not need notebooks/")


sys.addaudithook(refuse_notebooks)

import discnb
from discnb.core import params, paths
assert Path(paths.__file__).is_relative_to(tmp / "pkg"), paths.__file__
assert not paths.NOTEBOOKS.exists(), paths.NOTEBOOKS


def main_of(module, *argv):
    """``python -m module argv...`` in this interpreter: (exit code, stdout)."""
    out, old = io.StringIO(), sys.argv
    sys.argv = [module, *argv]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv = old
    return code, out.getvalue()


# every stage's parameters: the defaults, and each profile's file through the command line
for name in params.SCHEMAS:
    assert params.validate(name, {}).profile == "smoke"
    for profile in ("demo", "paper"):
        assert params.main(["check", name, str(repo / "params" / profile / f"{name}.yaml")]) == 0, (name, profile)
print("params checked:", sorted(params.SCHEMAS))

# every stage's command line (and python -m discnb.generate)
files = [tmp / "pkg" / "discnb" / "generate.py", *(tmp / "pkg" / "discnb" / "pipelines").glob("*.py")]
mains = sorted(".".join(p.relative_to(tmp / "pkg").with_suffix("").parts)
               for p in files if "__name__ == \"__main__\"" in p.read_text())
for module in mains:
    code, text = main_of(module, "--help")
    assert code == 0 and "usage:" in text, (module, code, text[-500:])
print("--help:", mains)

# every generator, on a tiny LDM trained here; SD-DISC(-CoTrain) = SD fine-tuned for 0 steps
import numpy as np
from ldm_fixture import trained_generators
from discnb.generative import generators

ctx = generators.GeneratorContext(ldm_dir=trained_generators(tmp), image_size=32, steps=2, batch_size=2)
masks = np.zeros((1, 32, 32), np.uint8)
for name in generators.available():
    gen, key = generators.build_generator(name, ctx)
    labels = {"slide_labels": np.array([[1, 1]])} if gen.needs_slide_labels else {}
    assert gen.generate(masks, [0], **labels).shape == (1, 32, 32, 3), name
print("generators built:", generators.available())
assert not seen, seen
print("no notebook read")
# every module came from the install (an editable install of the repository must not fill in for it)
elsewhere = sorted(n for n, m in sys.modules.items()
                   if n.split(".")[0] == "discnb" and not Path(m.__file__).is_relative_to(tmp / "pkg"))
assert not elsewhere, elsewhere
'''


def install_package(tmp_path: Path) -> Path:
    """The package as pip installs it: a wheel built from ``pyproject.toml`` and ``discnb/`` alone,
    unpacked into ``tmp_path/pkg`` (no notebooks/, params/ or anything else beside it)."""
    src = tmp_path / "src"
    shutil.copytree(paths.REPO / "discnb", src / "discnb", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(paths.REPO / f, src / f)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w",
                    str(tmp_path / "wheel"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").glob("discnb-*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path / "pkg")
    return tmp_path / "pkg"


def run_without_notebooks(tmp_path: Path, pkg: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pkg), str(TESTS)]), "DISCNB_OUTPUTS": str(tmp_path / "out"),
           "DISCNB_FIGURES": str(tmp_path / "fig"), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(paths.REPO)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_package_runs_without_its_notebooks(tmp_path):
    r = run_without_notebooks(tmp_path, install_package(tmp_path))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "generators built: ['SD', 'SD-DISC', 'SD-DISC-CoTrain', 'SD-SC', 'SD-tile', 'SD-tile+slide']" in r.stdout
    assert re.search(r"--help: \[.*'discnb.pipelines.train_ldm'", r.stdout) and "no notebook read" in r.stdout


def test_a_notebook_read_is_seen(tmp_path):
    """The same run on an install whose parameter check reads the notebook again fails, naming it."""
    pkg = install_package(tmp_path)
    f = pkg / "discnb" / "core" / "params.py"
    text = f.read_text()
    planted = "    try:\n        return SCHEMAS[name]\n"  # in params.schema, which every check goes through
    assert planted in text
    f.write_text(text.replace(planted, "    paths.notebook_path(name).read_text()\n" + planted))
    r = run_without_notebooks(tmp_path, pkg)
    assert r.returncode != 0, r.stdout[-2000:]
    assert re.search(r"RuntimeError: read \S*/notebooks\S*: the package must not need notebooks/|"
                     r"FileNotFoundError: no notebook \S*/notebooks/00_data_prep.ipynb", r.stderr), r.stderr[-2000:]
