"""Contrastive pretraining of the Adaptor on cached embeddings, under Ray Train.

The driver (:func:`pretrain`) checks the shards and the cluster, then runs a
``TorchTrainer``. Each worker holds its disjoint share of the training shards
in memory (kilobytes per sample), so data loading never limits a step. The
loss all-gathers embeddings with gradients, so W workers at batch B train like
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
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from adaptor.atomic import atomic_open, atomic_write_json
from adaptor.data.splits import VAL_CARVE_FRACTION, ValCarve, carve_val
from adaptor.errors import AdaptorError
from adaptor.model.adaptor import CONFIG_NAME, WEIGHTS_NAME
from adaptor.shards import ShardReader
from adaptor.shards.manifest import Manifest
from adaptor.shards.reader import EmbeddingTable
from adaptor.train.ray_env import cpus_per_worker, start_ray
from adaptor.train.retrieval_metrics import chance_recall, paired_recall

STATE_FILE = "state.pt"
SELECTION_METRIC = "val_recall_mean"
LAST_EPOCH = "last epoch (no val records)"  # metrics.json "selected_by" when nothing chooses
VAL_MIN_PAIRS = 2  # a carved val split holds at least this many pairs: one pair ranks nothing
# options that do not change what a run trains, so they may differ on a rerun of a finished run
_NOT_OPTIONS = (
    "shards",  # its content counts instead (shards_sha256), not where it lies
    "out",
    "address",
    "use_gpu",
    "max_failures",
    "fail_at_step",
    "checkpoint_every_steps",
)


class PretrainError(AdaptorError, RuntimeError):
    """Pretraining cannot start or did not finish; the message says why and what was kept."""


@dataclass
class PretrainConfig:
    """Options of ``adaptor pretrain`` (model, optimisation, cluster)."""

    shards: str
    out: str
    epochs: int = 30
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    schedule: str = "cosine"  # or "linear"
    grad_clip: float = 1.0
    workers: int = 1
    address: str | None = None
    seed: int = 0
    checkpoint_every_steps: int = 0
    width: int = 512
    layers: int = 1
    heads: int = 8
    ffn_hidden: int = 2048
    norm: str = "post"
    dropout: float = 0.0
    image_weight: float = 0.75
    objective: str = "unpaired"  # or "paired": see README, "Why the loss is on unpaired encodings"
    use_gpu: bool | None = None  # None: use GPUs when the cluster has them
    max_failures: int = 2
    fail_at_step: int | None = field(default=None, repr=False)  # test hook: crash once at this step


@dataclass
class PretrainResult:
    """Where the outputs are and the final figures."""

    run_dir: Path
    adaptor_dir: Path
    metrics: dict[str, Any]


def pretrain(
    cfg: PretrainConfig, *, progress: bool = True, log: Callable[[str], None] = tqdm.write
) -> PretrainResult:
    """Train (or resume) the Adaptor on ``cfg.shards``; write weights, metrics and a plot to ``cfg.out``.

    A run that already finished with the same options and shards is returned as it is,
    without starting Ray or touching its files.
    """
    run_dir = Path(cfg.out).resolve()
    shards = Path(cfg.shards).resolve()
    reader = ShardReader(shards)
    if cfg.objective not in ("unpaired", "paired"):
        raise PretrainError(f"unknown objective {cfg.objective!r}: unpaired or paired")
    if len(reader.paths) < cfg.workers:
        raise PretrainError(
            f"{cfg.workers} workers need at least as many shards; {shards} has {len(reader.paths)}"
        )
    options = _options(cfg, reader.manifest)
    saved = _newest_checkpoint_on_disk(run_dir / "ray" / "pretrain", torch.device("cpu"), mmap=True)
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
        **asdict(cfg),
        "shards": str(shards),
        "out": str(run_dir),
        "threads": threads,
        "encoders": reader.manifest.encoders,
        "val_carve": asdict(carve) if carve else None,
    }
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker={"CPU": threads}
        ),
        run_config=ray.train.RunConfig(
            name="pretrain",
            storage_path=str(run_dir / "ray"),
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
        f"{VAL_CARVE_FRACTION:.0%} of the patients; val recall on it chooses the best epoch"
    )
    return carve, {
        "source": "carved",
        "records": carve.records,
        "patients": carve.patients,
        "train_patients": carve.train_patients,
        "seed": carve.seed,
    }


def _options(cfg: PretrainConfig, manifest: Manifest) -> dict[str, Any]:
    """What makes two runs the same: the training options and the shards' content."""
    options = {k: v for k, v in asdict(cfg).items() if k not in _NOT_OPTIONS}
    content = [manifest.encoders, [(s.name, s.sha256) for s in manifest.shards]]
    options["shards_sha256"] = hashlib.sha256(
        json.dumps(content, sort_keys=True).encode()
    ).hexdigest()
    return options


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
    if not written or metrics.get("options") != options:
        return None
    return PretrainResult(run_dir=run_dir, adaptor_dir=adaptor_dir, metrics=metrics)


