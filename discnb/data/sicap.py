"""SICAPv2 on disk -> a tile index (paper Sec. 3, "Training Latent Diffusion Models").

Reads the real SICAPv2 folder or the built-in demo one (same layout; see
``discnb.data.demo``)::

    root/images/<name>.jpg        root/masks/<stem>.png (v2) or .jpg (v1, lossy)
    root/wsi_labels.xlsx          slide_id, patient_id, Gleason_primary, Gleason_secondary
    root/partition/Test/{Train,Test}.xlsx              official split: image_name, NC, G3, G4, G5, G4C
    root/partition/Validation/Val{1..4}/Test.xlsx      patient-wise CV folds over official Train

Mask pixels 0/3/4/5 (non-cancer incl. background / Gleason 3 / 4 / 5) become the paper's labels
0..3. A lossy ``.jpg`` mask is snapped to those values without inventing a grade along region
edges (:func:`snap_lossy`); the index records the fraction of pixels that changed. Every bad
file gets an error that names it and the problem; with ``on_bad_file="skip"`` the file is left
out and listed in a report instead.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image, ImageMode, UnidentifiedImageError
from scipy import ndimage as ndi

from discnb import LABELS

log = logging.getLogger(__name__)

MASK_VALUES = (0, 3, 4, 5)
GRADE_TO_LABEL = {0: 0, 3: 1, 4: 2, 5: 3}
ONEHOT_COLUMNS = ("NC", "G3", "G4", "G5")
FRACTION_COLUMNS = tuple(f"frac_{n}" for n in LABELS)
# A lossy .jpg mask holds values near 0/3/4/5. JPEG noise on 0/3/4/5 masks (512 px, tissue-shaped
# and annotation-like regions) reached 8 at quality 95, 10 at 75 and 11 at 50; a larger value
# means the file is not such a mask (a picture, or a mask scaled to 0..255).
_JPG_NOISE_MAX = 15
# JPEG codes 8x8 blocks and blurs detail inside them: ringing along a 0/4 edge decodes as a thin
# band of 3, overshoot beside 4 as specks of 5. A region with no 8x8 square inside it is below
# what a lossy mask can hold, so it is given to its neighbours (:func:`absorb_thin_regions`).
_JPG_BLOCK = 8
# JPEG quantises 8 x a block's mean with the luminance table's DC step: up to 8 (quality ~74 and
# up) every block's mean survives within half a value. Above that, blocks drift by a grade:
# measured, at quality 72 (step 9) 40 of 200 masks gained a grade after snapping, at 70 a flat
# GG5 region decodes as 6, at 60 a flat GG4 region as 5. Such a file is an error.
_JPG_DC_STEP_MAX = 8
# JPEG codes each 8x8 block on its own, so a block inside a drawn region decodes flat, exactly to
# its grade (from quality ~75 up); ringing and blurred sub-block texture (lumens in a GG5 region
# read as 3) do not. A region is kept only if it holds a core this wide of exact pixels: measured
# on 512-px masks saved at quality 95 and 75, 3x3 and 4x4 cores let blurred texture through as
# GG3, 8x8 dropped more genuine small regions, 6x6 did neither.
_JPG_CORE = 6
# In a colour-saved lossy mask, the channels may differ by this much (chroma noise).
_JPG_CHANNEL_SPREAD = 3


class DataError(ValueError):
    """A SICAPv2 file that cannot be used, named with its problem."""


@dataclass
class Skipped:
    """What ``build_index`` left out with ``on_bad_file='skip'``, and why."""
    rows: list = field(default_factory=list)

    def add(self, path, problem: str) -> None:
        self.rows.append({"file": str(path), "problem": problem})

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["file", "problem"])

    def __len__(self) -> int:
        return len(self.rows)


# ----------------------------------------------------------------------------------- tables
def _table_path(root: Path, rel: str) -> Path | None:
    """``rel`` (an .xlsx path) in the dataset, or its csv copy under ``csv/``."""
    for p in (root / rel, root / "csv" / Path(rel).with_suffix(".csv")):
        if p.exists():
            return p
    return None


def read_table(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    path = Path(path)
    try:
        # only an empty cell is missing: a slide or patient id such as "NA" or "null" stays text
        read = pd.read_excel if path.suffix == ".xlsx" else pd.read_csv
        df = read(path, keep_default_na=False, na_values=[""])
    except Exception as e:  # openpyxl/pandas raise many types; the user needs the file name
        raise DataError(f"{path}: cannot be read as a table ({type(e).__name__}: {e})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    return df


def blank_rows(df: pd.DataFrame, column: str) -> list[int]:
    """Spreadsheet row numbers (header = row 1) whose ``column`` cell is empty or only spaces."""
    cells = df[column]
    blank = cells.isna() | (cells.astype(str).str.strip() == "")
    return [int(i) + 2 for i in np.flatnonzero(blank.to_numpy())]


def require_filled(df: pd.DataFrame, path: Path, columns: tuple[str, ...]) -> None:
    """An empty identifier cell is an error naming the file, the row and the column: as NaN it
    would become a patient or slide of its own and slip past the patient-wise split check."""
    for col in columns:
        rows = blank_rows(df, col)
        if rows:
            more = f" (and {len(rows) - 1} more row(s): {rows[1:6]})" if len(rows) > 1 else ""
            raise DataError(f"{path}, row {rows[0]}: {col} is empty{more}")


def check_layout(root: str | Path) -> Path:
    """Raise a clear error unless ``root`` looks like a SICAPv2 folder."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder. Point `dataset` at a SICAPv2 folder or use 'demo'.")
    problems = []
    if not (root / "images").is_dir():
        problems.append("no images/ folder")
    if _table_path(root, "wsi_labels.xlsx") is None:
        problems.append("no wsi_labels.xlsx")
    if _table_path(root, "partition/Test/Train.xlsx") is None:
        problems.append("no partition/Test/Train.xlsx")
    if problems:
        raise DataError(f"{root} is not SICAPv2-shaped: {'; '.join(problems)} "
                        "(expected images/, masks/, partition/Test/, partition/Validation/Val1..4/, wsi_labels.xlsx)")
    return root


