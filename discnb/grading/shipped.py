"""Shipped models: notebook 01's and 02's trained models as :class:`DISCPipeline` folders, with a manifest.

``export`` writes, under ``weights/<profile>/`` (demo, paper) or ``outputs/smoke/weights/`` (smoke):

    SD/, SD-DISC/, SD-DISC-CoTrain/   DISCPipeline.save_pretrained folders (vqvae, unet, mask_encoder,
                                      scheduler; safetensors), each with a README.md model card
    judge/                            the pattern judge (its CarcinoNet, judge.json, judge_report.json)
    MANIFEST.json                     per model: the command, the commit (of the export, and the one it was
                                      trained at), a hash of the resolved params,
                                      each file's sha256, and the adherence notebook 02 measured for it

SD-SC is SD's folder sampled with ``separated=True``. ``fp16`` storage halves the size; the weights are
upcast to float32 on load, so a shipped model samples as its fp16-rounded self (measured against fp32 in
notebook 07). :func:`discnb.generative.disc_pipeline.verify_manifest` checks the files against the manifest
on every load.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from diffusers.utils import logging as dlogging
from safetensors.torch import load_file, save_file

from discnb.core import layout, params, paths
from discnb.core.io import atomic_dir, fingerprint, write_json, write_text
from discnb.core.notebook import git_commit, package_versions
from discnb.generative import checkpoints, generators
from discnb.generative import ldm_training
from discnb.generative import disc_pipeline as pl
from discnb.data import demo, prepared
from discnb.grading import adherence
from discnb.grading import judge as jg

MODELS = ("SD", "SD-DISC", "SD-DISC-CoTrain")
# exported too when notebook 01 trained them (notebooks 03 and 05 draw Fig. 7's tile sets with them)
ABLATIONS = {"SD-tile": "tile", "SD-tile+slide": "tile+slide"}
STATE_SKIP = ("checkpoint-", "logs", "best", "final", "disc_data", "run-", "model", ".tmp", ".old", "restored.json")
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
# the shipped state keeps this many of notebook 02's 64 Fig. 5 tiles per model: the ones Fig. 5 shows (the first
# ``fig5_rows``, 6 in params/demo/06_figures.yaml); the other 58 would be 3.2 MB of the demo's 40 MB
FIG5_KEEP = 6
# what ``state/`` holds besides the models (written by write_state, put back by restore): these folders of
# outputs/<profile>/ (notebook 01's is ``ldm``) and these files of it (notebook 06's benchmark of these models: the
# default run draws it instead of rerunning it)
STATE_FOLDERS = ("ldm", "disc", "judge", "judge-real")
STATE_FILES = ("bench.json",)
CARD = """# {name}: a DISC-project {what} (discnb, profile {profile})

{about}

- Trained on: {data}
- Made by: `{command}` at commit `{commit}` (resolved parameters hash `{params_hash}`), stored as {dtype}.
- Load: `DISCPipeline.from_pretrained("{folder}")`{sc}; or `python -m discnb.generate --model {folder} --masks DIR --out DIR`.
- Adherence notebook 02 measured for it (the pattern judge's mean IoU with the guiding masks; chance and
  ceiling in `MANIFEST.json`): {adherence}

