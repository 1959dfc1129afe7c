"""The package layout's import rules (docs/architecture.md).

The layers, lowest first: ``core`` < ``data`` < ``generative`` < ``grading`` < ``pipelines``. A module
imports discnb code only from its own layer and the layers below it, so:

- ``core`` imports nothing else from discnb;
- ``data`` (datasets, augmentations, image metrics) never imports ``generative``, ``grading`` or ``pipelines``;
- ``grading`` may import ``generative`` (the judge reconstructs tiles with the first stage, adherence draws
  masks as SD-SC does), never the other way round: ``generative`` never imports ``grading``;
- nothing below ``pipelines`` imports ``pipelines``;
- a pipeline module never imports another pipeline module: each is one notebook's leaf, and what two
  stages share lives below ``pipelines``;
- no module imports discnb code inside a function (a local import that only dodges a cycle means a
  function sits in the wrong folder).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "discnb"
LAYERS = ("core", "data", "generative", "grading", "pipelines")  # lowest first


def module_name(path: Path, root: Path = PKG) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def discnb_imports(path: Path, root: Path = PKG) -> list[tuple[str, int, bool]]:
    """(imported discnb module, line, inside a function?) for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path, root).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    out = []

    def visit(node, in_func):
        for child in ast.iter_child_nodes(node):
            local = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_func) for a in child.names if a.name.split(".")[0] == "discnb")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = ".".join(package[:len(package) - child.level + 1] + ([child.module] if child.module else []))
                else:
                    base = child.module or ""
                if base.split(".")[0] == "discnb":
                    for a in child.names:  # `from discnb.x import y` may name a module y or an object of x
                        out.append((f"{base}.{a.name}", child.lineno, in_func))
            visit(child, local)

    visit(tree, False)
    return out


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def violations(root: Path = PKG) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        me = module_name(path, root)
        mine = layer_of(me)
        for name, line, in_func in discnb_imports(path, root):
            where = f"{path.relative_to(root.parent)}:{line} imports {name}"
            theirs = layer_of(name)
            if in_func:
                bad.append(f"{where} inside a function")
            if mine is None or theirs is None:
                continue
            if mine == "core" and theirs != "core":
                bad.append(f"{where}: core imports nothing else from discnb")
            elif theirs == "pipelines" and mine != "pipelines":
                bad.append(f"{where}: {mine} must not import pipelines")
            elif mine == "generative" and theirs == "grading":
                bad.append(f"{where}: generative must not import grading (grading may import generative, not back)")
            elif LAYERS.index(theirs) > LAYERS.index(mine):
                bad.append(f"{where}: {mine} must not import the layer above it, {theirs}")
            elif mine == theirs == "pipelines" and me.split(".")[:3] != name.split(".")[:3]:
                bad.append(f"{where}: a pipeline must not import another pipeline (move what they share below)")
    return bad


def test_every_module_sits_in_a_layer():
    loose = sorted(p.name for p in PKG.glob("*.py") if p.name not in ("__init__.py", "__main__.py", "plots.py", "generate.py"))
    # generate.py: the `python -m discnb.generate` command, argument parsing only
    assert not loose, f"modules outside core/data/generative/grading/pipelines: {loose}"


def test_import_rule_holds():
    assert violations() == []


@pytest.mark.parametrize("case, source, expect", [
    ("core/x.py", "from discnb.data import sicap\n", "core imports nothing else"),
    ("grading/x.py", "from discnb.pipelines import transmil_sweep\n", "must not import pipelines"),
    ("generative/x.py", "def f():\n    from discnb.core import paths\n", "inside a function"),
    ("data/x.py", "from ..pipelines.prep import read_index\n", "must not import pipelines"),
    ("pipelines/x.py", "from discnb.pipelines import train_ldm\n", "a pipeline must not import another pipeline"),
    ("pipelines/x.py", "from .prep import read_index\n", "a pipeline must not import another pipeline"),
    ("pipelines/x.py", "import discnb.pipelines.prep\n", "a pipeline must not import another pipeline"),
    ("generative/x.py", "from discnb.grading import metrics\n", "generative must not import grading"),
    ("generative/x.py", "from discnb.grading.metrics import kid\n", "generative must not import grading"),
    ("data/x.py", "from discnb.generative.autoencoder import encode\n", "data must not import the layer above it, generative"),
    ("data/x.py", "import discnb.grading.judge\n", "data must not import the layer above it, grading"),
])
def test_import_rule_catches_a_violation(tmp_path, case, source, expect):
    """The checker itself fails on each kind of violation (so the rule test can fail)."""
    root = tmp_path / "discnb"
    f = root / case
    f.parent.mkdir(parents=True)
    f.write_text(source)
    found = violations(root)
    assert any(expect in v for v in found), found


def test_import_rule_allows_what_the_layers_allow(tmp_path):
    """Imports downwards and within a layer (but across pipelines) pass: the planted violations above
    fail for their rule, not because the checker rejects everything."""
    root = tmp_path / "discnb"
    files = {"core/a.py": "from discnb.core import b\n",
             "data/a.py": "from discnb.core import paths\nfrom discnb.data import sicap\n",
             "generative/a.py": "from discnb.data.augment import dihedral\nfrom discnb.generative import ldm\n",
             "grading/a.py": "from discnb.generative import autoencoder as ae\nfrom discnb.grading import metrics\n",
             "pipelines/a.py": "from discnb.grading import judge\nfrom discnb import plots\nfrom discnb.pipelines.a import x\n"}
    for rel, src in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(src)
    assert violations(root) == []
