"""The SICAPv2 loader: index, mask mapping, folds and every bad-input case."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from discnb.data import prepared
from discnb.data import sicap as data
from sicap_fixture import SLIDES, TILES_PER_SLIDE, write_sicap

# The real SICAPv2 metadata sample beside the checkout (../shared), or where DISCNB_SICAP_SAMPLE points.
REAL_SAMPLE = next((p for p in (Path(os.environ.get("DISCNB_SICAP_SAMPLE", "/nonexistent")),
                                Path(__file__).resolve().parents[2] / "shared" / "realdata" / "sicapv2_sample",
                                Path("/work/shared/realdata/sicapv2_sample")) if p.is_dir()),
                   Path("/nonexistent"))


def first_image(root: Path) -> Path:
    return sorted((root / "images").glob("*.jpg"))[0]


# ----------------------------------------------------------------------------- good input
def test_index_columns_splits_and_labels(sicap):
    index, skipped = data.build_index(sicap, progress=False)
    assert len(skipped) == 0
    assert len(index) == len(SLIDES) * TILES_PER_SLIDE
    assert set(index.split) == {"train", "test"}
    for sid, (pid, p, s, split, fold) in SLIDES.items():
        rows = index[index.slide_id == sid]
        assert set(rows.patient_id) == {pid} and set(rows.split) == {split}
        assert set(rows.cv_fold) == {fold}
        assert set(rows.slide_primary) == {p} and set(rows.slide_secondary) == {s}
        assert set(rows.slide_primary_label) == {data.GRADE_TO_LABEL[p]}
    fr = index[list(data.FRACTION_COLUMNS)].to_numpy()
    assert np.allclose(fr.sum(1), 1)
    # the one-hot tile label is the mask's majority cancer grade (SICAPv2's rule)
    assert (index.tile_label == [data.tile_label(f) for f in fr]).all() and (index.mask_label == index.tile_label).all()
    # a 0+0 slide is all non-cancer
    assert (index[index.slide_primary == 0].frac_NC == 1).all()


def test_fold_split_is_patient_wise(sicap):
    index, _ = data.build_index(sicap, progress=False)
    for k in range(1, 5):
        parts = data.fold_split(index, k)
        assert len(parts["val"]) > 0 and not set(parts["train"].patient_id) & set(parts["val"].patient_id)
        assert not set(parts["train"].patient_id) & set(parts["test"].patient_id)
        assert len(parts["train"]) + len(parts["val"]) == (index.split == "train").sum()
    assert len(data.fold_split(index, 0)["val"]) == 0
    with pytest.raises(data.DataError, match="fold 7"):
        data.fold_split(index, 7)


def test_mask_mapping():
    m = np.array([[0, 3], [4, 5]], np.uint8)
    assert data.mask_to_labels(m).tolist() == [[0, 1], [2, 3]]
    with pytest.raises(data.DataError, match=r"unexpected mask values \[1, 2\]"):
        data.mask_to_labels(np.array([[0, 1, 2, 3]], np.uint8), "m.png")


def test_jpg_masks_are_snapped(tmp_path):
    root = write_sicap(tmp_path / "S", mask_ext=".jpg")
    index, _ = data.build_index(root, progress=False)
    assert index.mask_path.str.endswith(".jpg").all()
    m = data.load_mask(index.mask_path.iloc[0])
    assert set(np.unique(m)) <= {0, 1, 2, 3}
    # regions JPEG can hold (8x8 blocks), dotted with noise: each noisy pixel snaps to the nearest value
    blocks = np.kron(np.array([[0, 3, 5, 4]], np.uint8), np.ones((8, 8), np.uint8))
    blocks[0, 0], blocks[0, 8], blocks[7, 15], blocks[7, 16], blocks[0, 23], blocks[7, 31] = 1, 2, 4, 6, 7, 3
    snapped = data.mask_to_labels(blocks, "x.jpg", lossy=True)
    assert (snapped == np.kron(np.array([[0, 1, 3, 2]]), np.ones((8, 8)))).all()
    with pytest.raises(data.DataError, match="not near 0/3/4/5"):
        data.mask_to_labels(np.array([[0, 128]], np.uint8), "x.jpg", lossy=True)


def annotation_like(size: int = 128) -> np.ndarray:
    """A 0/3/4/5 mask with smooth annotator-like regions: a GG4 blob on non-cancer with a GG3
    island, and a GG5 region along a diagonal, so there are 0/4, 0/5, 3/4 and 4/5 edges."""
    yy, xx = np.mgrid[:size, :size] / size
    m = np.zeros((size, size), np.uint8)
    m[(yy - 0.45) ** 2 + (xx - 0.4) ** 2 < 0.09] = 4
    m[(yy - 0.4) ** 2 + (xx - 0.35) ** 2 < 0.012] = 3
    m[yy + xx > 1.45] = 5
    return m


def as_jpeg(m: np.ndarray, path: Path, quality: int) -> Path:
    Image.fromarray(m).save(path, quality=quality)
    return path


@pytest.mark.parametrize("quality", [95, 75])
def test_lossy_masks_gain_no_label_and_are_not_rejected(tmp_path, quality):
    """JPEG ringing along a 0/4 edge decodes as a thin band of 3 and specks of 5: snapping pixel
    by pixel would invent GG3/GG5 (q95) or reject the mask (q75)."""
    disk = np.array(data.MASK_VALUES, np.uint8)
    yy, xx = np.mgrid[:128, :128]
    gg5_disk = np.where((yy - 60) ** 2 + (xx - 60) ** 2 < 900, 5, 0).astype(np.uint8)  # q75 rings up to 8
    for m in (annotation_like(), annotation_like()[:, ::-1].T, np.where(annotation_like() == 3, 0, annotation_like()),
              gg5_disk):
        labels, changed = data.read_mask(as_jpeg(m, tmp_path / "m.jpg", quality))
        assert set(disk[np.unique(labels)].tolist()) == set(np.unique(m).tolist())
        assert (disk[labels] != m).mean() < (0.005 if quality == 95 else 0.02)  # the regions stay where drawn
        raw = np.asarray(Image.open(tmp_path / "m.jpg"))
        assert changed == pytest.approx((raw != disk[labels]).mean()) and 0 < changed < 0.15
    # a small region that JPEG can hold (two blocks wide) survives
    m = np.zeros((64, 64), np.uint8)
    m[21:37, 19:35] = 3
    labels, _ = data.read_mask(as_jpeg(m, tmp_path / "m.jpg", quality))
    assert (disk[labels] == m).mean() > 0.99 and set(np.unique(labels).tolist()) == {0, 1}


def test_low_jpeg_quality_is_an_error_not_a_shifted_grade(tmp_path, sicap):
    # below quality ~74 whole blocks drift by a grade (at 60 a flat GG4 region decodes as 5):
    # no snapping can see that, so such a file is refused
    m = annotation_like()
    for q in (74, 75, 95):
        data.read_mask(as_jpeg(m, tmp_path / "m.jpg", q))
    for q in (72, 60):
        with pytest.raises(data.DataError, match=r"m.jpg: saved at too low a JPEG quality \(DC quantisation step "
                                                 r"\d+ > 8\)"):
            data.read_mask(as_jpeg(m, tmp_path / "m.jpg", q))
    # in an index it is a bad file like any other
    p = first_image(sicap)
    Image.fromarray(m[:32, :32]).save(sicap / "masks" / f"{p.stem}.jpg", quality=50)
    (sicap / "masks" / f"{p.stem}.png").unlink()
    _, skipped = data.build_index(sicap, on_bad_file="skip", progress=False)
    assert skipped.frame().file.tolist() == [str(p)] and "too low a JPEG quality" in skipped.rows[0]["problem"]


def test_index_records_the_mask_pixels_changed(tmp_path, sicap):
    from discnb.pipelines import prep
    exact, _ = data.build_index(sicap, progress=False)
    assert (exact.mask_changed == 0).all()
    p = first_image(sicap)
    mask = sicap / "masks" / (p.stem + ".png")
    yy, xx = np.mgrid[:32, :32]
    Image.fromarray(np.where(yy + xx > 30, 4, 0).astype(np.uint8)).save(mask.with_suffix(".jpg"), quality=90)
    mask.unlink()
    index, _ = data.build_index(sicap, progress=False)
    changed = index.set_index("image_name").mask_changed
    assert 0 < changed[p.name] < 0.2 and (changed.drop(p.name) == 0).all()
    raw = np.asarray(Image.open(mask.with_suffix(".jpg")))
    assert changed[p.name] == pytest.approx((raw != np.array(data.MASK_VALUES)[data.load_mask(mask.with_suffix(".jpg"))]).mean())
    mask.with_suffix(".jpg").unlink()
    exact, skipped = data.build_index(sicap, masks="optional", progress=False)
    prep.write_index(exact, skipped, tmp_path)
    back = prepared.read_index(tmp_path)
    assert back.mask_changed.dtype == float and back.mask_changed.isna().sum() == 1


def test_a_picture_saved_as_a_jpg_mask_is_rejected(tmp_path):
    grey = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    with pytest.raises(data.DataError, match=r"m.jpg: mask values up to \d+ are not near 0/3/4/5"):
        data.read_mask(as_jpeg(grey, tmp_path / "m.jpg", 90))
    with pytest.raises(data.DataError, match=r"m.jpg: mask is colour"):
        data.read_mask(as_jpeg(np.full((32, 32, 3), (0, 12, 5), np.uint8), tmp_path / "m.jpg", 90))
    # a grey mask saved as an RGB JPEG is still a mask
    rgb = np.stack([annotation_like()] * 3, -1)
    assert set(np.unique(data.read_mask(as_jpeg(rgb, tmp_path / "m.jpg", 90))[0]).tolist()) == {0, 1, 2, 3}


def test_csv_tables_are_accepted(sicap):
    # the real sample ships csv copies under csv/: a folder with only those must load too
    for x in sicap.rglob("*.xlsx"):
        rel = x.relative_to(sicap).with_suffix(".csv")
        (sicap / "csv" / rel).parent.mkdir(parents=True, exist_ok=True)
        pd.read_excel(x).to_csv(sicap / "csv" / rel, index=False)
        x.unlink()
    index, _ = data.build_index(sicap, progress=False)
    assert len(index) == len(SLIDES) * TILES_PER_SLIDE


def test_load_tiles_resizes_images_and_masks(sicap):
    index, _ = data.build_index(sicap, progress=False)
    imgs, masks = data.load_tiles(index.iloc[:4], 16, progress=False)
    assert imgs.shape == (4, 16, 16, 3) and masks.shape == (4, 16, 16)
    assert set(np.unique(masks)) <= {0, 1, 2, 3}


def test_class_table(sicap):
    index, _ = data.build_index(sicap, progress=False)
    t = data.class_table(index)
    assert t.loc["train", "slides"] == 4 and t.loc["test", "patients"] == 2
    assert t[[f"tiles_{n}" for n in ("NC", "GG3", "GG4", "GG5")]].to_numpy().sum() == len(index)


@pytest.mark.skipif(not REAL_SAMPLE.exists(), reason="real SICAPv2 sample not on this machine")
def test_real_sicapv2_sample_files():
    """The loader against the real SICAPv2 metadata and 10 real patches (no masks there)."""
    wsi = data.read_wsi_labels(REAL_SAMPLE)
    assert len(wsi) == 155 and wsi.patient_id.nunique() == 95 and ((wsi.Gleason_primary == 0).sum() == 36)
    parts = data.read_partitions(REAL_SAMPLE)
    assert (parts.split == "train").sum() == 9959 and (parts.split == "test").sum() == 2122
    assert sorted((parts[parts.split == "train"].cv_fold.value_counts()).tolist()) == sorted([2487, 2166, 1793, 3513])
    index, skipped = data.build_index(REAL_SAMPLE, on_bad_file="skip", masks="optional", progress=False)
    truth = pd.read_csv(REAL_SAMPLE / "images_labels.csv", dtype={"patient_id": str})
    listed = truth[truth.official_split != "not_in_partition"].set_index("image_name")
    assert sorted(index.image_name) == sorted(listed.index)
    for r in index.itertuples():
        t = listed.loc[r.image_name]
        assert r.split == t.official_split.replace("official_", "")
        assert r.patient_id == t.patient_id and r.slide_primary == t.Gleason_primary
        assert r.tile_label == int(np.argmax([t.NC, t.G3, t.G4, t.G5]))
        if r.split == "train":
            assert f"Val{r.cv_fold}" == t.cv_fold_as_val
        assert (r.width, r.height) == (512, 512)
    assert len(skipped) == len(parts) - len(index)
    assert skipped.frame().problem.str.contains("image file is absent").all()


# ------------------------------------------------------------------------------ bad input
def test_not_sicap_shaped(tmp_path):
    with pytest.raises(data.DataError, match="not a folder"):
        data.build_index(tmp_path / "nope", progress=False)
    (tmp_path / "x").mkdir()
    with pytest.raises(data.DataError, match=r"not SICAPv2-shaped: no images/ folder; no wsi_labels.xlsx"):
        data.build_index(tmp_path / "x", progress=False)


def test_truncated_image(sicap):
    p = first_image(sicap)
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(data.DataError, match=f"{p.name}: unreadable image"):
        data.build_index(sicap, progress=False)
    index, skipped = data.build_index(sicap, on_bad_file="skip", progress=False)
    assert len(index) == len(SLIDES) * TILES_PER_SLIDE - 1
    assert skipped.frame().file.tolist() == [str(p)] and "unreadable image" in skipped.rows[0]["problem"]


@pytest.mark.parametrize("mode", ["L", "LA", "I;16"])
def test_grayscale_image_is_a_bad_file(sicap, mode):
    # SICAPv2 patches are RGB: a grey one would reach the models as three identical channels
    p = first_image(sicap)
    grey = Image.open(p).convert("L")
    p = p.with_suffix(".png") if mode != "L" else p  # JPEG has no LA or 16-bit grey
    if p.suffix == ".png":
        first_image(sicap).unlink()
        _rename_in_partitions(sicap, p.stem + ".jpg", p.name)
    grey.convert(mode).save(p)
    with pytest.raises(data.DataError, match=rf"{p.name}: grayscale image \(mode {mode}\)"):
        data.build_index(sicap, progress=False)
    index, skipped = data.build_index(sicap, on_bad_file="skip", progress=False)
    assert p.name not in set(index.image_name) and len(index) == len(SLIDES) * TILES_PER_SLIDE - 1
    assert skipped.frame().file.tolist() == [str(p)] and "grayscale" in skipped.rows[0]["problem"]
    with pytest.raises(data.DataError, match="grayscale"):
        data.load_image(p)
    # colour modes other than RGB are still read as RGB
    Image.new("RGBA", (4, 4), (200, 90, 160, 255)).save(sicap / "rgba.png")
    assert data.load_image(sicap / "rgba.png").mode == "RGB"
    grey.convert("P").save(sicap / "grey_palette.png")
    with pytest.raises(data.DataError, match=r"grey_palette.png: grayscale image \(mode P, grey palette\)"):
        data.load_image(sicap / "grey_palette.png")
    Image.new("RGB", (4, 4), (200, 90, 160)).convert("P").save(sicap / "colour_palette.png")
    assert data.load_image(sicap / "colour_palette.png").mode == "RGB"


def _rename_in_partitions(root: Path, old: str, new: str) -> None:
    for x in (root / "partition").rglob("*.xlsx"):
        df = pd.read_excel(x)
        df["image_name"] = df.image_name.replace(old, new)
        df.to_excel(x, index=False)


def test_missing_mask(sicap):
    p = first_image(sicap)
    (sicap / "masks" / (p.stem + ".png")).unlink()
    with pytest.raises(data.DataError, match=f"{p.stem}.png: mask missing"):
        data.build_index(sicap, progress=False)
    index, _ = data.build_index(sicap, masks="optional", progress=False)
    assert index.loc[index.image_name == p.name, "mask_path"].item() == ""


def test_size_mismatch(sicap):
    p = first_image(sicap)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(sicap / "masks" / (p.stem + ".png"))
    with pytest.raises(data.DataError, match=r"mask is 8x8 but image .* is 32x32"):
        data.build_index(sicap, progress=False)


def test_unexpected_mask_values(sicap):
    p = first_image(sicap)
    Image.fromarray(np.full((32, 32), 2, np.uint8)).save(sicap / "masks" / (p.stem + ".png"))
    with pytest.raises(data.DataError, match=rf"{p.stem}.png: unexpected mask values \[2\]"):
        data.build_index(sicap, progress=False)


def test_partition_row_naming_absent_file(sicap):
    p = first_image(sicap)
    p.unlink()
    with pytest.raises(data.DataError, match=f"{p.name}: listed in the partition files but the image file is absent"):
        data.build_index(sicap, progress=False)


def test_bad_tables(sicap):
    t = sicap / "partition" / "Test" / "Train.xlsx"
    df = pd.read_excel(t)
    df.drop(columns=["G5"]).to_excel(t, index=False)
    with pytest.raises(data.DataError, match=r"Train.xlsx: missing column\(s\) \['G5'\]"):
        data.build_index(sicap, progress=False)
    df.assign(G5=1).to_excel(t, index=False)
    with pytest.raises(data.DataError, match="do not have exactly one"):
        data.build_index(sicap, progress=False)
    t.write_bytes(b"not a spreadsheet")
    with pytest.raises(data.DataError, match="Train.xlsx: cannot be read as a table"):
        data.build_index(sicap, progress=False)


def test_bad_slide_labels(sicap):
    w = sicap / "wsi_labels.xlsx"
    df = pd.read_excel(w)
    df.assign(Gleason_primary=2).to_excel(w, index=False)
    with pytest.raises(data.DataError, match="Gleason_primary must hold 0, 3, 4 or 5; found \\[2\\]"):
        data.build_index(sicap, progress=False)
    df.iloc[1:].to_excel(w, index=False)
    with pytest.raises(data.DataError, match="belongs to slide 16B0000001, which wsi_labels.xlsx does not list"):
        data.build_index(sicap, progress=False)


def test_patient_leak_is_an_error(sicap):
    w = sicap / "wsi_labels.xlsx"
    df = pd.read_excel(w, dtype={"patient_id": str})
    df.loc[df.slide_id == "18B0000005", "patient_id"] = "1001"  # a test slide of a train patient
    df.to_excel(w, index=False)
    with pytest.raises(data.DataError, match=r"patient\(s\) \['1001'\] appear in both"):
        data.build_index(sicap, progress=False)


def test_image_in_two_folds(sicap):
    v1 = sicap / "partition" / "Validation" / "Val1" / "Test.xlsx"
    v2 = sicap / "partition" / "Validation" / "Val2" / "Test.xlsx"
    pd.concat([pd.read_excel(v2), pd.read_excel(v1).iloc[:1]]).to_excel(v2, index=False)
    with pytest.raises(data.DataError, match="Test set of both Val1 and Val2"):
        data.build_index(sicap, progress=False)


def test_missing_folds_warn(sicap):
    shutil.rmtree(sicap / "partition" / "Validation")
    with pytest.warns(UserWarning, match="cross-validation folds unavailable"):
        index, _ = data.build_index(sicap, progress=False)
    assert set(index.cv_fold[index.split == "train"]) == {-1}


def test_skip_everything_is_still_an_error(sicap):
    for p in (sicap / "images").glob("*.jpg"):
        os.remove(p)
    with pytest.raises(data.DataError, match="no usable patch"):
        data.build_index(sicap, on_bad_file="skip", progress=False)


def test_bad_options(sicap):
    with pytest.raises(ValueError, match="on_bad_file"):
        data.build_index(sicap, on_bad_file="ignore")
    with pytest.raises(ValueError, match="masks must be"):
        data.build_index(sicap, masks="maybe")
