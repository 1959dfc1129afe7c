"""Notebook 00 (paper Sec. 2.2): the dataset folder, the tile index, the OOD index, the shape-map
library m_freq, the demo data's validity check, the stats and the overview figure, as named steps.

    python -m discnb.pipelines.prep --params params/demo/00_data_prep.yaml

Notebook 00 calls the same steps cell by cell; :func:`run` calls them in order. Outputs
(``outputs/<profile>/data/``): ``index.csv``, ``ood_index.csv``, ``shape_maps.npz``, ``stats.json``
(+ the demo folders), figure ``00_data_overview``. Later notebooks read them through
:mod:`discnb.data.prepared`.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from discnb import LABELS, plots
from discnb.core import io, layout, paths
from discnb.core.notebook import cli
from discnb.data import demo, shapes
from discnb.data.demo import check as demo_check
from discnb.data import sicap as data

NOTEBOOK = "00_data_prep"


def dataset_root(spec: str, out: Path, *, name: str, domain: str, seed: int, patients: int,
                 tiles_per_slide: int, tile_size: int, progress: bool = True) -> Path:
    """``spec`` "demo" -> the built-in procedural SICAPv2-layout dataset (made once, cached under
    ``out/name``); anything else is a path to a real SICAPv2-layout folder."""
    if spec == "demo":
        return demo.make_demo_sicap(out / name, n_patients=patients, tiles_per_slide=tiles_per_slide,
                                    tile_size=tile_size, seed=seed, domain=domain, progress=progress)
    return data.check_layout(paths.resolve(spec))


# ================================================================================ named steps
def dataset(P, progress: bool = True) -> Path:
    """The in-distribution dataset folder (``dataset``: "demo" or a SICAPv2-layout path)."""
    return dataset_root(P.dataset, layout.of(P, NOTEBOOK).out, name="demo_sicapv2", domain="in", seed=P.seed,
                        patients=P.demo_patients, tiles_per_slide=P.demo_tiles_per_slide,
                        tile_size=P.demo_tile_size, progress=progress)


def index(P, root: Path, progress: bool = True) -> tuple[pd.DataFrame, data.Skipped]:
    """The tile index of ``root``, written to ``index.csv`` (+ ``index.skipped.csv``)."""
    idx, skipped = data.build_index(root, on_bad_file=P.on_bad_file, masks=P.masks, progress=progress)
    write_index(idx, skipped, layout.of(P, NOTEBOOK).out)
    return idx, skipped


def ood_index(P, progress: bool = True) -> pd.DataFrame | None:
    """The out-of-distribution set's index (``ood_index.csv``), or None when ``ood_dataset`` is "".
    The demo OOD set is another "hospital" (stain and scale), seeded ``seed + 1``."""
    L = layout.of(P, NOTEBOOK)
    if not P.ood_dataset:
        return None
    root = dataset_root(P.ood_dataset, L.out, name="demo_ood", domain="ood", seed=P.seed + 1,
                        patients=P.ood_patients, tiles_per_slide=P.demo_tiles_per_slide,
                        tile_size=P.demo_tile_size, progress=progress)
    idx, skipped = data.build_index(root, on_bad_file=P.on_bad_file, masks=P.masks, progress=progress)
    write_index(idx, skipped, L.out, stem="ood_index")
    return idx


def shape_maps(P, idx: pd.DataFrame, progress: bool = True) -> dict:
    """The shape-map library m_freq (Sec. 2.2) of the official training masks, at the models' size."""
    lib = shapes.build_library(idx[idx.split == "train"], P.image_size, progress=progress)
    shapes.save_library(layout.of(P, NOTEBOOK).out / "shape_maps.npz", lib)
    return lib


def validity_summary(valid: dict | None) -> dict | None:
    """The headline of :func:`validity`: mean-colour and CNN balanced accuracy beside chance."""
    return valid and {k: valid[k] for k in ("colour_acc", "cnn_acc", "chance")}


def validity(P, root: Path) -> dict | None:
    """Demo data only: mean colour vs a small CNN (:func:`discnb.data.demo.check.validity_report`)."""
    if P.dataset != "demo" or not P.validity_check:
        return None
    return demo_check.validity_report(root, seed=P.seed, cnn_epochs=P.validity_cnn_epochs)