def slide_of(image_name: str) -> str:
    """SICAPv2 patch names start with the slide id: ``<slide>_Block_Region_...``."""
    return str(image_name).split("_", 1)[0]


def read_wsi_labels(root: str | Path) -> pd.DataFrame:
    """Slide labels; adds ``primary_label``/``secondary_label`` in 0..3."""
    root = Path(root)
    path = _table_path(root, "wsi_labels.xlsx")
    if path is None:
        raise DataError(f"{root}: no wsi_labels.xlsx")
    df = read_table(path, ("slide_id", "patient_id", "Gleason_primary", "Gleason_secondary"))
    require_filled(df, path, ("slide_id", "patient_id"))
    df["slide_id"] = df["slide_id"].astype(str)
    df["patient_id"] = df["patient_id"].astype(str)
    for col in ("Gleason_primary", "Gleason_secondary"):
        bad = sorted(set(df[col].dropna().astype(int)) - set(GRADE_TO_LABEL))
        if bad or df[col].isna().any():
            raise DataError(f"{path}: column {col} must hold 0, 3, 4 or 5; found {bad or 'empty cells'}")
        df[col] = df[col].astype(int)
    df["primary_label"] = df["Gleason_primary"].map(GRADE_TO_LABEL)
    df["secondary_label"] = df["Gleason_secondary"].map(GRADE_TO_LABEL)
    dup = df["slide_id"][df["slide_id"].duplicated()].tolist()
    if dup:
        raise DataError(f"{path}: slide ids listed twice: {dup[:5]}")
    return df


