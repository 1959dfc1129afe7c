"""Which first-stage lever brings back what the real-tile judge needs to see? (docs/first-stage.md)

The demo's first stage smooths GG5's dense small nuclei into a stroma-like blur, so the judge trained on real tiles
reads reconstructed GG5 as NC (``real_on_recon``). Each lever is scored at each milestone the same way: PSNR and SSIM
(pytorch-msssim) on the validation fold, the real-tile judge on its reconstructions (``real_on_recon``), the pixel
std per class and the codebook's use.

Levers (``--lever``), each a fine-tuning phase from the trained first stage unless said otherwise:
  plain     L1 + L2 + codebook, as the first stage was trained (the control: more steps alone)
  gan       + taming's patch-GAN with its adaptive weight x ``--weight`` (no LPIPS; LDM's vq-f4 uses 0.75)
  msssim    + ``--weight`` x (1 - MS-SSIM) (``pytorch-msssim``; 3 scales, 3-px window: pytorch-msssim asks for
            tiles larger than (win - 1) x 16 px)
  perceptual + ``--weight`` x an LPIPS-style feature distance (channel-normalised features, L2, mean over layers)
            of a small CNN trained here first on the real training tiles to name each 16x16 cell's majority label: a
            perceptual loss without downloaded weights (not the judge: another network and task)
  codebook  a first stage trained from scratch with ``--n-embed`` codes (LDM's vq-f4 has 8192; the demo 512)
  split     the trained first stage with its codebook grown to ``--n-embed`` codes, each trained code split into
            n_embed / 512 copies with noise of ``--weight`` x the codes' std (LBG's splitting), then L1 + L2 + codebook

The focal-frequency lever measured in docs/first-stage.md needed the undeclared ``focal-frequency-loss`` package and
is no longer here (``git show 6b733bc:experiments/issue15_first_stage_levers.py`` has it).

``--decoder-only``: only the decoder (and post_quant_conv) trains; the encoder and codebook stay, so the latents, and
every SD trained on them, stay valid (as Stability's fine-tuned SD VAE decoders keep SD's latent space).

    python experiments/first_stage_levers.py --lever plain --steps 500 --first-stage weights/demo/SD/vqvae \
        --judge-real outputs/experiments/judge_seeds/real-seed0 --data outputs/demo/data

Relative paths are read from the repository root; ``--judge-real`` is a judge folder written by
experiments/judge_seeds.py (or notebook 01's ``outputs/<profile>/judge-real``).
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from discnb.core import paths
from discnb.core.train import FitConfig, TensorData, fit
from discnb.generative import autoencoder as ae
from discnb.grading import judge as jg
from discnb.data import prepared
from discnb.data.augment import dihedral

LEVERS = ["plain", "gan", "msssim", "perceptual", "codebook", "split"]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lever", choices=LEVERS, required=True)
    ap.add_argument("--weight", type=float, default=1.0)
    ap.add_argument("--n-embed", type=int, default=8192)
    ap.add_argument("--first-stage", default="weights/demo/SD/vqvae", help="the trained first stage (VQModel folder)")
    ap.add_argument("--judge-real", required=True, help="a judge folder trained on real tiles")
    ap.add_argument("--data", default="outputs/demo/data", help="notebook 00's data folder")
    ap.add_argument("--val-fold", type=int, default=1)
    ap.add_argument("--steps", type=int, nargs="+", required=True, help="milestones: train to each, then score")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=None, help="default: 2e-4 for a fine-tuning phase, 5e-4 from scratch")
    ap.add_argument("--cellnet-steps", type=int, default=2000, help="training steps of the perceptual lever's network")
    ap.add_argument("--decoder-only", action="store_true")
    ap.add_argument("--out", default=None, help="default: outputs/experiments/first_stage/<lever>-<weight>")
    return ap.parse_args(argv)


def codebook_use(vq, D):
    """Codes used on the validation tiles and the perplexity of their use (all codes alike: perplexity = n_embed)."""
    with torch.no_grad():
        idx = vq.quantize(ae.encode(vq, D["val"]["imgs"]))[2][2].flatten()
    p = torch.bincount(idx, minlength=vq.config.num_vq_embeddings).float() / len(idx)
    return {"n_embed": vq.config.num_vq_embeddings, "codes_used": int((p > 0).sum()),
            "perplexity": float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))}


def score(vq, key, D, judge, res, res_f):
    rec = ae.reconstruct(vq, D["val"]["imgs"])  # once: the judge and PSNR / SSIM score the same tiles
    j = judge(rec, D["val"]["masks"])
    res[key] = {"val_reconstruction": ae.reconstruction_scores(D["val"]["imgs"], rec), "codebook": codebook_use(vq, D),
                "real_on_recon": j["mean_iou"],
                "real_on_recon_iou": j["iou"], "recon_std_per_class": [float(rec[D["val"]["masks"] == k].std()) for k in range(4)]}
    print(key, json.dumps(res[key]), flush=True)
    res_f.write_text(json.dumps(res, indent=1))


def split_codebook(vq, n_embed, noise, seed=0):
    """``vq`` with ``n_embed`` codes: each of its codes repeated n_embed / n times, plus Gaussian noise of ``noise`` x
    the codes' std (the copies then drift apart under the codebook loss), every other weight kept."""
    old = vq.quantize.embedding.weight.detach()
    reps = n_embed // len(old)
    assert reps * len(old) == n_embed, (n_embed, len(old))
    g = torch.Generator().manual_seed(seed)
    new = old.repeat(reps, 1) + noise * old.std(0) * torch.randn(n_embed, old.shape[1], generator=g)
    new[:len(old)] = old  # the trained codes themselves stay, so the start reconstructs as before
    big = ae.build_vq(list(vq.config.block_out_channels), vq.config.layers_per_block, n_embed)
    sd = vq.state_dict() | {"quantize.embedding.weight": new}
    big.load_state_dict(sd)
    return big


