"""PANDA as the out-of-distribution set (Sec. 3) and the generic tile-folder loader, on tiny TIFFs written here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from discnb.data import panda

# fake slides: id -> (provider, gleason_score, isup)
SLIDES = {"a01": ("radboud", "negative", 0), "a02": ("radboud", "3+4", 2), "a03": ("karolinska", "4+5", 5),
          "a04": ("radboud", "5+5", 5), "a05": ("karolinska", "0+0", 0), "a06": ("radboud", "3+3", 1)}


def write_pyramid(path, arr, factor=4):
    """A 2-level TIFF (level 0 and a 1/factor copy), as PANDA's pyramids (their levels are 1/4 apart)."""
    im = Image.fromarray(arr)
    small = im.resize((arr.shape[1] // factor, arr.shape[0] // factor),
                      Image.NEAREST if arr.ndim == 2 or arr.max() < 8 else Image.BILINEAR)
    im.save(path, save_all=True, append_images=[small], compression="tiff_deflate")


def fake_panda(root, h=256, w=512):
    """Tissue (pink) on the left half of each slide, white glass on the right; Radboud masks with
    Gleason 3 on the top-left quarter and 4 (or the slide's grade) on the bottom-left quarter."""
    (root / "train_images").mkdir(parents=True)
    (root / "train_label_masks").mkdir()
    rows = []
    rng = np.random.default_rng(0)
    for sid, (prov, score, isup) in SLIDES.items():
        img = np.full((h, w, 3), 242, np.uint8)
        img[:, : w // 2] = (np.array([205, 95, 160]) + rng.integers(-10, 10, (h, w // 2, 3))).clip(0, 255)
        write_pyramid(root / "train_images" / f"{sid}.tiff", img)
        m = np.zeros((h, w, 3), np.uint8)
        p, s = panda.parse_gleason(score)
        m[:, : w // 2, 0] = 2 if prov == "radboud" else 1  # benign epithelium / benign tissue
        if p:
            m[: h // 2, : w // 2, 0] = p if prov == "radboud" else 2
            m[h // 2:, : w // 2, 0] = s if prov == "radboud" else 2
        write_pyramid(root / "train_label_masks" / f"{sid}_mask.tiff", m)
        rows.append({"image_id": sid, "data_provider": prov, "isup_grade": isup, "gleason_score": score})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root


def test_gleason_scores_and_train_csv(tmp_path):
    assert panda.parse_gleason("negative") == (0, 0) and panda.parse_gleason("0+0") == (0, 0)
    assert panda.parse_gleason(" 4+3 ") == (4, 3)
    for bad in ("3+6", "7", "", "nan"):
        with pytest.raises(panda.PandaError, match="gleason_score"):
            panda.parse_gleason(bad)
    df = panda.read_train_csv(fake_panda(tmp_path / "P"))
    assert df.set_index("image_id").loc["a02", ["primary", "secondary", "primary_label", "secondary_label"]].tolist() == [3, 4, 1, 2]
    assert df.set_index("image_id").loc["a01", ["primary_label", "secondary_label"]].tolist() == [0, 0]
    pd.DataFrame({"image_id": ["x"], "data_provider": ["r"], "isup_grade": [1], "gleason_score": ["3+9"]}).to_csv(
        tmp_path / "train.csv", index=False)
    with pytest.raises(panda.PandaError, match="line 2"):
        panda.read_train_csv(tmp_path)
    with pytest.raises(FileNotFoundError, match="train.csv"):
        panda.read_train_csv(tmp_path / "nowhere")


def test_balanced_selection_covers_every_label():
    rng = np.random.default_rng(0)
    scores = rng.choice(["negative", "3+3", "3+4", "4+3", "4+4", "4+5", "5+4", "5+5"], 400,
                        p=[0.3, 0.2, 0.15, 0.1, 0.1, 0.08, 0.05, 0.02])
    df = pd.DataFrame({"image_id": [f"s{i}" for i in range(400)], "gleason_score": scores})
    g = np.array([panda.parse_gleason(s) for s in scores])
    df["primary_label"] = pd.Series(g[:, 0]).map(panda.GRADE_TO_LABEL)
    df["secondary_label"] = pd.Series(g[:, 1]).map(panda.GRADE_TO_LABEL)
    sel = panda.balanced_selection(df, 20, seed=0)
    per = panda.slide_label_sets(sel).sum(0)
    assert (per >= 20).all() and sel.image_id.is_unique
    assert len(sel) < 80  # slides with two labels count for both
    assert panda.balanced_selection(df, 20, seed=0).image_id.tolist() == sel.image_id.tolist()  # seeded
    few = panda.balanced_selection(df.iloc[:10], 50, seed=0)  # fewer than asked: every slide with the label
    assert len(few) == 10


def test_otsu_and_tissue_mask():
    vals = np.concatenate([np.full(500, 20), np.full(500, 200)]).astype(np.uint8)
    t = panda.otsu_threshold(vals)
    assert 20 <= t < 200
    img = np.full((40, 40, 3), 245, np.uint8)
    img[:, :20] = (200, 90, 160)
    m = panda.tissue_mask(img)
    assert m[:, :18].all() and not m[:, 22:].any()


def test_tiling_at_sicap_magnification_with_masks(tmp_path):
    root = fake_panda(tmp_path / "P")
    # level 0 at 0.5 µm/px, 64-px tiles at 1 µm/px = 128 level-0 px: a 2 x 4 grid, tissue in the left 2 columns
    tiles = panda.tile_slide(root / "train_images" / "a02.tiff", root / "train_label_masks" / "a02_mask.tiff",
                             tile_px=64, target_mpp=1.0, base_mpp=0.5)
    assert [(t["y"], t["x"]) for t in tiles] == [(0, 0), (0, 128), (128, 0), (128, 128)]
    assert all(t["tile"].shape == (64, 64, 3) and t["tissue"] == 1.0 for t in tiles)
    assert [np.unique(t["mask"]).tolist() for t in tiles] == [[3], [3], [4], [4]]  # SICAPv2 values
    capped = panda.tile_slide(root / "train_images" / "a02.tiff", None, tile_px=64, max_tiles=3, seed=1)
    assert len(capped) == 3 and capped[0]["mask"] is None
    assert sorted((t["y"], t["x"]) for t in capped) == [(t["y"], t["x"]) for t in capped]  # grid order
    # at 2 µm/px the 1/4 level (2 µm/px) serves, read without resizing
    coarse = panda.tile_slide(root / "train_images" / "a02.tiff", None, tile_px=32, target_mpp=2.0, base_mpp=0.5)
    assert len(coarse) == 4 and coarse[0]["tile"].shape == (32, 32, 3)


def test_prepare_panda_writes_a_balanced_tile_folder_and_resumes(tmp_path):
    root = fake_panda(tmp_path / "P")
    out = panda.prepare_panda(root, tmp_path / "tiles", n_per_label=2, tile_px=64, progress=False)
    slides = pd.read_csv(out / "slides.csv", dtype={"slide_id": str})
    y = panda.slide_label_sets(slides.assign(primary_label=slides.primary.map(panda.GRADE_TO_LABEL),
                                             secondary_label=slides.secondary.map(panda.GRADE_TO_LABEL)))
    assert (y.sum(0) >= 2).all()  # every label in at least 2 slides (each has exactly 2 here)
    idx = panda.read_tile_folder(out)
    assert set(idx.slide_id) == set(slides.slide_id) and (idx.groupby("slide_id").size() == 4).all()
    a02 = idx[idx.slide_id == "a02"]
    assert a02.mask_path.astype(bool).all() and sorted(a02.tile_label.tolist()) == [1, 1, 2, 2]
    assert (a02.slide_primary_label == 1).all() and (a02.slide_secondary_label == 2).all()
    karo = idx[idx.slide_id.isin(["a03", "a05"])]
    assert not karo.mask_path.astype(bool).any()  # Karolinska masks carry no grade: not written
    assert (idx.split == "test").all() and set(idx.columns) >= {"image_path", "patient_id", "frac_GG5", "cv_fold"}
    # rerun: finished slides are not tiled again
    stamp = {p: p.stat().st_mtime_ns for p in (out / "tiles").rglob("*.png")}
    panda.prepare_panda(root, tmp_path / "tiles", n_per_label=2, tile_px=64, progress=False)
    assert {p: p.stat().st_mtime_ns for p in (out / "tiles").rglob("*.png")} == stamp


def test_generic_folder_grades_from_masks_and_errors(tmp_path):
    root = tmp_path / "lapc"
    for sid, vals in {"s1": (0, 4, 4, 3), "s2": (0, 0, 0, 0), "s3": (5, 5, 5, 5)}.items():
        (root / "tiles" / sid).mkdir(parents=True)
        (root / "masks" / sid).mkdir(parents=True)
        for i, v in enumerate(vals):
            Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(root / "tiles" / sid / f"{sid}_{i}.png")
            Image.fromarray(np.full((8, 8), v, np.uint8)).save(root / "masks" / sid / f"{sid}_{i}.png")
    idx = panda.read_tile_folder(root)
    g = idx.drop_duplicates("slide_id").set_index("slide_id")
    assert g.loc["s1", ["slide_primary", "slide_secondary"]].tolist() == [4, 3]
    assert g.loc["s2", ["slide_primary", "slide_secondary"]].tolist() == [0, 0]
    assert g.loc["s3", ["slide_primary", "slide_secondary", "slide_primary_label"]].tolist() == [5, 5, 3]
    assert panda.labels_from_masks(np.array([0.5, 0.0, 0.3, 0.2])) == (4, 5)
    # slides.csv wins over the masks; a slide in neither is an error naming what to add
    pd.DataFrame({"slide_id": ["s1"], "gleason_score": ["3+3"]}).to_csv(root / "slides.csv", index=False)
    assert panda.read_tile_folder(root).set_index("slide_id").loc["s1", "slide_primary"].iloc[0] == 3
    (root / "masks" / "s2" / "s2_0.png").unlink()
    with pytest.raises(panda.PandaError, match="s2 has no row in slides.csv"):
        panda.read_tile_folder(root)
    with pytest.raises(FileNotFoundError, match="tiles/<slide_id>"):
        panda.read_tile_folder(tmp_path / "empty")
    assert panda.tile_coords(["a_xini_10_yini_20.png", "a_xini_30_yini_20.png"]).tolist() == [[20, 10], [20, 30]]
    assert panda.tile_coords(["a.png"]) is None


def test_tile_label_is_sicap_rule_in_both_loaders(tmp_path, caplog):
    """One definition of a tile's label: SICAPv2's majority cancer grade, in
    notebook 00's index and in the generic tile-folder loader (PANDA, LAPC) alike."""
    from discnb.data import sicap as data
    from sicap_fixture import write_sicap
    assert data.tile_label([0.7, 0.1, 0.2, 0.0]) == 2  # non-cancer is not a candidate beside cancer
    assert data.tile_label([1.0, 0, 0, 0]) == 0 and data.tile_label([0.2, 0.4, 0.0, 0.4]) == 1  # tie: lower grade
    root = write_sicap(tmp_path / "S")
    name = sorted((root / "images").glob("16B0000001_*"))[0]
    m = np.zeros((32, 32), np.uint8)
    m[:10, :20] = 4  # ~20% GG4
    m[28:, :] = 3    # ~12% GG3, the rest (~68%) non-cancer
    Image.fromarray(m).save(root / "masks" / f"{name.stem}.png")
    for x in (root / "partition").rglob("*.xlsx"):  # SICAPv2 lists such a patch as G4
        df = pd.read_excel(x)
        sel = df.image_name == name.name
        df.loc[sel, ["NC", "G3", "G4", "G5"]] = [0, 0, 1, 0]
        df.to_excel(x, index=False)
    index, _ = data.build_index(root, progress=False)
    folder = panda.read_tile_folder(root)
    assert index.set_index("image_name").loc[name.name, ["tile_label", "mask_label"]].tolist() == [2, 2]
    assert folder.set_index("image_name").loc[name.name, "tile_label"] == 2
    both = index.merge(folder, on="image_name", suffixes=("", "_folder"))
    assert len(both) == len(index) and (both.tile_label == both.tile_label_folder).all()
    assert (index.tile_label == index.mask_label).all()
    # a partition label that the mask contradicts is kept (it is the dataset's) but reported
    for x in (root / "partition").rglob("*.xlsx"):
        df = pd.read_excel(x)
        df.loc[df.image_name == name.name, ["NC", "G3", "G4", "G5"]] = [1, 0, 0, 0]
        df.to_excel(x, index=False)
    with caplog.at_level("WARNING"):
        index, _ = data.build_index(root, progress=False)
    assert index.set_index("image_name").loc[name.name, ["tile_label", "mask_label"]].tolist() == [0, 2]
    assert f"1 patch(es) whose partition label differs from their mask's majority cancer grade, e.g. {name.name}" in caplog.text


def test_thin_biopsy_keeps_its_cells_at_the_default_min_tissue(tmp_path):
    """A needle core thinner than a tile: every grid cell it crosses is ~45%
    tissue. SICAPv2 kept patches with > 20% tissue and CLAM has no tissue-fraction threshold, so
    the default must keep them (0.5 kept 3 of 14 cells of a real thin biopsy)."""
    cells, src = 14, 128  # 64-px tiles at 1 µm/px = 128 level-0 px at 0.5 µm/px
    rng = np.random.default_rng(0)
    img = np.full((2 * src, cells * src, 3), 242, np.uint8)
    band = int(0.45 * src)
    img[:band] = (np.array([205, 95, 160]) + rng.integers(-10, 10, (band, cells * src, 3))).clip(0, 255)
    write_pyramid(tmp_path / "thin.tiff", img)
    tiles = panda.tile_slide(tmp_path / "thin.tiff", tile_px=64)
    assert [(t["y"], t["x"]) for t in tiles] == [(0, c * src) for c in range(cells)]
    assert all(0.4 < t["tissue"] < 0.5 for t in tiles)
    # the cells without tissue are still dropped, and the CLI and prepare_panda share the default
    assert panda.tile_slide(tmp_path / "thin.tiff", tile_px=64, min_tissue=0.5) == []
    import inspect
    assert inspect.signature(panda.prepare_panda).parameters["min_tissue"].default == panda.MIN_TISSUE == \
        inspect.signature(panda.tile_slide).parameters["min_tissue"].default
