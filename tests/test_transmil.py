"""TransMIL (with the nystrom-attention package, checked against our earlier copy as the oracle),
Mixed Supervision, slide targets, Eq. 4 in the slide training loss, λ* chosen on validation only,
and the λ-sweep pipeline (Sec. 2.4, Sec. 3)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import torch.nn as nn
import torch.nn.functional as F
from nystrom_attention import NystromAttention
from nystrom_attention.nystrom_attention import moore_penrose_iter_pinv
from safetensors.torch import load_file, save_file
from timm.optim import Lookahead

from discnb import K, plots
from discnb.core import params, paths
from discnb.grading import mil as gm
from discnb.grading.eq4 import check_lam
from discnb.grading.metrics import auroc_scores
from discnb.grading.transmil import (PPEG, MixedSupervision, TransMIL, bce_loss, lookahead_radam, param_groups,
                                     slide_targets, square_pad)
from discnb.pipelines import transmil_sweep as sweep
from ldm_fixture import prepared


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(in_dim=16, dim=32, **kw):
    torch.manual_seed(0)
    return TransMIL(in_dim, dim=dim, **kw).eval()


# ------------------------------------------------------------------- Nyström attention: the oracle
def oracle_pinv(x: torch.Tensor, iters: int = 6) -> torch.Tensor:
    """Our own earlier Newton-Schulz pseudo-inverse (Nyströmformer eq. 16), initialised with
    x^T / (max row sum * max column sum) over the whole batch."""
    abs_x = x.abs()
    z = x.transpose(-1, -2) / (abs_x.sum(-1).max() * abs_x.sum(-2).max())
    eye = torch.eye(x.shape[-1], dtype=x.dtype)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - (xz @ (15 * eye - (xz @ (7 * eye - xz)))))
    return z


class OracleNystrom(nn.Module):
    """Our own Nyström attention as discnb had it before it took the nystrom-attention package
    (written from Nyströmformer and the official TransMIL): zeros padded in front to a multiple of
    the landmarks, landmarks = means of ceil(n / m) consecutive tokens, a depth-wise residual
    convolution over the values, the last n rows kept."""

    def __init__(self, dim, dim_head=64, heads=8, num_landmarks=256, pinv_iterations=6, residual=True,
                 residual_conv_kernel=33, dropout=0.0):
        super().__init__()
        self.heads, self.num_landmarks, self.pinv_iterations = heads, num_landmarks, pinv_iterations
        self.scale = dim_head ** -0.5
        self.to_qkv = nn.Linear(dim, heads * dim_head * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))
        self.residual = residual
        if residual:
            k = residual_conv_kernel
            self.res_conv = nn.Conv2d(heads, heads, (k, 1), padding=(k // 2, 0), groups=heads, bias=False)

    def forward(self, x):
        b, n, _ = x.shape
        h, m = self.heads, self.num_landmarks
        pad = (m - n % m) % m
        if pad:
            x = F.pad(x, (0, 0, pad, 0), value=0.0)
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, -1, h, t.shape[-1] // h).transpose(1, 2) for t in (q, k, v))
        q = q * self.scale
        seg = math.ceil(n / m)
        N = q.shape[2]
        q_l = q.reshape(b, h, N // seg, seg, -1).sum(3) / seg
        k_l = k.reshape(b, h, N // seg, seg, -1).sum(3) / seg
        attn1 = (q @ k_l.transpose(-1, -2)).softmax(-1)
        attn2 = (q_l @ k_l.transpose(-1, -2)).softmax(-1)
        attn3 = (q_l @ k.transpose(-1, -2)).softmax(-1)
        out = (attn1 @ oracle_pinv(attn2, self.pinv_iterations)) @ (attn3 @ v)
        if self.residual:
            out = out + self.res_conv(v)
        return self.to_out(out.transpose(1, 2).reshape(b, N, -1))[:, -n:]


@pytest.mark.parametrize("residual", [True, False])
def test_the_package_equals_our_oracle_on_the_same_weights(residual):
    """Same parameter names and shapes (stored state dicts load unchanged, strictly) and the same
    output for sequence lengths below, at and above multiples of the landmarks (front padding)."""
    torch.manual_seed(0)
    ours = OracleNystrom(dim=16, dim_head=4, heads=4, num_landmarks=8, residual=residual, residual_conv_kernel=5).eval()
    pkg = NystromAttention(dim=16, dim_head=4, heads=4, num_landmarks=8, residual=residual, residual_conv_kernel=5).eval()
    assert {k: v.shape for k, v in pkg.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
    pkg.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        for n in (1, 5, 8, 9, 17, 64, 70):
            x = torch.randn(2, n, 16)
            assert torch.allclose(pkg(x), ours(x), atol=1e-6, rtol=1e-5), n


# ------------------------------------------------------------------------------------ TransMIL
@pytest.mark.parametrize("n", [1, 7, 300, 5000])
def test_bags_of_any_size(n):
    m = tiny()
    x = torch.randn(n, 16)
    with torch.no_grad():
        out = m(x)
    assert out.shape == (1, K) and torch.isfinite(out).all()
    side = math.ceil(math.sqrt(n))
    h, s = square_pad(torch.randn(1, n, 4))
    assert s == side and h.shape[1] == side * side
    # with 5000 tiles: 71 x 71 = 5041 tokens + cls = 5042, padded in front to a multiple of the 16 landmarks
    if n == 5000:
        assert side == 71 and (5042 + (16 - 5042 % 16) % 16) // 16 == 316  # tokens per landmark


def test_square_padding_repeats_the_first_tokens():
    h = torch.arange(7, dtype=torch.float).view(1, 7, 1).repeat(1, 1, 3)
    p, side = square_pad(h)
    assert side == 3 and p.shape == (1, 9, 3)
    assert torch.equal(p[0, 7:], h[0, :2]) and torch.equal(p[0, :7], h[0])
    p1, s1 = square_pad(h[:, :1])
    assert s1 == 1 and p1.shape[1] == 1
    with pytest.raises(ValueError, match="at least one tile"):
        square_pad(h[:, :0])


def test_official_sizes_and_no_cuda_call():
    m = TransMIL(384)  # paper: ViT-S/16 features (384-d) -> 512
    a = m.layer1.attn
    assert m._fc1[0].in_features == 384 and m._fc1[0].out_features == 512
    assert a.heads == 8 and a.num_landmarks == 256 and a.pinv_iterations == 6 and a.res_conv.kernel_size == (33, 1)
    assert a.to_qkv.out_features == 3 * 8 * 64 and m._fc2.out_features == 4
    assert [c.kernel_size for c in (m.pos_layer.proj, m.pos_layer.proj1, m.pos_layer.proj2)] == [(7, 7), (5, 5), (3, 3)]
    assert isinstance(m.cls_token, torch.nn.Parameter)  # lives on the model's device (the official code calls .cuda())
    with torch.no_grad():
        m.to("cpu").eval()(torch.randn(5, 384))


def test_state_dict_round_trip(tmp_path):
    """A TransMIL saved as safetensors (what ``save_models`` writes) loads strictly into a new model
    and gives the same slide logits; its Nyström weights have the names our earlier copy stored."""
    m = tiny(16, 32)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "m.safetensors"))
    torch.manual_seed(1)
    m2 = TransMIL(16, dim=32).eval()
    x = torch.randn(23, 16)
    with torch.no_grad():
        assert not torch.allclose(m(x), m2(x))
        m2.load_state_dict(load_file(str(tmp_path / "m.safetensors")), strict=True)
        assert torch.equal(m(x), m2(x))
    assert {k for k in m.state_dict() if k.startswith("layer1.attn.")} == \
        {"layer1.attn.to_qkv.weight", "layer1.attn.to_out.0.weight", "layer1.attn.to_out.0.bias", "layer1.attn.res_conv.weight"}


def test_pinv_iterations_converge_to_the_pseudo_inverse():
    torch.manual_seed(0)
    a = torch.softmax(torch.randn(2, 3, 8, 8), -1)
    z = moore_penrose_iter_pinv(a, iters=30)
    assert torch.allclose(a @ z @ a, a, atol=1e-4)
    assert torch.allclose(z, oracle_pinv(a, 30), atol=1e-6)


def test_nystrom_is_exact_with_one_token_per_landmark():
    """n == landmarks: every landmark is one token, so softmax(QK_l) pinv(softmax(Q_lK_l)) softmax(Q_lK) V
    = A A^+ A V = A V, plain softmax attention (given a converged pseudo-inverse)."""
    torch.manual_seed(0)
    att = NystromAttention(dim=16, dim_head=4, heads=2, num_landmarks=8, pinv_iterations=40, residual=False).eval()
    x = torch.randn(1, 8, 16)
    q, k, v = att.to_qkv(x).chunk(3, -1)
    q, k, v = (t.reshape(1, 8, 2, 4).transpose(1, 2) for t in (q, k, v))
    exact = torch.softmax(q @ k.transpose(-1, -2) * 4 ** -0.5, -1) @ v
    exact = att.to_out(exact.transpose(1, 2).reshape(1, 8, 8))
    with torch.no_grad():
        assert torch.allclose(att(x), exact, atol=1e-4)
        # any length: zero-padded in front to a multiple of the landmarks, the output has the input's length
        for n in (1, 5, 9, 17):
            assert att(torch.randn(2, n, 16)).shape == (2, n, 16)


def test_permutation_sensitivity_is_by_design():
    """PPEG (a 2-D grid over the sequence), landmark segments and the residual convolution make
    TransMIL depend on tile order; Mixed Supervision, whose position information comes with the
    coordinates, gives the same slide output when tiles and coordinates are permuted together."""
    m = tiny()
    x = torch.randn(20, 16)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, a2, b = m(x), m(x), m(x[perm])
        same = m(torch.ones(20, 16)), m(torch.ones(20, 16)[perm])
    assert torch.equal(a, a2)  # deterministic in eval mode
    assert not torch.allclose(a, b, atol=1e-5)  # order matters
    assert torch.allclose(*same)
    # PPEG alone is what reads the grid: permuting the grid changes its output beyond the permutation
    p = PPEG(4)
    t = torch.randn(1, 10, 4)
    with torch.no_grad():
        out = p(t, 3, 3)
        tp = torch.cat([t[:, :1], t[:, 1:][:, torch.randperm(9)]], 1)
        assert not torch.allclose(torch.sort(out[0, 1:], 0).values, torch.sort(p(tp, 3, 3)[0, 1:], 0).values)
    torch.manual_seed(0)
    ms = MixedSupervision(16, dim=24, heads=6).eval()
    c = torch.randint(0, 10, (20, 2))
    with torch.no_grad():
        s1, i1 = ms(x, c)
        s2, i2 = ms(x[perm], c[perm])
    assert torch.allclose(s1, s2, atol=1e-5) and torch.allclose(i1[0, perm], i2[0], atol=1e-5)


def test_mixed_supervision_structure_and_masking():
    ms = MixedSupervision(384, heads=6, mlp_ratio=3.0)  # official: no projection, embed dim = feature dim
    assert isinstance(ms.proj, torch.nn.Identity) and len(ms.blocks) == 2 and ms.blocks[0].attn.heads == 6
    assert ms.blocks[0].mlp[0].out_features == 3 * 384 and ms.blocks[0].skip_lam == 2.0
    assert len(ms.keep_index(20)) == 10 and len(ms.keep_index(3)) == 2 and len(ms.keep_index(1)) == 1
    s, inst = ms.eval()(torch.randn(7, 384), torch.randint(0, 5, (7, 2)))
    assert s.shape == (1, K) and inst.shape == (1, 7, K)
    with pytest.raises(ValueError, match="divisible"):
        MixedSupervision(20, dim=20, heads=6)


# -------------------------------------------------------------------------- targets, loss, optim
@pytest.mark.parametrize("p,s,want", [(0, 0, [1, 0, 0, 0]), (1, 2, [0, 1, 1, 0]), (2, 2, [0, 0, 1, 0]),
                                      (3, 1, [0, 1, 0, 1]), (2, 3, [0, 0, 1, 1]), (1, 0, [1, 1, 0, 0])])
def test_multilabel_targets_from_primary_and_secondary(p, s, want):
    assert slide_targets(p, s).tolist() == want


def test_targets_reject_grades_and_bce_matches_formula():
    with pytest.raises(ValueError, match="0..3"):
        slide_targets(4, 5)  # Gleason grades, not labels
    logits, y = torch.tensor([[2.0, -1.0, 0.5, -3.0]]), slide_targets(1, 2).unsqueeze(0)
    p = torch.sigmoid(logits)
    manual = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    assert torch.allclose(bce_loss(logits, y), manual, atol=1e-6)


def test_lookahead_radam_and_weight_decay_groups():
    m = tiny()
    opt = lookahead_radam(m, lr=2e-4, weight_decay=1e-5)
    assert isinstance(opt, Lookahead) and isinstance(opt._base_optimizer, torch.optim.RAdam)
    assert {(g["lookahead_k"], g["lookahead_alpha"], g["lr"]) for g in opt.param_groups} == {(6, 0.5, 2e-4)}
    no_decay, decay = param_groups(m, 1e-5)
    assert any(p is m.cls_token for p in no_decay["params"]) and all(p.ndim > 1 for p in decay["params"])
    assert sum(p.numel() for g in (no_decay, decay) for p in g["params"]) == sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------------- Eq. 4 in training
def test_lambda_range():
    for bad in (1.0, -0.1, True, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="lambda"):
            check_lam(bad)
    assert check_lam(0) == 0.0


def toy_bags(n, seed, d=8, sizes=(5, 5, 6), nan=False):
    """Bags whose mean feature encodes the labels: separable, so a model can learn them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p, s = [(0, 0), (1, 1), (2, 3), (1, 2)][i % 4]
        y = slide_targets(p, s)
        k = sizes[i % len(sizes)]
        x = torch.randn(k, d, generator=g) * 0.3
        x[:, :K] += 3 * y
        if nan:
            x[:] = float("nan")
        out.append(gm.Bag(f"s{seed}_{i}", x, y, torch.full((k,), int(p)), torch.from_numpy(gm.grid_coords([None] * k)), p, s))
    return out