**What it is not:** a model of real tissue. {limits}
"""
ABOUT = {
    "SD": "SD (paper Sec. 2.1): a latent diffusion model drawing 4-class Gleason tiles from a pixel-wise mask "
          "(NC, GG3, GG4, GG5).",
    "SD-DISC": "SD-DISC (paper Sec. 2.3, Eq. 3): SD fine-tuned on fused separated-condition latents (self-distillation "
               "from Separated Conditions).",
    "SD-DISC-CoTrain": "SD-DISC-CoTrain (paper Sec. 2.3): SD fine-tuned on the average of the DISC loss and Eq. 1 on real "
                       "tiles.",
    "SD-tile": "SD-tile (paper Fig. 7's ablation): SD's recipe conditioned on the tile's majority label only.",
    "SD-tile+slide": "SD-tile+slide (paper Fig. 7's ablation): SD's recipe conditioned on the tile's majority label and "
                     "the slide's primary and secondary grades.",
}
DATA = {"demo": "the project's procedural demo tiles (`discnb.data.demo`, notebook 00), made on the machine; no patient "
                "data",
        "paper": "SICAPv2 (Silva-Rodriguez et al. 2020), the training slides of notebook 00's split",
        "smoke": "the smoke profile's tiny procedural tiles (a test fixture, not a useful model)"}
LIMITS = {"demo": "Its tiles imitate the demo's synthetic textures, at 64 px; it has never seen a slide.",
          "paper": "It draws SICAPv2-like tiles for research on data augmentation, not for diagnosis.",
          "smoke": "It is a few training steps old and draws noise-like tiles."}


def measured_adherence(adherence_csv: Path | None, name: str) -> dict:
    """Mean over seeds of notebook 02's ``adherence.csv`` rows of ``name``, per mask set."""
    if adherence_csv is None or not Path(adherence_csv).exists():
        return {}
    df = pd.read_csv(adherence_csv)
    df = df[df.model == name]
    cols = ["mean_iou", "normalized", "chance_mean_iou", "ceiling_mean_iou", "n_masks"]
    groups = dict(list(df.groupby("masks")))
    # adherence.SETS's order (multi-label masks first: the paper's claim), sets it does not name last
    order = [m for m in adherence.SETS if m in groups] + sorted(set(groups) - set(adherence.SETS))
    return {m: {c: float(groups[m][c].mean()) for c in cols} | {"seeds": int(groups[m].seed.nunique())} for m in order}