def _read_split(root: Path, rel: str, skipped: Skipped | None = None) -> pd.DataFrame:
    """One partition table. A row with an empty ``image_name`` is an error naming the file and the
    row, or, given ``skipped`` (``on_bad_file="skip"``), left out and listed there."""
    path = _table_path(root, rel)
    if path is None:
        raise DataError(f"{root}: missing {rel}")
    df = read_table(path, ("image_name",) + ONEHOT_COLUMNS)
    empty = blank_rows(df, "image_name")
    if empty and skipped is None:
        require_filled(df, path, ("image_name",))
    for row in empty:
        skipped.add(path, f"{path}, row {row}: image_name is empty")
    df = df.drop(index=[r - 2 for r in empty]).reset_index(drop=True)
    df["image_name"] = df["image_name"].astype(str)
    if "G4C" not in df.columns:
        df["G4C"] = 0
    onehot = df[list(ONEHOT_COLUMNS)].to_numpy()
    bad = np.flatnonzero(onehot.sum(1) != 1)
    if len(bad):
        raise DataError(f"{path}: row(s) {[int(i) + 2 for i in bad[:5]]} (spreadsheet numbering) do not have "
                        f"exactly one of {ONEHOT_COLUMNS} set, e.g. {df.iloc[bad[0]]['image_name']}")
    df["tile_label"] = onehot.argmax(1)
    df["_table"] = str(path)
    return df[["image_name", *ONEHOT_COLUMNS, "G4C", "tile_label", "_table"]]


def read_partitions(root: str | Path, skipped: Skipped | None = None) -> pd.DataFrame:
    """Official split and CV folds, one row per listed patch.

    ``split`` is ``train`` or ``test``; ``cv_fold`` is k when the patch is in
    ``Validation/Val{k}/Test`` (its validation fold), 0 for official-test patches and -1 for a
    train patch in no fold (or when the dataset has no Validation folder). With ``skipped``
    (``on_bad_file="skip"``), rows with an empty ``image_name`` and fold patches missing from the
    official Train set are listed there instead of stopping.
    """
    root = Path(root)
    train = _read_split(root, "partition/Test/Train.xlsx", skipped).assign(split="train")
    test = _read_split(root, "partition/Test/Test.xlsx", skipped).assign(split="test")
    both = set(train.image_name) & set(test.image_name)
    if both:
        raise DataError(f"{root}/partition/Test: {len(both)} patch(es) are in both Train and Test, e.g. {sorted(both)[0]}")
    df = pd.concat([train, test], ignore_index=True)
    df["cv_fold"] = np.where(df.split == "test", 0, -1)
    fold_of: dict[str, int] = {}
    n_folds = 0
    for k in range(1, 5):
        rel = f"partition/Validation/Val{k}/Test.xlsx"
        if _table_path(root, rel) is None:
            continue
        n_folds += 1
        for name in _read_split(root, rel, skipped).image_name:
            if name in fold_of:
                raise DataError(f"{root}/partition/Validation: {name} is in the Test set of both "
                                f"Val{fold_of[name]} and Val{k}")
            fold_of[name] = k
    if n_folds == 0:
        warnings.warn(f"{root}: no partition/Validation/Val*/Test.xlsx: cross-validation folds unavailable")
    is_train = df.split == "train"
    df.loc[is_train, "cv_fold"] = df.loc[is_train, "image_name"].map(fold_of).fillna(-1).astype(int)
    stray = set(fold_of) - set(train.image_name)
    if stray and skipped is not None:
        for name in sorted(stray):
            skipped.add(root / "images" / name, f"{root}/partition/Validation/Val{fold_of[name]}/Test.xlsx lists "
                                                f"{name}, which partition/Test/Train.xlsx does not")
    elif stray:
        raise DataError(f"{root}/partition/Validation: {len(stray)} fold patch(es) are not in the official Train "
                        f"set, e.g. {sorted(stray)[0]}")
    return df


# ------------------------------------------------------------------------------------ files
def mask_path_for(root: Path, image_name: str) -> Path | None:
    stem = Path(image_name).stem
    for ext in (".png", ".jpg"):
        p = root / "masks" / (stem + ext)
        if p.exists():
            return p
    return None