T = {"max_epochs": 12, "patience": 4, "batch": 2, "synth_batch": 1, "lr": 3e-3, "weight_decay": 1e-5,
     "lookahead_k": 6, "lookahead_alpha": 0.5}


def test_lambda_weighting_uses_synthetic_slides_only_when_lambda_positive():
    """NaN synthetic slides: harmless at λ = 0 (never read), a non-finite loss at λ > 0."""
    train, val, poison = toy_bags(8, 0), toy_bags(4, 1), toy_bags(3, 2, nan=True)
    fit = gm.train_model(tiny(8), train, val, {**T, "max_epochs": 2}, 0, "cpu", poison, 0.0)
    assert fit["epochs"] == 2
    with pytest.raises(FloatingPointError, match="loss became nan"):
        gm.train_model(tiny(8), train, val, {**T, "max_epochs": 2}, 0, "cpu", poison, 0.3)
    with pytest.raises(ValueError, match="synthetic"):
        gm.train_model(tiny(8), train, val, T, 0, "cpu", None, 0.3)


def test_step_loss_is_eq4_of_its_real_and_synthetic_slide_losses():
    """The loss train_model minimises at each step (step_loss) against the real and the synthetic
    slides' BCE computed through the model (one synthetic slide in the pool: the draw is known)."""
    m, real, syn = tiny(8), toy_bags(2, 3), toy_bags(1, 4)
    with torch.no_grad():
        a = float(bce_loss(m(torch.stack([b.feats for b in real])), torch.stack([b.y for b in real])))
        b = float(bce_loss(m(syn[0].feats), syn[0].y))
        assert abs(a - b) > 0.05  # the parts differ, so a wrong weighting shows
        for lam in (0.1, 0.5, 0.9):
            got = gm.step_loss(m, real, syn, lam, "cpu", torch.Generator().manual_seed(0), synth_batch=1)
            assert float(got) == pytest.approx((1 - lam) * a + lam * b, rel=1e-5)
        assert float(gm.step_loss(m, real, None, 0.0, "cpu")) == pytest.approx(a, rel=1e-6)


