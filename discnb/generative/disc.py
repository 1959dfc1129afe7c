"""Separated Conditions (SC) and Self-Distillation from Separated Conditions (DISC), paper Sec. 2.3.

**SD-SC** (Fig. 4, bottom; Eq. 2). One z_T per tile is copied into one branch per label k, each
denoised with the constant mask sm_k = {k}^{HxW}; the results z_0^k are fused with the binary masks
m_k of the guiding mask m, nearest-downsampled to the latent grid:

    z_0^mixed = sum_k m_k * z_0^k                                                       (Eq. 2)

All branches of a batch of tiles are stacked into *one* batch for the U-Net. Beyond the paper:
only labels present in the (downsampled) mask get a branch (a 2-label mask costs 2x SD, not 4x;
``all_labels=True`` computes all K), and ``fuse_every_step=True`` fuses after every denoising step
(as the project page draws it) instead of once at t = 0.

**DISC data**: N sets of separated latents {z_0^0..z_0^{K-1}} from seeded z_T, stored in
safetensors shards with a manifest; generation resumes shard by shard (a shard's seeds depend
only on its number, so a resumed run writes exactly what an uninterrupted one would), and under
``accelerate launch`` the shards are split over the processes (:mod:`discnb.core.shards`), with
the same bytes as one process.

**Fine-tuning** (Eq. 3): SD-DISC = SD fine-tuned on

    L_DISC = E ||eps - eps_theta(z_t^mixed, t, tau_theta(m))||^2,  z_t^mixed = sqrt(abar_t) z_0^mixed + sqrt(1 - abar_t) eps

where each batch item takes a stored set and a random mask (a shape map of notebook 00's library
with random distinct labels on its ranks) and fuses z_0^mixed with Eq. 2. SD-DISC-CoTrain
averages L_LDM on real tiles and L_DISC. Both run through :func:`discnb.core.train.fit` (accelerate,
EMA, checkpoints, resume): there is no second training loop.

The generators "SD-SC", "SD-DISC" and "SD-DISC-CoTrain" are registered in :mod:`discnb.generative.generators`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from discnb import K
from discnb.core import shards
from discnb.core.io import atomic_file, write_text
from discnb.core.train import TensorData
from discnb.generative.ldm import check_mask, ldm_loss, make_condition
from discnb.generative.sampling import SDGenerator, denoise, initial_noise


# ================================================================================ Eq. 2
def downsample_mask(masks: torch.Tensor, size: int) -> torch.Tensor:
    """Label masks (B,H,W) -> (B,size,size) by nearest-neighbour interpolation (Sec. 2.3)."""
    if masks.shape[-1] == size:
        return masks.long()
    return F.interpolate(masks[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()


def fuse(z_sep: torch.Tensor, masks_lat: torch.Tensor) -> torch.Tensor:
    """Eq. 2: z_sep (B,K,C,h,w) separated latents, masks_lat (B,h,w) labels -> z_0^mixed (B,C,h,w).

    The binary masks m_k partition the grid, so sum_k m_k z^k picks, at each position, the branch
    of that position's label.
    """
    B, _, C, h, w = z_sep.shape
    idx = masks_lat.long().view(B, 1, 1, h, w).expand(B, 1, C, h, w).to(z_sep.device)
    return torch.gather(z_sep, 1, idx)[:, 0]


# ================================================================================ SD-SC
class SCGenerator(SDGenerator):
    """SD with Separated Conditions: same interface as :class:`SDGenerator`."""

    name = "SD-SC"

    def __init__(self, *args, all_labels: bool = False, fuse_every_step: bool = False, **kw):
        super().__init__(*args, **kw)
        self.all_labels, self.fuse_every_step = all_labels, fuse_every_step

    def branch_plan(self, masks_lat: torch.Tensor) -> list[list[int]]:
        """The labels to denoise for each tile: those present on the latent grid (or all K)."""
        if self.all_labels:
            return [list(range(K)) for _ in range(len(masks_lat))]
        return [sorted(torch.unique(m).tolist()) for m in masks_lat]

    def _denoise(self, z: torch.Tensor, masks: torch.Tensor, slide_labels) -> torch.Tensor:
        if self.model.condition != "pixel":
            raise ValueError("Separated Conditions need a pixel-conditioned SD (condition: pixel)")
        h = z.shape[-1]
        masks_lat = downsample_mask(masks, h)
        plan = self.branch_plan(masks_lat)
        tile = torch.tensor([i for i, ls in enumerate(plan) for _ in ls])
        label = torch.tensor([k for ls in plan for k in ls])
        H = masks.shape[-1]
        # one stacked batch: every branch of every tile, each from its tile's z_T
        zb = z[tile.to(z.device)].clone()
        cond = make_condition(label.view(-1, 1, 1).expand(-1, H, H).contiguous(), "pixel").to(self.device)
        self.nfe += self.steps * len(label) * self.evals_per_step
        callback = None
        if self.fuse_every_step:
            def callback(i, t, zs):
                return self._fuse_branches(zs, tile, label, masks_lat, len(z))[tile.to(zs.device)]
        with torch.autocast("cuda", torch.bfloat16, enabled=self.bf16):
            zs = denoise(self.model, zb, cond, self.steps, self.scheduler, callback=callback,
                         guidance_scale=self.guidance_scale)
        return self._fuse_branches(zs, tile, label, masks_lat, len(z))

    @staticmethod
    def _fuse_branches(zs, tile, label, masks_lat, n) -> torch.Tensor:
        """Branch latents (sum of branches, C, h, w) -> fused (n, C, h, w) with Eq. 2."""
        C, h, w = zs.shape[1:]
        z_sep = zs.new_zeros(n, K, C, h, w)
        z_sep[tile.to(zs.device), label.to(zs.device)] = zs
        return fuse(z_sep, masks_lat)


def separated_latents(gen: SDGenerator, seeds, batch_size: int | None = None) -> torch.Tensor:
    """DISC data: for each seed, z_0^k for all K constant masks from one z_T: (N, K, C, h, w).

    The K branches of a seed are stacked in one batch (``batch_size`` seeds at a time)."""
    bs = batch_size or max(1, gen.batch_size // K)
    out = []
    for s in range(0, len(seeds), bs):
        chunk = list(seeds[s:s + bs])
        z = initial_noise(chunk, gen.latent_shape).to(gen.device)
        H = gen.model.tau.config.image_size
        label = torch.arange(K).repeat(len(chunk))
        cond = make_condition(label.view(-1, 1, 1).expand(-1, H, H).contiguous(), "pixel").to(gen.device)
        gen.nfe += gen.steps * len(label) * gen.evals_per_step
        with torch.autocast("cuda", torch.bfloat16, enabled=gen.bf16):
            zs = denoise(gen.model, z.repeat_interleave(K, 0), cond, gen.steps, gen.scheduler,
                         guidance_scale=gen.guidance_scale)
        out.append(zs.float().cpu().view(len(chunk), K, *zs.shape[1:]))
    z0 = torch.cat(out)
    if not torch.isfinite(z0).all():
        raise FloatingPointError("DISC data: sampling diverged (NaN/inf latents)")
    return z0


# ================================================================================ DISC data store
def shard_seeds(seed: int, shard: int, shard_size: int) -> list[int]:
    """The z_T seeds of one shard: a function of (seed, shard) only, so resuming never shifts them."""
    return [seed * 10_000_000 + shard * shard_size + i for i in range(shard_size)]


def generate_disc_data(gen: SDGenerator, out: str | Path, n: int, seed: int, shard_size: int,
                       fingerprint: str, progress: bool = True, procs: shards.Processes | None = None) -> dict:
    """Write ``n`` sets of separated latents to ``out/shard-XXXXX.safetensors`` + ``manifest.json``.

    Shards are the work units of :func:`discnb.core.shards.run`: under ``accelerate launch`` each
    process generates its part of the unfinished shards (one process: all of them). A shard's
    seeds depend only on (seed, shard) and its batches only on ``gen.batch_size``, so N processes
    write the bytes one writes. Each shard is written to a temporary file and renamed, then its
    process's record ``manifest.rank-K.json`` (also atomically); the main process merges the
    records into ``manifest.json`` (shards in order) when every process is done, and at the start
    of a run folds in those of a killed run. So a kill leaves finished shards and at most a stray
    ``*.tmp.*`` that the next run deletes, and a resume (with any number of processes) redoes
    only unfinished shards. A folder made by another generator (``fingerprint``) or plan is an
    error.
    """
    out = Path(out)
    procs = procs or shards.processes(gen.device.type == "cpu")
    plan = {"n": int(n), "seed": int(seed), "shard_size": int(shard_size), "generator": fingerprint, "K": K,
            "latent_shape": list(gen.latent_shape), "steps": gen.steps, "scheduler": gen.scheduler}
    mpath = out / "manifest.json"
    if mpath.exists():  # every process checks, so all of them stop on a mismatch
        old = json.loads(mpath.read_text())["plan"]
        if old != plan:
            diff = sorted(k for k in plan if old.get(k) != plan[k])
            raise ValueError(f"{out}: DISC data made with other settings ({diff} differ); delete the folder or set "
                             f"another output folder")
    n_shards = -(-n // shard_size)

    def merge_records() -> dict:
        """The manifest plus every process's records (of this run or a killed one), shards in order."""
        manifest = json.loads(mpath.read_text()) if mpath.exists() else {"plan": plan, "shards": {}}
        records = shards.rank_paths(out, "manifest", ".json")
        for r in records:
            manifest["shards"].update(json.loads(r.read_text()))
        manifest["shards"] = {str(s): manifest["shards"][str(s)] for s in range(n_shards) if str(s) in manifest["shards"]
                              and (out / manifest["shards"][str(s)]["file"]).exists()}
        write_text(mpath, json.dumps(manifest, indent=1))
        for r in records:
            r.unlink()
        return manifest

    def setup() -> None:
        shards.remove_tmp(out)
        merge_records()

    def todo() -> list[int]:
        done = json.loads(mpath.read_text())["shards"]
        return [s for s in range(n_shards) if str(s) not in done or not (out / done[str(s)]["file"]).exists()]

    mine: dict[str, dict] = {}
    record = shards.rank_path(out, "manifest", procs.rank, ".json")
    bar = tqdm(total=0, desc="DISC data (shards)", disable=not (progress and procs.is_main), unit="shard")

    def start(units: list[int]) -> None:  # the main process shows its own part
        bar.total = len(units)
        bar.refresh()

    def work(s: int) -> None:
        seeds = shard_seeds(seed, s, shard_size)[: min(shard_size, n - s * shard_size)]
        t0 = time.perf_counter()
        z = separated_latents(gen, seeds)
        name = f"shard-{s:05d}.safetensors"
        atomic_file(out / name, lambda tmp: save_file({"z0": z.contiguous(), "seeds": torch.tensor(seeds, dtype=torch.int64)},
                                                      str(tmp)))
        mine[str(s)] = {"file": name, "n": len(seeds), "seconds": round(time.perf_counter() - t0, 3)}
        write_text(record, json.dumps(mine, indent=1))
        bar.update(1)

    def merge() -> None:
        merge_records()

    shards.run(out, "generation", todo=todo, work=work, setup=setup, merge=merge, start=start, procs=procs)
    bar.close()
    return json.loads(mpath.read_text())


