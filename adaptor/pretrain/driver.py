"""The pretraining driver: checks, one Ray Train ``TorchTrainer``, the run's outputs.

:func:`pretrain` checks the shards and the cluster, then runs the workers'
:func:`~adaptor.pretrain.loop.train_loop`. Each worker holds its disjoint share of the
training shards in memory (kilobytes per sample), so data loading never limits a step.
The loss all-gathers embeddings with gradients, so W workers at batch B train like
one worker at batch W·B. A rerun of the same command resumes from the newest
checkpoint under ``RUN/ray/``; a rerun of a finished run returns its outputs at once,
without starting Ray. Shards without ``val`` records get a val split carved from
``train`` (:func:`adaptor.data.splits.carve_val`); where none can be carved, training
runs without val and keeps the last epoch.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from tqdm import tqdm

from adaptor.atomic import atomic_write_json
from adaptor.config import ModelOptions, PretrainOptions
from adaptor.data.splits import VAL_CARVE_FRACTION, ValCarve, carve_val
from adaptor.errors import AdaptorError
from adaptor.model.adaptor import CONFIG_NAME, WEIGHTS_NAME
from adaptor.pretrain.loop import (
    SELECTION,
    STATE_FILE,
    Fault,
    newest_checkpoint,
    train_loop,
)
from adaptor.ray_env import cpus_per_worker, start_ray
from adaptor.remote import ray_storage, uri_of
from adaptor.shards import ShardReader
from adaptor.shards.manifest import Manifest

LAST_EPOCH = "last epoch (no val records)"  # metrics.json "selected_by" when nothing chooses
VAL_MIN_PAIRS = 2  # a carved val split holds at least this many pairs: one pair ranks nothing
# options that do not change what a run trains, so they may differ on a rerun of a finished run
_NOT_OPTIONS = {
    "shards",  # its content counts instead (shards_sha256), not where it lies
    "out",
    "address",
    "use_gpu",
    "max_failures",
    "checkpoint_every_steps",
}


class PretrainError(AdaptorError, RuntimeError):
    """Pretraining cannot start or did not finish; the message says why and what was kept."""


class PretrainConfig(PretrainOptions):
    """One ``adaptor pretrain`` run: the :class:`~adaptor.config.PretrainOptions`, the shards
    it reads and the run folder it writes."""

    shards: str
    out: str


@dataclass
class PretrainResult:
    """Where the outputs are and the final figures."""

    run_dir: Path
    adaptor_dir: Path
    metrics: dict[str, Any]


def pretrain(
    cfg: PretrainConfig,
    *,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
    fault: Fault | None = None,
) -> PretrainResult:
    """Train (or resume) the Adaptor on ``cfg.shards``; write weights, metrics and a plot to ``cfg.out``.

    A run that already finished with the same options and shards is returned as it is,
    without starting Ray or touching its files. ``fault`` is injected into every worker's
    loop (see :data:`~adaptor.pretrain.loop.Fault`).
    """
    run_dir = Path(cfg.out).resolve()
    shards = Path(cfg.shards).resolve()
    reader = ShardReader(shards)
    if len(reader.paths) < cfg.workers:
        raise PretrainError(
            f"{cfg.workers} workers need at least as many shards; {shards} has {len(reader.paths)}"
        )
    missing = [m for m in ("image", "text") if m not in reader.manifest.members]
    if missing:
        raise PretrainError(
            f"{shards} holds no {' or '.join(missing)} embeddings (embedded with "
            f"--{missing[0]}-encoder none); pretraining needs paired shards"
        )
    options = _options(cfg, reader.manifest)
    saved = newest_checkpoint(run_dir / "ray" / "pretrain", torch.device("cpu"), mmap=True)
    done = _finished_outputs(run_dir, saved, options)
    if done is not None:
        log(
            f"pretraining in {run_dir} already finished ({cfg.epochs} epochs, same options and "
            "shards): nothing to do"
        )
        return done
    scan = _scan(reader, cfg.workers)
    if scan.bad:
        log(f"skipping {scan.bad} record(s) whose embeddings are NaN or Inf")
    n_train = len(scan.train)
    if n_train == 0:
        raise PretrainError(f"no training samples (split 'train') in {shards}")
    if cfg.batch_size * cfg.workers > n_train:
        raise PretrainError(
            f"batch size {cfg.batch_size} × {cfg.workers} worker(s) exceeds the {n_train} training samples in {shards}; "
            "use a smaller --batch-size"
        )
    if not _every_rank_has_a_batch(scan, cfg):
        raise PretrainError(
            f"some of the {cfg.workers} workers get fewer than {cfg.batch_size} training samples "
            f"from their shards in {shards}; use fewer --workers or a smaller --batch-size"
        )
    carve, val = _val_split(scan, cfg, shards, log)

    start_ray(cfg.address)
    import ray.train
    from ray.train.torch import TorchTrainer

    use_gpu = bool(cfg.use_gpu) if cfg.use_gpu is not None else torch.cuda.is_available()
    threads = cpus_per_worker(cfg.workers, use_gpu)
    run_dir.mkdir(parents=True, exist_ok=True)
    loop_config = {
        **cfg.model_dump(),
        "shards": uri_of(shards),  # a remote folder's URI: each worker opens its node's copy
        "out": uri_of(run_dir),
        "threads": threads,
        "encoders": reader.manifest.encoders,
        "val_carve": asdict(carve) if carve else None,
        "fault": fault,
    }
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker={"CPU": threads}
        ),
        run_config=ray.train.RunConfig(
            name="pretrain",
            **ray_storage(run_dir / "ray"),  # checkpoints on the remote itself, if any
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    if saved is not None:
        state = saved["state"]
        if state["epoch"] < cfg.epochs:
            log(
                f"resuming {run_dir} from its newest checkpoint (epoch {state['epoch']}, "
                f"step {state['global_step']})"
            )
        else:
            log(f"{run_dir} holds {state['epoch']} trained epochs: writing their outputs")
    try:
        with _EpochProgress(run_dir / "metrics.jsonl", cfg.epochs, enabled=progress):
            result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        raise PretrainError(
            f"pretraining failed: {_root_cause(err)}\ncheckpoints kept in {run_dir / 'ray'}"
        ) from err
    return _write_outputs(run_dir, result.checkpoint, options=options, val=val)


@dataclass
class _Scan:
    """What one pass over the shards tells the driver about the usable (finite) records."""

    train: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (rank, meta)
    val: int = 0
    bad: int = 0


def _scan(reader: ShardReader, workers: int) -> _Scan:
    """Each usable train record with the worker rank that reads it; val and NaN/Inf counts."""
    scan = _Scan()
    for rank in range(workers):
        for sample in reader.samples(rank=rank, world_size=workers):
            split = sample["meta"].get("split")
            if split not in ("train", "val"):
                continue
            if not all(np.isfinite(sample[m]).all() for m in ("image", "text")):
                scan.bad += 1
            elif split == "train":
                scan.train.append((rank, sample["meta"]))
            else:
                scan.val += 1
    return scan


def _every_rank_has_a_batch(
    scan: _Scan, cfg: PretrainConfig, carve: ValCarve | None = None
) -> bool:
    """Whether each worker keeps a full batch of training records (after ``carve``)."""
    kept = Counter(r for r, meta in scan.train if carve is None or not carve.holds(meta))
    return all(kept[r] >= cfg.batch_size for r in range(cfg.workers))


def _val_split(
    scan: _Scan, cfg: PretrainConfig, shards: Path, log: Callable[[str], None]
) -> tuple[ValCarve | None, dict[str, Any]]:
    """The val carve (None: the shards' own val split, or none possible) and its metrics.json entry."""
    if scan.val:
        return None, {"source": "split", "records": scan.val}
    carve = carve_val(
        [meta for _, meta in scan.train],
        cfg.seed,
        min_records=VAL_MIN_PAIRS,
        fits=lambda c: _every_rank_has_a_batch(scan, cfg, c),
    )
    if carve is None:
        log(
            f"no val records in {shards}, and too few training patients to carve a val split "
            f"that leaves every worker a batch of {cfg.batch_size}: training without val, "
            "so no val metrics, and the last epoch is kept"
        )
        return None, {"source": "none", "records": 0}
    log(
        f"no val records in {shards}: {carve.describe()}, about "
        f"{VAL_CARVE_FRACTION:.0%} of the patients; its {cfg.select_by.replace('_', ' ')} "
        "chooses the best epoch"
    )
    return carve, {
        "source": "carved",
        "records": carve.records,
        "patients": carve.patients,
        "train_patients": carve.train_patients,
        "seed": carve.seed,
    }


def _options(cfg: PretrainOptions, manifest: Manifest) -> dict[str, Any]:
    """What makes two runs the same: the training options and the shards' content."""
    content = [manifest.encoders, [(s.name, s.sha256) for s in manifest.shards]]
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return {**cfg.model_dump(exclude=_NOT_OPTIONS), "shards_sha256": digest}


def _effective(stored: dict[str, Any]) -> dict[str, Any] | None:
    """A run folder's recorded ``options`` as :func:`_options` writes them today (None: not
    options at all). Folders from before the options had a ``model`` section recorded the
    shape beside them and the loss weight as ``image_weight`` (image→text): read the same."""
    stored = dict(stored)
    if "image_weight" in stored:
        stored["t2i_weight"] = 1 - stored.pop("image_weight")
    shape = {k: stored.pop(k) for k in ModelOptions.model_fields if k in stored}
    if shape:
        stored["model"] = {**shape, **stored.get("model", {})}
    digest = stored.pop("shards_sha256", None)
    try:
        options = PretrainOptions.model_validate(stored)
    except ValidationError:
        return None
    return {**options.model_dump(exclude=_NOT_OPTIONS), "shards_sha256": digest}


def _finished_outputs(
    run_dir: Path, saved: dict[str, Any] | None, options: dict[str, Any]
) -> PretrainResult | None:
    """The outputs of ``run_dir`` if its newest checkpoint ends the run and they were written
    from it with the same ``options``; else None."""
    if saved is None or saved["state"]["epoch"] != options["epochs"]:
        return None
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    adaptor_dir = run_dir / "adaptor"
    written = all((adaptor_dir / name).is_file() for name in (WEIGHTS_NAME, CONFIG_NAME))
    if not written or _effective(metrics.get("options") or {}) != options:
        return None
    return PretrainResult(run_dir=run_dir, adaptor_dir=adaptor_dir, metrics=metrics)


def _root_cause(err: Exception) -> str:
    failures = getattr(err, "worker_failures", None)
    if failures:
        first = next(iter(failures.values()))
        return f"{type(first).__name__}: {first}"
    return str(err)


class _EpochProgress:
    """A driver-side progress bar over epochs, fed by the rank-0 worker's ``metrics.jsonl``."""

    def __init__(self, path: Path, epochs: int, *, enabled: bool):
        self.path, self.epochs, self.enabled = path, epochs, enabled
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> _EpochProgress:
        if self.enabled:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.enabled:
            self.thread.join()

    def _poll(self) -> None:
        bar = tqdm(total=self.epochs, unit="epoch", desc="pretrain", dynamic_ncols=True)
        while True:
            finished = self.stop.wait(1.0)
            history = _read_history(self.path)
            if history and len(history) != bar.n:
                last = history[-1]
                bar.n = len(history)
                postfix = {"loss": f"{last['train_loss']:.3f}"}
                if "val_t2i_r@10" in last:  # no val records: no recall to show
                    postfix["t2i_r10"] = f"{last['val_t2i_r@10']:.3f}"
                    postfix["chance"] = f"{last['chance_r@10']:.3f}"
                postfix["sps"] = f"{last['samples_per_s']:.0f}"
                bar.set_postfix(postfix)
            if finished:
                bar.close()
                return


def _read_history(path: Path) -> list[dict[str, Any]]:
    try:
        return [
            json.loads(line)
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    except (OSError, json.JSONDecodeError):
        return []


# ---------------------------------------------------------------- outputs


def _write_outputs(
    run_dir: Path, checkpoint: Any, *, options: dict[str, Any], val: dict[str, Any]
) -> PretrainResult:
    """Best weights to ``RUN/adaptor/``, final figures to ``RUN/metrics.json``, curves to ``RUN/curves.png``.

    ``options`` (what makes a rerun the same run) and ``val`` (where the val records came
    from) go into ``metrics.json``. Without val records the last epoch is kept.
    """
    from adaptor.model import Adaptor, AdaptorConfig
    from adaptor.pretrain.curves import plot_pretraining

    if checkpoint is None:
        raise PretrainError(f"training finished without a checkpoint in {run_dir / 'ray'}")
    with checkpoint.as_directory() as folder:
        saved = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)
    state = saved["state"]
    model = Adaptor(AdaptorConfig.from_dict(saved["model_config"]))
    best = state["best"]
    model.load_state_dict(best["model"] if best else saved["model"])
    adaptor_dir = run_dir / "adaptor"
    model.save_pretrained(adaptor_dir)
    history = state["history"]
    final = history[-1] if history else {}
    best_epoch = best["epoch"] if best else len(history)
    best_metrics = history[best_epoch - 1] if history else {}
    metrics = {
        "best_epoch": best_epoch,
        "selected_by": SELECTION[options["select_by"]][0] if best else LAST_EPOCH,
        "best": {k: v for k, v in best_metrics.items() if k.startswith(("val_", "chance_"))},
        "final": final,
        "untrained": state.get("untrained") or {},
        "val": val,
        "trainable_parameters": model.num_trainable_parameters(),
        "samples_per_s": sum(h["samples_per_s"] for h in history) / max(1, len(history)),
        "epochs": len(history),
        "resumed_at_steps": state.get("resumed_at_steps", []),
        "encoders": saved["model_config"].get("encoders"),
        "options": options,
    }
    atomic_write_json(run_dir / "metrics.json", metrics)
    plot_pretraining(history, run_dir / "curves.png", untrained=metrics["untrained"])
    return PretrainResult(run_dir=run_dir, adaptor_dir=adaptor_dir, metrics=metrics)


def describe(metrics: dict[str, Any]) -> str:
    """A short human summary of ``metrics.json``."""
    best, untrained = metrics["best"], metrics["untrained"]
    epochs = metrics["epochs"]
    if metrics.get("selected_by") == LAST_EPOCH:
        parts = [f"last epoch {epochs}/{epochs} kept (no val records to choose the best by)"]
    else:
        parts = [f"best epoch {metrics['best_epoch']}/{epochs}"]
    val = metrics.get("val") or {}
    if val.get("source") == "carved":
        parts.append(
            f"val carved from train ({val['records']} records of {val['patients']} patients)"
        )
    for k in (1, 5, 10):
        key = f"val_t2i_r@{k}"
        if key in best:
            parts.append(
                f"t→i R@{k} {best[key]:.3f} (untrained {untrained.get(key, math.nan):.3f}, chance {best.get(f'chance_r@{k}', math.nan):.3f})"
            )
    parts.append(f"{metrics['trainable_parameters']:,} trainable parameters")
    return "; ".join(parts)