def test_training_learns_separable_bags_and_stops_early():
    train, val = toy_bags(16, 0), toy_bags(8, 1)
    m = tiny(8)
    fit = gm.train_model(m, train, val, {**T, "max_epochs": 15, "batch": 4, "lr": 5e-3}, 0, "cpu", toy_bags(4, 5), 0.2)
    h = fit["history"]
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert 1 <= fit["best_epoch"] <= fit["epochs"] and fit["epochs"] - fit["best_epoch"] <= T["patience"]
    best = min(r["val_loss"] for r in h)
    assert gm.eval_loss(m, val, "cpu") == pytest.approx(best, rel=1e-5)  # the best epoch's weights are restored
    Y = np.stack([b.y.numpy() for b in val])
    assert auroc_scores(Y, gm.predict(m, val, "cpu"))["macro"] > 0.9
    ms = MixedSupervision(8, dim=12, heads=6)
    fit = gm.train_model(ms, train, val, T, 0, "cpu", select="auroc")
    assert fit["history"][fit["best_epoch"] - 1]["val_auroc"] == max(np.nan_to_num(r["val_auroc"], nan=-1) for r in fit["history"])


def test_equal_size_bags_share_a_forward_pass():
    m, bags = tiny(8), toy_bags(4, 0, sizes=(6,))
    with torch.no_grad():
        stacked = gm.slide_loss(m, bags, "cpu")
        single = sum(float(gm.slide_loss(m, [b], "cpu")) for b in bags) / 4
    # equal within the pseudo-inverse's batch-wide initialisation (official code: the same quirk)
    assert float(stacked) == pytest.approx(single, rel=1e-3)


