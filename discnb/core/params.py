"""Parameters are data.

Every stage's parameters (names, types, allowed values, defaults) are declared in
:mod:`discnb.core.stage_params`; each notebook's cell tagged ``parameters`` holds the same defaults
as plain literals (a test keeps the two equal). ``params/<profile>/NN_name.yaml`` may only override
keys the stage declares, with values of the declared type (and allowed values: a ``Literal``, or a
:class:`~discnb.core.stage_params.Check` such as ``POSITIVE``); an empty or null value is an error
naming the key unless the default is None or the type allows None (``float | None``). papermill only
*warns* about unknown parameters, so the check happens here, both before a notebook runs
(``python -m discnb.core.params check``, used by ``run_all.sh``) and inside the notebook's setup cell
(:func:`from_globals`).
"""

from __future__ import annotations

import argparse
import ast
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from discnb.core import paths
from discnb.core.stage_params import SCHEMAS, Section


class ParamError(ValueError):
    """A parameter file or override that does not fit the stage's declared parameters."""


class _Empty:
    """What ``key:`` with nothing after it loads as (plain YAML makes it None, like ``null``).

    An empty value is almost always a value someone forgot to type; told apart from an explicit
    ``null`` it can be named as such, and it never reaches the code (pathlib or numpy would fail
    there with a bare TypeError, after earlier steps wrote their files).
    """

    def __repr__(self) -> str:
        return "<empty>"


EMPTY = _Empty()


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


def schema(name: str) -> type[Section]:
    """The parameters of stage (notebook) ``name``."""
    try:
        return SCHEMAS[name]
    except KeyError:
        raise ParamError(f"no stage {name!r}; known: {sorted(SCHEMAS)}") from None


def defaults(name: str) -> dict[str, Any]:
    """The defaults of stage ``name`` (the smoke profile; its notebook's parameters cell)."""
    return schema(name).defaults()


def _typename(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _check_unset(name: str, value: Any, default: Any) -> None:
    """An empty ``value``, or a null one where the type does not allow None, is an error naming ``name``."""
    if value is EMPTY:
        raise ParamError(f"parameter {name!r} is empty (default {default!r}): give it a "
                         f"{_typename(default)} value, or delete the line to keep the default")
    raise ParamError(f"parameter {name!r} is null (default {default!r}): it must be {_typename(default)}; "
                     "delete the line to keep the default")


def _split(tp: Any) -> tuple[Any, tuple, bool]:
    """(type without ``Annotated`` and ``None``, its checks, whether None is allowed)."""
    checks: tuple = ()
    if typing.get_origin(tp) is typing.Annotated:
        tp, checks = tp.__origin__, tp.__metadata__
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"unsupported parameter type {tp!r}: only `X | None` unions")
        base, more, _ = _split(rest[0])
        return base, checks + more, True
    return tp, checks, False


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return f"one of {list(typing.get_args(tp))}"
    if isinstance(tp, type) and issubclass(tp, Section):
        return "dict"
    return getattr(typing.get_origin(tp), "__name__", None) or getattr(tp, "__name__", str(tp))


def _check(key: str, value: Any, tp: Any, default: Any, where: str) -> Any:
    """Check one value against its declared type; return it (ints widened to float)."""
    base, checks, nullable = _split(tp)
    if default is None:
        # None defaults mean "unset / optional": empty or null means None.
        if value is None or value is EMPTY:
            return None
    elif value is EMPTY or (value is None and not nullable):
        _check_unset(f"{where}{key}", value, default)
    elif value is None:
        return None
    return _holds(_conform(value, base, where, key, default), checks, f"{where}{key!r}", f" (default {default!r})")


def _holds(value: Any, checks: tuple, label: str, note: str = "") -> Any:
    """``value`` if it passes every :class:`~discnb.core.stage_params.Check` in ``checks``."""
    for c in checks:
        if not c.holds(value):
            raise ParamError(f"parameter {label} must be {c.says}{note}, got {value!r}")
    return value


def _conform(value: Any, tp: Any, where: str, key: str, default: Any, item: int | None = None) -> Any:
    """``value`` if it is of type ``tp`` (a list of it, a section of it), as that type; else a ParamError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return _no_empty_items(f"{where}{key}", value)
    if origin is Literal:
        ok = any(value == a and type(value) is type(a) for a in typing.get_args(tp))
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    elif origin is list:
        ok = isinstance(value, (list, tuple))
        if ok:
            return _items(list(value), typing.get_args(tp)[0], where, key)
    elif isinstance(tp, type) and issubclass(tp, Section):
        ok = isinstance(value, dict)
        if ok:
            return _validate(value, tp, f"{where}{key}.")
    else:
        raise TypeError(f"parameter {where}{key}: unsupported type {tp!r} in discnb.core.stage_params")
    if not ok:
        what = f"item {item} must be {_describe(tp)}" if item is not None else \
            f"must be {_describe(tp)} (default {default!r})"
        raise ParamError(f"parameter {where}{key!r} {what}, got {_typename(value)} {value!r}")
    return value


def _items(value: list, tp: Any, where: str, key: str) -> list:
    """A list parameter's items, each checked against ``tp``; an empty item is named as such."""
    _no_empty_items(f"{where}{key}", value)
    base, checks, nullable = _split(tp)
    out = []
    for i, v in enumerate(value):
        if v is None and nullable:
            out.append(None)
            continue
        out.append(_holds(_conform(v, base, where, key, None, item=i), checks, f"{where}{key!r} item {i}"))
    return out


def _no_empty_items(name: str, value: Any) -> Any:
    """``value`` unless a list item or mapping value inside it is empty (``- `` with nothing after)."""
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for v in items:
        if v is EMPTY:
            raise ParamError(f"parameter {name!r} has an empty item: {value!r}")
        _no_empty_items(name, v)
    return value


def _validate(values: dict, section: type[Section], where: str = "") -> dict:
    declared = section.types()
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise ParamError(f"unknown parameter(s) {[where + u for u in unknown]}; "
                         f"known {where or ''}keys: {sorted(declared)}")
    out = section.defaults()
    for k, v in values.items():
        out[k] = _check(k, v, declared[k], out[k], where)
    return out


def validate(name: str, overrides: dict) -> Params:
    """Defaults of stage ``name`` updated by ``overrides``, checked key by key."""
    try:
        return Params(_validate(dict(overrides), schema(name)))
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
    """Validate a parameter file against stage ``name``; errors name the file."""
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

    Parameters are the names the stage declares (:func:`schema`). A name papermill injected that
    the stage does not declare (a typo in a YAML file or a ``-p`` flag) is an error, not a warning.
    """
    declared = defaults(name)
    stray = sorted(injected_names(g) - set(declared))
    if stray:
        raise ParamError(f"{name}: unknown parameter(s) {stray}; known: {sorted(declared)}")
    missing = [k for k in declared if k not in g]
    if missing:
        raise ParamError(f"{name}: parameters {missing} are not defined: run the parameters cell first")
    return validate(name, {k: g[k] for k in declared})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m discnb.core.params",
                                 description="Check parameter files against the stages' parameters "
                                             "(discnb.core.stage_params).")
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