def _file_hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): pl.sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def export(profile: str, ldm_dir: Path, out: Path | None = None, models=MODELS, dtype: str = "fp16",
           command: str = "", adherence_csv: Path | None = None, image_size: int | None = None) -> dict:
    """Write the shipped models of notebook 01's ``ldm_dir`` (and notebook 02's ``disc/`` beside it) to
    ``out`` (default :func:`discnb.core.paths.weights_dir`), each folder swapped in whole; returns the manifest."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    ldm_dir, out = Path(ldm_dir), Path(out) if out else paths.weights_dir(profile)
    P01 = checkpoints.ldm_params(ldm_dir)
    size = image_size or int(json.loads((ldm_dir / "summary.json").read_text())["image_size"])
    ctx = generators.GeneratorContext(ldm_dir=ldm_dir, image_size=size)
    commit = git_commit()
    command = command or f"./run_all.sh --profile {profile}"
    p02 = layout.disc_beside(ldm_dir) / "params.resolved.yaml"
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"profile": profile, "command": command, "commit": commit, "versions": package_versions(),
                "dtype": dtype, "models": {}}
    models = list(models) + [a for a, c in ABLATIONS.items() if c in P01.ablation_conditions and a not in models]
    for name in models:
        gen, key = generators.build_generator(name, ctx)
        tuned = name in generators.FINETUNED  # notebook 02's models; the rest are notebook 01's
        params_files = [ldm_dir / "params.resolved.yaml"] + ([p02] if tuned and p02.exists() else [])
        params_hash = fingerprint(*params_files)
        pipe = pl.DISCPipeline.from_models(copy.deepcopy(gen.model), copy.deepcopy(gen.vq))
        for c in ("vqvae", "unet", "mask_encoder"):  # where a component came from: the shipped folder, not this machine's
            getattr(pipe, c).register_to_config(_name_or_path=_shown(out / name / c))
        if dtype != "fp32":
            verbosity = dlogging.get_verbosity()
            dlogging.set_verbosity_error()  # diffusers warns about casting with to(); these are copies, stored as fp16
            pipe.to(DTYPES[dtype])
            dlogging.set_verbosity(verbosity)
        adh = measured_adherence(adherence_csv, name)
        card = CARD.format(name=name, what="mask-conditioned latent diffusion model", profile=profile,
                           about=ABOUT[name], data=DATA.get(profile, DATA["smoke"]), command=command, commit=commit,
                           params_hash=params_hash, dtype=dtype,
                           folder=_shown(out / name),
                           sc=" (SD-SC: `pipe(masks, separated=True)`)" if name == "SD" else "",
                           adherence=_adherence_text(adh), limits=LIMITS.get(profile, LIMITS["smoke"]))

        def save(tmp, pipe=pipe, card=card):
            pipe.save_pretrained(tmp)
            write_text(tmp / "README.md", card)
        atomic_dir(save, out / name)
        manifest["models"][name] = {"kind": "DISCPipeline", "command": command, "commit": commit,
                                    "trained_commit": _trained_commit(p02.parent if tuned else ldm_dir),
                                    "generator_fingerprint": key, "params_hash": params_hash,
                                    "files": _file_hashes(out / name), "adherence": adh}
    jdir = layout.judge_beside(ldm_dir) if (layout.judge_beside(ldm_dir) / "judge.json").exists() else None
    if jdir is not None:
        def save_judge(tmp):
            shutil.copytree(jdir / "model", tmp / "model")
            if dtype != "fp32":  # like the pipelines: stored rounded, upcast on load (carcinonet.load_model)
                f = tmp / "model" / "model.safetensors"
                save_file({k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in load_file(f).items()},
                          str(f))
            for f in ("judge.json", "judge_report.json"):
                if (jdir / f).exists():
                    shutil.copy2(jdir / f, tmp / f)
            write_text(tmp / "README.md", f"# judge: the pattern judge of discnb (profile {profile})\n\nA CarcinoNet "
                       "segmenter trained on first-stage reconstructions of real training tiles only, frozen; it "
                       "scores generated tiles against their masks (`discnb.grading.judge.load_judge`). Its scores "
                       "three ways are in `judge_report.json`. It is not a grading model for real slides.\n")
        atomic_dir(save_judge, out / "judge")
        manifest["models"]["judge"] = {"kind": "judge", "command": command, "commit": commit,
                                       "trained_commit": _trained_commit(ldm_dir),
                                       "params_hash": fingerprint(ldm_dir / "params.resolved.yaml"),
                                       "files": _file_hashes(out / "judge")}
    manifest["state"] = {"files": write_state(ldm_dir, out / "state"), "data": data_identity(layout.of(P01).data),
                         "ldm_signature": ldm_training.ldm_signature(P01, size)}
    write_json(out / pl.MANIFEST_NAME, manifest)
    return manifest


def _trained_commit(stage_dir: Path) -> str:
    """The commit notebook 01 or 02 ran at (its ``provenance.json``); the manifest's ``commit`` is the export's."""
    f = Path(stage_dir) / "provenance.json"
    return json.loads(f.read_text()).get("git_commit", "") if f.exists() else ""


def _state_files(root: Path, folder: str) -> list[Path]:
    """The small files notebook 01 or 02 left in ``root/folder`` beside its weights (parameters, summaries,
    metrics, result tables, Fig. 5 samples): what later notebooks read besides the models."""
    base = root / folder
    return [p for p in sorted(base.rglob("*")) if p.is_file()
            and not any(part.startswith(STATE_SKIP) for part in p.relative_to(base).parts)]


def write_state(ldm_dir: Path, dest: Path) -> dict:
    """Copy notebook 01's and 02's small files (``ldm/``, ``disc/``, ``judge/``'s reports) and notebook 06's
    ``bench.json`` (when there) to ``dest``; their sha256.
    Of the Fig. 5 tiles (``comparison_samples.npz``) only the first :data:`FIG5_KEEP` per model."""
    root = Path(ldm_dir).parent

    def save(tmp):
        tmp.mkdir(parents=True, exist_ok=True)
        for name in STATE_FILES:
            if (root / name).exists():
                shutil.copy2(root / name, tmp / name)
        for folder in STATE_FOLDERS:
            for f in _state_files(root, folder):
                rel = Path(folder) / f.relative_to(root / folder)
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                if f.name == "params.resolved.yaml":
                    _portable_params(f, tmp / rel)
                elif f.name == "comparison_samples.npz":
                    with np.load(f) as z:
                        np.savez_compressed(tmp / rel, **{k: z[k] if k == "models" else z[k][:FIG5_KEEP]
                                                          for k in z.files})
                else:
                    shutil.copy2(f, tmp / rel)
    atomic_dir(save, dest)
    return _file_hashes(dest)


def _portable_params(src: Path, dst: Path) -> None:
    """A resolved-parameters file without this machine's folders (its ``*_dir`` values emptied: the defaults,
    which :func:`restore` fills in on the machine it restores to); copied as it is when it names none."""
    P = params.load_yaml(src)
    local = [k for k, v in P.items() if str(k).endswith("_dir") and v]
    if not local:
        shutil.copy2(src, dst)
        return
    write_text(dst, "# resolved parameters, shipped: this machine's folders emptied\n" +
               yaml.safe_dump(P | {k: "" for k in local}, sort_keys=False))


# Notebook 00's parameters that check or show the data without making it: the shipped models stay valid
# whatever they are (a new check, such as min_fold_tiles, must not make every shipped model stale).
NOT_DATA_PARAMS = ("min_fold_tiles", "validity_check", "validity_cnn_epochs", "figure_tiles", "checks")


def data_params(P00: dict) -> dict:
    """The parameters of notebook 00 that make its data: paths and :data:`NOT_DATA_PARAMS` aside."""
    return {k: v for k, v in P00.items() if not str(k).endswith(("_dir", "_root")) and k not in NOT_DATA_PARAMS}


def data_identity(data_dir: Path) -> dict:
    """What says two runs of notebook 00 made the same data: the parameters that make it
    (:func:`data_params`), the demo generator's version and the class table of its ``stats.json``."""
    stats = json.loads((Path(data_dir) / "stats.json").read_text()) if (Path(data_dir) / "stats.json").exists() else {}
    return {"params": data_params(prepared.prep_params(data_dir)), "demo_generator_version": demo.GENERATOR_VERSION,
            "class_table": stats.get("class_table"), "patches": stats.get("patches")}