def load_disc_data(out: str | Path) -> dict:
    """All stored sets: ``z0`` (N,K,C,h,w), ``seeds`` (N,), and the manifest; checks completeness."""
    out = Path(out)
    mpath = out / "manifest.json"
    if not mpath.exists():
        raise FileNotFoundError(f"{out}: no DISC data; run notebooks/02_sc_disc.ipynb for this profile")
    manifest = json.loads(mpath.read_text())
    plan = manifest["plan"]
    n_shards = -(-plan["n"] // plan["shard_size"])
    missing = [s for s in range(n_shards) if str(s) not in manifest["shards"]]
    if missing:
        raise ValueError(f"{out}: DISC data incomplete (shards {missing[:5]}... missing); run the generation again "
                         "to finish it")
    # filled shard by shard into one tensor: concatenating all shards at once held the set twice
    # (paper: 20,000 x 4 x 3 x 64 x 64 float32 = 3.9 GB, so 7.9 GB at the peak)
    sizes = [manifest["shards"][str(s)]["n"] for s in range(n_shards)]
    z0, seeds, o = torch.empty(sum(sizes), K, *plan["latent_shape"]), torch.empty(sum(sizes), dtype=torch.int64), 0
    for s, n in enumerate(sizes):
        part = load_file(str(out / manifest["shards"][str(s)]["file"]))
        if len(part["z0"]) != n:
            raise ValueError(f"{out / manifest['shards'][str(s)]['file']}: {len(part['z0'])} sets, the manifest says {n}")
        z0[o:o + n], seeds[o:o + n] = part["z0"], part["seeds"]
        o += n
    if len(seeds) != plan["n"] or len(set(seeds.tolist())) != len(seeds):
        raise ValueError(f"{out}: DISC data has {len(seeds)} sets ({len(set(seeds.tolist()))} distinct), "
                         f"expected {plan['n']}")
    return {"z0": z0, "seeds": seeds, "manifest": manifest}


# ================================================================================ Eq. 3 data + losses
def random_masks(maps: torch.Tensor, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random masks from a shape-map library (M,s,s) ranks: a random map whose ranks get
    distinct labels by weighted choice without repetition under random weights (Sec. 2.2's
    assignment). Torch RNG, so training checkpoints restore it. Returns (masks (n,s,s), map ids)."""
    j = torch.randint(0, len(maps), (n,), generator=generator)
    w = torch.rand(n, K, generator=generator) + 1e-3
    labels = torch.multinomial(w, K, replacement=False, generator=generator)  # labels[r] = label of rank r
    m = maps[j].long()
    return torch.gather(labels, 1, m.flatten(1)).view_as(m).to(torch.uint8), j


class DISCData(TensorData):
    """Batches for L_DISC: each item fuses a stored set with a fresh random mask (Eq. 2).

    ``real`` (optional, the LDM's training tensors z/mask/slide) makes it CoTrain data: the
    epoch walks the real tiles and every batch also carries as many DISC items under ``disc_*``.
    Without ``real`` the epoch walks the stored sets. Validation (``tensors``) is real or DISC.
    """

    def __init__(self, z_sep: torch.Tensor, maps: torch.Tensor, image_size: int,
                 real: dict[str, torch.Tensor] | None = None, augment=None):
        self.z_sep, self.maps, self.image_size = z_sep, torch.as_tensor(maps), image_size
        if self.maps.shape[-1] != image_size:
            raise ValueError(f"shape maps are {self.maps.shape[-1]} px but SD's tiles are {image_size} px")
        self.cotrain = real is not None
        super().__init__(real if real is not None else {"set": torch.arange(len(z_sep))}, augment)

    def disc_items(self, sets: torch.Tensor) -> dict:
        masks, _ = random_masks(self.maps, len(sets))
        z = fuse(self.z_sep[sets], downsample_mask(masks, self.z_sep.shape[-1]))
        b = {"z": z, "mask": masks, "slide": torch.zeros(len(sets), 2, dtype=torch.long)}
        return self.augment(b) if self.augment is not None else b

    def batch(self, idx: torch.Tensor, device=None) -> dict:
        if self.cotrain:
            b = super().batch(idx)
            d = self.disc_items(torch.randint(0, len(self.z_sep), (len(idx),)))
            b.update({f"disc_{k}": v for k, v in d.items()})
        else:
            b = self.disc_items(self.tensors["set"][idx])
        return {k: v.to(device) for k, v in b.items()} if device is not None else b


def disc_loss(alphas_cumprod: torch.Tensor, cotrain: bool = False):
    """Eq. 3 (L_DISC) on DISC batches; with ``cotrain`` the mean of L_LDM (real) and L_DISC."""
    def one(model, z, mask, generator=None):
        cond = make_condition(check_mask(mask), "pixel").to(z.device)
        return ldm_loss(model, {"z": z, "cond": cond}, alphas_cumprod, generator)

    def loss(model, batch, generator=None):
        if "disc_z" in batch:  # CoTrain batch
            return 0.5 * (one(model, batch["z"], batch["mask"], generator) +
                          one(model, batch["disc_z"], batch["disc_mask"], generator))
        return one(model, batch["z"], batch["mask"], generator)
    return loss


__all__ = ["SCGenerator", "fuse", "downsample_mask", "separated_latents", "generate_disc_data", "load_disc_data",
           "random_masks", "DISCData", "disc_loss"]
