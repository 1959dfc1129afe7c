"""The paper dry run's parts (the run itself is ``./run_all.sh --profile paper --dry-run``, ~30 min on
2 CPU cores at the paper's model sizes: too long for CI, run before a release): the caps merge
strictly, really cap, and the stand-in data are in the formats the real loaders read."""

from __future__ import annotations

import numpy as np
import pytest

from discnb.core import params
from discnb.data import fixtures, panda
from discnb.data import sicap as data
from discnb.pipelines import dryrun


def test_merge_rejects_a_cap_the_paper_file_lacks():
    base = {"sd": {"steps": 150000, "batch": 32}, "seed": 0}
    assert dryrun.merge(base, {"sd": {"steps": 2}}, "x") == {"sd": {"steps": 2, "batch": 32}, "seed": 0}
    with pytest.raises(params.ParamError, match=r"x\.sd: 'stpes' is not a key"):
        dryrun.merge(base, {"sd": {"stpes": 2}}, "x")
    with pytest.raises(params.ParamError, match="'sed' is not a key"):
        dryrun.merge(base, {"sed": 1}, "x")


def _numbers(d, key):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _numbers(v, key)
        elif k == key:
            yield v


@pytest.mark.parametrize("name", dryrun.notebooks())
def test_every_notebook_has_capped_paper_params(name):
    """Validated as the notebook would; no paper-sized step or sample count survives the caps, and
    the paper's model sizes, schedulers and lambda grids are untouched."""
    P = dryrun.resolved_params(name)
    paper = params.load_yaml(f"params/paper/{name}.yaml")
    assert P["profile"] == "paper"
    for key in ("steps", "n", "n_masks", "n_multi", "n_complex", "n_single", "n_real", "ranking_masks", "n_tiles", "max_epochs",
                "target_per_grade", "per_grade"):
        assert all(v <= 4 for v in _numbers(P, key) if isinstance(v, int)), (name, key)
    for key in ("unet", "model", "lams", "scheduler", "extractor_name", "transmil", "generators", "models"):
        if key in paper:
            assert P[key] == paper[key] or key == "model", (name, key)
    assert P["checks"] is False


def test_ddim200_is_ldm_schedule():
    assert dryrun.ddim200_check() == {"n": 200, "first": 996, "last": 1, "stride": 5}


def test_stand_in_sicapv2_reads_as_sicapv2(tmp_path):
    root = fixtures.write_sicapv2(tmp_path / "SICAPv2", size=64, tiles_per_slide=2)
    idx, skipped = data.build_index(root)
    assert len(idx) == 2 * len(fixtures.SICAP_SLIDES) and not len(skipped)
    assert set(idx.split) == {"train", "test"} and set(idx.cv_fold[idx.split == "train"]) == {1, 2, 3, 4}
    img, mask = data.load_tile(idx.iloc[0], 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and mask.max() <= 3


def test_stand_in_panda_reads_as_panda(tmp_path):
    root = fixtures.write_panda(tmp_path / "PANDA", height=256, width=384)
    df = panda.read_train_csv(root)
    assert len(df) == len(fixtures.PANDA_SLIDES) and set(df.primary_label) == {0, 1, 2, 3}
    levels = panda.open_levels(root / "train_images" / f"{df.image_id[0]}.tiff")
    assert [(w, h) for _, w, h in levels] == [(384, 256), (96, 64)]
