"""Parameters: each stage's schema (discnb.core.stage_params) equals its notebook's parameters
cell; files and injections are checked against it."""

from __future__ import annotations

import ast
import json
import shutil
import typing
from typing import Any

import pytest
import yaml

from discnb.core import notebook

from discnb.core import params

from discnb.core import paths
from discnb.core import stage_params as sp
from discnb.core.stage_params import Section

NOTEBOOKS = sorted(p.stem for p in paths.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def cell_values(nb_path) -> dict[str, Any]:
    """The literals of a notebook's cell tagged ``parameters`` (nothing computed: papermill would
    not recompute it after injecting overrides)."""
    nb = json.loads(nb_path.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{nb_path}: expected exactly one cell tagged 'parameters', found {len(cells)}"
    out = {}
    for node in ast.parse("".join(cells[0]["source"])).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), \
            f"{nb_path}: parameters cell line {node.lineno} is not `name = literal`"
        out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def disagreements(cell: Any, schema: Any, where: str = "") -> list[str]:
    """Where a cell's literal and a schema's default differ: names (and their order), types, values."""
    if isinstance(schema, dict) and isinstance(cell, dict):
        if list(cell) != list(schema):
            return [f"{where or 'top level'}: cell names {list(cell)} != schema names {list(schema)}"]
        return [d for k in schema for d in disagreements(cell[k], schema[k], f"{where}{k}.")]
    if isinstance(schema, list) and isinstance(cell, list) and len(cell) == len(schema):
        return [d for i, (c, s) in enumerate(zip(cell, schema)) for d in disagreements(c, s, f"{where}{i}.")]
    if type(cell) is not type(schema) or cell != schema:
        return [f"{where.rstrip('.')}: cell {cell!r} ({type(cell).__name__}) != schema {schema!r} "
                f"({type(schema).__name__})"]
    return []


def test_every_notebook_has_a_schema():
    assert NOTEBOOKS == sorted(sp.SCHEMAS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_cell_equals_the_schema(name):
    cell = cell_values(paths.notebook_path(name))
    assert disagreements(cell, params.defaults(name)) == []
    assert params.validate(name, cell) == params.defaults(name)  # the cell's values pass their own schema


@pytest.mark.parametrize("old,new,says", [
    ('image_size = 64 ', 'image_size = 65 ', "image_size: cell 65 (int) != schema 64 (int)"),
    ('image_size = 64 ', 'image_size = 64.0 ', "image_size: cell 64.0 (float) != schema 64 (int)"),
    ('image_size = 64 ', 'imagesize = 64 ', "cell names"),
    ('seed = 0  #', 'seeed = 0  #', "cell names"),
])
def test_a_cell_that_disagrees_with_its_schema_is_seen(tmp_path, old, new, says):
    nb = tmp_path / "00_data_prep.ipynb"
    text = paths.notebook_path("00_data_prep").read_text()
    assert old in text
    nb.write_text(text.replace(old, new, 1))
    found = disagreements(cell_values(nb), params.defaults("00_data_prep"))
    assert found and says in found[0], found


def test_a_nested_or_reordered_disagreement_is_seen(monkeypatch):
    cell = cell_values(paths.notebook_path("01_train_ldm"))
    cell["sd"]["max_grad_norm"] = 1  # int where the schema has 1.0
    assert disagreements(cell, params.defaults("01_train_ldm")) == \
        ["sd.max_grad_norm: cell 1 (int) != schema 1.0 (float)"]
    cell = cell_values(paths.notebook_path("01_train_ldm"))
    cell = {"seed": cell.pop("seed"), **cell}
    assert "cell names" in disagreements(cell, params.defaults("01_train_ldm"))[0]


def test_defaults_come_from_the_schema():
    d = params.defaults("00_data_prep")
    assert d["profile"] == "smoke" and d["dataset"] == "demo" and isinstance(d["validity_check"], bool)
    d["profile"] = "demo"  # a copy: the schema's defaults do not change
    assert params.defaults("00_data_prep")["profile"] == "smoke"
    with pytest.raises(params.ParamError, match=r"no stage '08_x'; known: \['00_data_prep'"):
        params.defaults("08_x")


def test_unknown_key_names_key_and_known_ones():
    with pytest.raises(params.ParamError, match=r"unknown parameter\(s\) \['imgae_size'\]; known keys: .*'image_size'"):
        params.validate("00_data_prep", {"imgae_size": 128})


@pytest.mark.parametrize("key,value,msg", [
    ("image_size", "128", "must be int"),
    ("image_size", 1.5, "must be int"),
    ("image_size", True, "must be int"),
    ("validity_check", 1, "must be bool"),
    ("dataset", 3, "must be str"),
])
def test_wrong_types(key, value, msg):
    with pytest.raises(params.ParamError, match=f"{key}.*{msg}"):
        params.validate("00_data_prep", {key: value})


class _Model(Section):
    channels: list[int] = [32, 64]
    path: str | None = None


class _Nested(Section):
    lr: float = 1e-4
    model: _Model = _Model
    steps: int = 10


def test_nested_and_widening(monkeypatch):
    monkeypatch.setitem(sp.SCHEMAS, "x", _Nested)
    P = params.validate("x", {"lr": 1, "model": {"path": "a/b"}})
    assert P.lr == 1.0 and isinstance(P.lr, float) and P.model == {"channels": [32, 64], "path": "a/b"}
    with pytest.raises(params.ParamError, match=r"unknown parameter\(s\) \['model.chanels'\]"):
        params.validate("x", {"model": {"chanels": [1]}})
    with pytest.raises(params.ParamError, match="model.'channels' must be list"):
        params.validate("x", {"model": {"channels": 3}})
    with pytest.raises(AttributeError, match="no parameter 'nope'"):
        P.nope


def test_check_file_and_cli(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("profile: demo\nimage_size: 128\n")
    assert params.check_file("00_data_prep", good).image_size == 128
    bad = tmp_path / "bad.yaml"
    bad.write_text("profile: demo\nimage_sise: 128\n")
    assert params.main(["check", "notebooks/00_data_prep.ipynb", str(bad)]) == 2
    assert "bad.yaml" in capsys.readouterr().err
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(params.ParamError, match="must hold a mapping"):
        params.check_file("00_data_prep", tmp_path / "list.yaml")
    with pytest.raises(params.ParamError, match="does not exist"):
        params.check_file("00_data_prep", tmp_path / "missing.yaml")


def test_from_globals_rejects_papermill_injected_unknown_names():
    g = dict(params.defaults("00_data_prep"))
    g["In"] = ["import x", "profile = 'smoke'", "# Parameters\nprofile = \"demo\"\nimage_sise = 128\n"]
    with pytest.raises(params.ParamError, match=r"unknown parameter\(s\) \['image_sise'\]"):
        params.from_globals("00_data_prep", g)
    # a rerun in JupyterLab leaves other globals around: those are not injections
    g["In"] = ["# Parameters\nprofile = \"demo\"\n"]
    g["stats"] = {"a": 1}
    assert params.from_globals("00_data_prep", g).profile == "smoke"


@pytest.mark.parametrize("profile", ["demo", "paper"])
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_profile_file_validates(profile, name):
    P = params.check_file(name, paths.PARAMS / profile / f"{name}.yaml")
    assert P.profile == profile


def test_parameters_cells_are_commented_literals():
    for name in NOTEBOOKS:
        nb = json.loads(paths.notebook_path(name).read_text())
        cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
        for line in "".join(cell["source"]).splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                assert "  # " in line, f"{name}: parameter line without a comment: {line!r}"


def test_setup_records_params_and_provenance(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "OUTPUTS", tmp_path)
    g = dict(params.defaults("00_data_prep"))
    P, L = notebook.setup("00_data_prep", g)
    out = L.out
    assert out == tmp_path / "smoke" / "data"
    assert yaml.safe_load((out / "params.resolved.yaml").read_text()) == dict(P)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["git_commit"] and prov["packages"]["torch"] != "not installed"


def test_profiles_write_to_separate_folders():
    assert paths.output_dir("smoke", "data", create=False) != paths.output_dir("demo", "data", create=False)
    assert paths.figures_dir("demo", create=False) == paths.REPO / "figures"
    assert paths.figures_dir("smoke", create=False) == paths.REPO / "figures" / "smoke"
    with pytest.raises(ValueError, match="profile 'fast'"):
        paths.output_dir("fast")


# ------------------------------------------------------------------------------------- empty values
@pytest.mark.parametrize("text,key", [("dataset:\n", "dataset"), ("image_size:\n", "image_size"),
                                      ("dataset: null\n", "dataset"), ("image_size: ~\n", "image_size")])
def test_empty_value_is_an_error_naming_the_key(tmp_path, capsys, text, key):
    f = tmp_path / "p.yaml"
    f.write_text("profile: demo\n" + text)
    with pytest.raises(params.ParamError, match=rf"p.yaml: 00_data_prep: parameter '{key}' is (empty|null)"):
        params.check_file("00_data_prep", f)
    assert params.main(["check", "00_data_prep", str(f)]) == 2
    assert f"'{key}'" in capsys.readouterr().err


class _AE(Section):
    steps: int = 10
    path: str | None = None


class _Sd(Section):
    max_grad_norm: float | None = 1.0  # None: no clipping


class _Empties(Section):
    autoencoder: _AE = _AE
    note: Any = None
    sd: _Sd = _Sd
    channels: list[int] = [1, 2]


def test_empty_nested_value_names_the_dotted_key(tmp_path, monkeypatch):
    monkeypatch.setitem(sp.SCHEMAS, "x", _Empties)
    f = tmp_path / "p.yaml"
    f.write_text("autoencoder:\n  steps:\n")
    with pytest.raises(params.ParamError, match=r"parameter 'autoencoder.steps' is empty \(default 10\)"):
        params.check_file("x", f)
    f.write_text("autoencoder:\n")
    with pytest.raises(params.ParamError, match=r"parameter 'autoencoder' is empty"):
        params.check_file("x", f)
    f.write_text("channels: [1, ]\n")
    assert params.check_file("x", f).channels == [1]  # YAML flow lists drop a trailing comma
    f.write_text("channels:\n  - 1\n  -\n")
    with pytest.raises(params.ParamError, match=r"parameter 'channels' has an empty item"):
        params.check_file("x", f)
    # a None default is "unset / optional": empty and null both mean None there
    f.write_text("note:\nautoencoder: {path: }\n")
    P = params.check_file("x", f)
    assert P.note is None and P.autoencoder == {"steps": 10, "path": None}
    # max_grad_norm: null is the documented "no clipping"; an empty value is still a slip
    f.write_text("sd: {max_grad_norm: null}\n")
    assert params.check_file("x", f).sd == {"max_grad_norm": None}
    f.write_text("sd:\n  max_grad_norm:\n")
    with pytest.raises(params.ParamError, match=r"'sd.max_grad_norm' is empty"):
        params.check_file("x", f)


def test_none_from_an_injection_is_an_error():
    g = dict(params.defaults("00_data_prep"))
    g["dataset"] = None  # e.g. papermill -p dataset None
    with pytest.raises(params.ParamError, match=r"00_data_prep: parameter 'dataset' is null"):
        params.from_globals("00_data_prep", g)


def test_empty_document_is_no_overrides(tmp_path):
    f = tmp_path / "p.yaml"
    for text in ("", "# only a comment\n", "---\n"):
        f.write_text(text)
        assert params.check_file("00_data_prep", f).profile == "smoke"


# ------------------------------------------------------------------ allowed values, checked before a stage runs
def _constrained(section: type[Section], where: tuple = ()):
    """(path of keys, kind) of every parameter with a fixed set of values or a Check, nested ones included."""
    for k, tp in section.types().items():
        base, checks, _ = params._split(tp)
        if isinstance(base, type) and issubclass(base, Section):
            yield from _constrained(base, where + (k,))
        elif typing.get_origin(base) is typing.Literal:
            yield where + (k,), "choice"
        elif typing.get_origin(base) is list and typing.get_origin(typing.get_args(base)[0]) is typing.Literal:
            yield where + (k,), "choices"
        for c in checks:
            yield where + (k,), c.says


CONSTRAINED = [(n, keys, kind) for n in sp.SCHEMAS for keys, kind in _constrained(sp.SCHEMAS[n])]


def _nest(keys: tuple, value) -> dict:
    return {keys[0]: _nest(keys[1:], value) if len(keys) > 1 else value}


@pytest.mark.parametrize("name,keys,kind", CONSTRAINED, ids=[f"{n}:{'.'.join(k)}" for n, k, _ in CONSTRAINED])
def test_a_value_outside_its_allowed_set_is_refused(tmp_path, name, keys, kind):
    # a Check's kind is what it says ("> 0", ">= 0"): the first integer it refuses
    bad = {"choice": "no-such-value", "choices": ["no-such-value"], "> 0": 0, ">= 0": -1}[kind]
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(_nest(keys, bad)))
    label = f"{'.'.join(keys[:-1])}.{keys[-1]!r}" if len(keys) > 1 else repr(keys[0])
    says = {"choice": "must be one of", "choices": "item 0 must be one of"}.get(kind, f"must be {kind}")
    with pytest.raises(params.ParamError, match=rf"p.yaml: {name}: parameter {label} {says}"):
        params.check_file(name, f)
    assert params.main(["check", name, str(f)]) == 2


def test_the_constraints_found_include_the_known_ones():
    found = {(n, ".".join(k)) for n, k, _ in CONSTRAINED}
    assert {("00_data_prep", "on_bad_file"), ("00_data_prep", "masks"), ("00_data_prep", "image_size"),
            ("01_train_ldm", "condition"), ("01_train_ldm", "unet.prediction"), ("01_train_ldm", "judge.input"),
            ("02_sc_disc", "compare.scheduler"), ("03_tile_sets", "weights"), ("03_tile_sets", "secondary"),
            ("05_transmil_sweep", "extractor.name"), ("06_figures", "run_bench"), ("06_figures", "fig8_test_sets"),
            ("07_generate_from_masks", "dtype"), ("07_generate_from_masks", "sampler")} <= found


def test_image_size_zero_is_refused_at_check_time(tmp_path, capsys):
    f = tmp_path / "p.yaml"
    f.write_text("profile: demo\nimage_size: 0\n")
    assert params.main(["check", "notebooks/00_data_prep.ipynb", str(f)]) == 2
    assert "parameter 'image_size' must be > 0 (default 64), got 0" in capsys.readouterr().err
    f.write_text("profile: demo\non_bad_file: Skip\n")
    with pytest.raises(params.ParamError, match=r"'on_bad_file' must be one of \['error', 'skip'\] \(default 'error'\), "
                                                r"got str 'Skip'"):
        params.check_file("00_data_prep", f)


def test_a_check_on_list_items(monkeypatch):
    class Sizes(Section):
        sizes: list[sp.PositiveInt] = [1, 2]
    monkeypatch.setitem(sp.SCHEMAS, "x", Sizes)
    assert params.validate("x", {"sizes": [3]}).sizes == [3]
    with pytest.raises(params.ParamError, match=r"parameter 'sizes' item 1 must be > 0, got 0"):
        params.validate("x", {"sizes": [3, 0]})
    with pytest.raises(params.ParamError, match=r"parameter 'sizes' item 0 must be int, got float 1.5"):
        params.validate("x", {"sizes": [1.5]})


def test_fixed_sets_equal_the_ones_the_code_accepts():
    """A set declared in the schema and again where the code uses it (an upper layer, which core may
    not import) must be the same set."""
    from discnb.core import train
    from discnb.generative import ldm, sampling
    from discnb.grading import features, judge, shipped
    from discnb.pipelines import paper_figures

    def values(tp):
        return set(typing.get_args(tp))

    assert values(sp.Profile) == set(paths.PROFILES)
    assert values(sp.Scheduler) == set(sampling.SCHEDULERS)
    assert values(sp.Condition) == set(ldm.CONDITIONS)
    assert values(sp.UNet.types()["prediction"]) == set(ldm.PREDICTIONS)
    assert values(sp.Figure) == set(paper_figures.FIGURES)
    assert values(sp.Figures.types()["run_bench"]) == set(paper_figures.BENCH_MODES)
    assert values(sp.Extractor.types()["name"]) == set(features.EXTRACTORS)
    assert values(sp.Judge.types()["input"]) == set(judge.RECIPE_KEYS["input"])
    assert values(sp.GenerateFromMasks.types()["dtype"]) == set(shipped.DTYPES)
    for device in values(sp.Device) - {"cuda"}:
        train.pick_device(device)  # accepted (cuda: needs a GPU)
    with pytest.raises(ValueError, match="device must be"):
        train.pick_device("gpu")
