"""One code path per stage: on the smoke profile, each notebook and ``python -m discnb.pipelines.<stage>``
write the same files, with the same content wherever the content is deterministic.

The notebook side is what the notebooks left in ``outputs/smoke/`` and ``figures/smoke/``: the nbval
run of ``./run_all.sh test`` (the root conftest.py orders this module after the notebooks), or
``./run_all.sh``. The module side runs each stage with ``python -m`` into a temporary outputs root
(``DISCNB_OUTPUTS``/``DISCNB_FIGURES``, read by :mod:`discnb.core.paths`), after copying the notebook
side's folders of every other stage there as its inputs, so each stage is compared on the same
inputs and none is trained twice for nothing. Compared: the stage's output folders, its figures
(``figures/smoke/NN_*``) and the result tables it writes (``outputs/smoke/results/``; the module side's
go to ``<figures>/results/smoke/``). A missing notebook output is a failure, never a skip.

Names: TensorBoard's (accelerate's ``log_with``) are normalised before comparing: its event files
(``events.out.tfevents.<time>.<host>.<pid>.<n>``) carry a time stamp and a process id, and the
hyperparameter run it adds under ``logs/<run>/`` is a folder named by ``time.time()``. Nothing else.

Content: every file's SHA-1 is compared after these normalisations, all of things that are not results:

- the two runs' output roots, written into text files (``data_dir``, index paths, model cards), read as
  ``<outputs>`` and ``<figures>`` (also where the notebook side writes them relative to the repository);
  and the hashes of files that hold such a path or a timing (:data:`DERIVED_HASH_KEY`: diffusers writes the
  folder it loaded from into a config's ``_name_or_path``); the files themselves are compared;
- the git commit (and ``-dirty``) the stage ran at;
- timings and clocks: in JSON and YAML files the keys :data:`TIMING_KEY` matches (wall seconds, rates per
  second, ``time_utc``), in CSV files the columns it matches (``elapsed_s`` of training metrics) and the
  rows whose ``metric`` it matches (``sec_per_tile`` of a long table), in
  ``.npz`` files the arrays it matches and the same keys of a JSON ``meta`` (other arrays by value);
- the order of a ``.safetensors`` header's metadata, which the library writes in hash-map order (tensors
  are compared by name, dtype, shape and bytes);
- files whose whole content is volatile (:data:`NOT_COMPARED`, each with its reason): names only.

Everything else is byte-compared: models (weights, optimizer and RNG states), tiles, masks, shape maps, metrics,
tables and figures. The stages train and sample from fixed seeds, so a notebook and its module give the same
bytes on one machine at one thread count (seen for every stage of the smoke profile, one thread).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NB_OUTPUTS = REPO / "outputs" / "smoke"
NB_FIGURES = REPO / "figures" / "smoke"

# notebook -> (pipeline module, its folders under outputs/<profile>/, its tables in the results folder)
STAGES = {
    "00_data_prep": ("prep", ["data"], []),
    "01_train_ldm": ("train_ldm", ["ldm", "judge", "judge-real"], ["judge.json"]),
    "02_sc_disc": ("sc_disc", ["disc"], ["adherence.csv", "adherence_ranking.csv"]),
    "03_tile_sets": ("tilesets", ["tilesets"], []),
    "04_carcinonet": ("train_carcinonet", ["carcinonet"], []),
    "05_transmil_sweep": ("transmil_sweep", ["mil"], []),
    "06_figures": ("paper_figures", ["figures"], ["adherence_table.csv", "mil_best_lambda.csv", "carcinonet_table.csv"]),
    "07_generate_from_masks": ("from_masks", ["generate", "weights"], []),
}
VOLATILE = [(re.compile(r"events\.out\.tfevents\.[^/]+$"), "events.out.tfevents.*"),
            (re.compile(r"(?<=/logs/)(.+/)?\d{9,}\.\d+(?=/)"), r"\g<1><time>")]
# keys (JSON, YAML) and columns (CSV) that hold a clock reading or a duration, and rates derived from one
TIMING_KEY = re.compile(r"seconds|(^|_)s$|sec_per_|_per_s$|elapsed|^time_utc$|^time_ratio$")
# keys (JSON) whose value is a hash of files that hold a path or a timing: a diffusers config's
# ``_name_or_path`` and a model card's load line (weights/MANIFEST.json), a model folder with its training
# log (``model_hash`` of generated tiles, a fine-tuned generator's ``fingerprint``)
DERIVED_HASH_KEY = re.compile(r"(^|/)config\.json$|(^|/)README\.md$|^model_hash$|^fingerprint$")
COMMIT = re.compile(r"\b[0-9a-f]{40}(-dirty)?\b")  # the checkout's state when the stage ran, not a result
# a path under the repository written relative to it (the notebook side), as the module side's absolute one reads
RELATIVE_ROOT = re.compile(r"(?<![\w/.<-])(outputs|figures)/")
NOT_COMPARED = [
    (re.compile(r"(^|/)provenance\.json$"), "when and where the run happened: time, git commit, host, versions"),
    (re.compile(r"events\.out\.tfevents\.\*$"), "TensorBoard events: wall time of every logged scalar"),
    (re.compile(r"/logs/.*hparams\.yml$"), "TensorBoard's hyperparameter run, written under a time-named folder"),
]


def file_list(root: Path) -> list[str]:
    """Relative paths of every file under ``root``, volatile names normalised, sorted."""
    return sorted(fingerprints(root, {}))


def _drop_timings(x):
    if isinstance(x, dict):
        return {k: _drop_timings(v) for k, v in x.items()
                if not (isinstance(k, str) and (TIMING_KEY.search(k) or DERIVED_HASH_KEY.search(k)))}
    if isinstance(x, list):
        return [_drop_timings(v) for v in x]
    return x


def _normalised_text(text: str, roots: dict[str, str], kind: str) -> str:
    for root, name in roots.items():
        text = text.replace(root, name)
    text = COMMIT.sub("<commit>", RELATIVE_ROOT.sub(r"<\1>/", text))
    if kind == ".json":
        return json.dumps(_drop_timings(json.loads(text)), sort_keys=True)
    return text


def _normalised_npz(path: Path, roots: dict[str, str]) -> bytes:
    """Arrays by value; a text array holding JSON (a tile set's ``meta``) normalised as a JSON file; arrays
    named like a timing (:data:`TIMING_KEY`) left out."""
    out = {}
    with np.load(path) as z:
        for k in sorted(z.files):
            if TIMING_KEY.search(k):
                continue
            a = z[k]
            if a.dtype.kind == "U" and a.ndim == 0:
                text = str(a)
                out[k] = _normalised_text(text, roots, ".json" if text.startswith("{") else "")
            else:
                out[k] = [a.dtype.str, list(a.shape), hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()]
    return json.dumps(out, sort_keys=True).encode()


def _normalised_safetensors(path: Path) -> bytes:
    """Tensors by name, dtype, shape and bytes, and the metadata as a dict: safetensors writes its header's
    ``__metadata__`` in hash-map order, which changes from one process to the next (an EMA's two entries)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    out = {"__metadata__": header.pop("__metadata__", {})}
    for name, t in header.items():
        a, b = t["data_offsets"]
        out[name] = [t["dtype"], t["shape"], hashlib.sha1(raw[8 + n + a:8 + n + b]).hexdigest()]
    return json.dumps(out, sort_keys=True).encode()


def normalised(path: Path, roots: dict[str, str]) -> bytes:
    """The bytes of ``path`` that must agree between two runs: output roots replaced by their names,
    timing keys and columns dropped (see the module docstring)."""
    if path.suffix == ".npz":
        return _normalised_npz(path, roots)
    if path.suffix == ".safetensors":
        return _normalised_safetensors(path)
    raw = path.read_bytes()
    if path.suffix not in (".json", ".yaml", ".yml", ".csv", ".txt", ".md", ".tex"):
        return raw
    text = _normalised_text(raw.decode(), roots, path.suffix)
    if path.suffix in (".yaml", ".yml"):
        return json.dumps(_drop_timings(yaml.safe_load(text)), sort_keys=True, default=str).encode()
    if path.suffix == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        head = rows[0] if rows else []
        keep = [i for i, c in enumerate(head) if not TIMING_KEY.search(c)]
        m = head.index("metric") if "metric" in head else None
        rows = [r for r in rows[:1]] + [r for r in rows[1:] if m is None or not TIMING_KEY.search(r[m])]
        out = io.StringIO()
        csv.writer(out).writerows([[r[i] for i in keep if i < len(r)] for r in rows])
        return out.getvalue().encode()
    return text.encode()


def fingerprints(root: Path, roots: dict[str, str], names: list[str] | None = None) -> dict[str, str | None]:
    """Normalised relative path -> SHA-1 of the normalised content (None: names only, :data:`NOT_COMPARED`),
    for every file under ``root`` (or the files ``names`` of ``root``)."""
    files = [root / n for n in names] if names is not None else [q for q in root.rglob("*") if q.is_file()]
    out = {}
    for p in sorted(files):
        rel = p.relative_to(root).as_posix()
        for rx, sub in VOLATILE:
            rel = rx.sub(sub, rel)
        skip = any(rx.search("/" + rel) for rx, _ in NOT_COMPARED)
        out[rel] = None if skip else hashlib.sha1(normalised(p, roots)).hexdigest()
    return out


def stage_fingerprints(outputs: Path, figures: Path, results: Path, notebook: str) -> dict[str, dict]:
    _, folders, tables = STAGES[notebook]
    roots = {str(outputs.parent): "<outputs>", str(figures.parent): "<figures>"}
    out = {f"outputs/smoke/{f}": fingerprints(outputs / f, roots) for f in folders}
    out["figures/smoke"] = fingerprints(figures, roots, [p.name for p in figures.glob(f"{notebook[:2]}_*")])
    out["results"] = fingerprints(results, roots, [t for t in tables if (results / t).exists()])
    return out


def differences(nb: dict[str, dict], mod: dict[str, dict]) -> list[str]:
    """What differs between the two sides, one line per folder and kind."""
    def some(names: set[str]) -> str:
        return f"{len(names)} {sorted(names)[:8]}{' ...' if len(names) > 8 else ''}"
    out = []
    for key in nb:
        a, b = nb[key], mod[key]
        if set(a) != set(b):
            out.append(f"{key}: only the notebook wrote {some(set(a) - set(b))}; "
                       f"only the module wrote {some(set(b) - set(a))}")
        changed = {k for k in set(a) & set(b) if a[k] != b[k]}
        if changed:
            out.append(f"{key}: other content in {some(changed)}")
    return out


def test_volatile_names_are_only_tensorboard_events(tmp_path):
    (tmp_path / "sd" / "logs" / "SD").mkdir(parents=True)
    (tmp_path / "sd" / "logs" / "SD" / "events.out.tfevents.1733.host.123.0").write_text("")
    (tmp_path / "sd" / "logs" / "train" / "1796122198.0619843").mkdir(parents=True)
    (tmp_path / "sd" / "logs" / "train" / "1796122198.0619843" / "hparams.yml").write_text("")
    (tmp_path / "sd" / "checkpoint-1796122198.5").mkdir()  # not under logs/: a name to compare
    (tmp_path / "sd" / "checkpoint-1796122198.5" / "a").write_text("")
    (tmp_path / "sd" / "metrics.csv").write_text("")
    assert file_list(tmp_path) == ["sd/checkpoint-1796122198.5/a", "sd/logs/SD/events.out.tfevents.*",
                                   "sd/logs/train/<time>/hparams.yml", "sd/metrics.csv"]


def test_content_differences_are_seen_and_timings_are_not(tmp_path):
    """Two runs that differ only in roots, timings, provenance, TensorBoard events and the order of a
    safetensors header's metadata agree; one other value, in a model, a table or a JSON file, is a difference."""
    from safetensors.numpy import save

    def write(root: Path, secs: float, weight: float, loss: str, flip: bool = False):
        (root / "ldm" / "logs").mkdir(parents=True)
        st = save({"w": np.full(3, weight, np.float32)}, metadata={"n": "1", "decay": "0.9"})
        # each process's hash map picks one order; write both (same length, so the offsets hold)
        orders = [b'{"n":"1","decay":"0.9"}', b'{"decay":"0.9","n":"1"}']
        st = st.replace(orders[1], orders[0]).replace(orders[0], orders[int(flip)])
        (root / "ldm" / "ema.safetensors").write_bytes(st)
        (root / "ldm" / "metrics.csv").write_text(f"step,loss,elapsed_s\n1,{loss},{secs}\n")
        (root / "ldm" / "summary.json").write_text(json.dumps(
            {"data_dir": str(root / "data"), "train_seconds": secs, "steps_per_s": 1 / secs, "best_step": 1,
             "runs": [{"time_utc": f"2026-01-01T00:00:0{int(secs)}Z", "loss": loss}]}))
        (root / "ldm" / "provenance.json").write_text(json.dumps({"time_utc": str(secs)}))
        (root / "ldm" / "logs" / f"events.out.tfevents.{int(secs)}.host.1.0").write_bytes(os.urandom(8))

    def prints(root: Path) -> dict:
        return {"ldm": fingerprints(root / "ldm", {str(root): "<outputs>"})}
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write(a, 1.0, 0.5, "0.5")
    write(b, 7.0, 0.5, "0.5", flip=True)
    assert (a / "ldm" / "ema.safetensors").read_bytes() != (b / "ldm" / "ema.safetensors").read_bytes()
    assert differences(prints(a), prints(b)) == []
    for weight, loss, changed in ((0.25, "0.5", "ema.safetensors"), (0.5, "0.25", "metrics.csv")):
        shutil.rmtree(c, ignore_errors=True)
        write(c, 1.0, weight, loss)
        diff = differences(prints(a), prints(c))
        assert len(diff) == 1 and "other content" in diff[0] and changed in diff[0], diff


@pytest.mark.slow
@pytest.mark.parametrize("notebook", list(STAGES))
def test_notebook_and_module_write_the_same_files(notebook, failed_notebooks, tmp_path):
    module, folders, _ = STAGES[notebook]
    if notebook in failed_notebooks:
        pytest.fail(f"notebooks/{notebook}.ipynb failed in this session: its outputs cannot be compared")
    missing = [f for f in folders if not (NB_OUTPUTS / f).is_dir() or not any((NB_OUTPUTS / f).iterdir())]
    if missing or not (NB_OUTPUTS / folders[0] / "params.resolved.yaml").exists():
        pytest.fail(f"no notebook outputs in {NB_OUTPUTS} for {folders}: run the notebooks first "
                    "(./run_all.sh test runs them before this test)")
    outputs, figures = tmp_path / "outputs", tmp_path / "figures"
    for d in NB_OUTPUTS.iterdir():  # every other stage's outputs are this stage's inputs
        if d.is_dir() and d.name not in folders:
            shutil.copytree(d, outputs / "smoke" / d.name, symlinks=True)
    env = {**os.environ, "DISCNB_OUTPUTS": str(outputs), "DISCNB_FIGURES": str(figures), "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, "-m", f"discnb.pipelines.{module}", "--no-progress"], cwd=REPO, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, f"python -m discnb.pipelines.{module} failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    nb = stage_fingerprints(NB_OUTPUTS, NB_FIGURES, NB_OUTPUTS / "results", notebook)
    mod = stage_fingerprints(outputs / "smoke", figures / "smoke", figures / "results" / "smoke", notebook)
    diff = differences(nb, mod)
    assert not diff, f"{notebook} vs python -m discnb.pipelines.{module}:\n" + "\n".join(diff)