def stats(P, root: Path, idx: pd.DataFrame, skipped: data.Skipped, lib: dict, ood: pd.DataFrame | None,
          valid: dict | None) -> dict:
    """``stats.json``: counts, the class table and the validity report."""
    out = {"dataset": str(root), "patches": len(idx), "skipped": len(skipped),
           "slides": int(idx.slide_id.nunique()), "patients": int(idx.patient_id.nunique()),
           "shape_maps": int(len(lib["maps"])), "ood_patches": 0 if ood is None else len(ood),
           "class_table": data.class_table(idx).reset_index().to_dict("records"), "validity": valid,
           "fold_tiles": {str(k): int(v) for k, v in fold_tiles(idx).items()}, **mask_report(idx)}
    io.write_json(layout.of(P, NOTEBOOK).out / "stats.json", out)
    return out


def _train_tiles_with_masks(idx: pd.DataFrame) -> pd.DataFrame:
    return idx[(idx.split == "train") & idx.mask_path.astype(bool)]


def fold_tiles(idx: pd.DataFrame) -> pd.Series:
    """Tiles with a mask per CV fold (the validation split notebook 01 and 04 score on), folds 1..4
    of the partition files; a fold listed by no file, or by an empty one, counts 0."""
    tr = _train_tiles_with_masks(idx)
    in_fold = tr[tr.cv_fold > 0]
    last = int(in_fold.cv_fold.max()) if len(in_fold) else 0
    return in_fold.groupby("cv_fold").size().reindex(range(1, last + 1), fill_value=0).rename("tiles")


def check_folds(P, idx: pd.DataFrame) -> pd.Series:
    """Each CV fold's tile count (printed by notebook 00); a fold with fewer than ``min_fold_tiles``
    tiles is an error naming it: scored on so few tiles, a judge's chance (masks shuffled between
    tiles) meets its ceiling and every validation number is noise. A fold that lacks a label the
    training tiles have pixels of is a warning: that label's IoU is undefined there."""
    n = fold_tiles(idx)
    small = n[n < P.min_fold_tiles]
    if len(small):
        raise data.DataError(f"{layout.of(P, NOTEBOOK).out / 'index.csv'}: CV fold(s) {small.index.tolist()} hold "
                             f"{small.tolist()} tile(s) with a mask, fewer than min_fold_tiles={P.min_fold_tiles}: "
                             "too few to score a model on. Fix the partition files (partition/Validation/Val*/Test.xlsx), "
                             "or lower min_fold_tiles (0 turns the check off) and pick another val_fold in notebooks 01 and 04")
    tr = _train_tiles_with_masks(idx)
    frac = list(data.FRACTION_COLUMNS)
    have = tr[frac].sum() > 0
    present = (tr.groupby("cv_fold")[frac].sum() > 0).reindex(n.index, fill_value=False)
    for k in n.index:
        missing = [LABELS[i] for i in np.flatnonzero(have.to_numpy() & ~present.loc[k].to_numpy())]
        if missing:
            warnings.warn(f"CV fold {k} ({n[k]} tiles) has no {missing} pixels: validation IoU of "
                          f"{'those labels' if len(missing) > 1 else 'that label'} is undefined when it is the val_fold")
    return n


def mask_report(idx: pd.DataFrame) -> dict:
    """How many masks were lossy (JPEG) and how many tile labels snapping them changed (``mask_label``
    vs ``mask_label_raw``, :func:`discnb.data.sicap.label_before_snapping`)."""
    m = idx[idx.mask_path.astype(bool)]
    lossy = m[m.mask_lossy.astype(bool)]
    return {"masks": int(len(m)), "lossy_masks": int(len(lossy)),
            "lossy_pixels_changed": float(lossy.mask_changed.mean()) if len(lossy) else 0.0,
            "labels_changed_by_snapping": int((lossy.mask_label != lossy.mask_label_raw).sum())}


def mask_summary(idx: pd.DataFrame) -> str:
    """One line for notebook 00: lossy masks and the tile labels snapping changed."""
    r = mask_report(idx)
    if not r["lossy_masks"]:
        return f"{r['masks']} masks, none lossy"
    return (f"{r['lossy_masks']} of {r['masks']} masks are lossy (JPEG): snapping to 0/3/4/5 changed "
            f"{r['lossy_pixels_changed']:.2%} of their pixels on average and {r['labels_changed_by_snapping']} tile "
            "label(s) (index.csv: mask_lossy, mask_changed, mask_label_raw -> mask_label)")


def overview_figure(P, idx: pd.DataFrame, lib: dict):
    """Figure ``00_data_overview``: tiles, their masks and shape maps. Returns (figure, png path)."""
    rows, titles = overview_rows(idx, lib, P.figure_tiles, P.image_size, P.seed)
    fig = plots.image_grid(rows, titles)
    return fig, plots.save(fig, paths.figures_dir(P.profile) / "00_data_overview")


