"""Parameters are data.

Each notebook's cell tagged ``parameters`` holds the smoke defaults as plain literals, one per
line with a comment. That cell is the schema: ``params/<profile>/NN_name.yaml`` may only override
keys it defines, with values of the same type; an empty or null value is an error naming the key
unless the default is None (or the key is in :data:`NULLABLE`). papermill only *warns* about unknown parameters,
so the check happens here, both before a notebook runs (``python -m discnb.core.params check``, used
by ``run_all.sh``) and inside the notebook's setup cell (:func:`from_globals`).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from discnb.core import paths


class ParamError(ValueError):
    """A parameter file or override that does not fit the notebook's parameters cell."""


class _Empty:
    """What ``key:`` with nothing after it loads as (plain YAML makes it None, like ``null``).

    An empty value is almost always a value someone forgot to type; told apart from an explicit
    ``null`` it can be named as such, and it never reaches the code (pathlib or numpy would fail
    there with a bare TypeError, after earlier steps wrote their files).
    """

    def __repr__(self) -> str:
        return "<empty>"


EMPTY = _Empty()

# Parameters (leaf names, at any nesting) whose None means something although their default is
# not None. Any other key with a non-None default must not be None: the code would fail on it.
NULLABLE = {
    "max_grad_norm": "no gradient clipping (discnb.core.train.TrainConfig; the LDM recipe)",
}


class _Loader(yaml.SafeLoader):
    """safe_load, except that an empty scalar loads as :data:`EMPTY` instead of None."""


def _construct_null(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    return EMPTY if node.value == "" else None


_Loader.add_constructor("tag:yaml.org,2002:null", _construct_null)


class Params(dict):
    """A dict of validated parameters that also allows ``P.name``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no parameter {name!r}; known: {sorted(self)}") from None


def _parameters_cell(nb_path: Path) -> str:
    nb = json.loads(Path(nb_path).read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ParamError(f"{nb_path}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    src = cells[0]["source"]
    return "".join(src) if isinstance(src, list) else src


def notebook_defaults(name: str) -> dict[str, Any]:
    """The defaults (= schema) of notebook ``name``, read from its parameters cell.

    The cell may contain only ``name = <literal>`` assignments (and comments): anything computed
    there would not be recomputed after papermill injects overrides.
    """
    nb_path = paths.notebook_path(name)
    tree = ast.parse(_parameters_cell(nb_path))
    out: dict[str, Any] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            raise ParamError(f"{nb_path}: parameters cell line {node.lineno} is not `name = literal`")
        try:
            out[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            raise ParamError(f"{nb_path}: parameter {node.targets[0].id!r} (line {node.lineno}) "
                             "is not a plain literal; move derived values to the setup cell") from None
    return out


def _typename(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _check_unset(name: str, value: Any, default: Any) -> None:
    """An empty or null ``value`` is an error naming ``name`` unless None is allowed there."""
    if value is EMPTY:
        raise ParamError(f"parameter {name!r} is empty (default {default!r}): give it a "
                         f"{_typename(default)} value, or delete the line to keep the default")
    if name.rsplit(".", 1)[-1] not in NULLABLE:
        raise ParamError(f"parameter {name!r} is null (default {default!r}): it must be {_typename(default)}; "
                         "delete the line to keep the default")


def _check(key: str, value: Any, default: Any, where: str) -> Any:
    """Check one value against its default's type; return it (ints widened to float)."""
    if default is None:
        # None defaults mean "unset / optional": any literal is allowed (empty means None).
        return None if value is EMPTY else _no_empty_items(f"{where}{key}", value)
    if value is None or value is EMPTY:
        _check_unset(f"{where}{key}", value, default)
        return None
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        value = _no_empty_items(f"{where}{key}", list(value)) if ok else value
    elif isinstance(default, dict):
        if not isinstance(value, dict):
            ok = False
        else:
            return _validate(value, default, f"{where}{key}.")
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ParamError(f"parameter {where}{key!r} must be {_typename(default)} "
                         f"(default {default!r}), got {_typename(value)} {value!r}")
    return value


def _no_empty_items(name: str, value: Any) -> Any:
    """``value`` unless a list item or mapping value inside it is empty (``- `` with nothing after)."""
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for v in items:
        if v is EMPTY:
            raise ParamError(f"parameter {name!r} has an empty item: {value!r}")
        _no_empty_items(name, v)
    return value


def _validate(values: dict, defaults: dict, where: str = "") -> dict:
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ParamError(f"unknown parameter(s) {[where + u for u in unknown]}; "
                         f"known {where or ''}keys: {sorted(defaults)}")
    out = dict(defaults)
    for k, v in values.items():
        out[k] = _check(k, v, defaults[k], where)
    return out


def validate(name: str, overrides: dict) -> Params:
    """Defaults of notebook ``name`` updated by ``overrides``, checked key by key."""
    try:
        return Params(_validate(dict(overrides), notebook_defaults(name)))
    except ParamError as e:
        raise ParamError(f"{name}: {e}") from None


def load_yaml(path: str | Path) -> dict:
    p = paths.resolve(path)
    try:
        data = yaml.load(p.read_text(), Loader=_Loader)
    except FileNotFoundError:
        raise ParamError(f"parameter file {p} does not exist") from None
    except yaml.YAMLError as e:
        raise ParamError(f"parameter file {p} is not valid YAML: {e}") from None
    if data is None or data is EMPTY:  # an empty file, or only comments / "---"
        data = {}
    if not isinstance(data, dict):
        raise ParamError(f"parameter file {p} must hold a mapping of name: value, got {_typename(data)}")
    return data


def check_file(name: str, path: str | Path) -> Params:
    """Validate a parameter file against notebook ``name``; errors name the file."""
    try:
        return validate(name, load_yaml(path))
    except ParamError as e:
        raise ParamError(f"{path}: {e}") from None


def injected_names(g: dict) -> set[str]:
    """Names papermill injected into this kernel.

    papermill executes its overrides as a cell whose source starts with ``# Parameters``;
    IPython keeps every executed cell's source in ``In``. Reading that (rather than guessing
    from globals) means re-running cells in JupyterLab never looks like an injection.
    """
    names: set[str] = set()
    for src in g.get("In", []) or []:
        if isinstance(src, str) and src.lstrip().startswith("# Parameters"):
            try:
                tree = ast.parse(src)
            except SyntaxError:
                continue
            names |= {t.id for node in tree.body if isinstance(node, ast.Assign)
                      for t in node.targets if isinstance(t, ast.Name)}
    return names


def from_globals(name: str, g: dict) -> Params:
    """Collect a running notebook's parameters from its globals and validate them.

    Parameters are the names of the parameters cell. A name papermill injected that the cell
    does not define (a typo in a YAML file or a ``-p`` flag) is an error, not a warning.
    """
    defaults = notebook_defaults(name)
    stray = sorted(injected_names(g) - set(defaults))
    if stray:
        raise ParamError(f"{name}: unknown parameter(s) {stray}; known: {sorted(defaults)}")
    missing = [k for k in defaults if k not in g]
    if missing:
        raise ParamError(f"{name}: parameters {missing} are not defined: run the parameters cell first")
    return validate(name, {k: g[k] for k in defaults})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m discnb.core.params",
                                 description="Check parameter files against notebooks' parameters cells.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="validate NOTEBOOK_NAME against a YAML file")
    c.add_argument("notebook", help="notebook name or path, e.g. 00_data_prep or notebooks/00_data_prep.ipynb")
    c.add_argument("yaml")
    a = ap.parse_args(argv)
    name = Path(a.notebook).stem
    try:
        check_file(name, a.yaml)
    except (ParamError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
