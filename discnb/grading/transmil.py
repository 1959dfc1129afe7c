"""Slide-level models: TransMIL (the paper's baseline) and Mixed Supervision (its comparison model).

**TransMIL** (Shao et al., NeurIPS 2021; szc19990412/TransMIL ``models/TransMIL.py``),
rebuilt here layer for layer, device-agnostic::

    fc (in_dim -> dim) + ReLU
    pad the n tokens to a square H x H (H = ceil(sqrt(n))) by repeating the FIRST tokens
    prepend a learned cls token
    TransLayer:  x + NystromAttention(LayerNorm(x))       (no feed-forward)
    PPEG:        x + dw7(x) + dw5(x) + dw3(x) over the H x H grid (cls token passed through)
    TransLayer
    LayerNorm -> cls token -> linear head

with the official sizes: dim 512, 8 heads of dim//8 = 64, dim//2 = 256 landmarks, 6 Moore-Penrose
iterations, a depth-wise residual convolution (kernel 33) over the values, dropout 0.1. The
official code calls ``.cuda()`` on the cls token, so it only runs on a GPU; here the cls token is a
parameter that lives wherever the model does.

**Sigmoid multi-label head** (paper Sec. 2.4): the softmax/cross-entropy of the official code is
replaced by 4 independent sigmoids (NC, GG3, GG4, GG5) trained with binary cross-entropy;
:func:`slide_targets` builds the targets from the slide's primary and secondary grade.

**Order matters.** TransMIL is *not* permutation invariant, by design: PPEG reads the token
sequence as a 2-D grid, the Nyström landmarks are means of consecutive tokens, and the residual
convolution runs along the sequence. The official code feeds tiles in the order of the feature
file; discnb feeds each slide's tiles sorted by tile name (SICAPv2 names carry the tile's
position), so the order is deterministic.

**Nyström attention** is the ``nystrom-attention`` package (lucidrains, MIT), which the official
TransMIL imports: the sequence is zero-padded *at the front* to a multiple of the landmark count,
landmarks are means of ``ceil(n / m)`` consecutive queries/keys, softmax(Q K_l^T) ·
pinv(softmax(Q_l K_l^T)) · softmax(Q_l K^T) V, the pseudo-inverse by 6 Newton-Schulz iterations
initialised with the global (batch-wide) max row/column sums, plus a depth-wise convolution
(kernel 33) over the values; the first ``n`` padded rows are dropped at the end. (Its parameter
names, ``to_qkv``, ``to_out.0``, ``res_conv``, are those of our earlier copy, so stored state dicts
load unchanged; tests/test_transmil.py keeps that copy as the oracle.)

**Mixed Supervision** (Bian et al., MICCAI 2022; bianhao123/Mixed_supervision):
no TransMIL inside: 2 pre-LN transformer blocks (6 heads, mlp ratio 3, residual branches scaled by
1/skip_lam with skip_lam 2, stochastic depth 0.1) over the instance features plus 0.1 x a fixed 2-D
sine position encoding of the instance coordinates; a slide head on the cls token (4-label BCE)
and an instance head (cross-entropy on pseudo labels, here each tile's majority mask label);
training keeps a random 50 % of the instances; loss 0.5 slide + 0.5 instance. The official model
has no input projection (embed_dim = feature dim, 1280 there); ``dim=0`` reproduces that, ``dim>0``
adds a linear projection (needed when the feature dim is not a multiple of the head count).
Instance-loss class weights (the official log-frequency weighting) are not used.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from nystrom_attention import NystromAttention
from timm.optim import Lookahead

from discnb import K, LABELS


# ====================================================================================== TransMIL
class TransLayer(nn.Module):
    """x + NystromAttention(LayerNorm(x)) with TransMIL's sizes (dim//8 per head, 8 heads, dim//2
    landmarks unless given)."""

    def __init__(self, dim: int = 512, heads: int = 8, dim_head: int | None = None, landmarks: int | None = None,
                 pinv_iterations: int = 6, residual_conv_kernel: int = 33, dropout: float = 0.1):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim=dim, dim_head=dim_head or dim // 8, heads=heads,
                                     num_landmarks=landmarks or dim // 2, pinv_iterations=pinv_iterations,
                                     residual=True, residual_conv_kernel=residual_conv_kernel, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x))


class PPEG(nn.Module):
    """Pyramid position encoding generator: depth-wise 7/5/3 convolutions over the H x W token grid."""

    def __init__(self, dim: int = 512):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, _, C = x.shape
        cls_token, feat = x[:, 0], x[:, 1:]
        g = feat.transpose(1, 2).reshape(B, C, H, W)
        g = self.proj(g) + g + self.proj1(g) + self.proj2(g)
        return torch.cat((cls_token.unsqueeze(1), g.flatten(2).transpose(1, 2)), dim=1)


def square_pad(h: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Pad (B, n, C) tokens to a square count by repeating the first tokens (the official
    ``torch.cat([h, h[:, :add_length]])``; repeated cyclically, which is the same whenever
    ``add_length <= n``, i.e. always). Returns the padded tokens and the side H."""
    n = h.shape[1]
    if n < 1:
        raise ValueError("a bag needs at least one tile")
    side = math.ceil(math.sqrt(n))
    add = side * side - n
    if add:
        idx = torch.arange(add, device=h.device) % n
        h = torch.cat([h, h[:, idx]], dim=1)
    return h, side


