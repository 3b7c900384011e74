"""The downstream grid: many small models (method × label fraction × seed), one Ray task each.

A task module (classification, segmentation, encoder tuning) plans its cells and the
``shared`` setup they have in common, and gives two module-level functions (they are
pickled to the Ray workers): ``prepare(shared)``, the data every cell of the setup needs,
made once per worker process (:func:`prepared`), and ``train(cell, shared, data)``, one
cell's model and its JSON-able result. The driver submits the cells not finished yet as
Ray tasks, at most ``workers`` at a time, and writes each result atomically to
``RUN/cells/<key>.json`` as it arrives; a rerun skips finished cells.

Why Ray tasks and not one Ray Train ``TorchTrainer`` per grid: the cells are independent
(no gradient or data crosses between them) and small (a head or decoder trains in
seconds), so data parallelism buys nothing, and they should fail alone. Under one
``TorchTrainer`` a failing cell failed the whole fit and its retry restarted every
worker. As tasks, a cell is retried once on its own (``max_retries``,
``retry_exceptions``); one that still fails is written to ``RUN/failed/<key>.json`` with
its error and reported, the other cells finish, and :class:`GridError` names the failed
ones at the end (a rerun retries only those). A task is also the unit of work a
cluster-wide study grid (datasets × encoder pairs × cells) schedules.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from adaptor.atomic import atomic_write_json
from adaptor.errors import AdaptorError
from adaptor.ray_env import cpus_per_worker, start_ray

CELL_RETRIES = 1  # a failed cell runs once more before it is reported


class GridError(AdaptorError, RuntimeError):
    """Cells of the grid failed; the message names each with its error."""


@dataclass(frozen=True)
class GridCell:
    """One model to train: a unique, file-safe ``key`` and the JSON-able ``params`` it needs."""

    key: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class GridTask:
    """What a task module gives the grid; both functions must be module-level (pickled)."""

    name: str  # names the progress bar and the messages, e.g. "classification heads"
    prepare: Callable[[dict[str, Any]], Any]
    train: Callable[[GridCell, dict[str, Any], Any], dict[str, Any]]


def plan_cells(
    methods: Mapping[str, dict[str, Any]], fractions: Sequence[float], seeds: Sequence[int]
) -> list[GridCell]:
    """One cell per method × fraction × seed, keyed ``<method>__<fraction>__seed<seed>``.

    ``methods`` maps each method's key part to the params its cells carry beside
    ``fraction`` and ``seed``.
    """
    return [
        GridCell(
            key=f"{name}__{fraction:g}__seed{seed}",
            params={**params, "fraction": fraction, "seed": seed},
        )
        for name, params in methods.items()
        for fraction in fractions
        for seed in seeds
    ]


def setup_key(shared: dict[str, Any], files: Sequence[Path] = ()) -> str:
    """A short hash of a grid's shared setup and the bytes of ``files`` (those that exist),
    naming its run folder, so a rerun of the same setup finds its finished cells."""
    digest = hashlib.sha256(json.dumps(shared, sort_keys=True).encode())
    for path in files:
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def cell_path(run_dir: Path, key: str) -> Path:
    """Where a finished cell's result lives."""
    return Path(run_dir) / "cells" / f"{key}.json"


def failure_path(run_dir: Path, key: str) -> Path:
    """Where a cell that failed after its retry is recorded (until a rerun finishes it)."""
    return Path(run_dir) / "failed" / f"{key}.json"


