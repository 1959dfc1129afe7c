"""Where every stage reads and writes, said once.

The stages follow the data flow of the paper's Fig. 2 (data -> LDM and the judge -> DISC -> tile sets
-> CarcinoNet -> TransMIL -> figures); each has one folder, ``outputs/<profile>/<stage>/``, unless a
parameter names another: a later notebook's ``data_dir``, ``ldm_dir``, ``tilesets_dir`` or
``weights_dir`` (an earlier stage's folder) and each notebook's own ``output_dir`` (its folder).
The pattern judge and notebook 02's ``disc/`` live beside notebook 01's ``ldm/`` (the SD-DISC
generators find them from SD's folder alone).

    L = layout.of(P, "02_sc_disc")     # a pure function of the validated parameters (setup() returns it)
    L.ldm, L.judge, L.disc, L.out      # notebook 01's folder, the judge, notebook 02's, this run's
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from discnb.core import paths

# Notebook -> its stage folder.
STAGES = {
    "00_data_prep": "data",
    "01_train_ldm": "ldm",
    "02_sc_disc": "disc",
    "03_tile_sets": "tilesets",
    "04_carcinonet": "carcinonet",
    "05_transmil_sweep": "mil",
    "06_figures": "figures",
    "07_generate_from_masks": "generate",
}
# Parameters that name an earlier stage's folder ("" = that stage's folder under outputs/<profile>/).
INPUTS = {"data_dir": "data", "ldm_dir": "ldm", "tilesets_dir": "tilesets", "weights_dir": "weights"}


def judge_beside(ldm: str | Path) -> Path:
    """The pattern judge notebook 01 trains: ``judge/`` beside its ``ldm/``."""
    return Path(ldm).parent / "judge"


def disc_beside(ldm: str | Path) -> Path:
    """Notebook 02's models (SD-DISC, SD-DISC-CoTrain): ``disc/`` beside notebook 01's ``ldm/``."""
    return Path(ldm).parent / "disc"


def _stage(name: str, doc: str) -> property:
    """The folder of stage ``name``: the one a parameter names, else ``<root>/<name>``."""
    return property(lambda self: self.given.get(name, self.root / name), doc=doc)


@dataclass(frozen=True)
class Layout:
    """One profile's stage folders: ``root`` (``outputs/<profile>``), the folders parameters name
    (``given``, stage -> folder) and the stage this run writes (``stage``, its :attr:`out`)."""

    profile: str
    root: Path
    given: dict[str, Path] = field(default_factory=dict)
    stage: str | None = None

    data = _stage("data", "Notebook 00: the tile index, the OOD index, the shape maps (and the demo data).")
    ldm = _stage("ldm", "Notebook 01: the first stage, SD and the Fig. 7 ablation SDs.")
    tilesets = _stage("tilesets", "Notebook 03: one folder of synthetic slides per generator.")
    carcinonet = _stage("carcinonet", "Notebook 04: CarcinoNet's runs, results and the Fig. 8 arrays.")
    mil = _stage("mil", "Notebook 05: the TransMIL sweep's runs and results.")
    figures = _stage("figures", "Notebook 06's tables and report (the figures: discnb.core.paths.figures_dir).")
    generate = _stage("generate", "Notebook 07's masks, tiles and report.")
    ablation = _stage("ablation", "Fig. 7's conditioning ablation run apart: one notebook-05 run per condition.")

    @property
    def judge(self) -> Path:
        """The pattern judge notebook 01 trains, beside its folder."""
        return judge_beside(self.ldm)

    @property
    def disc(self) -> Path:
        """Notebook 02: the DISC data, SD-DISC, SD-DISC-CoTrain and the comparison, beside notebook 01's folder."""
        return self.given.get("disc", disc_beside(self.ldm))

    @property
    def weights(self) -> Path:
        """The shipped models: ``weights_dir``, or :func:`discnb.core.paths.weights_dir`."""
        return self.given.get("weights", paths.weights_dir(self.profile, create=False))

    @property
    def out(self) -> Path:
        """The folder this run writes (its notebook's stage)."""
        if self.stage is None:
            raise ValueError("this layout was built without a notebook: it has no output folder")
        return getattr(self, self.stage)


def of(P, notebook: str | None = None, root: str | Path | None = None) -> Layout:
    """The layout the validated parameters ``P`` describe; ``notebook``: whose parameters they are
    (its ``output_dir`` is then its stage's folder, and :attr:`Layout.out` that folder); ``root``:
    another outputs folder than ``outputs/<profile>``."""
    given = {stage: paths.resolve(P[key]) for key, stage in INPUTS.items() if key in P and P[key]}
    stage = None
    if notebook is not None:
        stage = STAGES[notebook]
        if "output_dir" in P and P["output_dir"]:
            given[stage] = paths.resolve(P["output_dir"])
    base = Path(root) if root is not None else paths.output_dir(paths.check_profile(P["profile"]), create=False)
    return Layout(P["profile"], base, given, stage)