# ------------------------------------------------------------------------- λ* on validation only
def sweep_summary(val_auroc: dict, test_auroc: dict, val_bce: dict | None = None) -> pd.DataFrame:
    """A notebook-05 summary for TransMIL + SD over several λ (and the λ = 0 baseline)."""
    rows = [("TransMIL", "none", 0.0, ts, "auroc", lab, 0.70) for ts in ("val", "test") for lab in ("macro", "GG5")]
    for lam in val_auroc:
        for lab in ("macro", "GG5"):
            rows += [("TransMIL", "SD", lam, "val", "auroc", lab, val_auroc[lam]),
                     ("TransMIL", "SD", lam, "test", "auroc", lab, test_auroc[lam])]
        rows.append(("TransMIL", "SD", lam, "val", "bce", "all", (val_bce or {}).get(lam, 0.5)))
    df = pd.DataFrame(rows, columns=["model", "generator", "lam", "test_set", "metric", "label", "value"])
    return gm.summarize(df.assign(fold=1, seed=0))


def test_lambda_star_is_chosen_on_validation_and_test_numbers_do_not_leak():
    """Best λ on validation (0.3) is not the best on test (0.5): λ* must be 0.3, and the test AUROC
    reported at λ* is the one of λ = 0.3; the optimistic column names the test's own best."""
    s = sweep_summary({0.1: 0.80, 0.3: 0.90, 0.5: 0.85}, {0.1: 0.60, 0.3: 0.75, 0.5: 0.95})
    assert gm.select_lambda(s, "SD") == (0.3, "val AUROC")
    best = gm.best_lambda_table(s)
    assert best.loc["SD", "λ* (val)"] == 0.3 and best.loc["SD", "selected on"] == "val AUROC"
    assert best.loc["SD", "test macro @λ*"] == "75.00" and best.loc["SD", "test macro Δ"] == "+5.00"
    assert best.loc["SD", "best λ on test (optimistic)"] == "0.5: 95.00"
    # ties on validation go to the smaller λ, whatever the test set says
    tie = sweep_summary({0.1: 0.8, 0.3: 0.9, 0.5: 0.9}, {0.1: 0.6, 0.3: 0.6, 0.5: 0.99})
    assert gm.select_lambda(tie, "SD")[0] == 0.3
    # validation AUROC undefined everywhere (single-class folds): the lowest validation BCE
    nan = sweep_summary(dict.fromkeys((0.1, 0.3, 0.5), float("nan")), {0.1: 0.9, 0.3: 0.6, 0.5: 0.7},
                        val_bce={0.1: 0.6, 0.3: 0.4, 0.5: 0.5})
    assert gm.select_lambda(nan, "SD") == (0.3, "val BCE")
    assert gm.select_lambda(s[s.test_set != "val"], "SD")[1] == "no validation"