class CellNet(torch.nn.Module):
    """Four stride-2 conv blocks (64 px -> 4x4 cells) and a 1x1 head naming each 16x16 cell's majority label."""

    def __init__(self, widths=(32, 64, 96, 128)):
        super().__init__()
        blocks, c = [], 3
        for w in widths:
            blocks.append(torch.nn.Sequential(torch.nn.Conv2d(c, w, 3, 2, 1), torch.nn.GroupNorm(8, w), torch.nn.SiLU(),
                                              torch.nn.Conv2d(w, w, 3, 1, 1), torch.nn.SiLU()))
            c = w
        self.blocks, self.head = torch.nn.ModuleList(blocks), torch.nn.Conv2d(c, 4, 1)

    def features(self, x):
        out = []
        for b in self.blocks:
            x = b(x)
            out.append(x)
        return out

    def forward(self, x):
        return self.head(self.features(x)[-1])


def cell_labels(masks):
    """(N,64,64) -> (N,4,4) majority label of each 16x16 cell."""
    m = torch.as_tensor(masks).long()
    n, h, w = m.shape
    onehot = F.one_hot(m, 4).view(n, h // 16, 16, w // 16, 16, 4).sum((2, 4))
    return onehot.argmax(-1)


def train_cellnet(D, out, res, steps=2000, seed=1):
    """The perceptual network, trained on the real training tiles (its own seed; saved, reused)."""
    f = out.parent / "cellnet.pt"
    net = CellNet()
    if f.exists():
        net.load_state_dict(torch.load(f))
        return net.eval().requires_grad_(False)
    torch.manual_seed(seed)
    x = ae.pixels_to_model({"x": ae.pixels(D["train"]["imgs"])})["x"]
    y = cell_labels(D["train"]["masks"])
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4)
    for i in range(steps):
        idx = torch.randint(0, len(x), (32,))
        b = dihedral({"x": x[idx], "y": y[idx][:, None].float()}, ("x", "y"))
        loss = F.cross_entropy(net(b["x"]), b["y"][:, 0].long())
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        xv = ae.pixels_to_model({"x": ae.pixels(D["val"]["imgs"])})["x"]
        acc = float((net(xv).argmax(1) == cell_labels(D["val"]["masks"])).float().mean())
    print("cell net: validation cell accuracy", round(acc, 3), flush=True)
    res["cellnet_val_acc"] = acc
    torch.save(net.state_dict(), f)
    return net.requires_grad_(False)


def plus(term):
    """ae.vq_loss's L1 + L2 + codebook, plus ``term(decoded, x)`` while training; validation keeps vq_loss's value,
    so 'best' compares like with like."""
    def loss(vq, batch, generator=None):
        x = batch["x"]
        dec = vq(x)
        rec = F.l1_loss(dec.sample, x) + F.mse_loss(dec.sample, x) + dec.commit_loss.mean()
        return rec + term(dec.sample, x) if dec.sample.requires_grad else rec
    return loss


