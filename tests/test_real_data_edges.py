"""Real-data edges of notebook 00 and ``python -m discnb.generate``: blank cells in SICAPv2's tables, CV folds
too small to score on, lossy (JPEG) masks that say so and invent no grade, and what the batch size changes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from discnb.core import paths
from discnb.core.params import ParamError, Params, check_file
from discnb.data import prepared
from discnb.data import sicap as data
from discnb.grading import adherence
from discnb.pipelines import prep

REPO = Path(__file__).resolve().parents[1]


def edit_table(path: Path, row: int, column: str, value) -> None:
    """Set one cell of an .xlsx table (``row`` in spreadsheet numbering: the header is row 1)."""
    df = pd.read_excel(path)
    df[column] = df[column].astype(object)
    df.loc[row - 2, column] = value
    df.to_excel(path, index=False)


# ------------------------------------------------------------------------ blank cells
@pytest.mark.parametrize("blank", [np.nan, "  "])
def test_a_blank_image_name_in_the_test_table_is_named_by_file_and_row(sicap, blank):
    table = sicap / "partition/Test/Test.xlsx"
    edit_table(table, 3, "image_name", blank)
    with pytest.raises(data.DataError, match=rf"^{table}, row 3: image_name is empty$"):
        data.build_index(sicap, progress=False)
    # skip mode: that row is in the skip report, the other rows are indexed
    index, skipped = data.build_index(sicap, on_bad_file="skip", progress=False)
    assert skipped.rows == [{"file": str(table), "problem": f"{table}, row 3: image_name is empty"}]
    assert len(index) == len(pd.read_excel(sicap / "partition/Test/Train.xlsx")) + len(pd.read_excel(table)) - 1


def test_a_blank_image_name_in_the_train_table_is_named_there_not_as_a_fold_problem(sicap):
    table = sicap / "partition/Test/Train.xlsx"
    name = pd.read_excel(table).image_name[0]
    edit_table(table, 2, "image_name", np.nan)
    with pytest.raises(data.DataError, match=rf"^{table}, row 2: image_name is empty$"):
        data.build_index(sicap, progress=False)
    index, skipped = data.build_index(sicap, on_bad_file="skip", progress=False)
    problems = [r["problem"] for r in skipped.rows]
    assert problems[0] == f"{table}, row 2: image_name is empty"
    # the fold that lists the lost patch says so in the report instead of stopping the run
    assert len(problems) == 2 and f"lists {name}, which partition/Test/Train.xlsx does not" in problems[1]
    assert name not in set(index.image_name)


def test_a_blank_image_name_in_a_fold_table_is_named(sicap):
    table = sicap / "partition/Validation/Val2/Test.xlsx"
    edit_table(table, 2, "image_name", np.nan)
    with pytest.raises(data.DataError, match=rf"^{table}, row 2: image_name is empty$"):
        data.build_index(sicap, progress=False)


@pytest.mark.parametrize("column", ["patient_id", "slide_id"])
def test_a_blank_id_in_wsi_labels_is_an_error_naming_file_row_and_column(sicap, column):
    table = sicap / "wsi_labels.xlsx"
    edit_table(table, 4, column, np.nan)
    with pytest.raises(data.DataError, match=rf"^{table}, row 4: {column} is empty$"):
        data.build_index(sicap, progress=False)
    with pytest.raises(data.DataError, match=rf"^{table}, row 4: {column} is empty$"):  # not a bad *file* to skip
        data.build_index(sicap, on_bad_file="skip", progress=False)


def test_ids_that_read_like_missing_values_stay_text(sicap):
    """Only an empty cell is missing: a patient called "NA" is a patient (pandas' default would make it NaN)."""
    edit_table(sicap / "wsi_labels.xlsx", 2, "patient_id", "NA")
    index, _ = data.build_index(sicap, progress=False)
    assert "NA" in set(index.patient_id)


# ------------------------------------------------------------------------- small folds
def one_tile_fold(sicap: Path, k: int = 2, keep: int = 1) -> None:
    table = sicap / f"partition/Validation/Val{k}/Test.xlsx"
    pd.read_excel(table).iloc[:keep].to_excel(table, index=False)


def small_params(min_fold_tiles: int = 2) -> Params:
    return Params(profile="smoke", min_fold_tiles=min_fold_tiles)


def test_notebook_00_counts_each_folds_tiles_and_stops_on_a_fold_too_small_to_score(sicap):
    index, _ = data.build_index(sicap, progress=False)
    assert prep.check_folds(small_params(), index).to_dict() == {1: 3, 2: 3, 3: 3, 4: 3}
    one_tile_fold(sicap)
    index, _ = data.build_index(sicap, progress=False)
    assert prep.fold_tiles(index).to_dict() == {1: 3, 2: 1, 3: 3, 4: 3}
    with pytest.raises(data.DataError, match=r"CV fold\(s\) \[2\] hold \[1\] tile\(s\) with a mask, fewer than "
                                             r"min_fold_tiles=2: too few to score"):
        prep.check_folds(small_params(), index)
    assert prep.check_folds(small_params(0), index)[2] == 1  # 0 turns the check off


def test_an_empty_fold_is_reported_by_notebook_00(sicap):
    one_tile_fold(sicap, k=3, keep=0)
    index, _ = data.build_index(sicap, progress=False)
    assert prep.fold_tiles(index).to_dict() == {1: 3, 2: 3, 3: 0, 4: 3}
    with pytest.raises(data.DataError, match=r"CV fold\(s\) \[3\] hold \[0\] tile"):
        prep.check_folds(small_params(), index)


def test_a_fold_without_a_labels_pixels_is_a_warning(sicap):
    index, _ = data.build_index(sicap, progress=False)
    with pytest.warns(UserWarning, match=r"CV fold 2 \(3 tiles\) has no \['GG3', 'GG4', 'GG5'\] pixels"):
        prep.check_folds(small_params(), index)  # fold 2 holds one non-cancer slide only


def test_a_judge_report_that_cannot_separate_chance_from_the_ceiling_is_refused():
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 4, (6, 16, 16))
    masks[:, :8] = 0
    assert adherence.check_chance_separable(masks, "val") < 0.9
    with pytest.raises(ValueError, match=r"^val: 1 held-out tile\(s\) whose masks, shuffled between tiles, still agree "
                                         r"on 100% of pixels"):
        adherence.check_chance_separable(masks[:1], "val")
    with pytest.raises(ValueError, match=r"agree on 100% of pixels"):  # every tile one label: chance is the score
        adherence.check_chance_separable(np.zeros((8, 16, 16), int), "val")


