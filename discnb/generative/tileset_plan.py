"""Tile-set synthesis, the method (paper Sec. 2.2 and Sec. 3): which masks, labels and seeds a synthetic slide of a
designated Gleason grade gets. :mod:`discnb.pipelines.tilesets` (notebook 03) draws the tiles from them and writes them.

A *tile set* stands for one whole-slide image for slide-level grading (MIL): 20-100 tiles generated
from shape-map masks whose labels follow a designated primary / secondary (optional tertiary) grade.

**Mask sampling** (Sec. 2.2: "a tile shape map is randomly selected and non-overlapping cancer grading
labels are assigned based on the random weights ... we randomly select 20-100 annotation shape masks
per designated primary and secondary GGs ... When the primary GG is Non-Cancer, the Non-Cancer label
is exclusively applied"). The paper's exact weight law is in its supplement, which we do not have;
this module's scheme (``scheme="random"``, :func:`label_weights`) is:

* the slide's labels are NC plus its distinct cancer grades (primary, secondary if it differs, the
  tertiary if any); a primary of NC means the label NC only (mask all NC, secondary 0, no tertiary);
* draw d ~ Dirichlet(1, ..., 1) over those labels and sort it in decreasing order; the primary gets
  d[0] (the largest), NC one of the other values at random, and the secondary and tertiary the values
  left, in decreasing order. So primary > secondary > tertiary always, and NC anywhere below the
  primary (the example of method-notes §5: primary 40 %, NC 30 %, secondary 25 %, tertiary 5 %);
* each tile: a shape map drawn uniformly from the maps with no more ranks than the slide has labels;
  its ranks (0 = most pixels) get labels by weighted random choice without repeats: rank 0 draws
  first with probabilities proportional to the weights, rank 1 from the labels left, and so on
  (:func:`draw_without_repeats`).

``scheme="equal"`` gives every label of the slide the same weight (the paper's ablation).

**Grades from pixels** (:func:`recompute_grades`, the SICAPv2/Gleason convention): over all tiles of a
slide, primary = the cancer grade with most pixels, secondary = the one with the second most (= the
primary if only one cancer grade is present); a slide without cancer pixels is 0 + 0.
:func:`ablation` measures how often that matches the designated pair for both schemes (paper: 96.75 %
with random weights vs 67.75 % with equal ones, over 400 slides = 100 per primary grade).

**Balancing plan** (:func:`make_plan`, Sec. 3: "generated 276 tile sets ... resulting in a complete set
of 100 WSIs for every grade"): count the real training slides per primary grade (and per pair); each
grade gets ``max(0, target - real)`` synthetic slides. A synthetic slide of primary g: secondary
uniform over {GG3, GG4, GG5} (``secondary="uniform"``) or drawn from the real pairs of primary g
(``"real"``); when secondary != primary, a tertiary (the remaining cancer grade) with probability
``tertiary_prob``. Slide k of grade g takes its designation and its seed from (plan seed, g, k) alone,
and the slides are listed round-robin over grades (syn-00000 NC, syn-00001 GG3, ...), so any prefix
of the plan is about balanced.

**Seeds** (Sec. 3: "setting specific random seeds, which influenced the selection of GG-guided masks
and Gaussian noise"): a slide's seed fixes its tile count, shape maps, weights, labels and one noise
seed per tile; nothing depends on the generator, so every generator gets the same masks and noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from discnb import K, LABELS
from discnb.core import io
from discnb.data import shapes

VERSION = 1  # bump when the sampling code changes what a seed produces: older tile-set folders become stale
NC = 0
CANCER = (1, 2, 3)


# ============================================================================ mask sampling
def check_designation(primary: int, secondary: int, tertiary: int = -1) -> tuple[int, int, int]:
    """Validate a designated grade triple (labels 0..3, tertiary -1 = none)."""
    p, s, t = int(primary), int(secondary), int(tertiary)
    if p not in range(K) or s not in range(K):
        raise ValueError(f"primary/secondary must be labels 0..3 ({', '.join(LABELS)}), got {p}/{s}")
    if p == NC:
        if s != NC or t != -1:
            raise ValueError(f"a primary of NC means a non-cancer slide: secondary must be 0 and tertiary -1, got {s}/{t}")
    elif s == NC:
        raise ValueError(f"a cancer slide (primary {LABELS[p]}) needs a cancer secondary (1..3, = primary for a "
                         f"pure pattern), got {s}")
    if t != -1 and (t not in CANCER or t in (p, s) or s == p):
        raise ValueError(f"tertiary {t}: must be -1 or the cancer grade that is neither primary nor secondary "
                         f"(and only when secondary != primary); got {p}/{s}/{t}")
    return p, s, t


def slide_label_order(primary: int, secondary: int, tertiary: int = -1) -> list[int]:
    """The slide's cancer labels in designated order (primary, secondary, tertiary), without repeats."""
    p, s, t = check_designation(primary, secondary, tertiary)
    if p == NC:
        return []
    return [p] + ([s] if s != p else []) + ([t] if t != -1 else [])