def perceptual_loss(weight, D, out, res, steps):
    net = train_cellnet(D, out, res, steps)

    def dist(a, b):
        fa, fb = net.features(a), net.features(b)
        norm = lambda t: t / (t.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)  # noqa: E731  (LPIPS's normalize_tensor)
        return sum(F.mse_loss(norm(u), norm(v)) for u, v in zip(fa, fb)) / len(fa)
    return plus(lambda d, x: weight * dist(d, x))


def msssim_loss(weight):
    from pytorch_msssim import ms_ssim  # only this lever needs the package
    w = torch.tensor([0.0448, 0.2856, 0.3001])
    w = w / w.sum()  # the first three of MS-SSIM's five scale weights, renormalised: 64-px tiles allow 3 scales
    return plus(lambda d, x: weight * (1 - ms_ssim(d, x, data_range=2.0, win_size=3, weights=w)))


def main(argv=None) -> dict:
    a = parse_args(argv)
    scratch = a.lever == "codebook"
    lr = a.lr or (5e-4 if scratch else 2e-4)
    name = f"{a.lever}-{a.n_embed if scratch else a.weight}" + (f"-{a.n_embed}" if a.lever == "split" else "") + \
        ("-decoder" if a.decoder_only else "")
    out = paths.resolve(a.out or f"outputs/experiments/first_stage/{name}")
    D = prepared.split_tiles(paths.resolve(a.data), a.val_fold, progress=False)
    tr = TensorData({"x": ae.pixels(D["train"]["imgs"])}, augment=lambda b: dihedral(b, ("x",)),
                    transform=ae.pixels_to_model)
    va = TensorData({"x": ae.pixels(D["val"]["imgs"])}, transform=ae.pixels_to_model)
    judge = jg.load_judge(paths.resolve(a.judge_real))
    res_f = out / "res.json"
    res = json.loads(res_f.read_text()) if res_f.exists() else {}
    first_stage = paths.resolve(a.first_stage)
    out.mkdir(parents=True, exist_ok=True)
    if "start" not in res and not scratch:
        score(ae.load_vq(first_stage), "start", D, judge, res, res_f)
    for steps in a.steps:
        if str(steps) in res:
            continue
        sig = {"kind": f"first-stage-{a.lever}", "from": None if scratch else str(a.first_stage), "lr": lr,
               "weight": a.weight, "n_embed": a.n_embed if a.lever in ("codebook", "split") else None,
               "decoder_only": a.decoder_only}
        if a.lever == "gan":
            model = ae.VQGAN(ae.load_vq(first_stage), ae.PatchDiscriminator(64, 3))
            loss, save = ae.vqgan_loss(a.weight), (lambda m, d: m.vq.save_pretrained(d))
        elif a.lever == "split":
            model, loss, save = split_codebook(ae.load_vq(first_stage), a.n_embed, a.weight), ae.vq_loss, \
                (lambda m, d: m.save_pretrained(d))
        else:
            model = ae.build_vq([32, 64, 64], 1, a.n_embed) if scratch else ae.load_vq(first_stage)
            loss = {"msssim": lambda: msssim_loss(a.weight),
                    "perceptual": lambda: perceptual_loss(a.weight, D, out, res, a.cellnet_steps)}.get(
                        a.lever, lambda: ae.vq_loss)()
            save = lambda m, d: m.save_pretrained(d)  # noqa: E731
        if a.decoder_only:
            vq = model.vq if a.lever == "gan" else model
            for n, p in vq.named_parameters():
                p.requires_grad_(n.startswith(("decoder.", "post_quant_conv.")))
        cfg = FitConfig(out_dir=str(out / "run"), max_steps=steps, global_batch=a.batch, lr=lr, cpu=True,
                        checkpoint_every=100, checkpoints_total_limit=1, resume="latest", seed=0, desc=name,
                        progress=False, signature=sig, max_grad_norm=1.0)
        t0 = time.time()
        fit(model, loss, tr, cfg, val=va, save_fn=save)
        print("trained to", steps, "in", round(time.time() - t0), "s", flush=True)
        score(ae.load_vq(out / "run" / "final"), str(steps), D, judge, res, res_f)
    return res


if __name__ == "__main__":
    main()