def _root_cause(err: Exception) -> str:
    failures = getattr(err, "worker_failures", None)
    if failures:
        first = next(iter(failures.values()))
        return f"{type(first).__name__}: {first}"
    return str(err)


# ---------------------------------------------------------------- worker side


def _train_loop(config: dict[str, Any]) -> None:
    """The per-worker training function run by Ray Train."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from adaptor.model import Adaptor, AdaptorConfig, ClipLoss

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"])
    device = ray.train.torch.get_device()

    reader = ShardReader(config["shards"])
    carve = ValCarve(**config["val_carve"]) if config["val_carve"] else None
    train = _finite(_load(reader, lambda meta: _role(meta, carve) == "train", rank, world))
    val = _finite(_load(reader, lambda meta: _role(meta, carve) == "val"))
    image, text = train.arrays["image"].to(device), train.arrays["text"].to(device)
    batch = config["batch_size"]
    steps_per_epoch = len(image) // batch
    if dist.is_available() and dist.is_initialized() and world > 1:
        count = torch.tensor([steps_per_epoch], device=device)
        dist.all_reduce(
            count, op=dist.ReduceOp.MIN
        )  # every rank must take the same number of steps
        steps_per_epoch = int(count.item())
    if steps_per_epoch == 0:
        raise ValueError(
            f"rank {rank} holds {len(image)} training samples, fewer than one batch of {batch}"
        )

    model_config = AdaptorConfig(
        image_dim=image.shape[1],
        text_dim=text.shape[1],
        width=config["width"],
        layers=config["layers"],
        heads=config["heads"],
        ffn_hidden=config["ffn_hidden"],
        dropout=config["dropout"],
        norm=config["norm"],
        encoders={
            k: {f: v.get(f) for f in ("name", "fingerprint", "dim")}
            for k, v in config["encoders"].items()
        },
    )
    model = Adaptor(model_config).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"]
    )
    scheduler = _scheduler(optimizer, config, steps_per_epoch * config["epochs"])
    loss_fn = ClipLoss(image_weight=config["image_weight"])

    state = {
        "epoch": 0,
        "step_in_epoch": 0,
        "global_step": 0,
        "history": [],
        "best": None,
        "untrained": None,
    }
    checkpoint = ray.train.get_checkpoint()
    saved = None
    if checkpoint:
        with checkpoint.as_directory() as folder:
            saved = torch.load(Path(folder) / STATE_FILE, map_location=device, weights_only=False)
    else:
        # after kill -9 Ray may not have recorded its newest checkpoints; they are on disk whole
        saved = _newest_checkpoint_on_disk(Path(config["out"]) / "ray" / "pretrain", device)
    if saved is not None:
        if saved["model_config"] != model.config.to_dict():
            raise ValueError(
                f"{config['out']} holds a run of another Adaptor configuration "
                f"({_config_diff(saved['model_config'], model.config.to_dict())}); "
                "rerun with the same options or choose another --out"
            )
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        if state["epoch"] < config["epochs"]:  # a resume only where steps remain
            state["resumed_at_steps"] = [*state.get("resumed_at_steps", []), state["global_step"]]
    elif rank == 0:
        state["untrained"] = _evaluate(model, val, config["image_weight"], device)
    if state["epoch"] >= config["epochs"]:
        _report(model, optimizer, scheduler, state, rank, config)
        return

    trained = ray.train.torch.prepare_model(model, parallel_strategy="ddp" if world > 1 else None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    while state["epoch"] < config["epochs"]:
        epoch = state["epoch"]
        order = torch.randperm(
            len(image),
            generator=torch.Generator().manual_seed(config["seed"] * 100_003 + epoch * 97 + rank),
        )
        model.train()
        losses, seen, started = [], 0, time.perf_counter()
        for step in range(state["step_in_epoch"], steps_per_epoch):
            if (
                config.get("fail_at_step") is not None
                and state["global_step"] == config["fail_at_step"]
            ):
                marker = Path(config["out"]) / ".failed-once"
                if not marker.exists():
                    marker.write_text("injected failure")
                    raise RuntimeError(f"injected failure at step {state['global_step']}")
            idx = order[step * batch : (step + 1) * batch].to(device)
            with autocast:
                out = trained(image[idx], text[idx], cross=config["objective"] == "paired")
                loss = loss_fn(out.image, out.text, out.logit_scale)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at epoch {epoch} step {step}; stopping. "
                    "The last good checkpoint is kept; lower --lr or check the shards"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            seen += len(idx)
            state["global_step"] += 1
            state["step_in_epoch"] = step + 1
            every = config["checkpoint_every_steps"]
            if every and state["global_step"] % every == 0 and step + 1 < steps_per_epoch:
                _report(
                    model,
                    optimizer,
                    scheduler,
                    state,
                    rank,
                    config,
                    metrics={"partial_epoch": epoch},
                )
        seconds = time.perf_counter() - started
        metrics = {
            "epoch": epoch + 1,
            "global_step": state["global_step"],
            "train_loss": sum(losses) / max(1, len(losses)),
            "lr": scheduler.get_last_lr()[0],
            "samples_per_s": seen * world / seconds if seconds > 0 else 0.0,
            "temperature": float(1.0 / model.logit_scale.exp()),
        }
        if rank == 0:
            metrics.update(_evaluate(model, val, config["image_weight"], device))
        state["epoch"], state["step_in_epoch"] = epoch + 1, 0
        state["history"].append(metrics)
        if (
            rank == 0
            and SELECTION_METRIC in metrics  # no val records: nothing to choose by
            and (state["best"] is None or metrics[SELECTION_METRIC] > state["best"]["score"])
        ):
            state["best"] = {
                "score": metrics[SELECTION_METRIC],
                "epoch": epoch + 1,
                "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            }
        _report(model, optimizer, scheduler, state, rank, config, metrics=metrics)


def _report(model, optimizer, scheduler, state, rank, config, *, metrics=None) -> None:  # noqa: ANN001
    """Every rank reports (Ray needs it as a barrier); rank 0 attaches the checkpoint."""
    import ray.train

    metrics = dict(metrics or (state["history"][-1] if state["history"] else {}))
    if rank != 0:
        ray.train.report(metrics)
        return
    _write_history(Path(config["out"]), state)
    with tempfile.TemporaryDirectory() as folder:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state": state,
                "model_config": model.config.to_dict(),
            },
            Path(folder) / STATE_FILE,
        )
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _config_diff(before: dict[str, Any], now: dict[str, Any]) -> str:
    keys = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    return ", ".join(f"{k}: {before.get(k)!r} then, {now.get(k)!r} now" for k in keys)


def _newest_checkpoint_on_disk(
    folder: Path, device: torch.device, *, mmap: bool = False
) -> dict[str, Any] | None:
    """The loadable checkpoint with the highest global step under ``folder``, if any.

    ``mmap`` maps the tensors instead of reading them (for a driver that only looks).
    """
    newest = None
    for path in folder.glob(f"checkpoint_*/{STATE_FILE}"):
        try:
            saved = torch.load(path, map_location=device, weights_only=False, mmap=mmap)
        except Exception:  # a checkpoint cut short by the kill: skip it
            continue
        if newest is None or saved["state"]["global_step"] > newest["state"]["global_step"]:
            newest = saved
    return newest


def _scheduler(optimizer: torch.optim.Optimizer, config: dict[str, Any], total_steps: int):  # noqa: ANN202
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    warmup = int(config["warmup_fraction"] * total_steps)
    if config["schedule"] == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    if config["schedule"] != "cosine":
        raise ValueError(f"unknown schedule {config['schedule']!r} (cosine or linear)")
    return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)


@torch.no_grad()
def _evaluate(model, val, image_weight: float, device) -> dict[str, float]:  # noqa: ANN001
    """Val loss and retrieval recall, each side encoded on its own (as in search); rank-local."""
    from adaptor.model import clip_loss

    if len(val) == 0:
        return {}
    model.eval()
    image, text = val.arrays["image"].to(device), val.arrays["text"].to(device)
    out = model(image, text, cross=False)
    metrics = {"val_loss": float(clip_loss(out.image, out.text, out.logit_scale, image_weight))}
    recall = paired_recall(out.image.cpu(), out.text.cpu())
    metrics.update({f"val_{k}": v for k, v in recall.items()})
    metrics[SELECTION_METRIC] = sum(recall.values()) / len(recall)
    metrics.update({f"chance_{k}": v for k, v in chance_recall(len(val)).items()})
    metrics["val_size"] = len(val)
    model.train()
    return metrics


def _role(meta: dict[str, Any], carve: ValCarve | None) -> str | None:
    """A record's split, with the carved train records in ``val``."""
    split = meta.get("split")
    if carve is not None and split == "train" and carve.holds(meta):
        return "val"
    return split


