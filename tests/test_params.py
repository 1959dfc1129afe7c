"""Parameters: the notebook's parameters cell is the schema; files and injections are checked."""

from __future__ import annotations

import json

import pytest
import yaml

from discnb.core import notebook

from discnb.core import params

from discnb.core import paths

NOTEBOOKS = sorted(p.stem for p in paths.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def test_defaults_are_read_from_the_parameters_cell():
    d = params.notebook_defaults("00_data_prep")
    assert d["profile"] == "smoke" and d["dataset"] == "demo" and isinstance(d["validity_check"], bool)


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


def test_nested_and_widening(monkeypatch):
    defaults = {"lr": 1e-4, "model": {"channels": [32, 64], "path": None}, "steps": 10}
    monkeypatch.setattr(params, "notebook_defaults", lambda name: defaults)
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
    g = dict(params.notebook_defaults("00_data_prep"))
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
    g = dict(params.notebook_defaults("00_data_prep"))
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


# ------------------------------------------------------------------ empty values (issue 17, defect 2)
@pytest.mark.parametrize("text,key", [("dataset:\n", "dataset"), ("image_size:\n", "image_size"),
                                      ("dataset: null\n", "dataset"), ("image_size: ~\n", "image_size")])
def test_empty_value_is_an_error_naming_the_key(tmp_path, capsys, text, key):
    f = tmp_path / "p.yaml"
    f.write_text("profile: demo\n" + text)
    with pytest.raises(params.ParamError, match=rf"p.yaml: 00_data_prep: parameter '{key}' is (empty|null)"):
        params.check_file("00_data_prep", f)
    assert params.main(["check", "00_data_prep", str(f)]) == 2
    assert f"'{key}'" in capsys.readouterr().err


def test_empty_nested_value_names_the_dotted_key(tmp_path, monkeypatch):
    defaults = {"autoencoder": {"steps": 10, "path": None}, "note": None, "sd": {"max_grad_norm": 1.0}}
    monkeypatch.setattr(params, "notebook_defaults", lambda name: defaults)
    f = tmp_path / "p.yaml"
    f.write_text("autoencoder:\n  steps:\n")
    with pytest.raises(params.ParamError, match=r"parameter 'autoencoder.steps' is empty \(default 10\)"):
        params.check_file("x", f)
    f.write_text("autoencoder:\n")
    with pytest.raises(params.ParamError, match=r"parameter 'autoencoder' is empty"):
        params.check_file("x", f)
    f.write_text("channels: [1, ]\n")
    defaults["channels"] = [1, 2]
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
    g = dict(params.notebook_defaults("00_data_prep"))
    g["dataset"] = None  # e.g. papermill -p dataset None
    with pytest.raises(params.ParamError, match=r"00_data_prep: parameter 'dataset' is null"):
        params.from_globals("00_data_prep", g)


def test_empty_document_is_no_overrides(tmp_path):
    f = tmp_path / "p.yaml"
    for text in ("", "# only a comment\n", "---\n"):
        f.write_text(text)
        assert params.check_file("00_data_prep", f).profile == "smoke"