# ---------------------------------------------------------------------------- the sweep pipeline
def fake_tileset(root, name, n_slides=4, size=32, seed=0, grades=False):
    """A tile set in notebook 03's layout: manifest.csv + slides/<id>.npz."""
    rng = np.random.default_rng(seed)
    d = root / name
    (d / "slides").mkdir(parents=True)
    rows = []
    for i in range(n_slides):
        p, s = [(0, 0), (1, 2), (3, 3), (2, 1)][i % 4]
        n = 3 + i
        sid = f"{name}-{i:04d}"
        np.savez(d / "slides" / f"{sid}.npz", tiles=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                 masks=rng.integers(0, K, (n, size, size), dtype=np.uint8), mask_ids=np.arange(n), seeds=np.arange(n))
        gp, gs = ({0: 0, 1: 3, 2: 4, 3: 5}[p], {0: 0, 1: 3, 2: 4, 3: 5}[s]) if grades else (p, s)
        rows.append({"slide_id": sid, "primary": gp, "secondary": gs, "tertiary": -1, "weights": json.dumps([0.4, 0.3, 0.2, 0.1]),
                     "n_tiles": n, "seed": i, "file": f"slides/{sid}.npz"})
    pd.DataFrame(rows).to_csv(d / "manifest.csv", index=False)
    return d