def label_weights(primary: int, secondary: int, tertiary: int = -1, rng: np.random.Generator | None = None,
                  scheme: str = "random") -> np.ndarray:
    """Weights (K,) of the labels NC..GG5 for one slide; 0 for labels the slide does not have.

    ``random``: sorted Dirichlet(1) draws; primary the largest, NC a random one of the rest, then
    secondary > tertiary (see the module docstring). ``equal``: the same weight for every label of
    the slide. A primary of NC: weight 1 on NC only.
    """
    cancer = slide_label_order(primary, secondary, tertiary)
    w = np.zeros(K)
    if not cancer:
        w[NC] = 1.0
        return w
    n = len(cancer) + 1  # + NC
    if scheme == "equal":
        w[[NC, *cancer]] = 1.0 / n
        return w
    if scheme != "random":
        raise ValueError(f"weight scheme must be 'random' or 'equal', got {scheme!r}")
    if rng is None:
        raise ValueError("the random weight scheme needs an rng")
    d = np.sort(rng.dirichlet(np.ones(n)))[::-1]
    w[cancer[0]] = d[0]
    j = 1 + int(rng.integers(n - 1))  # NC's place among the values below the primary's
    w[NC] = d[j]
    rest = np.delete(d[1:], j - 1)  # still decreasing
    for lab, v in zip(cancer[1:], rest):
        w[lab] = v
    return w


def library_info(lib: dict) -> dict:
    """The library plus ``rank_counts`` (N,K): pixels of each rank in each map (ranks past n_ranks: 0)."""
    if "rank_counts" in lib:
        return lib
    maps = lib["maps"]
    if len(maps) == 0:
        raise ValueError("the shape-map library is empty: notebook 00 found no training masks")
    n = len(maps)
    rc = np.zeros((n, K), np.int64)
    flat = maps.reshape(n, -1).astype(np.int64)
    for r in range(K):
        rc[:, r] = (flat == r).sum(1)
    n_ranks = np.asarray(lib["n_ranks"]).astype(int)
    if not (n_ranks == (rc > 0).sum(1)).all():
        raise ValueError("shape-map library: n_ranks does not match the maps (rebuild it with notebook 00)")
    return {**lib, "rank_counts": rc, "n_ranks": n_ranks}


def slide_seed(plan_seed: int, grade: int, k: int) -> int:
    """The seed of synthetic slide k of primary ``grade`` (a 31-bit int; independent of the generator)."""
    return int(np.random.SeedSequence([int(plan_seed), int(grade), int(k)]).generate_state(1)[0] >> 1)


