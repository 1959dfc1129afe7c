"""discnb.core.layout: one place says where every stage reads and writes; setup() and the modules'
command lines record the resolved parameters beside the artifacts they describe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from discnb.core import layout, notebook, params, paths


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "OUTPUTS", tmp_path / "outputs")
    return tmp_path / "outputs"


def test_every_stage_folder_defaults_to_outputs_profile_stage(outputs):
    L = layout.of({"profile": "smoke"})
    for stage in set(layout.STAGES.values()) | {"ablation"}:
        assert getattr(L, stage) == outputs / "smoke" / stage, stage
    assert L.judge == outputs / "smoke" / "judge"  # beside ldm/
    assert L.weights == paths.weights_dir("smoke", create=False)
    with pytest.raises(ValueError, match="without a notebook"):
        L.out


def test_parameters_name_earlier_stages_and_the_judge_and_disc_follow_ldm(outputs, tmp_path):
    L = layout.of({"profile": "demo", "ldm_dir": str(tmp_path / "run" / "ldm"), "data_dir": "somewhere/data",
                   "tilesets_dir": "", "weights_dir": str(tmp_path / "w")}, "03_tile_sets")
    assert L.ldm == tmp_path / "run" / "ldm"
    assert (L.judge, L.disc) == (tmp_path / "run" / "judge", tmp_path / "run" / "disc")
    assert L.data == paths.REPO / "somewhere" / "data"  # relative to the repository, as every path parameter
    assert L.tilesets == L.out == outputs / "demo" / "tilesets"  # "" = the default folder
    assert L.weights == tmp_path / "w"


@pytest.mark.parametrize("notebook_name, stage", [("03_tile_sets", "tilesets"), ("02_sc_disc", "disc"),
                                                  ("06_figures", "figures"), ("07_generate_from_masks", "generate")])
def test_output_dir_moves_only_the_notebooks_own_folder(outputs, tmp_path, notebook_name, stage):
    L = layout.of({"profile": "smoke", "output_dir": str(tmp_path / "mine")}, notebook_name)
    assert L.out == getattr(L, stage) == tmp_path / "mine"
    assert L.ldm == outputs / "smoke" / "ldm" and L.data == outputs / "smoke" / "data"


def test_notebook_01s_output_dir_carries_the_judge_and_disc_along(outputs, tmp_path):
    L = layout.of({"profile": "smoke", "output_dir": str(tmp_path / "run" / "ldm")}, "01_train_ldm")
    assert (L.out, L.judge, L.disc) == (tmp_path / "run" / "ldm", tmp_path / "run" / "judge", tmp_path / "run" / "disc")


def test_setup_records_the_params_where_the_module_writes(outputs, tmp_path):
    """Notebook 02 with ``ldm_dir`` set: setup() stamps ``<ldm_dir>/../disc`` (where notebook 02's module
    writes and the SD-DISC generators read), not ``outputs/<profile>/disc``."""
    g = dict(params.defaults("02_sc_disc")) | {"ldm_dir": str(tmp_path / "run" / "ldm")}
    P, L = notebook.setup("02_sc_disc", g)
    assert L.out == layout.disc_beside(tmp_path / "run" / "ldm") == tmp_path / "run" / "disc"
    assert yaml.safe_load((L.out / "params.resolved.yaml").read_text()) == dict(P)
    assert not (outputs / "smoke" / "disc").exists()


def test_cli_records_where_setup_does(outputs, tmp_path):
    f = tmp_path / "02.yaml"
    f.write_text(yaml.safe_dump({"ldm_dir": str(tmp_path / "run" / "ldm")}))
    P, _ = notebook.cli("02_sc_disc", "pipelines.sc_disc", "test", ["--params", str(f)])
    assert (tmp_path / "run" / "disc" / "params.resolved.yaml").exists()
    assert Path(layout.of(P, "02_sc_disc").out) == tmp_path / "run" / "disc"
