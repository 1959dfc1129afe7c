"""A procedural stand-in for SICAPv2: H&E-like prostate tiles with pixel-wise Gleason masks.

``make_demo_sicap(root)`` writes a folder in exactly the on-disk layout of the real SICAPv2
dataset (images/, masks/, wsi_labels.xlsx, partition/Test/, partition/Validation/Val1..4/), so
the project's SICAPv2 loader reads it unchanged::

    root/images/<slide>_Block_Region_<r>_<row>_<col>_xini_<x>_yini_<y>.jpg   RGB, JPEG q=92
    root/masks/<same stem>.png          uint8, 0 / 3 / 4 / 5 (non-cancer / Gleason 3 / 4 / 5)
    root/wsi_labels.xlsx                slide_id, patient_id, Gleason_primary, Gleason_secondary
    root/partition/Test/{Train,Test}.xlsx                image_name, NC, G3, G4, G5, G4C
    root/partition/Test/{Train,Test}Cribfriform.xlsx     image_name, G4C  (G4 rows only; sic)
    root/partition/Validation/Val{1..4}/{Train,Test,TrainCribfriform,TestCribfriform}.xlsx
    root/demo_params.json               the generation parameters (cache stamp)

The tissue is drawn by :mod:`discnb.data.demo.tissue` (the grades differ by structure, not by colour);
this module plans the dataset (slides with SICAPv2's (primary, secondary) patterns, tiles, folds) and writes it.
:mod:`discnb.data.demo.check` checks a written folder: ``validity_report`` (a colour-only classifier must be near
chance, a small CNN on structure must be well above it) and ``preview_grid`` (a picture of it).

Labels in memory are 0..3 (NC, GG3, GG4, GG5); on disk masks hold 0/3/4/5.
``GENERATOR_VERSION`` is part of the cache stamp: bump it whenever the rendering changes, so a
cached folder made by older code is not silently reused (it then needs ``overwrite=True``).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np

from discnb.core.io import atomic_dir
from discnb.data.demo.tissue import DOMAINS, make_stain, random_annotation_mask, render_tile
from discnb.data.sicap import GRADE_TO_LABEL, MASK_VALUES, tile_label

__all__ = ["make_demo_sicap", "slide_label_frequencies", "GENERATOR_VERSION"]

GENERATOR_VERSION = 2

LABEL_TO_DISK = np.array(MASK_VALUES, np.uint8)
_GRADE_TO_LABEL = GRADE_TO_LABEL  # one mapping for the loader and the generator

# Slide-level (primary, secondary) Gleason patterns in SICAPv2 (155 slides).
_SLIDE_COMBOS = {
    (0, 0): 36, (4, 5): 28, (4, 3): 23, (3, 4): 22, (3, 3): 14,
    (4, 4): 13, (5, 5): 7, (5, 4): 7, (3, 5): 4, (5, 3): 1,
}

_DOMAIN_SCALE = {"in": 1.0, "ood": 1.25}


def slide_label_frequencies() -> dict:
    """SICAPv2's slide-level (primary, secondary) Gleason pattern counts (155 slides)."""
    return dict(_SLIDE_COMBOS)


# --------------------------------------------------------------------------- dataset plan
def _tile_plan(rng, p, q):
    """Labels and area fractions of one tile of a slide with labels (p, q) in 0..3."""
    if p == 0:
        return [0], [1.0]
    cancer = [p] if q == p else [p, q]
    if rng.random() < 0.3:
        lab = p if (len(cancer) == 1 or rng.random() < 0.7) else q
        return [lab], [1.0]
    main = p if (len(cancer) == 1 or rng.random() < 0.72) else q
    other = [c for c in cancer if c != main]
    use_other = bool(other) and rng.random() < 0.65
    use_nc = (not use_other) or rng.random() < 0.6
    w_main = rng.uniform(0.55, 0.85)
    rest = 1.0 - w_main
    labels, weights = [main], [w_main]
    if use_other and use_nc:
        wo = rest * rng.uniform(0.3, 0.7)
        labels += [other[0], 0]
        weights += [wo, rest - wo]
    elif use_other:
        labels.append(other[0]); weights.append(rest)
    else:
        labels.append(0); weights.append(rest)
    return labels, weights