def sample_slide(lib: dict, primary: int, secondary: int, tertiary: int, seed: int, min_tiles: int,
                 max_tiles: int, scheme: str = "random", size: int | None = None, masks: bool = True) -> dict:
    """One synthetic slide's masks, drawn from ``seed`` alone.

    Returns ``weights`` (K,), ``mask_ids`` (N,) int64, ``labels`` (N,K) int8 (label of each rank, -1
    past the map's ranks), ``seeds`` (N,) int64 (noise seed per tile), ``counts`` (K,) label pixels
    over the slide (at the library's size), and with ``masks`` the label masks (N,size,size) uint8.

    Two RNG streams from ``seed``: stream 0 draws the tile count, the shape maps and the noise seeds,
    stream 1 the weights and the labels. So both weight schemes get the same maps and noise.
    """
    lib = library_info(lib)
    if not 1 <= int(min_tiles) <= int(max_tiles):
        raise ValueError(f"need 1 <= min_tiles <= max_tiles, got {min_tiles}, {max_tiles}")
    cancer = slide_label_order(primary, secondary, tertiary)
    labels = np.array([NC, *cancer])
    rng_t = np.random.default_rng([int(seed), 0])
    rng_w = np.random.default_rng([int(seed), 1])
    n = int(rng_t.integers(int(min_tiles), int(max_tiles) + 1))
    ok = np.flatnonzero(lib["n_ranks"] <= len(labels))
    if len(ok) == 0:
        raise ValueError(f"the shape-map library has no map with at most {len(labels)} label(s) "
                         f"(needed for a {primary}+{secondary} slide); rebuild it from more masks (notebook 00)")
    mask_ids = ok[rng_t.integers(len(ok), size=n)].astype(np.int64)
    seeds = rng_t.integers(0, 2**31 - 1, size=n, dtype=np.int64)
    w = label_weights(primary, secondary, tertiary, rng_w, scheme)
    lab = draw_without_repeats(rng_w, labels, w[labels], lib["n_ranks"][mask_ids])
    lbr = np.full((n, K), -1, np.int8)
    lbr[:, :len(labels)] = lab
    valid = lbr >= 0
    counts = np.bincount(lbr[valid].astype(np.int64), weights=lib["rank_counts"][mask_ids][valid],
                         minlength=K).astype(np.int64)
    out = {"weights": w, "mask_ids": mask_ids, "labels": lbr, "seeds": seeds, "counts": counts}
    if masks:
        out["masks"] = build_masks(lib, mask_ids, lbr, size)
    return out


def draw_without_repeats(rng: np.random.Generator, labels: np.ndarray, weights: np.ndarray,
                         n_ranks: np.ndarray) -> np.ndarray:
    """For each tile, ``n_ranks[i]`` labels drawn one after the other with probability proportional to
    ``weights`` among those not drawn yet (rank 0 gets the first draw). Returns (N, len(labels)) int8,
    -1 past each tile's ranks.

    Vectorised with the Efraimidis-Spirakis keys u^(1/w) (u ~ U(0,1)): sorting by them in decreasing
    order is a sample of exactly that sequential law (Inf. Proc. Letters 97, 2006).
    """
    labels, weights = np.asarray(labels), np.asarray(weights, float)
    if (weights <= 0).any():
        raise ValueError(f"every label of the slide needs a positive weight, got {dict(zip(labels.tolist(), weights))}")
    n_ranks = np.asarray(n_ranks, int)
    if (n_ranks > len(labels)).any():
        raise ValueError(f"a shape map with {n_ranks.max()} ranks cannot get distinct labels from {labels.tolist()}")
    u = rng.random((len(n_ranks), len(labels)))
    keys = np.log(u) / weights  # log(u^(1/w)), same order
    out = labels[np.argsort(-keys, axis=1, kind="stable")].astype(np.int8)
    out[np.arange(len(labels))[None, :] >= n_ranks[:, None]] = -1
    return out


def build_masks(lib: dict, mask_ids: np.ndarray, labels: np.ndarray, size: int | None = None) -> np.ndarray:
    """Label masks from shape maps ``mask_ids`` and their rank labels, resized (nearest) to ``size``."""
    s = int(size or lib["maps"].shape[-1])
    out = np.empty((len(mask_ids), s, s), np.uint8)
    for i, (j, lab) in enumerate(zip(mask_ids, labels)):
        out[i] = shapes.resize_mask(shapes.assign_labels(lib["maps"][j], lab[lab >= 0]), s)
    return out


