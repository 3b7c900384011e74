"""Many small models (heads, decoders, tuned encoders) trained in one Ray Train run.

Downstream evaluation trains a grid of small models: method × label fraction × seed.
Each is too small for data parallelism, so the grid itself is split: Ray Train starts
``workers`` processes and worker ``rank`` trains ``cells[rank::workers]``. Each finished
cell is written atomically to ``RUN/cells/<key>.json``; a rerun skips finished cells, so
a crash or kill costs at most the cells in flight.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from adaptor.atomic import atomic_write_json
from adaptor.errors import AdaptorError
from adaptor.train.ray_env import cpus_per_worker, start_ray

TrainFn = Callable[["GridCell", dict[str, Any]], dict[str, Any]]


class GridError(AdaptorError, RuntimeError):
    """A cell of the grid failed; the message names it and the cause."""


@dataclass(frozen=True)
class GridCell:
    """One model to train: a unique, file-safe ``key`` and the JSON-able ``params`` it needs."""

    key: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)


def cell_path(run_dir: Path, key: str) -> Path:
    """Where a finished cell's result lives."""
    return Path(run_dir) / "cells" / f"{key}.json"


def run_grid(
    cells: Sequence[GridCell],
    train_fn: TrainFn,
    *,
    shared: dict[str, Any],
    run_dir: Path,
    workers: int = 1,
    address: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
    desc: str = "train",
) -> dict[str, dict[str, Any]]:
    """Train every cell not finished yet with ``train_fn(cell, shared)`` under Ray Train.

    ``train_fn`` must be a module-level function (it is pickled to the workers) returning a
    JSON-able dict. Returns ``{key: result}`` for every cell, finished earlier or now.
    """
    run_dir = Path(run_dir).resolve()
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise GridError("grid cells must have unique keys")
    todo = [c for c in cells if not cell_path(run_dir, c.key).is_file()]
    if len(todo) < len(cells):
        log(f"{len(cells) - len(todo)} of {len(cells)} {desc} cells already done in {run_dir}")
    if todo:
        _fit(todo, train_fn, shared, run_dir, workers, address, progress, desc)
    return {c.key: json.loads(cell_path(run_dir, c.key).read_text()) for c in cells}


def _fit(
    todo: list[GridCell],
    train_fn: TrainFn,
    shared: dict[str, Any],
    run_dir: Path,
    workers: int,
    address: str | None,
    progress: bool,
    desc: str,
) -> None:
    start_ray(address)
    import ray.train
    from ray.train.torch import TorchTrainer

    workers = max(1, min(workers, len(todo)))
    threads = cpus_per_worker(workers, use_gpu=False)
    (run_dir / "cells").mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "cells": [(c.key, c.params) for c in todo],
            "train_fn": train_fn,
            "shared": shared,
            "run_dir": str(run_dir),
            "threads": threads,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=False, resources_per_worker={"CPU": threads}
        ),
        run_config=ray.train.RunConfig(
            name="grid",
            storage_path=str(run_dir / "ray"),
            failure_config=ray.train.FailureConfig(max_failures=1),
        ),
    )
    stop = threading.Event()
    watcher = threading.Thread(
        target=_watch, args=(run_dir, [c.key for c in todo], stop, progress, desc), daemon=True
    )
    watcher.start()
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as err:
        failures = getattr(err, "worker_failures", None) or {}
        cause = next(iter(failures.values()), err)
        raise GridError(
            f"{desc} failed: {type(cause).__name__}: {cause}\n"
            f"finished cells are kept in {run_dir / 'cells'}; rerun to resume"
        ) from err
    finally:
        stop.set()
        watcher.join()


def _watch(run_dir: Path, keys: list[str], stop: threading.Event, enabled: bool, desc: str) -> None:
    """Driver-side progress bar, counting finished cell files."""
    bar = tqdm(total=len(keys), unit="model", desc=desc, dynamic_ncols=True, disable=not enabled)
    while True:
        finished = stop.wait(1.0)
        bar.n = sum(cell_path(run_dir, k).is_file() for k in keys)
        bar.refresh()
        if finished:
            bar.close()
            return


def _worker_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: train this rank's share of the cells, one result file each."""
    import ray.train
    import torch

    torch.set_num_threads(config["threads"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    run_dir = Path(config["run_dir"])
    for key, params in config["cells"][rank::world]:
        path = cell_path(run_dir, key)
        if path.is_file():  # finished by an earlier attempt of this run
            continue
        started = time.perf_counter()
        result = config["train_fn"](GridCell(key, params), config["shared"])
        result.setdefault("extra", {})["train_seconds"] = round(time.perf_counter() - started, 3)
        atomic_write_json(path, result)


def setup_key(shared: dict[str, Any], files: Sequence[Path] = ()) -> str:
    """A short hash of a grid's shared setup and the bytes of ``files`` (those that exist),
    naming its run folder, so a rerun of the same setup finds its finished cells."""
    digest = hashlib.sha256(json.dumps(shared, sort_keys=True).encode())
    for path in files:
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:10]