def test_manifest_labels_or_grades(tmp_path):
    a = sweep.read_tileset(fake_tileset(tmp_path, "SD"))
    b = sweep.read_tileset(fake_tileset(tmp_path, "SD-SC", grades=True))
    assert a.primary_label.tolist() == b.primary_label.tolist() == [0, 1, 3, 2]
    assert a.secondary_label.tolist() == [0, 2, 3, 1]
    (tmp_path / "SD" / "slides" / "SD-0001.npz").unlink()
    with pytest.raises(FileNotFoundError, match="absent"):
        sweep.read_tileset(tmp_path / "SD")
    with pytest.raises(FileNotFoundError, match="03_tile_sets"):
        sweep.read_tileset(tmp_path / "nope")


def sweep_params(tmp_path, **over):
    if not (tmp_path / "data").exists():
        prepared(tmp_path)  # 6 slides x 3 tiles (32 px): train slides in folds 1..4, 2 test slides
    base = {"data_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / "mil"), "tilesets_dir": str(tmp_path / "ts"),
            "folds": [1, 2], "seeds": [0], "generators": ["SD", "SD-DISC"], "lams": [0.0, 0.25, 0.5], "ood_split": "",
            "device": "cpu", "extractor": {"name": "tilecnn", "path": "", "width": 4, "epochs": 1, "batch": 4,
                                           "lr": 0.002, "seed": 0, "input_size": 0, "eval_batch": 8},
            "transmil": {"dim": 16, "heads": 8, "landmarks": 0, "dropout": 0.1},
            "mixed": {"dim": 24, "depth": 2, "heads": 6, "mlp_ratio": 3.0, "skip_lam": 2.0, "drop_path": 0.1, "masking_ratio": 0.5},
            "train": {**T, "max_epochs": 2, "patience": 2}}
    return params.validate("05_transmil_sweep", {**base, **over})


