"""The pretraining loop each Ray Train worker runs, and the checkpoints it writes.

Every worker holds its disjoint share of the training shards in memory, takes the same
number of steps per epoch, and reports each epoch (and every ``checkpoint_every_steps``
steps) to Ray; rank 0 attaches a checkpoint (model, optimizer, scheduler and the loop's
own state) and rewrites ``metrics.jsonl``. A restarted worker resumes from the newest
checkpoint Ray hands it, or, after a kill -9, from the newest whole one on disk.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaptor.atomic import atomic_open
from adaptor.data.splits import ValCarve
from adaptor.metrics.retrieval import chance_recall, paired_recall
from adaptor.remote import working_copy
from adaptor.shards import ShardReader
from adaptor.shards.reader import EmbeddingTable

STATE_FILE = "state.pt"
SELECTION_METRIC = "val_recall_mean"
# select_by → the val metric that chooses the kept epoch, and whether higher is better
SELECTION: dict[str, tuple[str, bool]] = {
    "val_recall": (SELECTION_METRIC, True),
    "val_loss": ("val_loss", False),
}

Fault = Callable[[int], None]
"""An injected fault: called with the global step before every training step on every
worker; what it raises fails that worker as a real crash would (tests use it)."""


def train_loop(config: dict[str, Any]) -> None:
    """The per-worker training function run by Ray Train (``config``: see the driver)."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from adaptor.model import Adaptor, AdaptorConfig, ClipLoss

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"])
    device = ray.train.torch.get_device()

    # a remote folder (adaptor.remote): this node's working copy of it
    config = {**config, "out": str(working_copy(config["out"]))}
    reader = ShardReader(working_copy(config["shards"], writable=False))
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
        **config["model"],
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
    loss_fn = ClipLoss(t2i_weight=config["t2i_weight"])

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
        saved = newest_checkpoint(Path(config["out"]) / "ray" / "pretrain", device)
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
        state["untrained"] = _evaluate(model, val, config["t2i_weight"], device)
    if state["epoch"] >= config["epochs"]:
        _report(model, optimizer, scheduler, state, rank, config)
        return

    fault: Fault | None = config["fault"]
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
            if fault is not None:
                fault(state["global_step"])
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
            metrics.update(_evaluate(model, val, config["t2i_weight"], device))
        state["epoch"], state["step_in_epoch"] = epoch + 1, 0
        state["history"].append(metrics)
        score = improves(metrics, state["best"], config["select_by"])
        if rank == 0 and score is not None:
            state["best"] = {
                "score": score,
                "epoch": epoch + 1,
                "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            }
        _report(model, optimizer, scheduler, state, rank, config, metrics=metrics)


def improves(metrics: dict[str, Any], best: dict[str, Any] | None, select_by: str) -> float | None:
    """The score of an epoch's ``metrics`` if it beats ``best`` (the first of equal scores
    stays) by the rule ``select_by`` (see :data:`SELECTION`); None if not, or without val
    records (nothing to choose by)."""
    key, higher = SELECTION[select_by]
    if key not in metrics:
        return None
    score = metrics[key]
    if best is None or (score > best["score"] if higher else score < best["score"]):
        return score
    return None


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


def newest_checkpoint(
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
    return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)


@torch.no_grad()
def _evaluate(model, val, t2i_weight: float, device) -> dict[str, float]:  # noqa: ANN001
    """Val loss and retrieval recall, each side encoded on its own (as in search); rank-local."""
    from adaptor.model import clip_loss

    if len(val) == 0:
        return {}
    model.eval()
    image, text = val.arrays["image"].to(device), val.arrays["text"].to(device)
    out = model(image, text, cross=False)
    metrics = {
        "val_loss": float(clip_loss(out.image, out.text, out.logit_scale, t2i_weight=t2i_weight))
    }
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


def _write_history(run_dir: Path, state: dict[str, Any]) -> None:
    """``metrics.jsonl``: one line per finished epoch, rewritten whole so a resume never duplicates."""
    with atomic_open(run_dir / "metrics.jsonl", "w", encoding="utf-8") as fh:
        for line in state["history"]:
            fh.write(json.dumps(line) + "\n")