def load_image(path: str | Path) -> Image.Image:
    """An RGB image, fully decoded (truncated files fail here, with the file named).

    A grayscale file (modes 1, L, LA, I, F, ...) is an error: SICAPv2 patches are RGB H&E, and
    ``convert("RGB")`` would hand the models three identical grey channels without a word; so is
    a palette (P) file with a grey palette. Other colour modes (RGBA, P, CMYK, YCbCr) are converted.
    """
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
            if ImageMode.getmode(im.mode).basemode == "L" or (im.mode == "P" and _is_grey(rgb)):
                raise DataError(f"{path}: grayscale image (mode {im.mode}{', grey palette' * (im.mode == 'P')}); "
                                "SICAPv2 patches are RGB. Remove it, or run with on_bad_file: skip to leave it out")
            return rgb
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None


def _is_grey(rgb: Image.Image) -> bool:
    a = np.asarray(rgb)
    return bool((a == a[..., :1]).all())


def _one_channel(values: np.ndarray, path, lossy: bool) -> np.ndarray:
    """The mask's values as (H, W): an RGB-saved mask's channels must agree (up to JPEG noise)."""
    if values.ndim != 3:
        return values
    spread = np.abs(values.astype(int) - values[..., :1]).max(initial=0)
    if spread > (_JPG_CHANNEL_SPREAD if lossy else 0):
        raise DataError(f"{path}: mask is colour (channels differ by up to {spread}), expected one channel of 0/3/4/5")
    return values[..., 0]


def _opening(x: np.ndarray, k: int) -> np.ndarray:
    """Binary opening by a k x k square (separable min/max filters: ~5x faster than binary_opening)."""
    return ndi.maximum_filter(ndi.minimum_filter(x, size=k), size=k, origin=-(1 - k % 2))


def _closing(x: np.ndarray, k: int) -> np.ndarray:
    """Binary closing by a k x k square."""
    return ndi.minimum_filter(ndi.maximum_filter(x, size=k), size=k, origin=-(1 - k % 2))


