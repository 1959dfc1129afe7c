"""Files that a kill never leaves half written, the fingerprints that key every cache, and local
weight files.

Every artifact is written under a temporary name and renamed into place (a rename is atomic on
one file system), so a stage killed at any moment leaves the previous complete file, or folder, or
the new one: never a truncated one that the next run would take for finished. Caches are keyed by
:func:`fingerprint`, which changes whenever the inputs (settings, weights, data files) do.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file


# ------------------------------------------------------------------------------ atomic writes
def temporary(path: str | Path) -> Path:
    """The temporary name :func:`atomic_file` writes ``path`` under: ``name.tmp.suffix`` (the suffix
    stays, so writers that append one, e.g. ``np.savez``, keep the name). Stray ones match
    :data:`TMP_GLOB`."""
    path = Path(path)
    return path.with_name(f"{path.stem}.tmp{path.suffix}")


TMP_GLOB = "*.tmp*"  # what a killed writer leaves behind (files and folders)


def atomic_file(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` writes the file at a temporary name, which then replaces ``path``."""
    path = Path(path)
    tmp = temporary(path)
    write(tmp)
    os.replace(tmp, path)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_file(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, obj, indent: int = 2) -> Path:
    """``obj`` as JSON (numpy scalars as floats), atomically."""
    return write_text(path, json.dumps(obj, indent=indent, default=float) + "\n")


def atomic_dir(save: Callable[[Path], object], final: str | Path) -> Path:
    """``save(tmp)`` writes a folder under a temporary name, which is then swapped into place (the
    old folder is moved aside first and removed last, so one of the two always exists). A ``save``
    that raises leaves the old folder as it was and no temporary one."""
    final = Path(final)
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------ fingerprints
def _feed(h, part) -> None:
    if isinstance(part, Path):
        files = [part] if part.is_file() else sorted(p for p in part.rglob("*") if p.is_file())
        if not files:
            raise FileNotFoundError(f"{part}: nothing to fingerprint there")
        for p in files:
            if p != part:  # a folder: file names count too
                h.update(str(p.relative_to(part)).encode() + b"\0")
            with p.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    elif isinstance(part, bytes):
        h.update(part)
    elif isinstance(part, str):
        h.update(part.encode())
    else:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    h.update(b"\0")


def fingerprint(*parts, n: int = 16) -> str:
    """The first ``n`` hex digits of a sha1 over ``parts``: a ``Path`` contributes its file's bytes
    (a folder: every file under it, relative name and bytes), ``bytes`` and ``str`` themselves,
    anything else its JSON (sorted keys; ``str()`` of what JSON cannot hold)."""
    h = hashlib.sha1()
    for p in parts:
        _feed(h, p)
    return h.hexdigest()[:n]


# ------------------------------------------------------------------------------ weight files
def load_state_dict(path: str | Path, hint: str = "") -> dict[str, torch.Tensor]:
    """A local state dict: ``.safetensors``, or a torch file read with ``weights_only=True`` (no
    code runs). The wrappers of common checkpoints (``state_dict``, ``model``, ``teacher``) and the
    key prefixes of DDP and of SSL backbones (``module.``, ``backbone.``, ``encoder.``) are
    stripped. ``hint`` completes the error when the file is missing (where to get it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file" + (f". {hint}" if hint else ""))
    sd = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                               weights_only=True)
    for key in ("state_dict", "model", "teacher"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    out = {}
    for k, v in sd.items():
        for pre in ("module.", "backbone.", "encoder."):
            k = k.removeprefix(pre)
        out[k] = v
    return out