def _draw_combo(rng, pred=None):
    combos = list(_SLIDE_COMBOS)
    w = np.array([_SLIDE_COMBOS[c] for c in combos], float)
    if pred is not None:
        w = w * np.array([bool(pred(c)) for c in combos])
    i = rng.choice(len(combos), p=w / w.sum())
    return combos[i]


def _deficit(cs, reqs):
    return sum(max(0, count - sum(bool(pred(c)) for c in cs)) for pred, count in reqs)


def _enforce(rng, combos, idx, reqs, iters=400):
    """Redraw slide labels in ``idx`` (a local search) until the (predicate, count) requirements
    hold, or as nearly as the number of slides allows."""
    if not idx:
        return
    cur = _deficit([combos[i] for i in idx], reqs)
    for _ in range(iters):
        if cur == 0:
            return
        unmet = [pred for pred, count in reqs if sum(bool(pred(combos[i])) for i in idx) < count]
        pred = unmet[int(rng.integers(len(unmet)))]
        i = idx[int(rng.integers(len(idx)))]
        old = combos[i]
        combos[i] = _draw_combo(rng, pred)
        new = _deficit([combos[j] for j in idx], reqs)
        if new <= cur:
            cur = new
        else:
            combos[i] = old


def _slide_ids(rng, n, domain):
    years = (16, 17, 18) if domain == "in" else (19, 20)
    out, seen = [], set()
    while len(out) < n:
        y = int(rng.choice(years))
        num = int(rng.integers(1, 40000))
        sid = f"{y}B{num:07d}"
        if y == 18 and rng.random() < 0.6:
            sid += "ABCDEFGHIJ"[int(rng.integers(10))]
        if sid not in seen:
            seen.add(sid)
            out.append(sid)
    return out


def _plan_dataset(n_patients, seed, domain, test_fraction):
    rng = np.random.default_rng([int(seed), DOMAINS.index(domain), 7001])
    pids, seen = [], set()
    while len(pids) < n_patients:
        p = str(int(rng.integers(10000, 1000000)))
        if p not in seen:
            seen.add(p); pids.append(p)
    n_slides = 1 + (rng.random(n_patients) < 0.4)
    slide_patient = np.repeat(np.arange(n_patients), n_slides)
    S = len(slide_patient)
    sids = _slide_ids(rng, S, domain)
    combos = []
    for j in range(S):
        if j > 0 and slide_patient[j] == slide_patient[j - 1] and rng.random() < 0.5:
            combos.append(combos[-1])
        else:
            combos.append(_draw_combo(rng))
    # official split: patient-disjoint, ~test_fraction of patients in Test, >= 4 in Train (folds)
    n_test = int(round(test_fraction * n_patients))
    n_test = min(max(n_test, 1), n_patients - 4)
    perm = rng.permutation(n_patients)
    test_p = set(perm[:n_test].tolist())
    split = ["test" if slide_patient[j] in test_p else "train" for j in range(S)]
    k5 = 2 if n_patients >= 12 else 1
    reqs = [(lambda c: c == (0, 0), 1), (lambda c: 5 in c, k5), (lambda c: 4 in c, 1), (lambda c: 3 in c, 1)]
    for sp in ("test", "train"):
        _enforce(rng, combos, [j for j in range(S) if split[j] == sp], reqs)
    # four patient-wise CV folds over the official Train patients, balanced by slide count
    train_p = [int(p) for p in rng.permutation(n_patients) if int(p) not in test_p]
    load = np.zeros(4)
    fold = {}
    cnt = np.bincount(slide_patient, minlength=n_patients)
    for p in sorted(train_p, key=lambda p: -cnt[p]):
        k = int(np.argmin(load + rng.uniform(0, 0.01, 4)))
        fold[p] = k + 1
        load[k] += cnt[p]
    slides = []
    for j in range(S):
        pi = int(slide_patient[j])
        slides.append({"slide_id": sids[j], "patient_id": pids[pi], "patient": pi,
                       "primary": combos[j][0], "secondary": combos[j][1], "split": split[j],
                       "fold": fold.get(pi, 0)})
    return slides


def _tile_names(rng, sid, count):
    names, seen = [], set()
    n_reg = int(rng.integers(1, 5))
    origins = [(int(rng.integers(2000, 40000)), int(rng.integers(2000, 150000))) for _ in range(n_reg)]
    while len(names) < count:
        reg = int(rng.integers(n_reg))
        row, col = int(rng.integers(0, 26)), int(rng.integers(0, 30))
        if (reg, row, col) in seen:
            continue
        seen.add((reg, row, col))
        x0, y0 = origins[reg]
        names.append(f"{sid}_Block_Region_{reg}_{row}_{col}_xini_{x0 + 1024 * col}_yini_{y0 + 1024 * row}")
    return names