class TransMIL(nn.Module):
    """TransMIL with a sigmoid multi-label head. ``forward(x)`` takes (n, in_dim) or (B, n, in_dim)
    tile features and returns logits (B, n_classes); ``torch.sigmoid`` gives per-label probabilities."""

    def __init__(self, in_dim: int = 1024, n_classes: int = K, dim: int = 512, heads: int = 8,
                 dim_head: int | None = None, landmarks: int | None = None, pinv_iterations: int = 6,
                 residual_conv_kernel: int = 33, dropout: float = 0.1):
        super().__init__()
        self.config = {"in_dim": int(in_dim), "n_classes": int(n_classes), "dim": int(dim), "heads": int(heads),
                       "dim_head": int(dim_head or dim // 8), "landmarks": int(landmarks or dim // 2),
                       "pinv_iterations": int(pinv_iterations), "residual_conv_kernel": int(residual_conv_kernel),
                       "dropout": float(dropout)}
        c = self.config
        layer = dict(dim=dim, heads=heads, dim_head=c["dim_head"], landmarks=c["landmarks"],
                     pinv_iterations=pinv_iterations, residual_conv_kernel=residual_conv_kernel, dropout=dropout)
        self.pos_layer = PPEG(dim)
        self._fc1 = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.layer1 = TransLayer(**layer)
        self.layer2 = TransLayer(**layer)
        self.norm = nn.LayerNorm(dim)
        self._fc2 = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0)
        h = self._fc1(x.float())
        h, side = square_pad(h)
        h = torch.cat((self.cls_token.expand(h.shape[0], -1, -1), h), dim=1)
        h = self.layer1(h)
        h = self.pos_layer(h, side, side)
        h = self.layer2(h)
        return self._fc2(self.norm(h)[:, 0])


