"""Every stage's parameters: names, types, allowed values and defaults, in the package.

One class per notebook (:data:`SCHEMAS`), one class attribute per parameter: its annotation is the
type, its value the default (the smoke profile). Each notebook keeps the same values as a literal
``parameters`` cell, with a comment per line that says what they mean; ``tests/test_params.py``
fails when a cell and its class here disagree (names, order, types or defaults), and
``tests/test_no_notebooks.py`` runs the package with ``notebooks/`` out of reach.

Beyond its type a parameter may be constrained, and :mod:`discnb.core.params` checks that when a
file is checked (``python -m discnb.core.params check``, before any notebook runs):

* a fixed set of values: ``typing.Literal["error", "skip"]`` (also as list items:
  ``list[Scheduler]``); a ``Literal`` named here for a set that an upper layer also defines
  (e.g. :data:`Scheduler` and ``generative.sampling.SCHEDULERS``) is compared with it by the tests;
* a condition on the value: ``Annotated[int, POSITIVE]`` (:data:`PositiveInt`), or any
  :class:`Check`;
* None allowed: ``float | None`` (otherwise a null value is an error that names the key).

A nested group of parameters (a YAML mapping such as ``autoencoder: {...}``) is a
:class:`Section` subclass; its keys are checked like the top-level ones.
"""

from __future__ import annotations

import copy
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal


@dataclass(frozen=True)
class Check:
    """A condition on a parameter's value beyond its type: ``Annotated[int, Check(...)]``.
    ``says`` completes "must be ..." in the error."""
    holds: Callable[[Any], bool]
    says: str


POSITIVE = Check(lambda v: v > 0, "> 0")
PositiveInt = Annotated[int, POSITIVE]
NON_NEGATIVE = Check(lambda v: v >= 0, ">= 0")
NonNegativeInt = Annotated[int, NON_NEGATIVE]

Profile = Literal["smoke", "demo", "paper"]  # paths.PROFILES
Device = Literal["auto", "cuda", "cpu"]  # core.train.pick_device
Precision = Literal["no", "bf16", "fp16"]  # core.train.TrainConfig.mixed_precision
Scheduler = Literal["ddim", "dpm++"]  # generative.sampling.SCHEDULERS
Condition = Literal["pixel", "tile", "tile+slide"]  # generative.ldm.CONDITIONS
Figure = Literal["fig5", "adherence", "cost", "fig6", "fig7", "fig8", "bench"]  # pipelines.paper_figures.FIGURES


