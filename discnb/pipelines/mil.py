"""Slide-level grading with synthetic slides: the λ sweep of Eq. 4 (paper Sec. 2.4, Sec. 3, Fig. 6-7).

Pipeline of notebook 05 (``python -m discnb.pipelines.mil --params FILE`` runs the same from a terminal):

1. **Tile features** (:mod:`discnb.grading.features`) of the real tiles (notebook 00's ``index.csv``), the
   out-of-distribution slides (notebook 00's ``ood_index.csv``, a generic tile folder, or PANDA
   prepared by :mod:`discnb.data.panda`) and each generator's synthetic slides (notebook 03), cached per
   (source, extractor).
2. **Bags**: one per slide, its tiles in name order (TransMIL is order-sensitive, see
   :mod:`discnb.grading.transmil`), with the multi-label target of :func:`discnb.grading.transmil.slide_targets`
   (label i = 1 when it is the slide's primary or secondary pattern).
3. **Runs**, for every CV fold (train = official train minus fold k, validation = fold k, patient-
   wise as SICAPv2's Val1..4) and seed: TransMIL on real slides (the baseline, λ = 0), Mixed
   Supervision on real slides (the comparison model), and TransMIL + each generator's slides for
   every λ > 0 of the grid, trained with Eq. 4::

       L = (1 - λ) L_real + λ L_synth         (each a mean BCE over its slides)

   Each optimizer step takes ``batch`` real slides (one pass over the training slides per epoch)
   and ``synth_batch`` synthetic slides drawn at random. Lookahead(RAdam), lr 2e-4, weight decay
   1e-5 (official TransMIL); early stopping on the validation loss (patience 10 in the paper
   profile); the kept weights are those of the lowest validation loss (TransMIL) or the highest
   validation macro AUROC (Mixed Supervision, its official monitor). Nothing is selected on the
   test split or the OOD set.
4. **Evaluation**: AUROC per label (NC, GG3, GG4, GG5) and their macro mean (labels with one
   class only in a test set are left out of the mean) on validation, test and OOD slides; mean ±
   std over folds and seeds; ``results.csv`` (tidy) for notebook 06 and a table with the **best λ
   per generator chosen on validation** (plus, flagged, the λ that is best on each test set, which
   is how the paper's text reads its Fig. 6).

Why not :func:`discnb.core.train.fit`: slides are bags of different sizes (20-100 synthetic tiles,
any number of real ones), which :class:`~discnb.core.train.TensorData` cannot hold, and the official
recipe needs Lookahead(RAdam) and early stopping on a validation loss; so this module has a small
plain loop (:func:`train_model`). Bags of equal size in one step are stacked into one forward pass
(the only batching TransMIL allows without masks); with ``batch: 1`` it is the official
one-slide-per-step training.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from discnb import K, LABELS
from discnb.data import sicap as data
from discnb.grading import features
from discnb.data import panda
from discnb.core import paths
from discnb.pipelines import prep
from discnb.grading.transmil import MixedSupervision, TransMIL, bce_loss, lookahead_radam, slide_targets

NOTEBOOK = "05_transmil_sweep"
STAGE = "mil"
GENERATORS = ("SD", "SD-SC", "SD-DISC", "SD-DISC-CoTrain", "SD-tile", "SD-tile+slide")  # the last two: Fig. 7
TEST_SETS = ("val", "test", "ood")
ARCH_VERSION = 1  # bump when training/model code changes: cached runs of another version are not reused

# Paper Sec. 3 text (method notes §10): slide-level AUROC (%), features (c) Lunit DINO ViT-S/16.
PAPER = pd.DataFrame([
    ("TransMIL", "none", 96.52, None, 85.68, None),
    ("Mixed Supervision (≈, read off Fig. 6)", "none", 93.4, None, 82.6, None),
    ("TransMIL", "SD", 96.77, 0.1, 85.80, 0.25),
    ("TransMIL", "SD-SC", 96.89, 0.05, 86.01, 0.3),
    ("TransMIL", "SD-DISC-CoTrain", 97.04, 0.1, None, None),
    ("TransMIL", "SD-DISC", None, None, 86.25, 0.3),
], columns=["model", "generator", "SICAPv2 test", "λ (test)", "PANDA", "λ (PANDA)"])


# ===================================================================================== paths
def data_dir(P) -> Path:
    return paths.param_dir(P, "data_dir", "data")


def out_dir(P) -> Path:
    return paths.param_dir(P, "output_dir", STAGE)


def tilesets_dir(P) -> Path:
    return paths.param_dir(P, "tilesets_dir", "tilesets")


def device_of(P) -> torch.device:
    return torch.device("cuda" if P.device != "cpu" and torch.cuda.is_available() else "cpu")


# ================================================================================= tile sets
def read_manifest(folder: str | Path) -> pd.DataFrame:
    """A generator's tile set (notebook 03): ``manifest.csv`` (slide_id, primary, secondary,
    tertiary, weights, n_tiles, seed, file) + ``slides/<slide_id>.npz`` (tiles (N,H,W,3) uint8,
    masks (N,H,W) uint8, mask_ids, seeds).

    Adds ``primary_label``/``secondary_label`` (0..3) and ``path``. The manifest's grades are read
    as labels 0..3 (the project's convention); a manifest holding 4 or 5 is read as Gleason grades
    0/3/4/5; columns primary_label/secondary_label, when present, win.
    """
    folder = Path(folder)
    mpath = folder / "manifest.csv"
    if not mpath.exists():
        raise FileNotFoundError(f"{mpath}: no tile-set manifest; run notebooks/03_tile_sets.ipynb first")
    m = pd.read_csv(mpath, dtype={"slide_id": str})
    missing = [c for c in ("slide_id", "primary", "secondary", "file") if c not in m.columns]
    if missing:
        raise data.DataError(f"{mpath}: missing column(s) {missing}; found {list(m.columns)}")
    if {"primary_label", "secondary_label"} <= set(m.columns):
        pass
    elif (m[["primary", "secondary"]].to_numpy() > 3).any():
        bad = sorted((set(m.primary) | set(m.secondary)) - set(data.GRADE_TO_LABEL))
        if bad:
            raise data.DataError(f"{mpath}: grades {bad} are neither labels 0..3 nor Gleason 0/3/4/5")
        m["primary_label"] = m.primary.map(data.GRADE_TO_LABEL)
        m["secondary_label"] = m.secondary.map(data.GRADE_TO_LABEL)
    else:
        m["primary_label"], m["secondary_label"] = m.primary.astype(int), m.secondary.astype(int)
    m["path"] = [str(folder / f) for f in m.file]
    absent = [p for p in m.path if not Path(p).exists()]
    if absent:
        raise FileNotFoundError(f"{mpath}: {len(absent)} slide file(s) listed but absent, e.g. {absent[0]}; rerun "
                                "notebooks/03_tile_sets.ipynb (it resumes)")
    return m


def tileset_fingerprint(folder: Path, manifest: pd.DataFrame) -> str:
    stats = [(Path(p).name, Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in manifest.path]
    return features.bytes_fingerprint(folder / "manifest.csv", stats)


def tileset_chunks(manifest: pd.DataFrame):
    """(keys "<slide_id>/<i>", tiles) per synthetic slide."""
    def gen():
        for sid, p in zip(manifest.slide_id, manifest.path):
            with np.load(p, allow_pickle=False) as z:
                tiles = z["tiles"]
            yield [f"{sid}/{i}" for i in range(len(tiles))], tiles
    return gen


def find_tilesets(P, generators) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The generators whose tile set exists, and a note for each that does not."""
    root = tilesets_dir(P)
    found, notes = {}, []
    for g in generators:
        if g not in GENERATORS:
            raise ValueError(f"unknown generator {g!r}; known: {list(GENERATORS)}")
        if not (root / g / "manifest.csv").exists():
            notes.append(f"{g}: no tile set at {root / g} — skipped (generate it with notebooks/03_tile_sets.ipynb "
                         f"for profile {P.profile})")
            continue
        m = read_manifest(root / g)
        if len(m) == 0:
            notes.append(f"{g}: {root / g}/manifest.csv lists no slide — skipped")
            continue
        found[g] = m
    return found, notes


# ====================================================================================== data
def load_sources(P, progress: bool = True) -> dict:
    """Real index (train + test), the OOD index (or None) and the synthetic tile sets present."""
    ddir = data_dir(P)
    index = prep.read_index(ddir)
    out: dict = {"index": index, "data_dir": ddir, "notes": []}
    if P.panda.get("root"):
        pz = P.panda
        folder = panda.prepare_panda(paths.resolve(pz["root"]), out_dir(P) / "panda", n_per_label=pz["n_per_label"],
                                     max_tiles=pz["max_tiles"], tile_px=pz["tile_px"], target_mpp=pz["target_mpp"],
                                     base_mpp=pz["base_mpp"], min_tissue=pz["min_tissue"],
                                     providers=tuple(pz.get("providers", [])), seed=P.seed, progress=progress)
        out["ood"], out["ood_name"], out["ood_fp"] = panda.read_tile_folder(folder), "PANDA", _folder_fp(folder)
    elif P.ood_dir:
        folder = paths.resolve(P.ood_dir)
        out["ood"], out["ood_name"], out["ood_fp"] = panda.read_tile_folder(folder), str(P.ood_dir), _folder_fp(folder)
    elif P.ood_split:
        if not (ddir / "ood_index.csv").exists():
            raise FileNotFoundError(f"{ddir / 'ood_index.csv'}: no out-of-distribution set for this profile; set "
                                    "ood_split: \"\" (none), ood_dir (a tile folder) or panda.root")
        ood = prep.read_index(ddir, stem="ood_index")
        if P.ood_split != "all":
            ood = ood[ood.split == P.ood_split]
            if ood.empty:
                raise data.DataError(f"{ddir}/ood_index.csv has no {P.ood_split!r} rows; use 'all', 'test' or ''")
        out["ood"], out["ood_name"] = ood, "demo OOD (notebook 00)"
        out["ood_fp"] = features.bytes_fingerprint(ddir / "ood_index.csv", P.ood_split)
    else:
        out["ood"], out["ood_name"], out["ood_fp"] = None, "", ""
    out["real_fp"] = features.bytes_fingerprint(ddir / "index.csv")
    out["tilesets"], out["notes"] = find_tilesets(P, P.generators)
    return out


def _folder_fp(folder: Path) -> str:
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in panda.IMAGE_EXTS + (".csv",))
    return features.bytes_fingerprint([(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files])


def build_extractor(P, S: dict, progress: bool = True) -> features.Extractor:
    """The extractor named by ``P.extractor['name']`` (see :mod:`discnb.grading.features`)."""
    E = P.extractor
    dev = str(device_of(P))
    if E["name"] in features.PRETRAINED:
        return features.pretrained_extractor(E["name"], E["path"], E.get("eval_batch", 64), dev)
    if E["name"] != "tilecnn":
        raise ValueError(f"extractor.name {E['name']!r} is not one of {list(features.EXTRACTORS)}")
    from discnb.pipelines.train_ldm import prep_params
    size = int(E.get("input_size") or prep_params(S["data_dir"])["image_size"])
    train = S["index"][(S["index"].split == "train") & S["index"].mask_path.astype(bool)]
    if train.empty:
        raise data.DataError(f"{S['data_dir']}/index.csv: no training tile with a mask to train the tilecnn extractor")

    def tiles():
        imgs, _ = data.load_tiles(train, size, progress=progress)
        return imgs, train[list(data.FRACTION_COLUMNS)].to_numpy(np.float32)
    key = features.bytes_fingerprint(S["real_fp"], "train-split")
    return features.tilecnn_extractor(E, out_dir(P), tiles, key, size, progress, dev)


def extract_all(P, ext: features.Extractor, S: dict, progress: bool = True) -> dict:
    """Features of every source (cached): real, ood, synth-<generator>."""
    out = out_dir(P)
    F_ = {"real": features.cached_features(ext, out, "real", S["real_fp"], features.index_chunks(S["index"], ext.input_size),
                                           progress, len(S["index"]))}
    if S["ood"] is not None:
        F_["ood"] = features.cached_features(ext, out, "ood", S["ood_fp"], features.index_chunks(S["ood"], ext.input_size),
                                             progress, len(S["ood"]))
    for g, m in S["tilesets"].items():
        fp = tileset_fingerprint(tilesets_dir(P) / g, m)
        F_[f"synth-{g}"] = features.cached_features(ext, out, f"synth-{g}", fp, tileset_chunks(m), progress,
                                                    int(m.n_tiles.sum()) if "n_tiles" in m else None)
    return F_


@dataclass
class Bag:
    """One slide: its tile features in a fixed order, target, tile pseudo labels, grid coordinates."""
    slide_id: str
    feats: torch.Tensor          # (n, D)
    y: torch.Tensor              # (K,)
    tile_labels: torch.Tensor    # (n,) long, -100 = unknown
    coords: torch.Tensor         # (n, 2) long grid positions (row, col)
    primary: int
    secondary: int

    def __len__(self) -> int:
        return len(self.feats)


def grid_coords(names, grid: int = 200) -> np.ndarray:
    """(row, col) grid positions of a slide's tiles for Mixed Supervision's position encoding: the
    dense ranks of the y/x coordinates in ``..._xini_X_yini_Y`` names, else the bag order laid on a
    square (as TransMIL's PPEG does); clipped to the encoding's grid."""
    c = panda.tile_coords(names)
    n = len(names)
    if c is None:
        side = max(1, math.ceil(math.sqrt(n)))
        c = np.stack([np.arange(n) // side, np.arange(n) % side], 1)
    else:
        c = np.stack([np.unique(c[:, 0], return_inverse=True)[1], np.unique(c[:, 1], return_inverse=True)[1]], 1)
    return np.clip(c, 0, grid - 1)


def real_bags(index: pd.DataFrame, feats: dict) -> dict[str, Bag]:
    """One bag per slide of a tile index, tiles sorted by name."""
    bags = {}
    for sid, part in index.sort_values("image_name", kind="stable").groupby("slide_id", sort=True):
        rows = [feats["index"][n] for n in part.image_name.astype(str)]
        p, s = int(part.slide_primary_label.iloc[0]), int(part.slide_secondary_label.iloc[0])
        tl = part.tile_label.to_numpy() if "tile_label" in part else np.full(len(part), -1)
        has_mask = part.mask_path.astype(bool).to_numpy()
        tl = np.where(has_mask & (tl >= 0), tl, -100)
        bags[str(sid)] = Bag(str(sid), torch.from_numpy(feats["feats"][rows]), slide_targets(p, s),
                             torch.as_tensor(tl, dtype=torch.long),
                             torch.from_numpy(grid_coords(part.image_name.tolist())), p, s)
    return bags


def synth_bags(manifest: pd.DataFrame, feats: dict) -> list[Bag]:
    out = []
    for rec in manifest.to_dict("records"):
        sid = str(rec["slide_id"])
        keys = sorted((k for k in feats["index"] if k.startswith(sid + "/")), key=lambda k: int(k.rsplit("/", 1)[1]))
        if not keys:
            raise data.DataError(f"synthetic slide {sid}: no features (empty npz?)")
        p, s = int(rec["primary_label"]), int(rec["secondary_label"])
        out.append(Bag(sid, torch.from_numpy(feats["feats"][[feats["index"][k] for k in keys]]), slide_targets(p, s),
                       torch.full((len(keys),), -100, dtype=torch.long),
                       torch.from_numpy(grid_coords([None] * len(keys))), p, s))
    return out


def build_bags(P, S: dict, F_: dict) -> dict:
    """Bags: real (all slides of index.csv), ood, synth {generator: [Bag]}, and the slide ids of
    the official train/test split."""
    real = real_bags(S["index"], F_["real"])
    slides = S["index"].drop_duplicates("slide_id").set_index("slide_id")
    B = {"real": real, "slides": slides, "ood": real_bags(S["ood"], F_["ood"]) if S["ood"] is not None else {},
         "synth": {g: synth_bags(m, F_[f"synth-{g}"]) for g, m in S["tilesets"].items()}}
    return B


def fold_slides(B: dict, fold: int) -> dict[str, list[str]]:
    """Slide ids of train / val (CV fold ``fold``, patient-wise) / test."""
    s = B["slides"]
    tr = s[s.split == "train"]
    if fold not in set(tr.cv_fold):
        raise data.DataError(f"fold {fold} is not among the CV folds of index.csv ({sorted(set(tr.cv_fold[tr.cv_fold > 0]))})")
    return {"train": sorted(tr.index[tr.cv_fold != fold].astype(str)), "val": sorted(tr.index[tr.cv_fold == fold].astype(str)),
            "test": sorted(s.index[s.split == "test"].astype(str))}


def bag_table(B: dict, folds) -> pd.DataFrame:
    """Slides and tiles per set, and slides per label (as primary or secondary)."""
    rows = []

    def add(name, bags):
        if not bags:
            return
        y = torch.stack([b.y for b in bags]).sum(0).int().tolist()
        rows.append({"set": name, "slides": len(bags), "tiles": int(sum(len(b) for b in bags)),
                     **{f"slides with {lab}": v for lab, v in zip(LABELS, y)}})
    f0 = fold_slides(B, folds[0])
    for part in ("train", "val", "test"):
        add(f"{part} (fold {folds[0]})" if part != "test" else "test", [B["real"][i] for i in f0[part]])
    add("ood", list(B["ood"].values()))
    for g, bags in B["synth"].items():
        add(f"synthetic {g}", bags)
    return pd.DataFrame(rows).set_index("set")


# ================================================================================== training
def build_model(kind: str, in_dim: int, P) -> torch.nn.Module:
    if kind == "TransMIL":
        T = P.transmil
        return TransMIL(in_dim, K, dim=T["dim"], heads=T["heads"], landmarks=T.get("landmarks") or None,
                        dropout=T["dropout"])
    if kind == "MixedSupervision":
        M = P.mixed
        return MixedSupervision(in_dim, K, dim=M["dim"], depth=M["depth"], heads=M["heads"], mlp_ratio=M["mlp_ratio"],
                                skip_lam=M["skip_lam"], drop_path=M["drop_path"], masking_ratio=M["masking_ratio"])
    raise ValueError(f"unknown model {kind!r}")


def _groups(bags: list[Bag]) -> list[list[Bag]]:
    by: dict[int, list[Bag]] = {}
    for b in bags:
        by.setdefault(len(b), []).append(b)
    return list(by.values())


def slide_loss(model, bags: list[Bag], device, generator: torch.Generator | None = None,
               instance_weight: float = 0.5) -> torch.Tensor:
    """Mean BCE over ``bags`` (TransMIL: bags of equal size share one forward pass). Mixed
    Supervision: per bag, a random (1 - masking_ratio) of its tiles, 0.5 slide BCE + 0.5 instance
    cross-entropy on the tiles' pseudo labels (tiles without one ignored)."""
    total = torch.zeros((), device=device)
    if isinstance(model, MixedSupervision):
        for b in bags:
            keep = model.keep_index(len(b), generator) if model.training else torch.arange(len(b))
            s_logit, i_logit = model(b.feats[keep].to(device), b.coords[keep].to(device))
            loss = bce_loss(s_logit, b.y.to(device))
            tl = b.tile_labels[keep].to(device)
            if (tl >= 0).any():
                loss = (1 - instance_weight) * loss + instance_weight * F.cross_entropy(i_logit[0], tl, ignore_index=-100)
            total = total + loss
        return total / len(bags)
    for grp in _groups(bags):
        x = torch.stack([b.feats for b in grp]).to(device)
        y = torch.stack([b.y for b in grp]).to(device)
        total = total + bce_loss(model(x), y) * len(grp)
    return total / len(bags)


@torch.no_grad()
def predict(model, bags: list[Bag], device) -> np.ndarray:
    """Sigmoid probabilities (n_bags, K), one bag per forward pass (as the official evaluation)."""
    model.eval()
    out = np.zeros((len(bags), K), np.float32)
    for i, b in enumerate(bags):
        logits = model(b.feats.to(device), b.coords.to(device))[0] if isinstance(model, MixedSupervision) else model(b.feats.to(device))
        out[i] = torch.sigmoid(logits.float()).cpu().numpy().reshape(-1)
    return out


def eval_loss(model, bags: list[Bag], device) -> float:
    """Mean slide BCE (no instance loss, all tiles) of ``bags``."""
    if not bags:
        return float("nan")
    p = torch.from_numpy(predict(model, bags, device)).clamp(1e-7, 1 - 1e-7)
    y = torch.stack([b.y for b in bags])
    return float(F.binary_cross_entropy(p, y))


def check_lam(lam) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (0 <= lam < 1):
        raise ValueError(f"lambda (balance weight of Eq. 4) must be in [0, 1), got {lam!r}: λ = 1 would ignore the "
                         "real slides; λ = 0 is the real-only baseline")
    return float(lam)


def eq4(l_real: torch.Tensor, l_synth: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 4: (1 - λ) L_real + λ L_synth."""
    return (1 - lam) * l_real + lam * l_synth


def train_model(model, train: list[Bag], val: list[Bag], T: dict, seed: int, device, synth: list[Bag] | None = None,
                lam: float = 0.0, select: str = "loss") -> dict:
    """Train ``model`` in place; returns {history, epochs, best_epoch, seconds, steps}.

    One epoch = one pass over ``train`` in a seeded random order, ``T['batch']`` slides per
    optimizer step (plus ``T['synth_batch']`` random synthetic slides when λ > 0, Eq. 4). After
    each epoch: validation loss (and macro AUROC); stop after ``T['patience']`` epochs without a
    lower validation loss; restore the weights of the best epoch (lowest loss, or highest macro
    AUROC with ``select='auroc'``, ties to the earlier epoch).
    """
    lam = check_lam(lam)
    if lam > 0 and not synth:
        raise ValueError("λ > 0 needs synthetic slides")
    if not train:
        raise ValueError("no training slides")
    model.to(device)
    opt = lookahead_radam(model, T["lr"], T["weight_decay"], T.get("lookahead_k", 6), T.get("lookahead_alpha", 0.5))
    g = torch.Generator().manual_seed(seed)
    best_score, best_state, best_epoch, bad, best_loss = None, None, -1, 0, math.inf
    history, steps, t0 = [], 0, time.perf_counter()
    yv = np.stack([b.y.numpy() for b in val]) if val else None
    for epoch in range(1, T["max_epochs"] + 1):
        model.train()
        perm = torch.randperm(len(train), generator=g).tolist()
        run = 0.0
        for s in range(0, len(perm), T["batch"]):
            loss = slide_loss(model, [train[i] for i in perm[s:s + T["batch"]]], device, g)
            if lam > 0:
                pick = torch.randint(0, len(synth), (T["synth_batch"],), generator=g).tolist()
                loss = eq4(loss, slide_loss(model, [synth[j] for j in pick], device, g), lam)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the training loss became {float(loss.detach())} at epoch {epoch}; lower train.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run += float(loss.detach())
            steps += 1
        row = {"epoch": epoch, "train_loss": run / math.ceil(len(perm) / T["batch"])}
        if val:
            pv = predict(model, val, device)
            row["val_loss"] = float(F.binary_cross_entropy(torch.from_numpy(pv).clamp(1e-7, 1 - 1e-7),
                                                           torch.from_numpy(yv)))
            row["val_auroc"] = auroc_scores(yv, pv)["macro"]
            score = ((-row["val_loss"],) if select == "loss" else
                     (float(np.nan_to_num(row["val_auroc"], nan=-1.0)), -row["val_loss"]))
            if best_score is None or score > best_score:
                best_score, best_epoch = score, epoch
                best_state = copy.deepcopy(model.state_dict())
            if row["val_loss"] < best_loss - 1e-6:
                best_loss, bad = row["val_loss"], 0
            else:
                bad += 1
        history.append(row)
        if val and bad >= T["patience"]:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = len(history)
    return {"history": history, "epochs": len(history), "best_epoch": best_epoch, "steps": steps,
            "seconds": time.perf_counter() - t0}


# ================================================================================ evaluation
def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN when ``y`` has
    one class only."""
    y, score = np.asarray(y).astype(bool).ravel(), np.asarray(score, float).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata
    r = rankdata(score)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc_scores(Y: np.ndarray, S: np.ndarray) -> dict:
    """Per-label AUROC and their macro mean over labels with both classes (NaN if none)."""
    Y, S = np.asarray(Y), np.asarray(S)
    out = {lab: auroc(Y[:, i], S[:, i]) for i, lab in enumerate(LABELS)}
    vals = [v for v in out.values() if np.isfinite(v)]
    out["macro"] = float(np.mean(vals)) if vals else float("nan")
    return out


# ====================================================================================== runs
@dataclass
class RunSpec:
    model: str
    generator: str | None
    lam: float
    fold: int
    seed: int

    @property
    def tag(self) -> str:
        base = "TransMIL" if self.model == "TransMIL" else "MixedSup"
        return base if self.generator is None else f"{base}+{self.generator}-lam{self.lam:g}"


def run_specs(P, generators) -> list[RunSpec]:
    specs = []
    for fold in P.folds:
        for seed in P.seeds:
            specs.append(RunSpec("TransMIL", None, 0.0, fold, seed))
            if P.mixed_supervision:
                specs.append(RunSpec("MixedSupervision", None, 0.0, fold, seed))
            specs += [RunSpec("TransMIL", g, check_lam(lam), fold, seed) for g in generators for lam in P.lams if lam > 0]
    return specs


def run_one(P, B: dict, spec: RunSpec, keys: dict, progress: bool = False) -> dict:
    """Train and evaluate one run, or reuse its stored result (same signature)."""
    sig = {"version": ARCH_VERSION, "model": spec.model,
           "arch": dict(P.transmil) if spec.model == "TransMIL" else dict(P.mixed), "train": dict(P.train),
           "features": keys["extractor"], "real": keys["real"], "ood": keys.get("ood", ""),
           "synth": keys.get(f"synth-{spec.generator}") if spec.generator else None,
           "generator": spec.generator, "lam": spec.lam, "fold": spec.fold, "seed": spec.seed}
    h = hashlib.sha1(json.dumps(sig, sort_keys=True, default=str).encode()).hexdigest()[:10]
    path = out_dir(P) / "runs" / f"{spec.tag}-fold{spec.fold}-seed{spec.seed}-{h}.json"
    if P.reuse_runs and path.exists():
        rec = json.loads(path.read_text())
        if rec.get("signature") == sig:
            return rec | {"reused": True}
    dev = device_of(P)
    parts = fold_slides(B, spec.fold)
    bags = {k: [B["real"][i] for i in v] for k, v in parts.items()}
    bags["ood"] = [B["ood"][i] for i in sorted(B["ood"])]
    in_dim = next(iter(B["real"].values())).feats.shape[1]
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, in_dim, P)
    fit = train_model(model, bags["train"], bags["val"], P.train, spec.seed, dev,
                      B["synth"][spec.generator] if spec.generator else None, spec.lam,
                      select="auroc" if spec.model == "MixedSupervision" else "loss")
    preds = {}
    for ts in TEST_SETS:
        if bags[ts]:
            preds[ts] = {"slides": [b.slide_id for b in bags[ts]], "y": [b.y.int().tolist() for b in bags[ts]],
                         "prob": predict(model, bags[ts], dev).round(6).tolist()}
    rec = {"signature": sig, "model": spec.model, "generator": spec.generator or "none", "lam": spec.lam,
           "fold": spec.fold, "seed": spec.seed, "tag": spec.tag, "fit": fit, "predictions": preds}
    if P.save_models:
        from safetensors.torch import save_file
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(path.with_suffix(".safetensors")))
    path.parent.mkdir(parents=True, exist_ok=True)
    prep.write_json(path, rec)
    return rec | {"reused": False}


def run_keys(P, S: dict, ext: features.Extractor) -> dict:
    """What the inputs of every run are (extractor, real, OOD and synthetic sources): part of each
    run's signature, so a run is redone when any of them changes."""
    keys = {"extractor": ext.key, "real": S["real_fp"], "ood": S["ood_fp"]}
    return keys | {f"synth-{g}": tileset_fingerprint(tilesets_dir(P) / g, m) for g, m in S["tilesets"].items()}


def run_sweep(P, B: dict, keys: dict, progress: bool = True) -> list[dict]:
    """Every run of :func:`run_specs` for the generators that have slides (cached runs reused)."""
    from tqdm.auto import tqdm
    if not P.seeds or not P.folds:
        raise ValueError("folds and seeds must each name at least one")
    specs = run_specs(P, list(B["synth"]))
    out = []
    bar = tqdm(specs, desc="runs", disable=not progress, mininterval=2)
    for s in bar:
        bar.set_postfix_str(f"{s.tag} fold {s.fold} seed {s.seed}")
        out.append(run_one(P, B, s, keys))
    return out


def results_frame(runs: list[dict], extractor: str) -> pd.DataFrame:
    """Tidy rows: model, extractor, generator, lam, fold, seed, test_set, label, metric, value,
    n_slides, epochs, best_epoch, train_s. Metrics: ``auroc`` per label and ``macro``; ``bce`` (label
    ``all``, the mean slide BCE)."""
    rows = []
    for r in runs:
        for ts, pr in r["predictions"].items():
            Y, S_ = np.array(pr["y"], float), np.array(pr["prob"], float)
            vals = [("auroc", lab, v) for lab, v in auroc_scores(Y, S_).items()]
            vals.append(("bce", "all", float(F.binary_cross_entropy(torch.from_numpy(S_).clamp(1e-7, 1 - 1e-7),
                                                                    torch.from_numpy(Y)))))
            for metric, lab, v in vals:
                rows.append({"model": r["model"], "extractor": extractor, "generator": r["generator"], "lam": r["lam"],
                             "fold": r["fold"], "seed": r["seed"], "test_set": ts, "label": lab, "metric": metric,
                             "value": v, "n_slides": len(pr["y"]), "epochs": r["fit"]["epochs"],
                             "best_epoch": r["fit"]["best_epoch"], "train_s": r["fit"]["seconds"]})
    return pd.DataFrame(rows)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof 0) and count over folds and seeds, per model/generator/lam/test set/label."""
    keys = ["model", "generator", "lam", "test_set", "metric", "label"]
    g = df.groupby(keys, sort=False).value
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=0), "n": g.count()}).reset_index()


def _cell(m, s, n) -> str:
    if not np.isfinite(m):
        return "n/a"
    return f"{100 * m:.2f} ± {100 * s:.2f}" if n > 1 else f"{100 * m:.2f}"


def baseline_table(summary: pd.DataFrame) -> pd.DataFrame:
    """AUROC (%) mean ± std of the baselines (and every λ) per test set, macro and GG5."""
    s = summary[(summary.metric == "auroc") & summary.label.isin(["macro", "GG5"])].copy()
    s["cell"] = [_cell(m, sd, n) for m, sd, n in zip(s["mean"], s["std"], s["n"])]
    s["col"] = s.test_set + " " + s.label
    t = s.pivot_table(index=["model", "generator", "lam"], columns="col", values="cell", aggfunc="first", sort=False)
    cols = [f"{ts} {lab}" for ts in TEST_SETS for lab in ("macro", "GG5") if f"{ts} {lab}" in t.columns]
    return t[cols]


def best_lambda_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per generator: λ* chosen on validation (highest mean macro AUROC over λ > 0; where validation
    AUROC is undefined, e.g. single-class validation folds, the lowest validation BCE), the
    test/OOD macro and GG5 AUROC at λ* and their change over the TransMIL baseline; and, flagged as
    chosen on the test set itself (the paper's reading of Fig. 6), the λ that is best on test and
    on OOD."""
    s = summary[summary.model == "TransMIL"]
    a = s[s.metric == "auroc"]
    base = a[a.generator == "none"].set_index(["test_set", "label"])["mean"]

    def at(gen, lam, ts, lab):
        r = a[(a.generator == gen) & (a.lam == lam) & (a.test_set == ts) & (a.label == lab)]
        return (float(r["mean"].iloc[0]), float(r["std"].iloc[0]), int(r["n"].iloc[0])) if len(r) else (np.nan, np.nan, 0)

    rows = []
    for gen in [g for g in s.generator.unique() if g != "none"]:
        row = {"generator": gen}
        va = a[(a.generator == gen) & (a.test_set == "val") & (a.label == "macro")].dropna(subset=["mean"])
        vb = s[(s.generator == gen) & (s.test_set == "val") & (s.metric == "bce")].dropna(subset=["mean"])
        if len(va):
            lam_star, row["selected on"] = float(va.sort_values(["mean", "lam"], ascending=[False, True]).lam.iloc[0]), "val AUROC"
        elif len(vb):
            lam_star, row["selected on"] = float(vb.sort_values(["mean", "lam"]).lam.iloc[0]), "val BCE"
        else:
            lam_star, row["selected on"] = np.nan, "no validation"
        row["λ* (val)"] = lam_star
        for ts in ("test", "ood"):
            for lab in ("macro", "GG5"):
                m, sd, n = at(gen, lam_star, ts, lab)
                row[f"{ts} {lab} @λ*"] = _cell(m, sd, n)
                b = base.get((ts, lab), np.nan)
                row[f"{ts} {lab} Δ"] = f"{100 * (m - b):+.2f}" if np.isfinite(m) and np.isfinite(b) else "n/a"
            st = a[(a.generator == gen) & (a.test_set == ts) & (a.label == "macro")].dropna(subset=["mean"])
            if len(st):
                top = st.sort_values(["mean", "lam"], ascending=[False, True]).iloc[0]
                row[f"best λ on {ts} (optimistic)"] = f"{top.lam:g}: {100 * top['mean']:.2f}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("generator") if rows else pd.DataFrame()


def save_results(P, df: pd.DataFrame, summary: pd.DataFrame, extra: dict) -> tuple[Path, Path]:
    out = out_dir(P)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "results.csv"
    tmp = csv.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(csv)
    js = prep.write_json(out / "results.json", {"summary": summary.to_dict("records"), **extra})
    return csv, js


# ==================================================================================== figure
def plot_sweep(summary: pd.DataFrame, labels=("macro", "GG5"), ood_name: str = "OOD"):
    """Fig. 6 layout: AUROC (%) against λ per generator (mean ± std band over folds and seeds),
    the TransMIL baseline (λ = 0, solid grey) and Mixed Supervision (dashed), per test set."""
    import matplotlib.pyplot as plt
    sets = [ts for ts in ("test", "ood") if (summary.test_set == ts).any()]
    fig, axes = plt.subplots(len(labels), max(1, len(sets)), figsize=(5 * max(1, len(sets)), 3.3 * len(labels)),
                             squeeze=False)
    colors = dict(zip(GENERATORS, ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]))
    for i, lab in enumerate(labels):
        for j, ts in enumerate(sets):
            ax = axes[i, j]
            s = summary[(summary.test_set == ts) & (summary.metric == "auroc") & (summary.label == lab)]
            base = s[(s.model == "TransMIL") & (s.generator == "none")]
            ms = s[s.model == "MixedSupervision"]
            if len(base):
                m, sd = 100 * base["mean"].iloc[0], 100 * base["std"].iloc[0]
                ax.axhline(m, color="grey", lw=1.5, label="TransMIL (λ=0)")
                ax.axhspan(m - sd, m + sd, color="grey", alpha=0.12)
            if len(ms) and np.isfinite(ms["mean"].iloc[0]):
                ax.axhline(100 * ms["mean"].iloc[0], color="black", ls="--", lw=1.2, label="Mixed Supervision")
            for gen in [g for g in s.generator.unique() if g != "none"]:
                sg = s[(s.generator == gen) & (s.model == "TransMIL")].sort_values("lam")
                if len(base):
                    sg = pd.concat([base.assign(generator=gen), sg])
                x, m, sd = sg.lam.to_numpy(), 100 * sg["mean"].to_numpy(), 100 * sg["std"].to_numpy()
                ax.plot(x, m, "-o", ms=3, color=colors.get(gen), label=f"TransMIL + {gen}")
                ax.fill_between(x, m - sd, m + sd, color=colors.get(gen), alpha=0.12)
            if not np.isfinite(s["mean"].to_numpy(float)).any():
                ax.text(0.5, 0.5, f"AUROC {lab} undefined here:\nevery slide has the same {lab} label",
                        ha="center", va="center", transform=ax.transAxes, fontsize=8)
            ax.set_title(f"{'SICAPv2 test' if ts == 'test' else ood_name} · AUROC {lab}", fontsize=9)
            ax.set_xlabel("balance weight λ")
            ax.set_ylabel("AUROC (%)")
            ax.grid(alpha=0.3)
    h, l_ = axes[0, 0].get_legend_handles_labels()
    if h:
        fig.legend(h, l_, loc="lower center", ncol=min(len(h), 3), frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.08 if h else 0, 1, 1))
    return fig


# ======================================================================================= CLI
def run(P, progress: bool = True) -> dict:
    """The whole notebook-05 pipeline."""
    S = load_sources(P, progress)
    for n in S["notes"]:
        print(n)
    ext = build_extractor(P, S, progress)
    F_ = extract_all(P, ext, S, progress)
    B = build_bags(P, S, F_)
    runs = run_sweep(P, B, run_keys(P, S, ext), progress)
    df = results_frame(runs, ext.key)
    summary = summarize(df)
    save_results(P, df, summary, {"extractor": {"key": ext.key, "name": ext.name, **ext.info},
                                  "ood": S["ood_name"], "notes": S["notes"], "generators": list(B["synth"])})
    return {"sources": S, "extractor": ext, "features": F_, "bags": B, "runs": runs, "results": df, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    from discnb.core.notebook import cli
    P, a = cli(NOTEBOOK, "mil", __doc__.split("\n\n")[0], out_dir, argv)
    res = run(P, progress=not a.no_progress)
    print(baseline_table(res["summary"]).to_string())
    print(best_lambda_table(res["summary"]).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