def rebuild(profile: str) -> str:
    """The command that trains and exports a profile's shipped models again."""
    cmd = "./run_all.sh --train" if profile == "demo" else f"./run_all.sh --profile {profile}"
    return f"{cmd} (notebooks 01 and 02 train them, notebook 07 writes them to weights/{profile})"


def check_shipped(profile: str, weights: Path, P01_now, data: bool = True) -> dict:
    """The shipped models of ``weights`` fit this checkout: every file as its manifest says, trained on the
    data notebook 00 made now (``data``: False before notebook 00 has run), with the architecture and settings of
    the current notebook-01 parameters ``P01_now``. Any mismatch is an error that names it and the command that
    rebuilds the models."""
    f = Path(weights) / pl.MANIFEST_NAME
    if not f.exists():
        raise FileNotFoundError(f"{f}: no shipped models for profile {profile}; train them with {rebuild(profile)}")
    man = json.loads(f.read_text())
    for name, entry in man["models"].items():
        pl.verify_manifest(Path(weights) / name)
    state = man["state"]
    for rel, digest in state["files"].items():
        if pl.sha256(Path(weights) / "state" / rel) != digest:
            raise ValueError(f"{Path(weights) / 'state' / rel}: its sha256 does not match {f}; rebuild with {rebuild(profile)}")
    now = data_identity(layout.of(P01_now).data) if data else {}
    then = state["data"] | {"params": data_params(state["data"]["params"])}  # as recorded: its checks aside too
    diff = sorted(k for k in now if now[k] != then.get(k))
    if diff:
        raise ValueError(f"{weights}: the shipped models were trained on other {profile} data than notebook 00 made "
                         f"now (differs: {diff}); train them again with {rebuild(profile)}, or restore the data settings")
    sig = ldm_training.ldm_signature(P01_now, int(state["ldm_signature"]["image_size"]))
    if json.loads(json.dumps(sig)) != state["ldm_signature"]:
        keys = sorted(k for k in set(sig) | set(state["ldm_signature"]) if sig.get(k) != state["ldm_signature"].get(k))
        raise ValueError(f"{weights}: the shipped models do not match the current notebook-01 parameters (differs: "
                         f"{keys}); train them again with {rebuild(profile)}")
    return man