def run_grid(
    cells: Sequence[GridCell],
    task: GridTask,
    *,
    shared: dict[str, Any],
    run_dir: Path,
    workers: int = 1,
    address: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
) -> dict[str, dict[str, Any]]:
    """Train every cell of ``run_dir`` not finished yet, each as a Ray task.

    Returns ``{key: result}`` for every cell, finished earlier or now; raises
    :class:`GridError` after the other cells finished when some failed.
    """
    run_dir = Path(run_dir).resolve()
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise GridError("grid cells must have unique keys")
    todo = [c for c in cells if not cell_path(run_dir, c.key).is_file()]
    if len(todo) < len(cells):
        log(f"{len(cells) - len(todo)} of {len(cells)} {task.name} cells already done in {run_dir}")
    if todo:
        failed = _submit(todo, task, shared, run_dir, workers, address, progress, log)
        if failed:
            listed = "\n".join(f"  {key}: {error}" for key, error in failed.items())
            raise GridError(
                f"{task.name}: {len(failed)} of {len(todo)} cells failed:\n{listed}\n"
                f"finished cells are kept in {run_dir / 'cells'}; rerun to retry the failed ones"
            )
    return {c.key: json.loads(cell_path(run_dir, c.key).read_text()) for c in cells}


def _submit(
    todo: list[GridCell],
    task: GridTask,
    shared: dict[str, Any],
    run_dir: Path,
    workers: int,
    address: str | None,
    progress: bool,
    log: Callable[[str], None],
) -> dict[str, str]:
    """Run ``todo`` with at most ``workers`` tasks in flight; return ``{key: error}`` of failures."""
    start_ray(address)
    import ray

    workers = max(1, min(workers, len(todo)))
    threads = cpus_per_worker(workers, use_gpu=False)
    remote = ray.remote(_run_cell).options(
        num_cpus=threads, max_retries=CELL_RETRIES, retry_exceptions=True
    )
    shared_ref = ray.put(shared)
    queue, pending, failed = list(todo), {}, {}
    with tqdm(
        total=len(todo), unit="model", desc=task.name, dynamic_ncols=True, disable=not progress
    ) as bar:
        while queue or pending:
            while queue and len(pending) < workers:
                cell = queue.pop(0)
                ref = remote.remote(task, cell, shared_ref, run_dir.name, threads)
                pending[ref] = cell
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as err:  # the cell's own error (after its retry) or a lost worker
                failed[cell.key] = _record_failure(run_dir, cell, err)
                log(f"{task.name}: cell {cell.key} failed: {failed[cell.key]}")
            else:
                atomic_write_json(cell_path(run_dir, cell.key), result)
                failure_path(run_dir, cell.key).unlink(missing_ok=True)
            bar.update(1)
    return failed


def _record_failure(run_dir: Path, cell: GridCell, err: Exception) -> str:
    """Write ``RUN/failed/<key>.json``; return ``Type: message`` of the cell's error (Ray
    wraps what a task raised: its ``cause``), or of Ray's own (a lost worker)."""
    cause = getattr(err, "cause", None) or err
    error = f"{type(cause).__name__}: {cause}"
    record = {"key": cell.key, "params": cell.params, "error": error, "details": str(err)}
    atomic_write_json(failure_path(run_dir, cell.key), record)
    return error


# ---------------------------------------------------------------- worker side

_PREPARED: dict[str, Any] = {}  # this process's prepared data: {setup: data}, one setup at a time


def prepared(setup: str, prepare: Callable[[dict[str, Any]], Any], shared: dict[str, Any]) -> Any:
    """``prepare(shared)``, made once per process for the setup named ``setup``.

    Only the newest setup is kept, so a worker that moves on to another grid (say from
    classification to segmentation) frees the first one's data.
    """
    if setup not in _PREPARED:
        _PREPARED.clear()
        _PREPARED[setup] = prepare(shared)
    return _PREPARED[setup]


def _run_cell(
    task: GridTask, cell: GridCell, shared: dict[str, Any], setup: str, threads: int
) -> dict[str, Any]:
    """One Ray task: the setup's data (once per process), then the cell's model."""
    import torch

    torch.set_num_threads(threads)
    data = prepared(setup, task.prepare, shared)
    started = time.perf_counter()
    result = task.train(cell, shared, data)
    result.setdefault("extra", {})["train_seconds"] = round(time.perf_counter() - started, 3)
    return result