def _load(
    reader: ShardReader, keep: Callable[[dict[str, Any]], bool], rank: int = 0, world: int = 1
) -> EmbeddingTable:
    """The samples of this rank's shards whose metadata ``keep`` takes, as float32 tensors."""
    rows = [s for s in reader.samples(rank=rank, world_size=world) if keep(s["meta"])]
    return EmbeddingTable(
        ids=[r["id"] for r in rows],
        arrays={
            m: torch.from_numpy(np.stack([r[m] for r in rows]).astype(np.float32))
            if rows
            else torch.empty(0)
            for m in ("image", "text")
        },
        meta=[r["meta"] for r in rows],
    )


def _finite(table):  # noqa: ANN001, ANN202
    """Drop rows whose embeddings hold NaN or Inf, saying how many."""
    keep = torch.ones(len(table), dtype=torch.bool)
    for array in table.arrays.values():
        if array.numel():
            keep &= torch.isfinite(array).all(dim=1)
    if not keep.all():
        table.ids = [i for i, k in zip(table.ids, keep.tolist(), strict=True) if k]
        table.meta = [m for m, k in zip(table.meta, keep.tolist(), strict=True) if k]
        table.arrays = {name: a[keep] for name, a in table.arrays.items()}
    return table


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


def _write_history(run_dir: Path, state: dict[str, Any]) -> None:
    """``metrics.jsonl``: one line per finished epoch, rewritten whole so a resume never duplicates."""
    with atomic_open(run_dir / "metrics.jsonl", "w", encoding="utf-8") as fh:
        for line in state["history"]:
            fh.write(json.dumps(line) + "\n")


# ---------------------------------------------------------------- outputs


def _write_outputs(
    run_dir: Path, checkpoint: Any, *, options: dict[str, Any], val: dict[str, Any]
) -> PretrainResult:
    """Best weights to ``RUN/adaptor/``, final figures to ``RUN/metrics.json``, curves to ``RUN/curves.png``.

    ``options`` (what makes a rerun the same run) and ``val`` (where the val records came
    from) go into ``metrics.json``. Without val records the last epoch is kept.
    """
    from adaptor.model import Adaptor, AdaptorConfig
    from adaptor.train.plots import plot_pretraining

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
        "selected_by": SELECTION_METRIC if best else LAST_EPOCH,
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