# -------------------------------------------------------------------------- lossy masks
def jpeg_roundtrip(m: np.ndarray, quality: int = 75) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(m).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf))


@pytest.mark.parametrize("pair", [(3, 5), (5, 3), (3, 0), (0, 3), (4, 0), (4, 5), (3, 4), (5, 0)])
def test_snapping_invents_no_grade_along_the_tile_border(pair):
    """A straight edge between two grades meeting the tile's border at several angles and offsets, the mask
    saved at JPEG quality 75. Ringing on a 3/5 edge decodes as 4 (and overshoot of 3 beside 0 as 4): where it
    ran along the first row or column, the border (padded as the region's inside) let the band pass as a
    region: 37 of 3,456 such masks gained a grade before the fix, none after."""
    a, b = pair
    yy, xx = np.mgrid[:128, :128]
    invented = []
    for slope in (0.5, 1.0, 2.0, -0.5, -1.0, -2.0):
        for off in range(10, 120, 7):
            for turn in range(4):
                m = np.rot90(np.where(yy * slope + xx < off * (1 + abs(slope)), a, b).astype(np.uint8), turn).copy()
                got = set(np.unique(data.snap_lossy(jpeg_roundtrip(m))).tolist()) - set(np.unique(m).tolist())
                if got:
                    invented.append((slope, off, turn, got))
    assert invented == []


