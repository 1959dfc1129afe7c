"""Out-of-distribution slides: PANDA, and a generic "folder of tiles (+ masks)" (paper Sec. 3).

The paper tests its slide-level models on "a balanced test set with 100 WSIs for each label from
out-of-distribution PANDA", tiled with CLAM's tissue detection and tile extraction. This module:

* reads PANDA's ``train.csv`` (image_id, data_provider, isup_grade, gleason_score; "negative" =
  0+0) into Gleason primary/secondary grades and the paper's labels 0..3;
* picks a **balanced test set**: slides are added at random, rarest label first, until every label
  (NC, GG3, GG4, GG5 as primary or secondary) is present in ``n_per_label`` slides (a slide counts
  for every label it has, so a label may end up with more);
* finds tissue on the lowest pyramid level (CLAM's recipe: HSV saturation, median blur 7, then a
  threshold: Otsu's here, CLAM's ``use_otsu`` option; CLAM's default is a fixed 8) and cuts a
  grid of tiles at SICAPv2's magnification (``target_mpp`` ≈ 1 µm/px; PANDA's level 0 is ≈ 0.5
  µm/px, so a 512-px tile covers 1024 level-0 pixels), keeps tiles with at least
  ``min_tissue`` tissue (:data:`MIN_TISSUE` = 0.2, SICAPv2's own patch selection), at most
  ``max_tiles`` per slide (a seeded random choice, kept in grid order);
* optional ``train_label_masks/<id>_mask.tiff`` (labels in the red channel): Radboud's 3/4/5 are
  Gleason 3/4/5 and 0/1/2 (background, stroma, benign epithelium) non-cancer, written as SICAPv2's
  mask values 0/3/4/5; Karolinska's masks (0 background, 1 benign, 2 cancer without a grade) cannot
  give grades and are not written;
* writes a **generic tile folder** that :func:`read_tile_folder` reads (as does any folder of that
  layout, e.g. LAPC)::

      root/slides.csv                 slide_id, primary, secondary (Gleason 0/3/4/5), [patient_id, ...]
      root/tiles/<slide_id>/<name>.png
      root/masks/<slide_id>/<name>.png   optional; pixel values 0/3/4/5 as SICAPv2

Pyramid levels are read with Pillow (libtiff), one whole level at a time: a PANDA level 0 can be
several GB of RGB, so memory, not speed, limits this step (openslide would read regions; it is not
a dependency). Slides are processed one by one and each finished slide is marked, so an
interrupted run resumes. ``python -m discnb.data.panda ROOT OUT [--n-per-label N ...]`` runs it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.ndimage import median_filter
from tqdm.auto import tqdm

from discnb import K, LABELS
from discnb.core.io import atomic_file

from discnb.data import sicap as data

GRADE_TO_LABEL = data.GRADE_TO_LABEL
RADBOUD_TO_MASK = np.array([0, 0, 0, 3, 4, 5] + [0] * 250, np.uint8)  # red-channel value -> SICAPv2 mask value
COORD_RE = re.compile(r"xini_(\d+)_yini_(\d+)")
# Least tissue fraction of a kept grid cell. SICAPv2's own patches were kept at > 20 % tissue (its
# readme), so 0.2 selects OOD tiles as the training tiles were selected. CLAM (create_patches_fp.py)
# has no fraction threshold at all: its default contour_fn "four_pt" keeps a patch when any of four
# points (centre +- a quarter tile) lies in a tissue contour. 0.5 dropped most cells of thin needle
# biopsies, which cross a fixed grid at 0.4-0.5 tissue per cell.
MIN_TISSUE = 0.2


class PandaError(ValueError):
    """A PANDA file or row that cannot be used, named with its problem."""


# ===================================================================================== labels
def parse_gleason(score) -> tuple[int, int]:
    """PANDA's ``gleason_score`` -> (primary, secondary) Gleason grades: "negative" and "0+0" are
    (0, 0); "3+4" is (3, 4)."""
    s = str(score).strip().lower()
    if s in ("negative", "0+0"):
        return 0, 0
    m = re.fullmatch(r"([345])\+([345])", s)
    if not m:
        raise PandaError(f"gleason_score {score!r} is not 'negative' or 'a+b' with a, b in 3..5")
    return int(m.group(1)), int(m.group(2))


def read_train_csv(root: str | Path) -> pd.DataFrame:
    """PANDA's ``train.csv`` with the grades parsed: adds primary, secondary (0/3/4/5) and
    primary_label, secondary_label (0..3). Rows with an unparsable score are an error naming them."""
    path = Path(root) / "train.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no PANDA train.csv (expected columns image_id, data_provider, isup_grade, "
                                "gleason_score)")
    df = pd.read_csv(path, dtype={"image_id": str})
    missing = [c for c in ("image_id", "data_provider", "isup_grade", "gleason_score") if c not in df.columns]
    if missing:
        raise PandaError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    grades, bad = [], []
    for i, s in enumerate(df.gleason_score):
        try:
            grades.append(parse_gleason(s))
        except PandaError:
            grades.append((-1, -1))
            bad.append((i + 2, s))
    if bad:
        raise PandaError(f"{path}: {len(bad)} row(s) with an unusable gleason_score, e.g. line {bad[0][0]}: {bad[0][1]!r}")
    g = np.array(grades)
    df["primary"], df["secondary"] = g[:, 0], g[:, 1]
    df["primary_label"] = df.primary.map(GRADE_TO_LABEL)
    df["secondary_label"] = df.secondary.map(GRADE_TO_LABEL)
    return df


def slide_label_sets(df: pd.DataFrame) -> np.ndarray:
    """(n, K) 0/1: label i is the slide's primary or secondary pattern (the targets of Sec. 2.4)."""
    y = np.zeros((len(df), K), np.int64)
    rows = np.arange(len(df))
    y[rows, df.primary_label.to_numpy()] = 1
    y[rows, df.secondary_label.to_numpy()] = 1
    return y