def check(P, idx: pd.DataFrame, lib: dict, valid: dict | None) -> None:
    """The notebook's sanity checks: splits, labels, no patient in both splits, library shape."""
    L = layout.of(P, NOTEBOOK)
    assert len(idx) > 0 and set(idx.split) <= {"train", "test"}
    assert set(idx.tile_label) <= {0, 1, 2, 3}
    assert not set(idx.patient_id[idx.split == "train"]) & set(idx.patient_id[idx.split == "test"])
    assert lib["maps"].shape[1:] == (P.image_size, P.image_size) and lib["maps"].max() < 4
    assert (L.out / "index.csv").exists() and (L.out / "shape_maps.npz").exists()
    if valid is not None:
        assert valid["cnn_acc"] > valid["colour_acc"], valid


def run(P, progress: bool = True, checks: bool = True) -> dict:
    """Every step of notebook 00, in its order."""
    root = dataset(P, progress)
    idx, skipped = index(P, root, progress)
    check_folds(P, idx)
    ood = ood_index(P, progress)
    lib = shape_maps(P, idx, progress)
    valid = validity(P, root)
    st = stats(P, root, idx, skipped, lib, ood, valid)
    overview_figure(P, idx, lib)
    if checks:
        check(P, idx, lib, valid)
    return {"root": root, "index": idx, "ood_index": ood, "library": lib, "stats": st}


def write_index(index: pd.DataFrame, skipped: data.Skipped, out: Path, stem: str = "index") -> Path:
    """``<stem>.csv`` (+ ``<stem>.skipped.csv`` when files were skipped), written atomically."""
    path = out / f"{stem}.csv"
    io.atomic_file(path, lambda tmp: index.to_csv(tmp, index=False))
    report = out / f"{stem}.skipped.csv"
    if len(skipped):
        skipped.frame().to_csv(report, index=False)
        warnings.warn(f"skipped {len(skipped)} file(s) (on_bad_file: skip); each with its problem in {report}")
    elif report.exists():
        report.unlink()  # a stale report would describe another run
    return path


# Shape-map ranks 0 (most pixels) .. 3 in grey levels: ranks are not labels, so not the label palette.
RANK_COLOURS = np.array([[40, 40, 40], [110, 110, 110], [180, 180, 180], [245, 245, 245]], np.uint8)


def overview_rows(index: pd.DataFrame, lib: dict, n: int, size: int, seed: int) -> tuple[dict, list[str]]:
    """Rows for the data-prep figure: tiles, tiles with mask overlay, and their shape maps.

    Picks a spread of tiles: every majority label, multi-label masks first.
    """
    rng = np.random.default_rng(seed)
    tr = index[(index.split == "train") & index.mask_path.astype(bool)]
    n_labels = (tr[list(data.FRACTION_COLUMNS)] > 0).sum(axis=1)
    picks = []
    for lab in range(4):
        cand = tr[(tr.tile_label == lab)]
        cand = cand.loc[n_labels[cand.index].sort_values(ascending=False, kind="stable").index]
        picks += cand.index[: max(1, n // 4)].tolist() if len(cand) else []
    rest = tr.index.difference(picks)
    picks += rng.choice(rest, size=min(len(rest), max(0, n - len(picks))), replace=False).tolist()
    picks = picks[:n]
    tiles, overl, smaps, titles = [], [], [], []
    pos = {name: i for i, name in enumerate(lib["image_name"])}
    for i in picks:
        row = tr.loc[i]
        img, m = data.load_tile(row, size)
        tiles.append(img)
        overl.append(plots.overlay(img, m))
        j = pos.get(row.image_name)
        ranks = shapes.resize_mask(lib["maps"][j], size) if j is not None else np.zeros_like(m)
        smaps.append(RANK_COLOURS[ranks])
        titles.append(f"{row.slide_id} {row.slide_primary}+{row.slide_secondary}")
    return {"tile": tiles, "mask overlay": overl, "shape map m_freq": smaps}, titles


def main(argv: list[str] | None = None) -> int:
    P, a = cli(NOTEBOOK, "pipelines.prep", __doc__.split("\n\n")[0], argv)
    res = run(P, progress=not a.no_progress, checks=not a.no_checks)
    print(json.dumps({k: v for k, v in res["stats"].items() if k != "class_table"}, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