# --------------------------------------------------------------------------- xlsx writing
_FIXED_DT = (1980, 1, 1, 0, 0, 0)


def _write_xlsx(path, columns, rows):
    """A one-sheet ('Sheet1') workbook, byte-reproducible (fixed zip and document timestamps)."""
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    ws.append(list(columns))
    for r in rows:
        ws.append(list(r))
    buf = io.BytesIO()
    wb.save(buf)
    buf.seek(0)
    out = io.BytesIO()
    with zipfile.ZipFile(buf) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "docProps/core.xml":
                data = re.sub(rb"(<dcterms:(created|modified)[^>]*>)[^<]*(</dcterms:)",
                              rb"\g<1>2020-05-01T00:00:00Z\g<3>", data)
            zi = zipfile.ZipInfo(item.filename, date_time=_FIXED_DT)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o600 << 16
            zout.writestr(zi, data)
    Path(path).write_bytes(out.getvalue())


def _write_partition(root, train_rows, test_rows, folds):
    """partition/Test and partition/Validation/Val1..4 tables (rows: dicts per tile)."""
    cols = ("image_name", "NC", "G3", "G4", "G5", "G4C")

    def table(rows):
        return [tuple(r[c] for c in cols) for r in sorted(rows, key=lambda r: r["image_name"])]

    def crib(rows):
        return [(r["image_name"], r["G4C"]) for r in sorted(rows, key=lambda r: r["image_name"]) if r["G4"] == 1]

    def write_set(d, tr, te):
        d.mkdir(parents=True, exist_ok=True)
        _write_xlsx(d / "Train.xlsx", cols, table(tr))
        _write_xlsx(d / "Test.xlsx", cols, table(te))
        _write_xlsx(d / "TrainCribfriform.xlsx", ("image_name", "G4C"), crib(tr))
        _write_xlsx(d / "TestCribfriform.xlsx", ("image_name", "G4C"), crib(te))

    write_set(root / "partition" / "Test", train_rows, test_rows)
    for k in range(1, 5):
        te = [r for r in train_rows if folds[r["image_name"]] == k]
        tr = [r for r in train_rows if folds[r["image_name"]] != k]
        write_set(root / "partition" / "Validation" / f"Val{k}", tr, te)


# --------------------------------------------------------------------------- make dataset
def _params(n_patients, tiles_per_slide, tile_size, seed, domain, test_fraction):
    return {"generator": "discnb.data.demo", "version": GENERATOR_VERSION,
            "n_patients": int(n_patients), "tiles_per_slide": int(tiles_per_slide),
            "tile_size": int(tile_size), "seed": int(seed), "domain": str(domain),
            "test_fraction": float(test_fraction)}


