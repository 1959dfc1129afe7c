"""Follow the params object through a stage: which discnb files a reader visits, and how often the path
jumps from one file to another or back up a layer.

    python tools/trace_params.py [--work DIR]

Runs notebooks 00, 01 and 02 at the smoke profile (their parameters cells' defaults, recorded where
the command line records them: ``outputs/smoke/{ldm,disc}``) in a fresh ``DISCNB_OUTPUTS`` /
``DISCNB_FIGURES`` folder, tracing ``train_ldm.run`` and ``sc_disc.compare``
(notebook 02's other steps run untraced: ``compare`` needs their models). Every call of a discnb
function that receives a validated params object (a ``discnb.core.params.Params``: the stage's ``P``
or the notebook-01 parameters a later stage reloads) is one step of the path; the step's file is
where that function is defined. Reported per traced call:

- ``files``: distinct discnb files on the path;
- ``moves``: consecutive steps in different files;
- ``up``: moves whose file sits in a higher layer than the one before
  (core < data < generative < grading < pipelines; ``discnb/plots.py`` and ``discnb/generate.py``,
  outside the layers, count as moves but neither up nor down);
- ``distinct``: the same, counting each (from file, to file) pair once.

A method of the params object itself (``P.x`` goes through ``Params.__getattr__``) is not a step.

Uses only ``run`` / ``compare`` and the modules' ``main``, so the same script measures any commit
(``PYTHONPATH`` picks the tree). It writes nothing outside ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

LAYERS = ("core", "data", "generative", "grading", "pipelines")


def layer(rel: str) -> int | None:
    parts = rel.split("/")
    return LAYERS.index(parts[1]) if len(parts) > 2 and parts[1] in LAYERS else None


class ParamsPath:
    """A profile hook that records the file of every discnb call receiving a Params object."""

    def __init__(self, pkg: Path, params_type: type):
        self.pkg, self.params_type, self.steps = str(pkg), params_type, []

    def __call__(self, frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        if not code.co_filename.startswith(self.pkg):
            return
        names = [n for n in code.co_varnames[:code.co_argcount + code.co_kwonlyargcount] if n != "self"]
        if any(isinstance(frame.f_locals.get(n), self.params_type) for n in names):  # P.x lookups are not steps
            rel = os.path.relpath(code.co_filename, os.path.dirname(self.pkg))
            self.steps.append((rel, code.co_name))

    def traced(self, fn, *args, **kwargs):
        sys.setprofile(self)
        try:
            return fn(*args, **kwargs)
        finally:
            sys.setprofile(None)

    def summary(self) -> dict:
        return summarize([f"{f}:{fn}" for f, fn in self.steps])


def summarize(path: list[str]) -> dict:
    """Counts of a recorded path of ``file:function`` steps (also for a stored ``--json``)."""
    files = [p.split(":")[0] for p in path]
    moves = [(a, b) for a, b in zip(files, files[1:]) if a != b]
    up = [(a, b) for a, b in moves if layer(a) is not None and layer(b) is not None and layer(b) > layer(a)]
    return {"calls": len(files), "files": len(set(files)), "moves": len(moves), "up": len(up),
            "distinct_moves": len(set(moves)), "distinct_up": len(set(up)), "file_list": sorted(set(files)), "path": path}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", help="folder for the smoke outputs (default: a new temporary folder)")
    ap.add_argument("--json", help="also write the full paths here")
    a = ap.parse_args(argv)
    work = Path(a.work or tempfile.mkdtemp(prefix="trace_params_"))
    os.environ["DISCNB_OUTPUTS"] = str(work / "outputs")  # before discnb.core.paths is imported
    os.environ["DISCNB_FIGURES"] = str(work / "figures")

    import discnb
    from discnb.core import params
    from discnb.core.notebook import record, seed_everything
    from discnb.pipelines import prep, sc_disc, train_ldm

    pkg = Path(discnb.__file__).resolve().parent
    print(f"discnb from {pkg}; outputs in {work}", flush=True)
    prep.main(["--no-progress"])
    out = {}
    P01 = params.validate(train_ldm.NOTEBOOK, {})
    seed_everything(P01.seed)
    record(work / "outputs" / "smoke" / "ldm", P01, train_ldm.NOTEBOOK)  # as the command line does
    t = ParamsPath(pkg, params.Params)
    t.traced(train_ldm.run, P01, progress=False)
    out["train_ldm.run"] = t.summary()
    P02 = params.validate(sc_disc.NOTEBOOK, {})
    seed_everything(P02.seed)
    record(work / "outputs" / "smoke" / "disc", P02, sc_disc.NOTEBOOK)
    data = sc_disc.make_disc_data(P02, progress=False)
    sc_disc.finetune_all(P02, data, progress=False)
    t = ParamsPath(pkg, params.Params)
    t.traced(sc_disc.compare, P02, progress=False)
    out["sc_disc.compare"] = t.summary()
    for name, s in out.items():
        print(f"{name}: {s['calls']} calls with a params object, {s['files']} files, {s['moves']} moves between "
              f"files ({s['distinct_moves']} distinct), {s['up']} of them up a layer ({s['distinct_up']} distinct)")
        print("  files: " + ", ".join(s["file_list"]))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