def _kept_regions(grades: np.ndarray, values: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(grades present, (G, H, W) bool): per grade, the part of its region that JPEG can hold.

    That is the region with its specks filled (a closing by a square half a block wide: ringing
    dots a drawn region with pixels of the next grade), its thin parts removed (an opening by a
    ``block`` square), and only those of its pieces that hold a core of pixels stored exactly as
    the grade (:data:`_JPG_CORE`). The image border is no region's edge (edge padding).
    """
    present = np.unique(grades)
    kept = []
    for g in present:
        region = np.pad((grades == g).view(np.uint8), block, mode="edge")
        region = _opening(_closing(region, block // 2 + 1), block)[block:-block, block:-block].astype(bool)
        pieces, n = ndi.label(region)
        core = ndi.minimum_filter((values == g).view(np.uint8), size=_JPG_CORE, mode="constant", cval=0).astype(bool) & region
        genuine = np.zeros(n + 1, bool)
        genuine[np.unique(pieces[core])] = True
        genuine[0] = False
        kept.append(genuine[pieces])
    return present, np.stack(kept)


def absorb_thin_regions(grades: np.ndarray, values: np.ndarray, block: int = _JPG_BLOCK) -> np.ndarray:
    """Re-grade a pixel-wise snapped lossy mask so that it holds only grades of regions JPEG can hold.

    Pixel-wise snapping turns JPEG ringing into thin bands and specks of grades no annotator drew
    (a 0/4 edge passes through 3; overshoot beside 4 reads 5). A drawn region holds ``block`` x
    ``block`` squares (JPEG's block) once its specks are filled, and a core stored exactly as its
    grade; a ringing band, a speck or blurred texture does not (:func:`_kept_regions`).

    A pixel inside one kept region takes its grade. A pixel in several, or in none, takes among
    the grades whose kept regions contain it, or else lie within ``block`` pixels (a square
    around it), the one nearest to its stored ``value`` (the decoded blur still tells on which
    side of an edge it was), or else the grade of the nearest kept region. So a drawn region
    smaller than that is given to its neighbours. A mask in which no region is kept is returned
    as snapped.
    """
    grades, values = np.asarray(grades), np.asarray(values)
    present, kept = _kept_regions(grades, values, block)
    if not kept.any():
        return grades
    inside = kept.any(0)
    near = np.stack([ndi.maximum_filter(k.view(np.uint8), size=2 * block + 1).astype(bool) for k in kept])
    reach = np.where(inside, kept, near)
    cost = np.where(reach, np.abs(values.astype(np.int16)[None] - present.astype(np.int16)[:, None, None]), 255)
    pick = cost.argmin(0)
    far = ~reach.any(0)
    if far.any():  # rare: more than a block from every kept region
        dist = np.stack([ndi.distance_transform_edt(~k) if k.any() else np.full(k.shape, np.inf) for k in kept])
        pick[far] = dist.argmin(0)[far]
    return present[pick].astype(grades.dtype)


_NEAREST_GRADE = np.asarray(MASK_VALUES, np.uint8)[
    np.abs(np.arange(256)[:, None] - np.asarray(MASK_VALUES)).argmin(1)]


def snap_lossy(values: np.ndarray, path: str | Path = "<array>") -> np.ndarray:
    """A lossy (JPEG) mask's values -> grades 0/3/4/5: the nearest valid value, then
    :func:`absorb_thin_regions`, so that snapping creates no grade that no drawn region holds.
    (A file saved at too low a quality is refused before: :func:`check_jpeg_quality`.)
    """
    values = np.asarray(values)
    top = int(values.max(initial=0))
    if top > _JPG_NOISE_MAX:
        raise DataError(f"{path}: mask values up to {top} are not near 0/3/4/5 (JPEG noise on a 0/3/4/5 mask stays "
                        f"below {_JPG_NOISE_MAX}); is this file a mask?")
    nearest = _NEAREST_GRADE[values.astype(np.uint8)]
    if nearest.min() == nearest.max():  # one grade: nothing to absorb
        return nearest
    return absorb_thin_regions(nearest, values)


def check_jpeg_quality(im: Image.Image, path: str | Path) -> None:
    """A JPEG mask saved below quality ~74 is an error: its luminance DC quantisation step is
    above :data:`_JPG_DC_STEP_MAX`, so whole blocks inside a region may decode a grade off, which
    no snapping can see. A file without quantisation tables passes."""
    tables = getattr(im, "quantization", None)
    step = int(tables[0][0]) if tables and 0 in tables else 0
    if step > _JPG_DC_STEP_MAX:
        raise DataError(f"{path}: saved at too low a JPEG quality (DC quantisation step {step} > {_JPG_DC_STEP_MAX}): "
                        "blocks inside a region may decode a grade off; use the PNG masks, or a copy saved at "
                        "quality 75 or more")


def mask_grades(values: np.ndarray, path: str | Path = "<array>", lossy: bool = False) -> tuple[np.ndarray, float]:
    """Mask pixel values -> (grades 0/3/4/5 as (H, W) uint8, fraction of pixels whose stored value
    is not their grade).

    Lossy (JPEG) masks go through :func:`snap_lossy`; the fraction tells
    how much of the mask that changed (0 for an exact mask). Exact masks with any other value
    are an error naming the file and the values found.
    """
    values = _one_channel(np.asarray(values), path, lossy)
    if lossy:
        grades = snap_lossy(values, path)
        return grades, float((grades != values).mean()) if values.size else 0.0
    found = np.unique(values)
    if not set(found.tolist()) <= set(MASK_VALUES):
        raise DataError(f"{path}: unexpected mask values {sorted(set(found.tolist()) - set(MASK_VALUES))} "
                        f"(found {found.tolist()[:12]}); SICAPv2 masks hold 0/3/4/5")
    return values.astype(np.uint8), 0.0


def grades_to_labels(grades: np.ndarray) -> np.ndarray:
    """SICAPv2 grades 0/3/4/5 (already checked) -> labels 0..3 (uint8)."""
    lut = np.zeros(256, np.uint8)
    for g, lab in GRADE_TO_LABEL.items():
        lut[g] = lab
    return lut[grades]


def mask_to_labels(values: np.ndarray, path: str | Path = "<array>", lossy: bool = False) -> np.ndarray:
    """Mask pixel values 0/3/4/5 -> labels 0..3 (see :func:`mask_grades`)."""
    return grades_to_labels(mask_grades(values, path, lossy)[0])


def tile_label(fractions) -> int:
    """A tile's label 0..3 from its mask's label pixel fractions (NC, GG3, GG4, GG5): SICAPv2's rule.

    SICAPv2's readme: non-cancerous patches come from non-cancerous slides, and "the labels in
    cancerous patches are obtained by majority voting of the annotations". Non-cancer pixels of a
    cancer slide are unannotated tissue, so they do not compete: the majority Gleason grade among
    the cancer pixels, whatever share non-cancer has (a tie goes to the lower grade); NC only
    when the mask has no cancer. The one definition for notebook 00's index, the generic tile
    folder (PANDA, LAPC) and the fixtures, so that MIL pseudo labels mean the same everywhere.
    """
    f = np.asarray(fractions, float)[:4]
    cancer = f[1:]
    return 0 if not (cancer > 0).any() else 1 + int(np.argmax(cancer))


class MaskFile(NamedTuple):
    """A mask file as read: its stored values (H, W), its grades 0/3/4/5 (H, W) uint8, the fraction of
    pixels whose stored value is not their grade (0 for an exact mask), and whether it is lossy (JPEG)."""
    values: np.ndarray
    grades: np.ndarray
    changed: float
    lossy: bool


def decode_mask(path: str | Path) -> MaskFile:
    """Read a mask file. ``.jpg``/``.jpeg`` masks (SICAPv1, some SICAPv2 copies) are lossy: see :func:`snap_lossy`."""
    path = Path(path)
    lossy = path.suffix.lower() in (".jpg", ".jpeg")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
            if lossy:
                check_jpeg_quality(im, path)
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable mask ({e})") from None
    values = _one_channel(arr, path, lossy)
    return MaskFile(values, *mask_grades(values, path, lossy=lossy), lossy)


def read_mask(path: str | Path) -> tuple[np.ndarray, float]:
    """A mask file -> ((H, W) uint8 labels 0..3, fraction of its pixels that snapping changed)."""
    m = decode_mask(path)
    return grades_to_labels(m.grades), m.changed


def label_before_snapping(values: np.ndarray) -> int:
    """:func:`tile_label` of a lossy mask's stored values rounded pixel by pixel to 0/3/4/5, before
    :func:`absorb_thin_regions`: the label the file itself says. Where it differs from the snapped
    mask's label, snapping gave a small region to its neighbours (a tile whose only cancer is a
    64-px GG5 region becomes NC)."""
    labels = grades_to_labels(_NEAREST_GRADE[values.astype(np.uint8)])  # values <= 15: snap_lossy checked
    return tile_label(np.bincount(labels.ravel(), minlength=4) / labels.size)


def load_mask(path: str | Path) -> np.ndarray:
    """A mask file -> (H, W) uint8 labels 0..3."""
    return read_mask(path)[0]


def _check_tile(root: Path, name: str, masks: str) -> dict:
    """Open one patch and its mask; return its index fields (raises DataError)."""
    img_path = root / "images" / name
    if not img_path.exists():
        raise DataError(f"{img_path}: listed in the partition files but the image file is absent")
    im = load_image(img_path)
    row = {"image_path": str(img_path), "width": im.width, "height": im.height}
    mpath = mask_path_for(root, name)
    if mpath is None:
        if masks == "required":
            raise DataError(f"{root / 'masks' / Path(name).stem}.png: mask missing for image {name}")
        row.update(mask_path="", mask_label=-1, mask_changed=np.nan, mask_lossy=False, mask_label_raw=-1,
                   **{c: np.nan for c in FRACTION_COLUMNS})
        return row
    mf = decode_mask(mpath)
    m = grades_to_labels(mf.grades)
    if m.shape != (im.height, im.width):
        raise DataError(f"{mpath}: mask is {m.shape[1]}x{m.shape[0]} but image {name} is {im.width}x{im.height}")
    frac = np.bincount(m.ravel(), minlength=4) / m.size
    label = tile_label(frac)
    row.update(mask_path=str(mpath), mask_label=label, mask_changed=mf.changed,
               mask_lossy=mf.lossy, mask_label_raw=label_before_snapping(mf.values) if mf.lossy else label,
               **dict(zip(FRACTION_COLUMNS, frac)))
    return row


def build_index(root: str | Path, *, on_bad_file: str = "error", masks: str = "required",
                progress: bool = True) -> tuple[pd.DataFrame, Skipped]:
    """The tile index of a SICAPv2 folder (one row per partition-listed patch).

    Columns: image_name, image_path, mask_path, slide_id, patient_id, split, cv_fold, NC..G5,
    G4C, tile_label (0..3, the partition's: majority cancer grade), mask_label (:func:`tile_label`
    of the mask, -1 without one), frac_NC..frac_GG5 (mask pixel fractions), mask_changed (fraction
    of mask pixels whose stored value was not their grade: non-zero for lossy masks only),
    mask_lossy (the mask is a JPEG), mask_label_raw (:func:`label_before_snapping`; = mask_label for
    an exact mask, -1 without one), slide_primary /
    slide_secondary (Gleason grades 0/3/4/5) and their labels, width, height.

    ``on_bad_file``: "error" stops at the first bad file; "skip" leaves it out and lists it in
    the returned :class:`Skipped`. ``masks``: "required" (training) or "optional" (e.g. the
    images-only real sample).
    """
    if on_bad_file not in ("error", "skip"):
        raise ValueError(f"on_bad_file must be 'error' or 'skip', got {on_bad_file!r}")
    if masks not in ("required", "optional"):
        raise ValueError(f"masks must be 'required' or 'optional', got {masks!r}")
    root = check_layout(root)
    slides = read_wsi_labels(root).set_index("slide_id")
    skipped = Skipped()
    parts = read_partitions(root, skipped if on_bad_file == "skip" else None)

    from tqdm.auto import tqdm
    rows = []
    for rec in tqdm(parts.to_dict("records"), desc="index", disable=not progress, mininterval=2):
        name = rec["image_name"]
        try:
            sid = slide_of(name)
            if sid not in slides.index:
                raise DataError(f"{rec['_table']}: patch {name} belongs to slide {sid}, which wsi_labels.xlsx does not list")
            rec.update(_check_tile(root, name, masks))
        except DataError as e:
            if on_bad_file == "error":
                raise
            skipped.add(root / "images" / name, str(e))
            continue
        s = slides.loc[sid]
        rec.update(slide_id=sid, patient_id=s.patient_id, slide_primary=int(s.Gleason_primary),
                   slide_secondary=int(s.Gleason_secondary), slide_primary_label=int(s.primary_label),
                   slide_secondary_label=int(s.secondary_label))
        rows.append(rec)
    if not rows:
        raise DataError(f"{root}: no usable patch ({len(skipped)} skipped; first problem: "
                        f"{skipped.rows[0]['problem'] if skipped.rows else 'partition files are empty'})")
    cols = ["image_name", "image_path", "mask_path", "slide_id", "patient_id", "split", "cv_fold",
            *ONEHOT_COLUMNS, "G4C", "tile_label", "mask_label", *FRACTION_COLUMNS, "mask_changed",
            "slide_primary", "slide_secondary",
            "slide_primary_label", "slide_secondary_label", "width", "height", "mask_lossy", "mask_label_raw"]
    index = pd.DataFrame(rows)[cols]
    _check_patient_split(index, root)
    _report_label_disagreement(index, root)
    return index, skipped


def _report_label_disagreement(index: pd.DataFrame, root: Path) -> None:
    """Warn about patches whose partition label is not their mask's :func:`tile_label`.

    The partition's label is kept (it is the dataset's own), but a disagreement means the masks
    and tables do not belong together, or that a lossy mask lost a region.
    """
    off = index[(index.mask_label >= 0) & (index.mask_label != index.tile_label)]
    if len(off):
        log.warning("%s: %d patch(es) whose partition label differs from their mask's majority cancer grade, "
                    "e.g. %s (partition %s, mask %s)", root, len(off), off.image_name.iloc[0],
                    LABELS[int(off.tile_label.iloc[0])], LABELS[int(off.mask_label.iloc[0])])


def _check_patient_split(index: pd.DataFrame, root: Path) -> None:
    """SICAPv2's split is patient-wise; a leak would inflate every test number."""
    tr = set(index.patient_id[index.split == "train"])
    te = set(index.patient_id[index.split == "test"])
    if tr & te:
        raise DataError(f"{root}: patient(s) {sorted(tr & te)[:5]} appear in both the official Train and Test split")
    folds = index[index.cv_fold > 0].groupby("patient_id").cv_fold.nunique()
    if (folds > 1).any():
        raise DataError(f"{root}: patient(s) {folds[folds > 1].index.tolist()[:5]} appear in several CV folds")


