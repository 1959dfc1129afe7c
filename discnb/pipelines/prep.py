"""Notebook 00 (paper Sec. 2.2): the dataset folder, the tile index, the OOD index, the shape-map
library m_freq, the demo data's validity check, the stats and the overview figure, as named steps.

    python -m discnb.pipelines.prep --params params/demo/00_data_prep.yaml

Notebook 00 calls the same steps cell by cell; :func:`run` calls them in order. Outputs
(``outputs/<profile>/data/``): ``index.csv``, ``ood_index.csv``, ``shape_maps.npz``, ``stats.json``
(+ the demo folders), figure ``00_data_overview``. Later notebooks read them through
:func:`data_dir`, :func:`read_index` and :func:`prep_params`.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from discnb import K, LABELS, plots
from discnb.core import io, paths
from discnb.core.notebook import cli
from discnb.data import demo, shapes
from discnb.data.demo import check as demo_check
from discnb.data import sicap as data

NOTEBOOK = "00_data_prep"
STAGE = "data"


def out_dir(P) -> Path:
    return paths.output_dir(P.profile, STAGE, create=False)


def data_dir(P) -> Path:
    """Notebook 00's folder as a later notebook's ``data_dir`` parameter names it (the one place)."""
    return paths.param_dir(P, "data_dir", STAGE)


def prep_params(ddir: Path) -> dict:
    """Notebook 00's resolved parameters (its ``image_size`` is every model's tile size)."""
    p = Path(ddir) / "params.resolved.yaml"
    if not p.exists():
        raise FileNotFoundError(f"{p}: no data prep for this profile; run notebooks/00_data_prep.ipynb first")
    return yaml.safe_load(p.read_text())


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
    return dataset_root(P.dataset, out_dir(P), name="demo_sicapv2", domain="in", seed=P.seed,
                        patients=P.demo_patients, tiles_per_slide=P.demo_tiles_per_slide,
                        tile_size=P.demo_tile_size, progress=progress)


def index(P, root: Path) -> tuple[pd.DataFrame, data.Skipped]:
    """The tile index of ``root``, written to ``index.csv`` (+ ``index.skipped.csv``)."""
    idx, skipped = data.build_index(root, on_bad_file=P.on_bad_file, masks=P.masks)
    write_index(idx, skipped, out_dir(P))
    return idx, skipped


def ood_index(P, progress: bool = True) -> pd.DataFrame | None:
    """The out-of-distribution set's index (``ood_index.csv``), or None when ``ood_dataset`` is "".
    The demo OOD set is another "hospital" (stain and scale), seeded ``seed + 1``."""
    if not P.ood_dataset:
        return None
    root = dataset_root(P.ood_dataset, out_dir(P), name="demo_ood", domain="ood", seed=P.seed + 1,
                        patients=P.ood_patients, tiles_per_slide=P.demo_tiles_per_slide,
                        tile_size=P.demo_tile_size, progress=progress)
    idx, skipped = data.build_index(root, on_bad_file=P.on_bad_file, masks=P.masks)
    write_index(idx, skipped, out_dir(P), stem="ood_index")
    return idx


def shape_maps(P, idx: pd.DataFrame) -> dict:
    """The shape-map library m_freq (Sec. 2.2) of the official training masks, at the models' size."""
    lib = shapes.build_library(idx[idx.split == "train"], P.image_size)
    shapes.save_library(out_dir(P) / "shape_maps.npz", lib)
    return lib


def validity_summary(valid: dict | None) -> dict | None:
    """The headline of :func:`validity`: mean-colour and CNN balanced accuracy beside chance."""
    return valid and {k: valid[k] for k in ("colour_acc", "cnn_acc", "chance")}


def validity(P, root: Path) -> dict | None:
    """Demo data only: mean colour vs a small CNN (:func:`discnb.data.demo_check.validity_report`)."""
    if P.dataset != "demo" or not P.validity_check:
        return None
    return demo_check.validity_report(root, seed=P.seed, cnn_epochs=P.validity_cnn_epochs)


def stats(P, root: Path, idx: pd.DataFrame, skipped: data.Skipped, lib: dict, ood: pd.DataFrame | None,
          valid: dict | None) -> dict:
    """``stats.json``: counts, the class table and the validity report."""
    out = {"dataset": str(root), "patches": len(idx), "skipped": len(skipped),
           "slides": int(idx.slide_id.nunique()), "patients": int(idx.patient_id.nunique()),
           "shape_maps": int(len(lib["maps"])), "ood_patches": 0 if ood is None else len(ood),
           "class_table": data.class_table(idx).reset_index().to_dict("records"), "validity": valid}
    io.write_json(out_dir(P) / "stats.json", out)
    return out


def overview_figure(P, idx: pd.DataFrame, lib: dict):
    """Figure ``00_data_overview``: tiles, their masks and shape maps. Returns (figure, png path)."""
    rows, titles = overview_rows(idx, lib, P.figure_tiles, P.image_size, P.seed)
    fig = plots.image_grid(rows, titles)
    return fig, plots.save(fig, paths.figures_dir(P.profile) / "00_data_overview")


def check(P, idx: pd.DataFrame, lib: dict, valid: dict | None) -> None:
    """The notebook's sanity checks: splits, labels, no patient in both splits, library shape."""
    assert len(idx) > 0 and set(idx.split) <= {"train", "test"}
    assert set(idx.tile_label) <= {0, 1, 2, 3}
    assert not set(idx.patient_id[idx.split == "train"]) & set(idx.patient_id[idx.split == "test"])
    assert lib["maps"].shape[1:] == (P.image_size, P.image_size) and lib["maps"].max() < 4
    assert (out_dir(P) / "index.csv").exists() and (out_dir(P) / "shape_maps.npz").exists()
    if valid is not None:
        assert valid["cnn_acc"] > valid["colour_acc"], valid