def make_demo_sicap(root, *, n_patients: int = 24, tiles_per_slide: int = 12, tile_size: int = 64,
                    seed: int = 0, domain: str = "in", test_fraction: float = 0.2,
                    overwrite: bool = False, progress: bool = True) -> Path:
    """Write (or reuse) a procedural SICAPv2-layout dataset at ``root``; returns ``root``.

    Patients have 1-2 slides; slide Gleason patterns follow SICAPv2's frequencies, with at least
    one non-cancer slide and one slide with each grade in both the official Train and Test split
    (two with a Gleason 5 when ``n_patients >= 12``) where the split has enough slides. The
    official Test split holds ~``test_fraction`` of the patients; the four validation folds split
    the official Train patients. ``domain='ood'`` is another "hospital": shifted stain, 1.25x
    larger structures, softer optics and more noise, same structural rules.

    The folder is written into a temporary sibling and moved into place at the end. A
    ``demo_params.json`` stamp makes a second call with the same parameters return at once; with
    different parameters an existing folder is only replaced when ``overwrite=True``.
    """
    root = Path(root)
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, not {domain!r}")
    if n_patients < 5:
        raise ValueError(f"n_patients must be >= 5 (1 test patient + 4 validation folds), got {n_patients}")
    if tiles_per_slide < 1:
        raise ValueError(f"tiles_per_slide must be >= 1, got {tiles_per_slide}")
    if tile_size < 16:
        raise ValueError(f"tile_size must be >= 16, got {tile_size}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    params = _params(n_patients, tiles_per_slide, tile_size, seed, domain, test_fraction)
    stamp = root / "demo_params.json"
    if root.exists():
        if stamp.exists():
            try:
                old = json.loads(stamp.read_text())
            except (OSError, ValueError):
                old = {}
            old_p = {k: old.get(k) for k in params}
            if old_p == params:
                return root
            if not overwrite:
                diff = ", ".join(f"{k}: {old_p.get(k)!r} on disk vs {v!r} asked" for k, v in params.items()
                                 if old_p.get(k) != v)
                raise ValueError(f"{root} holds a demo dataset made with other parameters ({diff}). "
                                 f"Pass overwrite=True to regenerate it, or choose another folder.")
        elif any(root.iterdir()):
            raise ValueError(f"{root} exists, is not empty and is not a demo dataset (no demo_params.json); "
                             f"refusing to write there. Choose another folder or remove it.")
    root.parent.mkdir(parents=True, exist_ok=True)

    def build(tmp: Path) -> None:
        tmp.mkdir()
        summary = _generate(tmp, params, progress)
        (tmp / "demo_params.json").write_text(json.dumps(dict(params, summary=summary), indent=2) + "\n")
    return atomic_dir(build, root)


def _generate(out, params, progress):
    from PIL import Image

    n, tps, seed, domain = params["tile_size"], params["tiles_per_slide"], params["seed"], params["domain"]
    slides = _plan_dataset(params["n_patients"], seed, domain, params["test_fraction"])
    (out / "images").mkdir()
    (out / "masks").mkdir()
    _write_xlsx(out / "wsi_labels.xlsx", ("slide_id", "patient_id", "Gleason_primary", "Gleason_secondary"),
                [(s["slide_id"], s["patient_id"], int(s["primary"]), int(s["secondary"])) for s in slides])
    rows = {"train": [], "test": []}
    folds = {}
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(slides) * tps, desc=f"demo SICAPv2 ({domain}, {n}px)", unit="tile")
        except ImportError:  # pragma: no cover
            bar = None
    for j, sl in enumerate(slides):
        rng = np.random.default_rng([int(seed), DOMAINS.index(domain), 1000 + j])
        stain = make_stain(rng, domain)
        scale = _DOMAIN_SCALE[domain] * rng.uniform(0.85, 1.15)
        p, q = _GRADE_TO_LABEL[sl["primary"]], _GRADE_TO_LABEL[sl["secondary"]]
        p_crib = float(rng.choice([0.0, 0.25, 0.6])) if 2 in (p, q) else 0.0
        for name in _tile_names(rng, sl["slide_id"], tps):
            for _ in range(20):  # a cancer slide's listed tiles have a cancer majority (as in SICAPv2)
                labels, weights = _tile_plan(rng, p, q)
                mask = random_annotation_mask(rng, n, labels, weights)
                if p == 0 or np.bincount(mask.ravel(), minlength=4).argmax() != 0:
                    break
            img, info = render_tile(mask, rng, stain, scale, cribriform=bool(rng.random() < p_crib),
                                    return_info=True)
            Image.fromarray(img).save(out / "images" / f"{name}.jpg", quality=92, subsampling=0)
            Image.fromarray(LABEL_TO_DISK[mask]).save(out / "masks" / f"{name}.png")
            counts = np.bincount(mask.ravel(), minlength=4)
            maj = tile_label(counts / counts.sum())  # SICAPv2's rule, the one every loader uses
            onehot = np.eye(4, dtype=int)[maj]
            row = {"image_name": f"{name}.jpg", "NC": int(onehot[0]), "G3": int(onehot[1]),
                   "G4": int(onehot[2]), "G5": int(onehot[3]),
                   "G4C": int(maj == 2 and info["cribriform"])}
            rows[sl["split"]].append(row)
            if sl["split"] == "train":
                folds[row["image_name"]] = sl["fold"]
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    _write_partition(out, rows["train"], rows["test"], folds)

    def counts(rs):
        return {c: int(sum(r[c] for r in rs)) for c in ("NC", "G3", "G4", "G5", "G4C")}

    return {"slides": len(slides), "patients": params["n_patients"],
            "train_tiles": len(rows["train"]), "test_tiles": len(rows["test"]),
            "train_labels": counts(rows["train"]), "test_labels": counts(rows["test"])}
