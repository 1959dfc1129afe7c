"""One code path per stage: on the smoke profile, each notebook and ``python -m discnb.pipelines.<stage>``
write the same files (issue 14).

The notebook side is what the notebooks left in ``outputs/smoke/`` and ``figures/smoke/``: the nbval
run of ``./run_all.sh test`` (the root conftest.py orders this module after the notebooks), or
``./run_all.sh``. The module side runs each stage with ``python -m`` into a temporary outputs root
(``DISCNB_OUTPUTS``/``DISCNB_FIGURES``, read by :mod:`discnb.core.paths`), after copying the notebook
side's folders of every other stage there as its inputs, so each stage is compared on the same
inputs and none is trained twice for nothing. Compared: the relative file lists of the stage's
output folders and its figures (``figures/smoke/NN_*``).

Volatile names, normalised before comparing, all TensorBoard's (accelerate's ``log_with``): its event
files (``events.out.tfevents.<time>.<host>.<pid>.<n>``) carry a time stamp and a process id, and the
hyperparameter run it adds under ``logs/<run>/`` is a folder named by ``time.time()``. Nothing else
is ignored.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NB_OUTPUTS = REPO / "outputs" / "smoke"
NB_FIGURES = REPO / "figures" / "smoke"

# notebook -> (pipeline module, its folders under outputs/<profile>/)
STAGES = {
    "00_data_prep": ("prep", ["data"]),
    "01_train_ldm": ("train_ldm", ["ldm", "judge"]),
    "02_sc_disc": ("sc_disc", ["disc"]),
    "03_tile_sets": ("tilesets", ["tilesets"]),
    "04_carcinonet": ("carcinonet", ["carcinonet"]),
    "05_transmil_sweep": ("mil", ["mil"]),
    "06_figures": ("paper_figures", ["figures"]),
    "07_generate_from_masks": ("from_masks", ["generate", "weights"]),
}
VOLATILE = [(re.compile(r"events\.out\.tfevents\.[^/]+$"), "events.out.tfevents.*"),
            (re.compile(r"(?<=/logs/)(.+/)?\d{9,}\.\d+(?=/)"), r"\g<1><time>")]


def file_list(root: Path) -> list[str]:
    """Relative paths of every file under ``root``, volatile names normalised, sorted."""
    out = []
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        rel = p.relative_to(root).as_posix()
        for rx, sub in VOLATILE:
            rel = rx.sub(sub, rel)
        out.append(rel)
    return sorted(out)


def stage_files(outputs: Path, figures: Path, notebook: str) -> dict[str, list[str]]:
    folders = STAGES[notebook][1]
    files = {f: file_list(outputs / f) for f in folders}
    files["figures"] = sorted(p.name for p in figures.glob(f"{notebook[:2]}_*")) if figures.exists() else []
    return files


def test_volatile_names_are_only_tensorboard_events(tmp_path):
    (tmp_path / "sd" / "logs" / "SD").mkdir(parents=True)
    (tmp_path / "sd" / "logs" / "SD" / "events.out.tfevents.1733.host.123.0").write_text("")
    (tmp_path / "sd" / "logs" / "train" / "1796122198.0619843").mkdir(parents=True)
    (tmp_path / "sd" / "logs" / "train" / "1796122198.0619843" / "hparams.yml").write_text("")
    (tmp_path / "sd" / "checkpoint-1796122198.5").mkdir()  # not under logs/: a name to compare
    (tmp_path / "sd" / "checkpoint-1796122198.5" / "a").write_text("")
    (tmp_path / "sd" / "metrics.csv").write_text("")
    assert file_list(tmp_path) == ["sd/checkpoint-1796122198.5/a", "sd/logs/SD/events.out.tfevents.*",
                                   "sd/logs/train/<time>/hparams.yml", "sd/metrics.csv"]


@pytest.mark.slow
@pytest.mark.parametrize("notebook", list(STAGES))
def test_notebook_and_module_write_the_same_files(notebook, failed_notebooks, tmp_path):
    module, folders = STAGES[notebook]
    if notebook in failed_notebooks:
        pytest.skip(f"notebooks/{notebook}.ipynb failed in this session: nothing to compare")
    if not (NB_OUTPUTS / folders[0] / "params.resolved.yaml").exists():
        pytest.skip(f"no notebook outputs in {NB_OUTPUTS / folders[0]}: run the notebooks first "
                    "(./run_all.sh test runs them before this test; or ./run_all.sh)")
    outputs, figures = tmp_path / "outputs", tmp_path / "figures"
    for d in NB_OUTPUTS.iterdir():  # every other stage's outputs are this stage's inputs
        if d.is_dir() and d.name not in folders:
            shutil.copytree(d, outputs / "smoke" / d.name, symlinks=True)
    env = {**os.environ, "DISCNB_OUTPUTS": str(outputs), "DISCNB_FIGURES": str(figures), "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, "-m", f"discnb.pipelines.{module}", "--no-progress"], cwd=REPO, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, f"python -m discnb.pipelines.{module} failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    nb = stage_files(NB_OUTPUTS, NB_FIGURES, notebook)
    mod = stage_files(outputs / "smoke", figures / "smoke", notebook)
    for key in nb:
        only_nb, only_mod = sorted(set(nb[key]) - set(mod[key])), sorted(set(mod[key]) - set(nb[key]))
        assert not only_nb and not only_mod, (f"{notebook} {key}: only the notebook wrote {only_nb}; "
                                              f"only python -m discnb.pipelines.{module} wrote {only_mod}")