def run(P, progress: bool = True, checks: bool = True) -> dict:
    """Every step of notebook 00, in its order."""
    root = dataset(P, progress)
    idx, skipped = index(P, root)
    ood = ood_index(P, progress)
    lib = shape_maps(P, idx)
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
    elif report.exists():
        report.unlink()  # a stale report would describe another run
    return path


def read_index(out: Path, stem: str = "index") -> pd.DataFrame:
    path = Path(out) / f"{stem}.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no tile index; run notebooks/00_data_prep.ipynb for this profile first")
    # "" is NaN only in the numeric columns of tiles without a mask (a slide id "NA" stays text)
    return pd.read_csv(path, dtype={"slide_id": str, "patient_id": str, "mask_path": str},
                       keep_default_na=False, na_values={c: [""] for c in (*data.FRACTION_COLUMNS, "mask_changed")})


def read_ood_index(out: Path, ood_split: str) -> pd.DataFrame:
    """Rows ``ood_split`` ("all", or a split name such as "test") of ``ood_index.csv``: the
    out-of-distribution test set of notebooks 04 and 05."""
    path = Path(out) / "ood_index.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no out-of-distribution set for this profile (notebook 00 ran with "
                                "ood_dataset empty?); set ood_split: \"\" (none) or give notebook 00 an ood_dataset")
    ood = read_index(out, stem="ood_index")
    if ood_split != "all":
        if ood_split not in set(ood.split):
            raise data.DataError(f"{path} has no {ood_split!r} rows (splits: {sorted(set(ood.split))}); "
                                 "set ood_split to 'all', 'test' or '' (none)")
        ood = ood[ood.split == ood_split]
    return ood


def pixel_counts(masks: np.ndarray) -> np.ndarray:
    return np.bincount(np.asarray(masks).ravel(), minlength=K)[:K]


def split_tiles(ddir: Path, val_fold: int, ood_split: str = "", progress: bool = True) -> dict:
    """Tiles and masks of train / val (CV fold ``val_fold``) / test (/ ood: rows ``ood_split`` of
    ``ood_index.csv``) in memory at notebook 00's ``image_size``, plus ``pixels``: label pixel
    counts per split.

    Rows without a mask are left out (with a warning). A class with no pixel in a split gets a
    warning: the model cannot learn it (train) or its IoU/Dice are undefined (test sets).
    """
    ddir = Path(ddir)
    size = int(prep_params(ddir)["image_size"])
    parts = data.fold_split(read_index(ddir), val_fold)
    if ood_split:
        parts["ood"] = read_ood_index(ddir, ood_split)
    out: dict = {"image_size": size, "data_dir": str(ddir)}
    for name, frame in parts.items():
        no_mask = ~frame.mask_path.astype(bool)
        if no_mask.any():
            warnings.warn(f"{name} split: {int(no_mask.sum())} tile(s) without a mask left out (they cannot be graded "
                          f"pixel-wise), e.g. {frame.image_name[no_mask].iloc[0]}")
            frame = frame[~no_mask]
        imgs, masks = data.load_tiles(frame, size, progress=progress)
        out[name] = {"imgs": imgs, "masks": masks, "names": frame.image_name.to_numpy().astype(str)}
    if len(out["train"]["imgs"]) == 0:
        raise data.DataError(f"{ddir}/index.csv: no training tile with a mask (official train minus fold {val_fold})")
    if val_fold and len(out["val"]["imgs"]) == 0:
        raise data.DataError(f"{ddir}/index.csv: validation fold {val_fold} has no tile with a mask")
    counts = {n: pixel_counts(out[n]["masks"]) for n in parts}
    out["pixels"] = pd.DataFrame(counts, index=list(LABELS)).T.assign(tiles={n: len(out[n]["imgs"]) for n in parts})
    for name, c in counts.items():
        empty = [LABELS[i] for i in range(K) if c[i] == 0]
        if not empty or (name == "val" and not len(out["val"]["imgs"])):
            continue
        if name == "train":
            warnings.warn(f"the training split has no {empty} pixels: the real-only CarcinoNet cannot learn "
                          f"{'them' if len(empty) > 1 else 'it'} (synthetic tiles may supply them)")
        else:
            warnings.warn(f"the {name} split has no {empty} pixels: IoU/Dice of {empty} are undefined there "
                          "(NaN, left out of means)")
    return out


# Shape-map ranks 0 (most pixels) .. 3 in grey levels: ranks are not labels, so not the label palette.
RANK_COLOURS = np.array([[40, 40, 40], [110, 110, 110], [180, 180, 180], [245, 245, 245]], np.uint8)


def overview_rows(index: pd.DataFrame, lib: dict, n: int, size: int, seed: int) -> tuple[dict, list[str]]:
    """Rows for the data-prep figure: tiles, tiles with mask overlay, and their shape maps.

    Picks a spread of tiles: every majority label, multi-label masks first.
    """
    rng = np.random.default_rng(seed)
    tr = index[(index.split == "train") & index.mask_path.astype(bool)]
    n_labels = (tr[list(data.FRACTION_COLUMNS)] > 0).sum(1)
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
    P, a = cli(NOTEBOOK, "pipelines.prep", __doc__.split("\n\n")[0], out_dir, argv)
    res = run(P, progress=not a.no_progress, checks=not a.no_checks)
    print(json.dumps({k: v for k, v in res["stats"].items() if k != "class_table"}, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