def fold_split(index: pd.DataFrame, fold: int) -> dict[str, pd.DataFrame]:
    """Train/val/test frames for CV fold ``fold`` (1..4), or the official split for ``fold=0``
    (then ``val`` is empty and model selection must use a CV fold)."""
    train = index[index.split == "train"]
    test = index[index.split == "test"]
    if fold == 0:
        return {"train": train, "val": train.iloc[:0], "test": test}
    if fold not in set(index.cv_fold[index.cv_fold > 0]):
        raise DataError(f"fold {fold} is not in this index (folds: {sorted(set(index.cv_fold[index.cv_fold > 0]))})")
    return {"train": train[train.cv_fold != fold], "val": train[train.cv_fold == fold], "test": test}


def class_table(index: pd.DataFrame) -> pd.DataFrame:
    """Patches per majority label and mean pixel fractions, per split (for notebook 00)."""
    t = index.groupby(["split", "tile_label"]).size().unstack(fill_value=0)
    t = t.reindex(columns=range(4), fill_value=0)
    t.columns = [f"tiles_{n}" for n in LABELS]
    px = index.groupby("split")[list(FRACTION_COLUMNS)].mean().round(3)
    px.columns = [f"pixels_{n}" for n in LABELS]
    t = t.join(px)
    t.insert(0, "slides", index.groupby("split").slide_id.nunique())
    t.insert(0, "patients", index.groupby("split").patient_id.nunique())
    return t


# -------------------------------------------------------------------------------- tensors
def load_tile(row, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A tile resized to ``size`` (bicubic; paper profile: SICAPv2's 512 px -> 256 px, our
    assumption) and its mask resized by nearest neighbour: (size,size,3) uint8, (size,size) uint8."""
    im = load_image(row["image_path"])
    if im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
    if row["mask_path"]:
        m = load_mask(row["mask_path"])
        if m.shape != (size, size):
            m = np.asarray(Image.fromarray(m).resize((size, size), Image.NEAREST))
    else:
        m = np.zeros((size, size), np.uint8)
    return np.asarray(im), m


def load_tiles(index: pd.DataFrame, size: int, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """All tiles of ``index`` in memory: (N,size,size,3) uint8 images, (N,size,size) uint8 masks.

    Training reads each file once instead of once per epoch.
    """
    from tqdm.auto import tqdm
    n = len(index)
    imgs = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    for i, row in enumerate(tqdm(index.to_dict("records"), desc=f"tiles@{size}", disable=not progress, mininterval=2)):
        imgs[i], masks[i] = load_tile(row, size)
    return imgs, masks