def balanced_selection(df: pd.DataFrame, n_per_label: int, seed: int = 0) -> pd.DataFrame:
    """Slides such that every label is present in at least ``n_per_label`` of them (or in all
    slides that have it, when fewer exist): labels are filled rarest first, each by slides drawn at
    random (seeded) among those not yet chosen. Returns the chosen rows, in the order drawn."""
    y = slide_label_sets(df)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    taken = np.zeros(len(df), bool)
    for lab in np.argsort(y.sum(0), kind="stable"):
        have = int(y[taken, lab].sum())
        cand = np.flatnonzero((y[:, lab] == 1) & ~taken)
        need = max(0, n_per_label - have)
        pick = rng.permutation(cand)[:need]
        chosen += pick.tolist()
        taken[pick] = True
    return df.iloc[chosen]


# ===================================================================================== tiff
def open_levels(path: str | Path) -> list[tuple[int, int, int]]:
    """The pages of a (pyramidal) TIFF as (page, width, height), largest first."""
    Image.MAX_IMAGE_PIXELS = None  # whole-slide images are large on purpose
    try:
        with Image.open(path) as im:
            out = []
            for i in range(getattr(im, "n_frames", 1)):
                im.seek(i)
                out.append((i, im.size[0], im.size[1]))
    except (OSError, SyntaxError) as e:
        raise PandaError(f"{path}: unreadable TIFF ({e})") from None
    return sorted(out, key=lambda t: -t[1] * t[2])


