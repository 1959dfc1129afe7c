"""Checks of a written demo dataset (:mod:`discnb.data.demo`): :func:`validity_report` (colour alone must
not tell the grade, structure must) and :func:`preview_grid` (a picture of it)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from discnb.data.sicap import GRADE_TO_LABEL as DISK_TO_LABEL

__all__ = ["validity_report", "preview_grid"]

MASK_COLOURS = np.array([[235, 235, 235], [60, 190, 75], [245, 195, 20], [215, 40, 40]], np.uint8)


def preview_grid(root, *, per_row: int = 6, mixed_rows: int = 2, seed: int = 0) -> np.ndarray:
    """A visual check of a written dataset: one row of single-label tiles per label (NC, GG3,
    GG4, GG5), then ``mixed_rows`` rows of multi-label tiles, each followed by its mask
    (grey NC, green GG3, yellow GG4, red GG5). Returns an RGB uint8 array."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    names = sorted(p.name for p in (root / "images").glob("*.jpg"))
    lut = np.zeros(256, np.uint8)
    for v, lab in DISK_TO_LABEL.items():
        lut[v] = lab
    pure = {k: [] for k in range(4)}
    mixed = []
    for nm in rng.permutation(names):
        m = lut[np.asarray(Image.open(root / "masks" / (Path(nm).stem + ".png")))]
        labs = np.unique(m)
        if len(labs) == 1 and len(pure[int(labs[0])]) < per_row:
            pure[int(labs[0])].append(nm)
        elif len(labs) > 1 and len(mixed) < mixed_rows * (per_row // 2):
            mixed.append(nm)
    n = np.asarray(Image.open(root / "images" / names[0])).shape[0]
    blank = np.full((n, n, 3), 255, np.uint8)

    def img(nm):
        return np.asarray(Image.open(root / "images" / nm).convert("RGB"))

    def msk(nm):
        return MASK_COLOURS[lut[np.asarray(Image.open(root / "masks" / (Path(nm).stem + ".png")))]]

    rows = []
    for k in range(4):
        tiles = [img(nm) for nm in pure[k]] + [blank] * (per_row - len(pure[k]))
        rows.append(np.concatenate(tiles, 1))
    for r in range(mixed_rows):
        tiles = []
        for nm in mixed[r * (per_row // 2):(r + 1) * (per_row // 2)]:
            tiles += [img(nm), msk(nm)]
        tiles += [blank] * (per_row - len(tiles))
        rows.append(np.concatenate(tiles, 1))
    pad = 2
    out = np.full((len(rows) * (n + pad), per_row * n, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        out[i * (n + pad):i * (n + pad) + n] = r
    return out


def _read_split_tiles(root, split, max_tiles, rng):
    import pandas as pd
    from PIL import Image

    df = pd.read_excel(root / "partition" / "Test" / f"{split}.xlsx")
    names = df["image_name"].astype(str).tolist()
    if max_tiles is not None and len(names) > max_tiles:
        names = [names[i] for i in sorted(rng.choice(len(names), max_tiles, replace=False))]
    imgs, masks = [], []
    lut = np.zeros(256, np.uint8)
    for v, lab in DISK_TO_LABEL.items():
        lut[v] = lab
    for nm in names:
        with Image.open(root / "images" / nm) as im:
            imgs.append(np.asarray(im.convert("RGB")))
        with Image.open(root / "masks" / (Path(nm).stem + ".png")) as im:
            masks.append(lut[np.asarray(im)])
    return np.stack(imgs), np.stack(masks)


def _region_features(imgs, masks, min_frac=0.05):
    feats, labels = [], []
    n = masks.shape[1] * masks.shape[2]
    for img, m in zip(imgs, masks):
        for lab in np.unique(m):
            sel = m == lab
            if sel.sum() < min_frac * n:
                continue
            px = img[sel].astype(np.float32)
            feats.append(np.concatenate([px.mean(0), px.std(0)]))
            labels.append(int(lab))
    return np.asarray(feats), np.asarray(labels)


def _pure_crops(masks, crop, stride, purity=0.9):
    """(tile, y, x, label) of crops whose mask is >= ``purity`` one label."""
    out = []
    n = masks.shape[1]
    oh = np.stack([(masks == k) for k in range(4)], 1).astype(np.float32)  # (T,4,n,n)
    ii = np.cumsum(np.cumsum(np.pad(oh, ((0, 0), (0, 0), (1, 0), (1, 0))), 2), 3)
    pos = np.arange(0, n - crop + 1, stride)
    for y in pos:
        for x in pos:
            s = ii[:, :, y + crop, x + crop] - ii[:, :, y, x + crop] - ii[:, :, y + crop, x] + ii[:, :, y, x]
            frac = s / (crop * crop)
            lab = frac.argmax(1)
            ok = frac.max(1) >= purity
            for t in np.flatnonzero(ok):
                out.append((t, y, x, lab[t]))
    return np.asarray(out, dtype=np.int64).reshape(-1, 4)


def _balanced_acc(y, p, k=4):
    rec = {}
    for c in range(k):
        sel = y == c
        if sel.any():
            rec[c] = float((p[sel] == c).mean())
    return float(np.mean(list(rec.values()))) if rec else float("nan"), rec


def _small_cnn(crop):
    """A few conv layers; a strided stem maps any crop size to a 32x32 feature map."""
    import torch.nn as nn

    stride = max(1, crop // 32)
    layers = [nn.Conv2d(3, 16, 3, stride=stride, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    ch = 16
    for i, w in enumerate((16, 32, 64)):
        if i:
            layers.append(nn.MaxPool2d(2))
        layers += [nn.Conv2d(ch, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
                   nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        ch = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, 4))


def validity_report(root, *, seed: int = 0, cnn_epochs: int = 8, max_tiles: int | None = None) -> dict:
    """Is the dataset honest? Colour alone must not tell the grade; structure must.

    Reads the written files (official Train -> fit, official Test -> evaluate):

    * ``colour_acc``: logistic regression on the per-region mean RGB (region = one label's pixels
      in one tile, >= 5% of the tile), balanced accuracy; chance 0.25. ``colour_std_acc`` adds
      the per-channel std (texture contrast, partly structural) for reference.
    * ``cnn_acc``: a small CNN on crops of side tile_size//2 whose mask is >= 90% one label,
      class-balanced sampling, flips/rotations; balanced accuracy with ``cnn_per_class`` recalls.
    """
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.time()
    root = Path(root)
    rng = np.random.default_rng(seed)
    Xtr_img, Xtr_m = _read_split_tiles(root, "Train", max_tiles, rng)
    Xte_img, Xte_m = _read_split_tiles(root, "Test", max_tiles, rng)
    names = ["NC", "GG3", "GG4", "GG5"]
    rep = {"chance": 0.25, "n_train_tiles": len(Xtr_img), "n_test_tiles": len(Xte_img)}

    # ---- colour-only baseline
    ftr, ytr = _region_features(Xtr_img, Xtr_m)
    fte, yte = _region_features(Xte_img, Xte_m)
    rep["n_regions"] = {"train": int(len(ytr)), "test": int(len(yte)),
                        "train_per_class": {names[c]: int((ytr == c).sum()) for c in range(4)},
                        "test_per_class": {names[c]: int((yte == c).sum()) for c in range(4)}}
    for key, cols in (("colour", slice(0, 3)), ("colour_std", slice(0, 6))):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, class_weight="balanced"))
        clf.fit(ftr[:, cols], ytr)
        acc, rec = _balanced_acc(yte, clf.predict(fte[:, cols]))
        rep[f"{key}_acc"] = acc
        rep[f"{key}_per_class"] = {names[c]: v for c, v in rec.items()}

    # ---- small CNN on pure crops
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    n = Xtr_img.shape[1]
    crop = n // 2
    ctr = _pure_crops(Xtr_m, crop, max(1, crop // 8))
    cte = _pure_crops(Xte_m, crop, max(1, crop // 4))
    rep["n_crops"] = {"train": int(len(ctr)), "test": int(len(cte)),
                      "train_per_class": {names[c]: int((ctr[:, 3] == c).sum()) for c in range(4)},
                      "test_per_class": {names[c]: int((cte[:, 3] == c).sum()) for c in range(4)}}
    net = _small_cnn(crop)
    tr_img = torch.from_numpy(Xtr_img).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.25)
    te_img = torch.from_numpy(Xte_img).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.25)

    def batch(img, rows):
        xb = torch.stack([img[t, :, y:y + crop, x:x + crop] for t, y, x, _ in rows])
        return xb.contiguous(memory_format=torch.channels_last)

    net = net.to(memory_format=torch.channels_last)

    pools = [np.flatnonzero(ctr[:, 3] == c) for c in range(4)]
    pools = [p for p in pools if len(p)]
    per_epoch = 4 * int(min(256, max(64, len(ctr) // 4)))
    t1 = time.time()
    rep["seconds_load_colour"] = round(t1 - t0, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = cnn_epochs * (per_epoch // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=max(1, steps))
    lossf = torch.nn.CrossEntropyLoss()
    net.train()
    for _ in range(cnn_epochs if len(pools) > 1 else 0):
        idx = np.concatenate([rng.choice(p, per_epoch // len(pools)) for p in pools])
        rng.shuffle(idx)
        for b in range(per_epoch // 64):
            rows = ctr[idx[b * 64:(b + 1) * 64]]
            if len(rows) == 0:
                continue
            xb = batch(tr_img, rows)
            k = int(rng.integers(4))
            xb = torch.rot90(xb, k, (2, 3)).contiguous(memory_format=torch.channels_last)
            if rng.random() < 0.5:
                xb = xb.flip(3)
            yb = torch.from_numpy(rows[:, 3])
            opt.zero_grad()
            loss = lossf(net(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    preds = []
    with torch.no_grad():
        for b in range(0, len(cte), 256):
            preds.append(net(batch(te_img, cte[b:b + 256])).argmax(1).numpy())
    pred = np.concatenate(preds) if preds else np.zeros(0, int)
    acc, rec = _balanced_acc(cte[:, 3], pred)
    rep["cnn_acc"] = acc
    rep["cnn_per_class"] = {names[c]: v for c, v in rec.items()}
    rep["seconds_cnn"] = round(time.time() - t1, 1)
    rep["seconds"] = round(time.time() - t0, 1)
    return rep