def recompute_grades(counts) -> tuple[int, int]:
    """(primary, secondary) from label pixel counts (K,): most / second-most frequent cancer grade,
    secondary = primary when only one is present, (0, 0) without cancer pixels. Ties: lower grade."""
    c = np.asarray(counts)[list(CANCER)]
    order = [CANCER[i] for i in np.lexsort((np.arange(len(c)), -c)) if c[i] > 0]
    if not order:
        return 0, 0
    return order[0], order[1] if len(order) > 1 else order[0]


# ============================================================================== designations
def designate(plan_seed: int, grade: int, k: int, secondary: str = "uniform", tertiary_prob: float = 0.3,
              pairs: pd.DataFrame | None = None) -> tuple[int, int, int, int]:
    """(primary, secondary, tertiary, seed) of synthetic slide k of primary ``grade``.

    ``secondary``: "uniform" over GG3..GG5, or "real": drawn from the real training pairs of
    primary ``grade`` (``pairs``: counts indexed by primary, columns secondary; uniform when that
    grade has no real slide). Tertiary (the remaining cancer grade) with prob. ``tertiary_prob``
    when secondary != primary.
    """
    g = int(grade)
    seed = slide_seed(plan_seed, g, k)
    if g == NC:
        return NC, NC, -1, seed
    rng = np.random.default_rng([seed, 2])
    choices = np.array(CANCER)
    prob = np.full(len(choices), 1 / len(choices))
    if secondary == "real":
        if pairs is not None and g in pairs.index and pairs.loc[g, list(CANCER)].sum() > 0:
            cnt = pairs.loc[g, list(CANCER)].to_numpy(float)
            prob = cnt / cnt.sum()
    elif secondary != "uniform":
        raise ValueError(f"secondary must be 'uniform' or 'real', got {secondary!r}")
    s = int(rng.choice(choices, p=prob))
    t = -1
    if s != g and rng.random() < float(tertiary_prob):
        t = next(c for c in CANCER if c not in (g, s))
    return g, s, t, seed


# ============================================================================== balancing plan
def real_slides(index: pd.DataFrame, split: str = "train") -> pd.DataFrame:
    """One row per real slide of ``split``: slide_id, primary, secondary (labels 0..3)."""
    need = {"slide_id", "split", "slide_primary_label", "slide_secondary_label"}
    missing = need - set(index.columns)
    if missing:
        raise ValueError(f"the tile index lacks columns {sorted(missing)}; re-run notebooks/00_data_prep.ipynb")
    s = index[index.split == split].drop_duplicates("slide_id")
    return pd.DataFrame({"slide_id": s.slide_id.astype(str).to_numpy(),
                         "primary": s.slide_primary_label.astype(int).to_numpy(),
                         "secondary": s.slide_secondary_label.astype(int).to_numpy()})


@dataclass
class Plan:
    """The balancing plan: ``table`` (per primary grade: real, synthetic, total), ``pairs_real`` and
    ``pairs_synthetic`` (primary x secondary counts) and ``slides`` (one row per synthetic slide)."""
    table: pd.DataFrame
    pairs_real: pd.DataFrame
    pairs_synthetic: pd.DataFrame
    slides: pd.DataFrame
    settings: dict

    def fingerprint(self) -> str:
        recs = self.slides[["slide_id", "primary", "secondary", "tertiary", "seed"]].to_numpy().tolist()
        return io.fingerprint([VERSION, recs])

    def to_json(self) -> dict:
        return {"settings": self.settings, "table": self.table.reset_index().to_dict("records"),
                "slides": self.slides.to_dict("records")}


def _pair_table(df: pd.DataFrame) -> pd.DataFrame:
    t = pd.crosstab(df.primary, df.secondary).reindex(index=range(K), columns=range(K), fill_value=0)
    return t.rename_axis(index="primary", columns="secondary").astype(int)


