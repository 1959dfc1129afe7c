"""The package layout's one import rule (docs/architecture.md): ``pipelines`` may import anything;
``core``, ``data``, ``generative`` and ``grading`` never import ``pipelines``; ``core`` imports
nothing else from discnb; and no module imports discnb code inside a function (a local import that
only dodges a cycle means a function sits in the wrong folder)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "discnb"
LAYERS = ("core", "data", "generative", "grading", "pipelines")


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def discnb_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported discnb module, line, inside a function?) for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path).split(".")
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
        me = module_name(path)
        mine = layer_of(me)
        for name, line, in_func in discnb_imports(path):
            where = f"{path.relative_to(root.parent)}:{line} imports {name}"
            theirs = layer_of(name)
            if in_func:
                bad.append(f"{where} inside a function")
            if mine in ("core", "data", "generative", "grading") and theirs == "pipelines":
                bad.append(f"{where}: {mine} must not import pipelines")
            if mine == "core" and theirs != "core":
                bad.append(f"{where}: core imports nothing else from discnb")
    return bad


def test_every_module_sits_in_a_layer():
    loose = sorted(p.name for p in PKG.glob("*.py") if p.name not in ("__init__.py", "__main__.py", "plots.py", "generate.py"))
    # generate.py: the `python -m discnb.generate` command, argument parsing only
    assert not loose, f"modules outside core/data/generative/grading/pipelines: {loose}"


def test_import_rule_holds():
    assert violations() == []


@pytest.mark.parametrize("case, source, expect", [
    ("core/x.py", "from discnb.data import sicap\n", "core imports nothing else"),
    ("grading/x.py", "from discnb.pipelines import mil\n", "must not import pipelines"),
    ("generative/x.py", "def f():\n    from discnb.core import paths\n", "inside a function"),
    ("data/x.py", "from ..pipelines.prep import read_index\n", "must not import pipelines"),
])
def test_import_rule_catches_a_violation(tmp_path, monkeypatch, case, source, expect):
    """The checker itself fails on each kind of violation (so the rule test can fail)."""
    root = tmp_path / "discnb"
    f = root / case
    f.parent.mkdir(parents=True)
    f.write_text(source)
    monkeypatch.setattr(__import__(__name__), "PKG", root)
    found = violations(root)
    assert any(expect in v for v in found), found