def read_level(path: str | Path, page: int) -> np.ndarray:
    """One whole page as an array (RGB for slides, the raw channels for masks)."""
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(path) as im:
        im.seek(page)
        im.load()
        arr = np.asarray(im.convert("RGB") if im.mode not in ("L", "P", "RGB") else im)
    return arr


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 values (what cv2.THRESH_OTSU computes)."""
    hist = np.bincount(np.asarray(values, np.uint8).ravel(), minlength=256).astype(float)
    p = hist / max(hist.sum(), 1)
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma_b = (mu[-1] * omega - mu) ** 2 / (omega * (1 - omega))
    sigma_b = np.nan_to_num(sigma_b)
    return float(np.argmax(sigma_b))


def tissue_mask(rgb: np.ndarray, median: int = 7, sthresh: float | None = None) -> np.ndarray:
    """CLAM's tissue segmentation on a low-resolution level: saturation channel of HSV, median
    filter, threshold (Otsu when ``sthresh`` is None). Returns (H, W) bool."""
    sat = np.asarray(Image.fromarray(np.asarray(rgb, np.uint8)).convert("HSV"))[..., 1]
    sat = median_filter(sat, size=median) if median > 1 else sat
    t = otsu_threshold(sat) if sthresh is None else sthresh
    return sat > t


def tile_slide(image_path: str | Path, mask_path: str | Path | None = None, *, tile_px: int = 512,
               target_mpp: float = 1.0, base_mpp: float = 0.5, min_tissue: float = MIN_TISSUE,
               max_tiles: int = 100, seed: int = 0, sthresh: float | None = None) -> list[dict]:
    """Tiles of one slide at ``target_mpp`` µm/px, ``tile_px`` square, where tissue covers at least
    ``min_tissue``: a list of {x, y (level-0 px), tile (tile_px,tile_px,3) uint8, mask
    (tile_px,tile_px) uint8 SICAPv2 values or None, tissue}. At most ``max_tiles``, chosen at random
    (seeded) and returned in grid order (rows, then columns)."""
    levels = open_levels(image_path)
    _, w0, h0 = levels[0]
    # the pyramid level closest to (not coarser than) the target resolution
    usable = [lv for lv in levels if base_mpp * w0 / lv[1] <= target_mpp * 1.001] or levels[:1]
    page, wl, hl = usable[-1]
    level_mpp = base_mpp * w0 / wl
    src = int(round(tile_px * target_mpp / level_mpp))  # tile side in that level's pixels
    low_page, wlow, hlow = levels[-1]
    tissue = tissue_mask(read_level(image_path, low_page), sthresh=sthresh)
    sx, sy = wlow / w0, hlow / h0
    step0 = src * w0 / wl  # tile side in level-0 px
    cands = []
    for r in range(int(hl // src)):
        for c in range(int(wl // src)):
            x0, y0 = c * step0, r * step0
            t = tissue[int(y0 * sy):max(int(y0 * sy) + 1, int((y0 + step0) * sy)),
                       int(x0 * sx):max(int(x0 * sx) + 1, int((x0 + step0) * sx))]
            frac = float(t.mean()) if t.size else 0.0
            if frac >= min_tissue:
                cands.append((r, c, frac))
    if len(cands) > max_tiles:
        keep = np.random.default_rng(seed).choice(len(cands), max_tiles, replace=False)
        cands = [cands[i] for i in sorted(keep)]
    if not cands:
        return []
    img = read_level(image_path, page)
    msk = None
    if mask_path is not None:
        mlev = {(w, h): p for p, w, h in open_levels(mask_path)}
        if (wl, hl) not in mlev:
            raise PandaError(f"{mask_path}: no page of size {wl}x{hl} to match the slide level used")
        m = read_level(mask_path, mlev[(wl, hl)])
        msk = RADBOUD_TO_MASK[m[..., 0] if m.ndim == 3 else m]
    out = []
    for r, c, frac in cands:
        ys, xs = r * src, c * src
        tile = img[ys:ys + src, xs:xs + src]
        if src != tile_px:
            tile = np.asarray(Image.fromarray(tile).resize((tile_px, tile_px), Image.BICUBIC))
        mt = None
        if msk is not None:
            mt = msk[ys:ys + src, xs:xs + src]
            if src != tile_px:
                mt = np.asarray(Image.fromarray(mt).resize((tile_px, tile_px), Image.NEAREST))
        out.append({"x": int(round(c * step0)), "y": int(round(r * step0)), "tile": tile, "mask": mt, "tissue": frac})
    return out


# ============================================================================== PANDA -> folder
def prepare_panda(root: str | Path, out: str | Path, *, n_per_label: int = 100, max_tiles: int = 100,
                  tile_px: int = 512, target_mpp: float = 1.0, base_mpp: float = 0.5, min_tissue: float = MIN_TISSUE,
                  providers: tuple[str, ...] = (), seed: int = 0, progress: bool = True) -> Path:
    """PANDA (``root/train.csv``, ``root/train_images/<id>.tiff``, optional
    ``root/train_label_masks/<id>_mask.tiff``) -> a balanced generic tile folder ``out``.

    Finished slides (``tiles/<id>/done.json``) are not redone. Slides without tissue tiles are
    reported in ``skipped.csv`` and left out of ``slides.csv``.
    """
    root, out = Path(root), Path(out)
    df = read_train_csv(root)
    if providers:
        df = df[df.data_provider.isin(providers)]
    present = df.image_id.map(lambda i: (root / "train_images" / f"{i}.tiff").exists())
    if not present.any():
        raise FileNotFoundError(f"{root}/train_images: none of the {len(df)} slides of train.csv is there as <image_id>.tiff")
    df = df[present]
    sel = balanced_selection(df, n_per_label, seed)
    rows, skipped = [], []
    for rec in tqdm(sel.to_dict("records"), desc="PANDA slides", disable=not progress, mininterval=2):
        sid = rec["image_id"]
        tdir, mdir = out / "tiles" / sid, out / "masks" / sid
        done = tdir / "done.json"
        if done.exists():
            info = json.loads(done.read_text())
        else:
            mpath = root / "train_label_masks" / f"{sid}_mask.tiff"
            use_mask = mpath.exists() and str(rec["data_provider"]).lower() == "radboud"
            tiles = tile_slide(root / "train_images" / f"{sid}.tiff", mpath if use_mask else None, tile_px=tile_px,
                               target_mpp=target_mpp, base_mpp=base_mpp, min_tissue=min_tissue, max_tiles=max_tiles,
                               seed=seed)
            for d in (tdir, mdir):
                if d.exists():  # a half-written slide from an interrupted run
                    for f in d.iterdir():
                        f.unlink()
            tdir.mkdir(parents=True, exist_ok=True)
            for t in tiles:
                name = f"{sid}_xini_{t['x']}_yini_{t['y']}.png"
                Image.fromarray(t["tile"]).save(tdir / name)
                if t["mask"] is not None:
                    mdir.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(t["mask"]).save(mdir / name)
            info = {"n_tiles": len(tiles), "masks": bool(tiles and tiles[0]["mask"] is not None)}
            done.write_text(json.dumps(info))
        if info["n_tiles"] == 0:
            skipped.append({"slide_id": sid, "problem": "no tile with enough tissue"})
            continue
        rows.append({"slide_id": sid, "patient_id": sid, "primary": rec["primary"], "secondary": rec["secondary"],
                     "data_provider": rec["data_provider"], "isup_grade": rec["isup_grade"],
                     "gleason_score": rec["gleason_score"], "n_tiles": info["n_tiles"]})
    _write_csv(pd.DataFrame(rows), out / "slides.csv")
    if skipped:
        _write_csv(pd.DataFrame(skipped), out / "skipped.csv")
    return out


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_file(path, lambda tmp: df.to_csv(tmp, index=False))


# ============================================================================= generic folder
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def _tile_files(root: Path) -> list[tuple[str, Path]]:
    """(slide id, image path) for ``tiles/<slide>/*`` or, failing that, a flat ``images/`` folder
    whose names start with the slide id (SICAPv2 style ``<slide>_...``)."""
    if (root / "tiles").is_dir():
        return [(d.name, f) for d in sorted((root / "tiles").iterdir()) if d.is_dir()
                for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_EXTS]
    if (root / "images").is_dir():
        return [(data.slide_of(f.name), f) for f in sorted((root / "images").iterdir()) if f.suffix.lower() in IMAGE_EXTS]
    raise FileNotFoundError(f"{root}: no tiles/<slide_id>/ or images/ folder (the generic tile-folder layout)")


def _mask_for(root: Path, slide: str, img: Path) -> Path | None:
    for cand in (root / "masks" / slide / (img.stem + ".png"), root / "masks" / (img.stem + ".png")):
        if cand.exists():
            return cand
    return None


def labels_from_masks(fractions: np.ndarray) -> tuple[int, int]:
    """Slide (primary, secondary) Gleason grades from summed label pixel fractions (K,): the most
    and second most frequent cancer labels (secondary = primary when only one); 0+0 without cancer."""
    cancer = np.asarray(fractions, float)[1:]
    order = [i for i in np.argsort(-cancer, kind="stable") if cancer[i] > 0]
    grades = (3, 4, 5)
    if not order:
        return 0, 0
    return grades[order[0]], grades[order[1] if len(order) > 1 else order[0]]


def read_tile_folder(root: str | Path, progress: bool = False) -> pd.DataFrame:
    """A generic tile folder -> a tile index with the columns notebook 00's index has (image_name,
    image_path, mask_path, slide_id, patient_id, split "test", cv_fold 0, tile_label, frac_*,
    slide_primary/secondary and their labels). ``tile_label`` is SICAPv2's rule
    (:func:`discnb.data.sicap.tile_label`: the mask's majority cancer grade; -1 without a mask).

    Slide grades come from ``slides.csv`` (slide_id, primary, secondary as Gleason 0/3/4/5, or a
    ``gleason_score`` column as PANDA's) when present, else from the masks
    (:func:`labels_from_masks`); a slide with neither is an error.
    """
    root = Path(root)
    files = _tile_files(root)
    if not files:
        raise FileNotFoundError(f"{root}: the tile folder holds no images ({', '.join(IMAGE_EXTS)})")
    rows = []
    for slide, f in tqdm(files, desc="tile folder", disable=not progress, mininterval=2):
        mp = _mask_for(root, slide, f)
        row = {"image_name": f.name, "image_path": str(f), "mask_path": str(mp) if mp else "", "slide_id": slide}
        if mp:
            m, changed = data.read_mask(mp)
            frac = np.bincount(m.ravel(), minlength=K)[:K] / m.size
            row.update(dict(zip(data.FRACTION_COLUMNS, frac)), tile_label=data.tile_label(frac), mask_changed=changed)
        else:
            row.update({c: np.nan for c in data.FRACTION_COLUMNS}, tile_label=-1, mask_changed=np.nan)
        rows.append(row)
    idx = pd.DataFrame(rows)
    slides = None
    if (root / "slides.csv").exists():
        slides = pd.read_csv(root / "slides.csv", dtype={"slide_id": str, "patient_id": str})
        if "primary" not in slides.columns and "gleason_score" in slides.columns:
            g = np.array([parse_gleason(s) for s in slides.gleason_score])
            slides["primary"], slides["secondary"] = g[:, 0], g[:, 1]
        missing = [c for c in ("slide_id", "primary", "secondary") if c not in slides.columns]
        if missing:
            raise PandaError(f"{root / 'slides.csv'}: missing column(s) {missing}")
        slides = slides.set_index("slide_id")
    prim, sec, pat = {}, {}, {}
    for sid, part in idx.groupby("slide_id", sort=False):
        if slides is not None and sid in slides.index:
            p, s = int(slides.loc[sid, "primary"]), int(slides.loc[sid, "secondary"])
            pat[sid] = str(slides.loc[sid, "patient_id"]) if "patient_id" in slides.columns else sid
        elif part.mask_path.astype(bool).all():
            p, s = labels_from_masks(part[list(data.FRACTION_COLUMNS)].sum().to_numpy())
            pat[sid] = sid
        else:
            raise PandaError(f"{root}: slide {sid} has no row in slides.csv and not every tile has a mask, so its "
                             "grades are unknown; add it to slides.csv (slide_id, primary, secondary)")
        bad = {p, s} - set(GRADE_TO_LABEL)
        if bad:
            raise PandaError(f"{root}: slide {sid} has Gleason grade(s) {sorted(bad)}; expected 0, 3, 4 or 5")
        prim[sid], sec[sid] = p, s
    idx["patient_id"] = idx.slide_id.map(pat)
    idx["split"], idx["cv_fold"] = "test", 0
    idx["slide_primary"], idx["slide_secondary"] = idx.slide_id.map(prim), idx.slide_id.map(sec)
    idx["slide_primary_label"] = idx.slide_primary.map(GRADE_TO_LABEL)
    idx["slide_secondary_label"] = idx.slide_secondary.map(GRADE_TO_LABEL)
    return idx


def tile_coords(names) -> np.ndarray | None:
    """(n, 2) (y, x) level-0 coordinates parsed from ``..._xini_X_yini_Y...`` names, or None when
    a name has none."""
    out = []
    for n in names:
        m = COORD_RE.search(str(n))
        if not m:
            return None
        out.append((int(m.group(2)), int(m.group(1))))
    return np.array(out, np.int64).reshape(-1, 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m discnb.data.panda", description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="PANDA folder with train.csv and train_images/")
    ap.add_argument("out", help="output tile folder")
    ap.add_argument("--n-per-label", type=int, default=100)
    ap.add_argument("--max-tiles", type=int, default=100)
    ap.add_argument("--tile-px", type=int, default=512)
    ap.add_argument("--target-mpp", type=float, default=1.0)
    ap.add_argument("--base-mpp", type=float, default=0.5)
    ap.add_argument("--min-tissue", type=float, default=MIN_TISSUE,
                    help=f"least tissue fraction of a kept tile (default {MIN_TISSUE}: SICAPv2's own > 20%%)")
    ap.add_argument("--provider", action="append", default=[], help="keep only this data_provider (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    out = prepare_panda(a.root, a.out, n_per_label=a.n_per_label, max_tiles=a.max_tiles, tile_px=a.tile_px,
                        target_mpp=a.target_mpp, base_mpp=a.base_mpp, min_tissue=a.min_tissue,
                        providers=tuple(a.provider), seed=a.seed)
    idx = read_tile_folder(out)
    per = slide_label_sets(idx.drop_duplicates("slide_id").rename(columns={"slide_primary_label": "primary_label",
                                                                            "slide_secondary_label": "secondary_label"}))
    print(f"{out}: {idx.slide_id.nunique()} slides, {len(idx)} tiles; slides per label "
          f"{dict(zip(LABELS, per.sum(0).tolist()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