def test_sweep_end_to_end_skips_missing_generators_and_reuses_runs(tmp_path, capsys):
    fake_tileset(tmp_path / "ts", "SD")  # SD-DISC missing: skipped with a note
    P = sweep_params(tmp_path)
    fig6 = paths.figures_dir("smoke") / "05_transmil_sweep.png"
    fig6.unlink(missing_ok=True)
    res = sweep.run(P, progress=False)
    assert "SD-DISC: no tile set" in capsys.readouterr().out
    assert list(res["bags"]["synth"]) == ["SD"]
    runs = res["runs"]
    assert len(runs) == 2 * (1 + 1 + 2)  # folds x (TransMIL, Mixed Supervision, TransMIL + SD at λ 0.25 and 0.5)
    df = res["results"]
    assert set(df.test_set) == {"val", "test"} and set(df.generator) == {"none", "SD"}
    assert set(df.model) == {"TransMIL", "MixedSupervision"} and df.value.dropna().between(0, 1).all()
    assert (tmp_path / "mil" / "results.csv").exists()
    best = gm.best_lambda_table(res["summary"])
    assert list(best.index) == ["SD"] and best.loc["SD", "λ* (val)"] in (0.25, 0.5)
    assert best.loc["SD", "λ* (val)"] == gm.select_lambda(res["summary"], "SD")[0]
    js = json.loads((tmp_path / "mil" / "results.json").read_text())  # what the notebook writes too
    assert set(js) == {"summary", "extractor", "ood", "notes", "generators", "runs"} and len(js["runs"]) == len(runs)
    assert fig6.exists()
    assert set(sweep.baseline_table(res["summary"]).columns) >= {"test macro", "val macro"}
    fig = plots.plot_sweep(res["summary"])
    assert len(fig.axes) == 2
    # second run: features and runs come from the caches
    again = sweep.run(P, progress=False)
    assert all(r["reused"] for r in again["runs"]) and all(f["cached"] for f in again["features"].values())
    # bags: real slides in name order, synthetic ones with manifest targets
    bag = again["bags"]["real"]["16B0000001"]
    assert bag.y.tolist() == [0, 1, 1, 0] and len(bag) == 3 and bag.coords[:, 1].tolist() == [0, 1, 2]
    assert [b.y.tolist() for b in again["bags"]["synth"]["SD"]][:2] == [[1, 0, 0, 0], [0, 1, 1, 0]]


def test_notebook_parameter_files_are_valid():
    for prof in ("demo", "paper"):
        P = params.check_file("05_transmil_sweep", f"params/{prof}/05_transmil_sweep.yaml")
        assert all(0 <= lam < 1 for lam in P.lams) and set(P.generators) <= set(sweep.GENERATORS)
    P = params.check_file("05_transmil_sweep", "params/paper/05_transmil_sweep.yaml")
    assert P.folds == [1, 2, 3, 4] and P.extractor["name"] == "lunit-vits16" and P.transmil["dim"] == 512
    assert np.allclose(P.lams, np.round(np.arange(0, 0.91, 0.05), 2))