def test_the_index_says_which_masks_were_lossy_and_which_labels_snapping_changed(sicap, tmp_path):
    imgs = sorted((sicap / "images").glob("*.jpg"))
    # a tile whose only cancer is a small GG5 region: JPEG cannot hold it, snapping gives it to NC
    tiny = np.zeros((32, 32), np.uint8)
    tiny[12:17, 12:17] = 5
    # a tile with a large GG4 region: lossy, but its label survives
    big = np.zeros((32, 32), np.uint8)
    big[:, :24] = 4
    for p, m in ((imgs[0], tiny), (imgs[1], big)):
        (sicap / "masks" / f"{p.stem}.png").unlink()
        Image.fromarray(m).save(sicap / "masks" / f"{p.stem}.jpg", quality=90)
    index, _ = data.build_index(sicap, progress=False)
    rows = index.set_index("image_name")
    assert rows.mask_lossy.to_dict() == {n: n in (imgs[0].name, imgs[1].name) for n in rows.index}
    assert rows.mask_label_raw[imgs[0].name] == 3 and rows.mask_label[imgs[0].name] == 0  # GG5 -> NC
    assert rows.mask_label_raw[imgs[1].name] == rows.mask_label[imgs[1].name] == 2
    exact = rows.drop([imgs[0].name, imgs[1].name])
    assert (exact.mask_label_raw == exact.mask_label).all() and (exact.mask_changed == 0).all()
    report = prep.mask_report(index)
    assert report["lossy_masks"] == 2 and report["labels_changed_by_snapping"] == 1
    assert 0 < report["lossy_pixels_changed"] < 0.5
    assert prep.mask_summary(index).startswith(f"2 of {len(index)} masks are lossy (JPEG)")
    assert "and 1 tile label(s)" in prep.mask_summary(index)
    # the columns survive index.csv
    prep.write_index(index, data.Skipped(), tmp_path)
    back = prepared.read_index(tmp_path)
    assert back.mask_lossy.dtype == bool and back.mask_lossy.sum() == 2
    assert (back.mask_label_raw == index.mask_label_raw.to_numpy()).all()


# -------------------------------------------------------------------------- notebook 00's command
def test_prep_no_progress_draws_no_bars_and_the_skip_message_names_the_report(sicap, tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(paths, "OUTPUTS", tmp_path / "outputs")
    monkeypatch.setattr(paths, "FIGURES", tmp_path / "figures")
    (sicap / "images" / sorted(p.name for p in (sicap / "images").glob("*.jpg"))[0]).write_bytes(b"not a jpeg")
    pfile = tmp_path / "p.yaml"
    pfile.write_text(yaml.safe_dump({"dataset": str(sicap), "ood_dataset": "", "on_bad_file": "skip", "image_size": 32,
                                     "min_fold_tiles": 2, "validity_check": False, "figure_tiles": 4}))
    with pytest.warns(UserWarning) as warned:
        assert prep.main(["--params", str(pfile), "--no-progress", "--no-checks"]) == 0
    out, err = capfd.readouterr()
    assert "it/s" not in err and "%|" not in err, err  # tqdm draws "nn%|███| n/N [.., x it/s]"
    report = tmp_path / "outputs" / "smoke" / "data" / "index.skipped.csv"
    assert report.exists()
    assert any(f"skipped 1 file(s) (on_bad_file: skip); each with its problem in {report}" in str(w.message)
               for w in warned)
    stats = json.loads((tmp_path / "outputs" / "smoke" / "data" / "stats.json").read_text())
    assert stats["fold_tiles"] == {"1": 2, "2": 3, "3": 3, "4": 3} and stats["lossy_masks"] == 0


# -------------------------------------------------------------------------- parameters at check time
@pytest.mark.parametrize("key, value, says", [
    ("image_size", 0, r"parameter 'image_size' must be > 0 \(default 64\), got 0"),
    ("on_bad_file", "skipp", r"parameter 'on_bad_file' must be one of"),
    ("masks", "requried", r"parameter 'masks' must be one of"),
    ("min_fold_tiles", -1, r"parameter 'min_fold_tiles' must be >= 0"),
])
def test_notebook_00s_parameters_are_refused_at_check_time_before_anything_is_written(tmp_path, key, value, says):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({key: value}))
    with pytest.raises(ParamError, match=says):
        check_file("00_data_prep", f)