def make_plan(index_or_slides: pd.DataFrame, target: int, seed: int, secondary: str = "uniform",
              tertiary_prob: float = 0.3) -> Plan:
    """Synthetic slides that bring every primary grade to ``target`` slides (real + synthetic).

    ``index_or_slides``: notebook 00's tile index (its training split is counted) or a frame from
    :func:`real_slides`. A grade with ``target`` or more real slides gets none.
    """
    real = index_or_slides if {"primary", "secondary"} <= set(index_or_slides.columns) else real_slides(index_or_slides)
    if int(target) < 0:
        raise ValueError(f"target per grade must be >= 0, got {target}")
    pairs = _pair_table(real)
    n_real = real.primary.value_counts().reindex(range(K), fill_value=0).astype(int)
    need = (int(target) - n_real).clip(lower=0)
    rows = []
    for k in range(int(need.max()) if len(need) else 0):
        for g in range(K):
            if k < need[g]:
                p, s, t, sd = designate(seed, g, k, secondary, tertiary_prob, pairs)
                rows.append({"slide_id": f"syn-{len(rows):05d}", "primary": p, "secondary": s, "tertiary": t,
                             "seed": sd})
    slides = pd.DataFrame(rows, columns=["slide_id", "primary", "secondary", "tertiary", "seed"])
    table = pd.DataFrame({"grade": list(LABELS), "real": n_real.to_numpy(), "synthetic": need.to_numpy(),
                          "total": (n_real + need).to_numpy()}).set_index("grade")
    table.loc["all"] = table.sum()
    return Plan(table=table, pairs_real=pairs, pairs_synthetic=_pair_table(slides),
                slides=slides, settings={"target": int(target), "seed": int(seed), "secondary": secondary,
                                         "tertiary_prob": float(tertiary_prob), "real_split": "train"})


def pair_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """A primary x secondary count table with grade names (for display)."""
    return pairs.rename(index=dict(enumerate(LABELS)), columns=dict(enumerate(LABELS)))


# ================================================================================== ablation
def ablation(lib: dict, per_grade: int = 100, min_tiles: int = 20, max_tiles: int = 100, seed: int = 0,
             secondary: str = "uniform", tertiary_prob: float = 0.3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper's Random-Weights ablation (Sec. 2.2, supplement): ``per_grade`` slides per primary
    grade (100 -> 400 slides), each sampled with random and with equal weights (same maps and noise),
    grades recomputed from pixel counts and compared with the designated pair.

    Returns (summary: match share per scheme, overall and per primary grade; per-slide frame).
    """
    lib = library_info(lib)
    rows = []
    for g in range(K):
        for k in range(int(per_grade)):
            p, s, t, sd = designate(seed, g, k, secondary, tertiary_prob)
            for scheme in ("random", "equal"):
                smp = sample_slide(lib, p, s, t, sd, min_tiles, max_tiles, scheme, masks=False)
                rp, rs = recompute_grades(smp["counts"])
                rows.append({"scheme": scheme, "primary": p, "secondary": s, "tertiary": t, "n_tiles": len(smp["mask_ids"]),
                             "re_primary": rp, "re_secondary": rs, "match": (rp, rs) == (p, s)})
    per = pd.DataFrame(rows)
    summ = per.groupby("scheme").match.mean().to_frame("all")
    for g in range(K):
        summ[LABELS[g]] = per[per.primary == g].groupby("scheme").match.mean()
    summ["slides"] = per.groupby("scheme").size()
    return summ.loc[["random", "equal"]], per


def ablation_grid(lib: dict, tertiary_probs=(0.0,), **kw) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`ablation` for several tertiary probabilities; index (tertiary_prob, scheme)."""
    summs, pers = [], []
    for tp in tertiary_probs:
        s, p = ablation(lib, tertiary_prob=float(tp), **kw)
        summs.append(s.assign(tertiary_prob=float(tp)).set_index("tertiary_prob", append=True).reorder_levels([1, 0]))
        pers.append(p.assign(tertiary_prob=float(tp)))
    return pd.concat(summs), pd.concat(pers, ignore_index=True)
