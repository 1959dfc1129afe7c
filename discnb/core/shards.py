"""Generation and feature extraction over the processes of ``accelerate launch``.

A stage's work is a list of independent *units* numbered by its plan alone (DISC-data shards,
tile-set slide groups, tile chunks); each unit's output depends only on the unit (every tile's
noise comes from its own seed, and a unit's batches are the same whoever computes it). So the
split over processes changes who computes a unit, never what it holds: N processes write the
bytes one process writes, and a run killed at any point resumes with any number of processes.

:func:`run` is the one protocol every sharded stage follows:

1. ``setup()`` on the main process only: check the folder, delete what a killed run left half
   written (``*.tmp*``), fold a killed run's per-process records into the shared manifest;
2. barrier; every process reads the to-do list from the files (``todo()``: units not finished);
   barrier (nobody writes before everyone has read it);
3. each process takes its part of the to-do list (accelerate's
   ``PartialState.split_between_processes``: contiguous, the first processes one more) and calls
   ``work(unit)`` for each; a unit's files are written atomically by the process that owns it,
   and so is that process's own record (``<stem>.rank-K.<ext>``, :func:`rank_path`);
4. when every process is done, ``merge()`` on the main process (records -> one manifest, per-
   process files deleted, so a finished folder holds what a one-process run writes); its return
   value is sent to every process.

The wait in step 4 polls marker files (``<name>.rank-K.done``) before the final barrier, because
a process may finish hours before the slowest one and a collective barrier would time out
(NCCL: 10 min by default). So the output folder must be on a file system every process sees.
Under a plain ``python`` run (one process) there are no barriers and no markers: each step runs
in order, as before.
"""

from __future__ import annotations

import atexit
import time
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from discnb.core import io

U = TypeVar("U")


class Processes:
    """This process's place among the launched ones: ``rank``, ``world``, ``is_main``."""

    def __init__(self, state: PartialState):
        self.state = state

    @property
    def rank(self) -> int:
        return int(self.state.process_index)

    @property
    def world(self) -> int:
        return int(self.state.num_processes)

    @property
    def is_main(self) -> bool:
        return bool(self.state.is_main_process)

    def mine(self, units: Sequence[U]) -> list[U]:
        """This process's part of ``units`` (all of them in one process): a contiguous slice, as
        ``split_between_processes`` cuts it, the same on every process for the same list."""
        with self.state.split_between_processes(list(units)) as part:
            return list(part)

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()

    def broadcast(self, obj):
        """The main process's ``obj`` on every process (a small, picklable object)."""
        if self.world == 1:
            return obj
        box = [obj]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def wait_for_markers(self, folder: Path, name: str, poll: float = 0.5) -> None:
        """Write this process's marker, then wait (without a collective's timeout) until every
        process has written its own."""
        if self.world == 1:
            return
        io.write_text(marker(folder, name, self.rank), "done\n")
        want = [marker(folder, name, r) for r in range(self.world)]
        while not all(p.exists() for p in want):
            time.sleep(poll)


def processes(cpu: bool | None = None) -> Processes:
    """The launched processes (accelerate's ``PartialState``, a singleton: the first call fixes it).

    ``cpu``: run on the CPU (gloo between processes); None = when no GPU is visible. Pass what
    the stage's training uses (``device: cpu`` or no GPU): accelerate sets up several CPU
    processes only when told ``cpu=True``."""
    state = PartialState(cpu=bool(cpu) or not torch.cuda.is_available())
    if state.num_processes > 1:
        atexit.unregister(_close_process_group)  # once, however often a stage asks for its processes
        atexit.register(_close_process_group)
    return Processes(state)


def _close_process_group() -> None:
    """Destroy the process group before the interpreter exits: a gloo group left to the exit can abort
    a process that finished its work ("terminate called without an active exception", SIGABRT), and
    the launcher then reports the whole job failed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def rank_path(folder: Path, stem: str, rank: int, suffix: str) -> Path:
    """Where process ``rank`` keeps its own record: ``<stem>.rank-<rank><suffix>``."""
    return Path(folder) / f"{stem}.rank-{int(rank)}{suffix}"


def rank_paths(folder: Path, stem: str, suffix: str) -> list[Path]:
    """Every process's record (also those of a killed run, whatever its process count), by rank."""
    found = Path(folder).glob(f"{stem}.rank-*{suffix}")
    out = []
    for p in found:
        tail = p.name[len(stem) + len(".rank-"):len(p.name) - len(suffix)]
        if tail.isdigit():
            out.append((int(tail), p))
    return [p for _, p in sorted(out)]


def marker(folder: Path, name: str, rank: int) -> Path:
    return rank_path(folder, name, rank, ".done")


def clear_markers(folder: Path, name: str) -> None:
    for p in rank_paths(folder, name, ".done"):
        p.unlink(missing_ok=True)


def remove_tmp(folder: Path, pattern: str = io.TMP_GLOB) -> None:
    """Delete what a killed writer left (``*.tmp*`` files of :func:`discnb.core.io.atomic_file`)."""
    for p in Path(folder).glob(pattern):
        if p.is_file():
            p.unlink(missing_ok=True)


def on_main(procs: Processes, folder: Path, name: str, fn):
    """``fn()`` on the main process only, while the others wait for it; returns its value on the
    main process, None on the others (one process: just ``fn()``).

    The others wait by marker files (``<folder>/<name>.rank-K.done``, deleted after), not in a
    collective barrier, which would time out (NCCL: 10 min) during a long step. The barriers
    here only meet processes that are already together. If ``fn`` raises, the main process exits
    and the launcher stops the waiting ones."""
    if procs.world == 1:
        return fn()
    folder = Path(folder)
    if procs.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        clear_markers(folder, name)  # a killed run's
    procs.barrier()
    out = fn() if procs.is_main else None
    procs.wait_for_markers(folder, name)
    procs.barrier()
    if procs.is_main:
        clear_markers(folder, name)
    procs.barrier()  # nobody writes the next marker of this name before these are gone
    return out


def run(folder: Path, name: str, *, todo: Callable[[], Sequence[U]], work: Callable[[U], None],
        setup: Callable[[], None] | None = None, merge: Callable[[], object] | None = None,
        start: Callable[[list[U]], None] | None = None, procs: Processes | None = None, poll: float = 0.5):
    """The sharded-work protocol of the module docstring; returns ``merge()``'s value on every
    process (None without ``merge``). ``name`` names the markers in ``folder``; ``start(mine)``,
    if given, sees this process's units before the first ``work`` (e.g. for a progress bar)."""
    procs = procs or processes()
    folder = Path(folder)
    if procs.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        clear_markers(folder, name)  # a killed run's
        if setup is not None:
            setup()
    procs.barrier()
    units = list(todo())
    procs.barrier()
    mine = procs.mine(units)
    if start is not None:
        start(mine)
    for u in mine:
        work(u)
    procs.wait_for_markers(folder, name, poll)
    procs.barrier()
    out = None
    if procs.is_main:
        out = merge() if merge is not None else None
        clear_markers(folder, name)
    return procs.broadcast(out)


__all__ = ["Processes", "processes", "run", "rank_path", "rank_paths", "remove_tmp", "clear_markers"]