def test_interrupted_sweep_resumes_with_its_finished_runs(tmp_path, monkeypatch):
    """A sweep stopped in its third run keeps the records of the first two (each written atomically by
    its run); the next sweep deletes what a killed writer left, trains only the other runs, marks the
    two as reused and returns every run in run_specs order."""
    fake_tileset(tmp_path / "ts", "SD")
    P = sweep_params(tmp_path, generators=["SD"], folds=[1], mixed_supervision=False)
    S = sweep.load_sources(P, progress=False)
    ext = sweep.build_extractor(P, S, progress=False)
    B = sweep.build_bags(P, S, sweep.extract_all(P, ext, S, progress=False))
    keys = sweep.run_keys(P, S, ext)
    specs = sweep.run_specs(P, ["SD"])
    assert [s.tag for s in specs] == ["TransMIL", "TransMIL+SD-lam0.25", "TransMIL+SD-lam0.5"]
    real_run_one, calls = sweep.run_one, []

    def stop_at_third(*a, **k):
        calls.append(a[2].tag)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run_one(*a, **k)
    monkeypatch.setattr(sweep, "run_one", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(P, B, keys, progress=False)
    runs_dir = tmp_path / "mil" / "runs"
    assert len(list(runs_dir.glob("*.json"))) == 2
    (runs_dir / "TransMIL+SD-lam0.5-fold1-seed0-0123456789.tmp.json").write_text("{half")  # a killed writer's
    calls.clear()
    runs = sweep.run_sweep(P, B, keys, progress=False)
    assert calls == ["TransMIL+SD-lam0.5"] and [r["tag"] for r in runs] == [s.tag for s in specs]
    assert [r["reused"] for r in runs] == [True, True, False]
    assert sorted(p.name for p in runs_dir.iterdir()) == sorted(sweep.run_record(P, s, keys)[1].name for s in specs)
    def text(rec):  # NaN (undefined AUROC) != NaN: compare the JSON
        return json.dumps(rec, sort_keys=True, default=float)
    stored = [json.loads(sweep.run_record(P, s, keys)[1].read_text()) | {"reused": r["reused"]} for s, r in zip(specs, runs)]
    assert [text(r) for r in stored] == [text(r) for r in runs]  # the returned runs are their records


class TwoProcesses:
    """What the sweep sees of ``accelerate launch`` with 2 processes, as the main one (no process group)."""
    rank, world, is_main = 0, 2, True


def test_several_processes_load_a_tilecnn_extractor_but_never_train_it(tmp_path, monkeypatch):
    """Under accelerate launch a missing tilecnn extractor is an error naming the one-process step that
    trains it (--stage extractor); once that ran, the processes load it."""
    P = sweep_params(tmp_path)
    S = sweep.load_sources(P, progress=False)
    real = sweep.procs_of
    monkeypatch.setattr(sweep, "procs_of", lambda P: TwoProcesses())
    with pytest.raises(ValueError, match=r"not trained yet.*--stage extractor"):
        sweep.build_extractor(P, S, progress=False)
    assert not (tmp_path / "mil" / "extractors").exists() or not list((tmp_path / "mil" / "extractors").rglob("done.json"))
    monkeypatch.setattr(sweep, "procs_of", real)
    f = tmp_path / "05.yaml"
    f.write_text(yaml.safe_dump(dict(P)))
    assert sweep.main(["--params", str(f), "--stage", "extractor", "--no-progress"]) == 0
    assert not (tmp_path / "mil" / "runs").exists()  # the extractor only
    monkeypatch.setattr(sweep, "procs_of", lambda P: TwoProcesses())
    ext = sweep.build_extractor(P, S, progress=False)
    assert ext.name == "tilecnn" and ext.key.startswith("tilecnn-")