def restore(profile: str, weights: Path | None = None, P01_now=None, root: Path | None = None,
            data: bool = True) -> dict:
    """Put the shipped models where notebooks 03-07 look for them, as if notebooks 01 and 02 had run:
    ``outputs/<profile>/{ldm,disc,judge}``, after :func:`check_shipped` (``data``: as there); ``root``: another
    outputs folder (tests). The pipeline folders are copied as they are (the format notebooks 01 and 02 write;
    fp16-stored weights are upcast on load), with the small files of ``state/``. Returns the manifest."""
    weights = Path(weights) if weights else paths.weights_dir(profile, create=False)
    if P01_now is None:
        P01_now = params.check_file("01_train_ldm", paths.PARAMS / profile / "01_train_ldm.yaml") \
            if profile != "smoke" else params.validate("01_train_ldm", {})
    man = check_shipped(profile, weights, P01_now, data=data)
    root = Path(root) if root else paths.output_dir(profile)
    L = layout.Layout(profile, root)
    for folder in STATE_FOLDERS:
        if (weights / "state" / folder).exists():
            shutil.copytree(weights / "state" / folder, root / folder, dirs_exist_ok=True)
    for name in STATE_FILES:
        if (weights / "state" / name).exists():
            shutil.copy2(weights / "state" / name, root / name)
    where = {"SD": L.ldm / "sd" / "best", "judge": L.judge / "model"} | \
        {n: generators.finetuned_folder(L.ldm, n) for n in generators.FINETUNED} | \
        {a: L.ldm / checkpoints.ablation_folder(c) / "best" for a, c in ABLATIONS.items()}
    for name in man["models"]:
        src = weights / name / "model" if name == "judge" else weights / name
        atomic_dir(lambda tmp, src=src: shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("README.md")),
                   where[name])
    write_json(L.ldm / "restored.json", {"from": str(weights), "commit": man["commit"],
                                         "command": man["command"]})
    return man


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m discnb.grading.shipped",
                                 description="restore the shipped models where notebooks 03-07 read them")
    ap.add_argument("action", choices=["restore", "check"])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--weights", default="", help="default: weights/<profile>")
    ap.add_argument("--no-data", action="store_true",
                    help="check: skip the comparison with notebook 00's data (before it has run)")
    a = ap.parse_args(argv)
    dlogging.disable_progress_bar()  # "Loading pipeline components" bars for each tiny folder: noise in run_all's log
    try:
        if a.action == "restore":
            man = restore(a.profile, paths.resolve(a.weights) if a.weights else None)
            print(f"restored {sorted(man['models'])} (commit {man['commit'][:12]}) into {paths.output_dir(a.profile)}")
        else:
            P01 = params.check_file("01_train_ldm", paths.PARAMS / a.profile / "01_train_ldm.yaml")
            check_shipped(a.profile, paths.resolve(a.weights) if a.weights else paths.weights_dir(a.profile, create=False),
                          P01, data=not a.no_data)
            print("the shipped models fit this checkout")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0



def _shown(p: Path) -> str:
    """A path as the model card shows it: relative to the repository when inside it."""
    try:
        return str(p.resolve().relative_to(paths.REPO))
    except ValueError:
        return str(p)


def _adherence_text(adh: dict) -> str:
    if not adh:
        return "not measured (notebook 02's adherence.csv was not there)."
    return "; ".join(f"{m} masks {v['mean_iou']:.3f} (normalized {v['normalized']:.3f}, {v['seeds']} seed(s))"
                     for m, v in adh.items()) + "."


def fp16_effect(ldm_dir: Path, folder: Path, judge_dir: Path, masks: np.ndarray, steps: int,
                batch_size: int = 16) -> dict:
    """The judge's mean IoU of SD's tiles from notebook 01's fp32 weights and from the shipped ``folder``
    (fp16-rounded), same masks and seeds: what fp16 storage changes."""
    ctx = generators.GeneratorContext(ldm_dir=Path(ldm_dir), image_size=masks.shape[-1], steps=steps,
                                      batch_size=batch_size)
    judge = jg.load_judge(judge_dir)
    seeds = list(range(len(masks)))
    ref = generators.build_generator("SD", ctx)[0].generate(masks, seeds)
    pipe = pl.load_pipeline(folder)
    shipped = pipe.sampler(num_inference_steps=steps, batch_size=batch_size).generate(masks, seeds)
    a, b = judge(ref, masks)["mean_iou"], judge(shipped, masks)["mean_iou"]
    diff = np.abs(ref.astype(int) - shipped.astype(int))
    return {"n_masks": len(masks), "steps": steps, "fp32_mean_iou": a, "shipped_mean_iou": b,
            "pixel_max_abs_diff": int(diff.max()), "pixel_mean_abs_diff": float(diff.mean())}


if __name__ == "__main__":
    sys.exit(main())