class Section:
    """A group of parameters: every annotated class attribute is one, its value the default."""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        missing = [k for k in cls.__dict__.get("__annotations__", {}) if k not in cls.__dict__]
        if missing:
            raise TypeError(f"{cls.__name__}: parameters without a default: {missing}")

    @classmethod
    def types(cls) -> dict[str, Any]:
        """Parameter name -> annotation (``Annotated`` kept), in the order they are declared."""
        return typing.get_type_hints(cls, include_extras=True)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Parameter name -> default (a fresh copy; sections as dicts), in declaration order."""
        return {k: _default(getattr(cls, k)) for k in cls.types()}


def _default(v: Any) -> Any:
    if isinstance(v, type) and issubclass(v, Section):
        return v.defaults()
    return copy.deepcopy(v)


# ---------------------------------------------------------------------------------------- 00
class DataPrep(Section):
    """Notebook 00: the tile index of SICAPv2 (or the procedural demo data) and its OOD set."""
    profile: Profile = "smoke"
    dataset: str = "demo"
    ood_dataset: str = "demo"
    seed: int = 0
    demo_patients: PositiveInt = 12
    demo_tiles_per_slide: PositiveInt = 8
    demo_tile_size: PositiveInt = 64
    ood_patients: int = 6
    image_size: PositiveInt = 64
    on_bad_file: Literal["error", "skip"] = "error"  # data.sicap.build_index
    masks: Literal["required", "optional"] = "required"  # data.sicap.build_index
    min_fold_tiles: NonNegativeInt = 8  # pipelines.prep.check_folds
    validity_check: bool = True
    validity_cnn_epochs: int = 3
    figure_tiles: int = 8
    checks: bool = True


# ---------------------------------------------------------------------------------------- 01
class Autoencoder(Section):
    path: str = ""
    channels: list[int] = [16, 32, 32]
    layers_per_block: int = 1
    n_embed: int = 256
    steps: int = 50
    batch: PositiveInt = 16
    lr: float = 0.0005
    scale_lr: bool = False
    disc_weight: float = 0.0
    disc_channels: int = 64
    disc_layers: int = 3
    crop: NonNegativeInt = 0
    mid_attention: bool = True


class UNet(Section):
    channels: list[int] = [32, 64]
    attention: list[bool] = [True, True]
    layers_per_block: int = 1
    head_channels: int = 32
    transformer_layers: int = 1
    context_dim: int = 64
    token_side: int = 8
    tau_channels: list[int] = [32, 64]
    concat_mask: bool = False
    prediction: Literal["eps", "v"] = "eps"  # generative.ldm.PREDICTIONS


class SDTraining(Section):
    steps: int = 60
    batch: PositiveInt = 16
    grad_accum: PositiveInt = 1
    lr: float = 0.0003
    scale_lr: bool = False
    ema_decay: float = 0.999
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0  # None: no gradient clipping (core.train.TrainConfig; the LDM recipe)
    cond_drop: float = 0.0
    snr_gamma: float = 0.0
    crop: NonNegativeInt = 0


class CarcinoNetModel(Section):
    encoder: str = "resnet18"
    encoder_width: int = 16
    encoder_path: str = ""
    decoder_channels: int = 32
    pool_grids: list[int] = [1, 2, 3]


class CarcinoNetTraining(Section):
    steps: int = 60
    batch: PositiveInt = 8
    lr: float = 0.001
    weight_decay: float = 0.0001
    warmup_steps: int = 5
    ema_decay: float = 0.0
    validate_every: int = 0
    focal_gamma: float = 2.0
    dice_weight: float = 1.0
    jitter: float = 0.05
    crop: NonNegativeInt = 0


class Judge(Section):
    seed: int = 0
    input: Literal["first_stage", "real"] = "first_stage"  # grading.judge.RECIPE_KEYS["input"]
    model: CarcinoNetModel = CarcinoNetModel
    train: CarcinoNetTraining = CarcinoNetTraining


class TrainLDM(Section):
    """Notebook 01: the first stage and SD (paper Sec. 2.1), the Fig. 7 ablation SDs and the pattern judge."""
    profile: Profile = "smoke"
    seed: int = 0
    data_dir: str = ""
    output_dir: str = ""
    val_fold: int = 1
    device: Device = "auto"
    mixed_precision: Precision = "no"
    resume: str = "latest"
    checkpoint_every: PositiveInt = 100
    checkpoints_total_limit: int = 2
    autoencoder: Autoencoder = Autoencoder
    latent_scale_by_std: bool = True
    condition: Condition = "pixel"
    ablation_conditions: list[Condition] = ["tile", "tile+slide"]
    ablation_steps: int = 20
    unet: UNet = UNet
    sd: SDTraining = SDTraining
    guidance_scale: float = 1.0
    sample_steps: int = 20
    scheduler: Scheduler = "ddim"
    n_samples: int = 6
    judge: Judge = Judge
    judge_seeds: list[int] = [0]
    checks: bool = True


# ---------------------------------------------------------------------------------------- 02
class DiscData(Section):
    n: int = 16
    shard_size: PositiveInt = 8
    seed: int = 2024
    steps: int = 10
    scheduler: Scheduler = "ddim"
    batch_size: PositiveInt = 32


class Finetune(Section):
    steps: int = 10
    batch: PositiveInt = 8
    grad_accum: PositiveInt = 1
    lr: float = 0.0001
    scale_lr: bool = False
    ema_decay: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0  # None: no gradient clipping (core.train.TrainConfig; the LDM recipe)


class Compare(Section):
    seeds: list[int] = [0, 1]
    steps: int = 10
    scheduler: Scheduler = "ddim"
    batch_size: PositiveInt = 32


class Adherence(Section):
    n_multi: int = 8
    n_complex: int = 4
    n_single: int = 4
    n_real: int = 4
    ranking_masks: int = 4
    ranking_steps: int = 20


class Cost(Section):
    labels: list[int] = [1, 2, 3, 4]
    n_tiles: int = 4
    steps: int = 5
    scheduler: Scheduler = "ddim"
    batch_size: PositiveInt = 16


class SCDisc(Section):
    """Notebook 02: SD-SC (Sec. 2.2), the DISC data and SD-DISC / SD-DISC-CoTrain (Sec. 2.3), compared."""
    profile: Profile = "smoke"
    seed: int = 0
    ldm_dir: str = ""
    output_dir: str = ""
    device: Device = "auto"
    mixed_precision: Precision = "no"
    resume: str = "latest"
    checkpoint_every: PositiveInt = 50
    checkpoints_total_limit: int = 1
    models: list[str] = ["SD", "SD-SC", "SD-DISC", "SD-DISC-CoTrain"]
    disc_data: DiscData = DiscData
    finetune: Finetune = Finetune
    compare: Compare = Compare
    adherence: Adherence = Adherence
    cost: Cost = Cost
    figure_rows: int = 6
    checks: bool = True


# ---------------------------------------------------------------------------------------- 03
class Sampling(Section):
    steps: int = 10
    scheduler: Scheduler = "ddim"
    batch_size: PositiveInt = 16


class WeightAblation(Section):
    per_grade: int = 100
    min_tiles: int = 20
    max_tiles: int = 100
    seed: int = 1
    tertiary_probs: list[float] = [0.0, 0.25]


class TileSets(Section):
    """Notebook 03: synthetic slides of every generator (Sec. 2.4)."""
    profile: Profile = "smoke"
    seed: int = 0
    data_dir: str = ""
    ldm_dir: str = ""
    output_dir: str = ""
    generators: list[str] = ["SD", "SD-tile", "SD-tile+slide"]
    target_per_grade: int = 4
    min_tiles: int = 2
    max_tiles: int = 4
    weights: Literal["random", "equal"] = "random"  # generative.tileset_plan.slide_weights
    secondary: Literal["uniform", "real"] = "uniform"  # generative.tileset_plan.designate
    tertiary_prob: float = 0.25
    sampling: Sampling = Sampling
    device: Device = "auto"
    mixed_precision: Literal["no", "bf16"] = "no"  # sampling runs in bf16 or not at all
    replace_stale: bool = True
    ablation: WeightAblation = WeightAblation
    figure_slides: int = 4
    figure_tiles: int = 9
    checks: bool = True


# ---------------------------------------------------------------------------------------- 04
class Synth(Section):
    n_tiles: int = 48
    steps: int = 20
    scheduler: Scheduler = "ddim"
    batch_size: PositiveInt = 24
    seed: int = 1234


class CarcinoNet(Section):
    """Notebook 04: CarcinoNet trained on real and synthetic tiles (Sec. 3.3, Eq. 4, Fig. 8)."""
    profile: Profile = "smoke"
    seed: int = 0
    seeds: list[int] = [0]
    data_dir: str = ""
    ldm_dir: str = ""
    output_dir: str = ""
    val_fold: int = 1
    ood_split: str = "all"
    device: Device = "auto"
    mixed_precision: Precision = "no"
    resume: str = "latest"
    checkpoint_every: PositiveInt = 200
    checkpoints_total_limit: int = 1
    model: CarcinoNetModel = CarcinoNetModel
    train: CarcinoNetTraining = CarcinoNetTraining
    generators: list[str] = ["SD"]
    lams: list[float] = [0.5]
    synth: Synth = Synth
    eval_batch: PositiveInt = 32
    figure_tiles: int = 6
    checks: bool = True


# ---------------------------------------------------------------------------------------- 05
class Panda(Section):
    root: str = ""
    n_per_label: int = 100
    max_tiles: int = 100
    tile_px: PositiveInt = 512
    target_mpp: float = 1.0
    base_mpp: float = 0.5
    min_tissue: float = 0.2
    providers: list[str] = []


class Extractor(Section):
    # grading.features.EXTRACTORS
    name: Literal["tilecnn", "lunit-vits16", "resnet50-mocov2", "resnet50-imagenet"] = "tilecnn"
    path: str = ""
    width: int = 8
    epochs: int = 4
    batch: PositiveInt = 16
    lr: float = 0.002
    seed: int = 0
    input_size: int = 0
    eval_batch: PositiveInt = 64


class TransMIL(Section):
    dim: PositiveInt = 32
    heads: PositiveInt = 8
    landmarks: int = 0
    dropout: float = 0.1


class Mixed(Section):
    dim: int = 48
    depth: int = 2
    heads: int = 6
    mlp_ratio: float = 3.0
    skip_lam: float = 2.0
    drop_path: float = 0.1
    masking_ratio: float = 0.5


class MILTraining(Section):
    max_epochs: int = 8
    patience: int = 4
    batch: PositiveInt = 4
    synth_batch: int = 1
    lr: float = 0.004
    weight_decay: float = 1e-05
    lookahead_k: int = 6
    lookahead_alpha: float = 0.5


class TransMILSweep(Section):
    """Notebook 05: TransMIL on real and synthetic slides (Sec. 3.2, Eq. 4, Fig. 6)."""
    profile: Profile = "smoke"
    seed: int = 0
    data_dir: str = ""
    tilesets_dir: str = ""
    output_dir: str = ""
    folds: list[int] = [1]
    seeds: list[int] = [0]
    generators: list[str] = ["SD", "SD-SC", "SD-DISC", "SD-DISC-CoTrain", "SD-tile", "SD-tile+slide"]
    lams: list[float] = [0.0, 0.5]
    mixed_supervision: bool = True
    ood_split: str = "all"
    ood_dir: str = ""
    panda: Panda = Panda
    extractor: Extractor = Extractor
    transmil: TransMIL = TransMIL
    mixed: Mixed = Mixed
    train: MILTraining = MILTraining
    device: Device = "auto"
    reuse_runs: bool = True
    save_models: bool = False
    checks: bool = True


# ---------------------------------------------------------------------------------------- 06
class Bench(Section):
    n_tiles: int = 4
    n_adherence: int = 16
    steps: int = 200
    dpm_steps: int = 20
    batch_size: PositiveInt = 16
    train_steps: int = 3
    sc_labels: list[int] = [1, 2, 3, 4]
    unet_reps: int = 10
    device: Device = "auto"
    bf16: bool = False


class Figures(Section):
    """Notebook 06: the paper's figures from the stored results."""
    profile: Profile = "smoke"
    seed: int = 0
    output_dir: str = ""
    figures_wanted: list[Figure] = ["fig5", "adherence", "cost", "fig6", "fig7", "fig8", "bench"]
    fig5_rows: int = 4
    fig8_tiles: int = 4
    fig8_test_sets: list[Literal["test", "ood"]] = ["test", "ood"]
    ablation_generator: str = "SD"
    run_bench: Literal["never", "missing", "always"] = "never"  # pipelines.paper_figures.BENCH_MODES
    bench: Bench = Bench
    checks: bool = True


# ---------------------------------------------------------------------------------------- 07
class GenerateFromMasks(Section):
    """Notebook 07: the shipped DISCPipeline folders, and tiles drawn from SICAPv2-format masks."""
    profile: Profile = "smoke"
    seed: int = 0
    ldm_dir: str = ""
    weights_dir: str = ""
    output_dir: str = ""
    export: bool = True
    models: list[str] = ["SD", "SD-DISC", "SD-DISC-CoTrain"]
    dtype: Literal["fp16", "fp32"] = "fp16"  # grading.shipped.DTYPES
    model: str = "SD-DISC"
    n_masks: int = 4
    steps: int = 3
    sampler: Scheduler = "ddim"
    batch_size: PositiveInt = 16
    fp16_masks: int = 2
    checks: bool = True


# Notebook name -> its parameters.
SCHEMAS: dict[str, type[Section]] = {
    "00_data_prep": DataPrep,
    "01_train_ldm": TrainLDM,
    "02_sc_disc": SCDisc,
    "03_tile_sets": TileSets,
    "04_carcinonet": CarcinoNet,
    "05_transmil_sweep": TransMILSweep,
    "06_figures": Figures,
    "07_generate_from_masks": GenerateFromMasks,
}