# ============================================================================ Mixed Supervision
def sine_encoding_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """The fixed 2-D sine/cosine encoding of Mixed Supervision: (dim, height, width); the first
    half of the channels encodes the column, the second half the row."""
    if dim % 4:
        raise ValueError(f"the 2-D sine position encoding needs a dim divisible by 4, got {dim}")
    pe = torch.zeros(dim, height, width)
    d = dim // 2
    div = torch.exp(torch.arange(0.0, d, 2) * -(math.log(10000.0) / d))
    pos_w = torch.arange(0.0, width).unsqueeze(1)
    pos_h = torch.arange(0.0, height).unsqueeze(1)
    pe[0:d:2] = torch.sin(pos_w * div).T.unsqueeze(1).repeat(1, height, 1)
    pe[1:d:2] = torch.cos(pos_w * div).T.unsqueeze(1).repeat(1, height, 1)
    pe[d::2] = torch.sin(pos_h * div).T.unsqueeze(2).repeat(1, 1, width)
    pe[d + 1::2] = torch.cos(pos_h * div).T.unsqueeze(2).repeat(1, 1, width)
    return pe


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class _Block(nn.Module):
    """Pre-LN transformer block with residual branches scaled by 1/skip_lam (the official ``Block``)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float, skip_lam: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path, self.skip_lam = drop_path, skip_lam

    def _dp(self, x):
        if not self.training or self.drop_path == 0:
            return x
        keep = 1 - self.drop_path
        return x * x.new_empty(x.shape[0], 1, 1).bernoulli_(keep) / keep

    def forward(self, x):
        x = x + self._dp(self.attn(self.norm1(x))) / self.skip_lam
        return x + self._dp(self.mlp(self.norm2(x))) / self.skip_lam


class MixedSupervision(nn.Module):
    """Mixed Supervision over tile features. ``forward(x, coords=None)``: x (n, in_dim) or
    (B, n, in_dim), coords (B, n, 2) integer grid positions (row, col) in [0, grid); returns
    (slide logits (B, n_classes), instance logits (B, n, n_classes))."""

    def __init__(self, in_dim: int, n_classes: int = K, dim: int = 0, depth: int = 2, heads: int = 6,
                 mlp_ratio: float = 3.0, skip_lam: float = 2.0, drop_path: float = 0.1,
                 masking_ratio: float = 0.5, grid: int = 200):
        super().__init__()
        d = int(dim) or int(in_dim)
        self.config = {"in_dim": int(in_dim), "n_classes": int(n_classes), "dim": int(dim), "depth": int(depth),
                       "heads": int(heads), "mlp_ratio": float(mlp_ratio), "skip_lam": float(skip_lam),
                       "drop_path": float(drop_path), "masking_ratio": float(masking_ratio), "grid": int(grid)}
        self.masking_ratio, self.grid = masking_ratio, grid
        self.proj = nn.Linear(in_dim, d) if dim else nn.Identity()
        self.register_buffer("pe", sine_encoding_2d(d, grid, grid), persistent=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        dpr = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(_Block(d, heads, mlp_ratio, dpr[i], skip_lam) for i in range(depth))
        self.norm = nn.LayerNorm(d)
        self.slide_head = nn.Linear(d, n_classes)
        self.instance_head = nn.Linear(d, n_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.trunc_normal_(mod.weight, std=0.02)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)

    def keep_index(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The random instances kept in training: (1 - masking_ratio) of n, at least 2 (when n >= 2)."""
        s = int(n * (1 - self.masking_ratio))
        s = min(n, max(s, 2))
        return torch.randperm(n, generator=generator)[:s].sort().values

    def forward(self, x: torch.Tensor, coords: torch.Tensor | None = None):
        if x.dim() == 2:
            x = x.unsqueeze(0)
            coords = coords.unsqueeze(0) if coords is not None else None
        h = self.proj(x.float())
        if coords is not None:
            c = coords.long().clamp(0, self.grid - 1)
            h = h + 0.1 * self.pe[:, c[..., 0], c[..., 1]].permute(1, 2, 0)
        h = torch.cat((self.cls_token.expand(h.shape[0], -1, -1), h), dim=1)
        for blk in self.blocks:
            h = blk(h)
        h = self.norm(h)
        return self.slide_head(h[:, 0]), self.instance_head(h[:, 1:])


# ============================================================================ targets, optimizer
def slide_targets(primary: int, secondary: int) -> torch.Tensor:
    """The multi-label target of a slide (paper Sec. 2.4): label i is 1 when it is the slide's
    primary or secondary pattern (labels 0 = NC, 1 = GG3, 2 = GG4, 3 = GG5).

    So a negative slide (0+0) is [1, 0, 0, 0]; 3+4 is [0, 1, 1, 0]; 4+4 is [0, 0, 1, 0]. SICAPv2 has
    no x+0 slide with x > 0, so "NC = 1" means "benign slide"; a slide with primary cancer and
    secondary 0 (possible in synthetic tile sets) gets NC = 1 and its grade.
    """
    y = torch.zeros(K)
    for lab in (primary, secondary):
        lab = int(lab)
        if not 0 <= lab < K:
            raise ValueError(f"slide label {lab} is not one of 0..{K - 1} ({', '.join(LABELS)})")
        y[lab] = 1.0
    return y


def bce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The slide loss of Sec. 2.4: binary cross-entropy over the 4 sigmoid outputs (mean)."""
    return F.binary_cross_entropy_with_logits(logits.float(), y.float().reshape(logits.shape))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and 1-D parameters (LayerNorm, cls token), as timm's factory
    that the official TransMIL uses (``filter_bias_and_bn``)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") or name.endswith("cls_token") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def lookahead_radam(model: nn.Module, lr: float = 2e-4, weight_decay: float = 1e-5, k: int = 6,
                    alpha: float = 0.5) -> torch.optim.Optimizer:
    """Lookahead(RAdam), the official TransMIL/Mixed Supervision optimizer (``lookahead_radam``,
    lr 2e-4, weight decay 1e-5). RAdam is torch's; Lookahead is timm's (already a dependency), with
    timm's default k = 6 slow-weight sync period and alpha = 0.5, which the official factory uses."""
    return Lookahead(torch.optim.RAdam(param_groups(model, weight_decay), lr=lr), alpha=alpha, k=k)
