"""Classification with a tuned encoder running online, beside the frozen cached-embedding path.

Each cell (method × label fraction × seed) builds the encoder(s) the shards were made
with, makes only a tuning method's parameters trainable (:func:`adaptor.peft.apply_tuning`)
and trains them together with a head: images are read and preprocessed per step from the
records (``encoder="image"``), reports are tokenized per step (``"text"``), or both
features are concatenated (``"both"``). Features are standardised with the train-split
mean and std of the frozen encoder's embeddings, as the frozen path does (read from the
shards when they were made by the same weights at the same input size).

Training: AdamW with one learning rate for the head and one for the encoder's trainable
parameters (per-method defaults), the frozen path's class-weighted loss, model selection
on the validation macro AUROC with early stopping, and the test metrics of
:func:`~adaptor.metrics.classification.classification_metrics`. Batch-norm running
statistics stay frozen, so a cell's deltas fully describe its encoder; gradient
checkpointing of every encoder block is an option. Each cell saves its
deltas and head under ``OUT/tuned/<cell>/`` and reports trainable parameters, training
samples/s (forward, backward and optimizer step, data loading excluded) and the peak
memory of its first training step (:mod:`adaptor.downstream.step_memory`). Cells run
through :func:`~adaptor.downstream.grid.run_grid`, so a rerun resumes;
:func:`finetune_tuned` runs one grid per head of ``TuneConfig.heads``, and
:func:`~adaptor.downstream.results.write_tuning_table` puts the methods side by side in
``OUT/tuning.md``.
"""

from __future__ import annotations

import copy
import functools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from adaptor.atomic import atomic_open, atomic_write_json
from adaptor.config import GridOptions, TuningOptions
from adaptor.config.downstream import ENCODER_LR
from adaptor.data.splits import LabelSplits
from adaptor.downstream.classification import Objective, record_rows
from adaptor.downstream.grid import GridCell, GridTask, plan_cells, run_grid, setup_key
from adaptor.downstream.results import CellResult
from adaptor.downstream.step_memory import measure_step
from adaptor.embed.feature_maps import resized_preprocess
from adaptor.embed.pixels import load_pixels
from adaptor.encoders import ImageEncoder, TextEncoder, build_image_encoder, build_text_encoder
from adaptor.errors import AdaptorError
from adaptor.heads.classification import build_head, label_matrix
from adaptor.metrics.classification import classification_metrics, undefined_unseen
from adaptor.peft import DEFAULT_OPTIONS, TuningError, apply_tuning, method_options
from adaptor.peft.checkpointing import enable_gradient_checkpointing
from adaptor.peft.deltas import save_deltas, tuning_state
from adaptor.peft.targets import unused_parameters
from adaptor.shards import ShardReader

BASE_SEED = 0  # torch seed for building encoders (fixes @random initialisations)


class TuneError(AdaptorError, ValueError):
    """A tuned-encoder run that cannot start."""


class TuneConfig(TuningOptions, GridOptions):
    """What ``adaptor finetune tune`` trains (classification from a tuned encoder): the
    options, the shards and the results folder; one grid per head."""

    shards: str
    out: str

    def method_options(self, method: str) -> dict[str, Any]:
        """The options that apply to ``method``, completed with its defaults."""
        return method_options(
            method, {k: v for k, v in self.options.items() if k in DEFAULT_OPTIONS[method]}
        )

    def label(self, method: str, head: str) -> str:
        """The results row name, e.g. ``lora(image)+linear`` or ``apla[columns=0.25](text)+mlp``."""
        changed = {
            k: v
            for k, v in self.options.items()
            if k in DEFAULT_OPTIONS[method] and DEFAULT_OPTIONS[method][k] != v
        }
        opts = (
            "[" + ",".join(f"{k}={v}" for k, v in sorted(changed.items())) + "]" if changed else ""
        )
        return f"{method}{opts}({self.encoder})+{head}"


def finetune_tuned(
    cfg: TuneConfig,
    splits: LabelSplits,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[CellResult]:
    """Train and test every head × method × fraction × seed with a tuned encoder; one
    CellResult each. The head is part of a grid's setup: each head is its own grid."""
    shards = Path(cfg.shards).resolve()
    manifest = ShardReader(shards).manifest
    _check_config(cfg, manifest.encoders, splits)
    for w in splits.warnings:
        log(f"warning: {w}")
    encoders = {side: manifest.encoders[side]["name"] for side in _sides(cfg.encoder)}
    _check_methods_apply(cfg, encoders)
    shared = {
        "shards": str(shards),
        "source": manifest.source,
        "encoders": encoders,
        "fingerprints": {side: manifest.encoders[side]["fingerprint"] for side in encoders},
        "label_names": cfg.labels or splits.label_names,
        "splits": asdict(splits),
        "out": str(Path(cfg.out).resolve()),
    }
    cells: list[CellResult] = []
    for head in cfg.heads:
        config = {**cfg.model_dump(exclude={"heads"}), "head": head}
        cells += _tune_grid(cfg, head, {**shared, "config": config}, progress=progress, log=log)
    return cells


def _tune_grid(
    cfg: TuneConfig,
    head: str,
    shared: dict[str, Any],
    *,
    progress: bool,
    log: Callable[[str], None],
) -> list[CellResult]:
    """One head's grid of methods × fractions × seeds."""
    methods = {
        _safe(cfg.label(m, head)): {
            "method": m,
            "label": cfg.label(m, head),
            "options": cfg.method_options(m),
        }
        for m in cfg.methods
    }
    cells = plan_cells(methods, cfg.fractions, cfg.seeds)
    results = run_grid(
        cells,
        TASK,
        shared=shared,
        run_dir=Path(cfg.out) / "runs" / f"tune-{_setup_hash(shared)}",
        workers=cfg.workers,
        address=cfg.address,
        progress=progress,
        log=log,
    )
    return [CellResult.from_dict(results[c.key]) for c in cells]


def _setup_hash(shared: dict[str, Any]) -> str:
    """Identifies what a cell's result depends on beyond its key (method, options, fraction,
    seed), so a rerun with more methods, fractions or seeds reuses the finished cells."""
    per_cell = ("methods", "options", "fractions", "seeds", "workers", "address")
    config = {k: v for k, v in shared["config"].items() if k not in per_cell}
    return setup_key({**shared, "config": config})


def _sides(encoder: str) -> list[str]:
    return ["image", "text"] if encoder == "both" else [encoder]


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", key)


def _check_config(cfg: TuneConfig, encoders: dict[str, Any], splits: LabelSplits) -> None:
    """What the options alone cannot tell: the shards' encoders, the methods' own options,
    the labels of the records."""
    for side in _sides(cfg.encoder):
        if side not in encoders:
            raise TuneError(f"the shards hold no {side} encoder to tune")
    taken = {k for m in cfg.methods for k in DEFAULT_OPTIONS[m]}
    stray = sorted(set(cfg.options) - taken)
    if stray:
        raise TuneError(f"option(s) {', '.join(stray)} apply to none of {', '.join(cfg.methods)}")
    for method in cfg.methods:
        try:
            cfg.method_options(method)
        except TuningError as err:
            raise TuneError(str(err)) from err
    missing = [n for n in cfg.labels or [] if n not in splits.label_names]
    if missing:
        raise TuneError(f"labels {missing} are not in the records (they have {splits.label_names})")


def _check_methods_apply(cfg: TuneConfig, encoders: dict[str, str]) -> None:
    """Fail before any training when a method does not apply to an encoder."""
    for side, name in encoders.items():
        encoder = _build(side, name, "cpu")
        for method in cfg.methods:
            try:
                apply_tuning(copy.deepcopy(encoder.module), method, **cfg.method_options(method))
            except TuningError as err:
                raise TuneError(f"{side} encoder {name}: {err}") from err


def _build(side: str, name: str, device: str | torch.device) -> ImageEncoder | TextEncoder:
    """Build an encoder; random initialisations (``@random``) start from torch seed ``BASE_SEED``,
    so every worker, and every later reload of saved deltas, gets the same base weights."""
    torch.manual_seed(BASE_SEED)
    return (
        build_image_encoder(name, device) if side == "image" else build_text_encoder(name, device)
    )


# ---------------------------------------------------------------- worker side


def prepare_tuning(shared: dict[str, Any]) -> dict[str, Any]:
    """Records, targets, feature statistics and base encoders (once per worker process).

    Features are standardised with the train split's mean and std of the frozen encoder's
    embeddings: from the shards when they were made by these very weights at this input
    size, else (a random initialisation, another ``image_size``) from a frozen pass here.
    """
    from adaptor.data.sources import open_source

    cfg = shared["config"]
    table = ShardReader(shared["shards"]).load(members=tuple(shared["encoders"]))
    is_train = [m.get("split") == "train" for m in table.meta]
    root = open_source(shared["source"]).root
    encoders = {side: _build(side, name, "cpu") for side, name in shared["encoders"].items()}
    stats, notes = {}, []
    for side, encoder in encoders.items():
        reader = _Inputs(side, encoder, root, cfg["image_size"])
        if encoder.info.fingerprint == shared["fingerprints"][side] and reader.native:
            x = table.arrays[side][torch.tensor(is_train)]
        else:
            notes.append(
                f"the {side} encoder's weights or input size differ from the shards': features "
                "standardised with statistics of its own frozen embeddings"
            )
            rows = [m for m, train in zip(table.meta, is_train, strict=True) if train]
            x = torch.cat(
                [
                    encoder.encode(reader(rows[i : i + 32])).global_.float()
                    for i in range(0, len(rows), 32)
                ]
            )
        stats[side] = (x.mean(0), x.std(0).clamp(min=1e-6))
    targets, valid = label_matrix(table.meta, shared["label_names"], cfg["uncertain"])
    return {
        "meta": table.meta,
        "targets": targets,
        "valid": valid,
        "row": {record_id: i for i, record_id in enumerate(table.ids)},
        "stats": stats,
        "notes": notes,
        "root": root,
        "encoders": encoders,
    }


class _Inputs:
    """Turns records into an encoder's inputs: preprocessed pixels, or a token batch of reports."""

    def __init__(
        self, side: str, encoder: ImageEncoder | TextEncoder, root: Path, image_size: int | None
    ) -> None:
        self.side, self.root = side, root
        self.native = side == "text" or image_size is None
        if side == "image":
            self.preprocess = resized_preprocess(encoder.preprocess, image_size)
        else:
            self.tokenize = encoder.make_tokenizer()

    def __call__(self, rows: Sequence[dict[str, Any]]) -> Any:
        """Pixels [B, 3, h, w] or a token batch for the records ``rows``."""
        if self.side == "text":
            return self.tokenize([row.get("report") or "" for row in rows])
        return torch.stack(
            [self.preprocess(load_pixels(row["id"], self.root / row["image"])) for row in rows]
        )

    def probe(self) -> Any:
        """A one-example input."""
        if self.side == "text":
            return self.tokenize(["probe"])
        return torch.zeros(1, 3, *self.preprocess.size)


class _Tower:
    """One tuned encoder: its module with the method applied, its inputs, its feature stats."""

    def __init__(
        self, side: str, data: dict[str, Any], cell: GridCell, cfg: dict[str, Any],
        device: torch.device,
    ) -> None:  # fmt: skip
        base = data["encoders"][side]
        self.side = side
        self.encoder = copy.deepcopy(base).to(device)
        self.device = device
        self.inputs = _Inputs(side, base, data["root"], cfg["image_size"])
        self.mean, self.std = (t.to(device) for t in data["stats"][side])
        module = self.encoder.module
        unused = unused_parameters(module, lambda: self._forward(self.inputs.probe()))
        if cfg["gradient_checkpointing"]:
            enable_gradient_checkpointing(module)
        method, options = cell.params["method"], cell.params["options"]
        self.report = apply_tuning(module, method, exclude=unused, **options)
        self.dim = int(self.encoder.info.dim)

    @property
    def module(self) -> nn.Module:
        return self.encoder.module

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> None:
        """Train mode (dropout on) with batch-norm statistics frozen; or eval mode."""
        self.module.train(mode)
        for m in self.module.modules():
            if isinstance(m, _BatchNorm):
                m.eval()

    def features(self, batch: Any) -> Tensor:
        """Standardised global features [B, dim] (with gradients where the method trains)."""
        return (self._forward(batch) - self.mean) / self.std

    def _forward(self, batch: Any) -> Tensor:
        # the encoders' public encode() runs under inference_mode; their _encode is the
        # same forward pass without it
        enc = self.encoder
        if self.side == "text":
            tensors = {k: v.to(self.device) for k, v in batch.tensors.items()}
            return enc._encode(tensors, False).global_.float()
        return enc._encode(enc._prepare(batch.to(self.device)), False).global_.float()


def train_tuned_cell(
    cell: GridCell, shared: dict[str, Any], data: dict[str, Any]
) -> dict[str, Any]:
    """Tune, train and test one method × fraction × seed; save its deltas and head."""
    cfg = shared["config"]
    names = shared["label_names"]
    method, fraction, seed = cell.params["method"], cell.params["fraction"], cell.params["seed"]
    splits = LabelSplits(**shared["splits"])
    device = _device(cfg["device"])
    torch.manual_seed(seed)
    towers = [_Tower(side, data, cell, cfg, device) for side in shared["encoders"]]
    head = build_head(cfg["head"], sum(t.dim for t in towers), len(names)).to(device)
    train, val, test = (
        record_rows(data, ids) for ids in (splits.train_ids(fraction), splits.val, splits.test)
    )
    objective = Objective(cfg["kind"], data["targets"][train], data["valid"][train], len(names))
    encoder_params = [p for t in towers for p in t.trainable()]
    encoder_lr = cfg["encoder_lr"] if cfg["encoder_lr"] is not None else ENCODER_LR[method]
    groups = [{"params": list(head.parameters()), "lr": cfg["lr"]}]
    groups += [{"params": encoder_params, "lr": encoder_lr}] if encoder_params else []
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg["weight_decay"])
    generator = torch.Generator().manual_seed(seed)

    def step(rows: list[int], inputs: list[Any]) -> None:
        targets = data["targets"][rows].to(device)
        valid = data["valid"][rows].to(device)
        with torch.set_grad_enabled(bool(encoder_params)):
            feats = torch.cat([t.features(x) for t, x in zip(towers, inputs, strict=True)], dim=1)
        loss = objective.loss(head(feats), targets, valid)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    best = {"score": -np.inf, "epoch": -1, "state": None}
    peak_mb, seen, step_seconds = None, 0, 0.0
    for epoch in range(cfg["epochs"]):
        for t in towers:
            t.train()
        head.train()
        order = train[torch.randperm(len(train), generator=generator)].tolist()
        for start in range(0, len(order), cfg["batch_size"]):
            rows = order[start : start + cfg["batch_size"]]
            inputs = [t.inputs([data["meta"][r] for r in rows]) for t in towers]
            if peak_mb is None:  # the first step: measured, not timed
                _, peak_mb = measure_step(
                    functools.partial(step, rows, inputs),
                    [*(t.module for t in towers), head],
                    device,
                )
                continue
            _sync(device)
            started = time.perf_counter()
            step(rows, inputs)
            _sync(device)
            step_seconds += time.perf_counter() - started
            seen += len(rows)
        score = _val_score(towers, head, val, data, objective, names, cfg)
        if score > best["score"]:
            state = {
                f"{t.side}.{k}": v.detach().clone()
                for t in towers
                for k, v in tuning_state(t.module).items()
            }
            state.update({f"head.{k}": v.detach().clone() for k, v in head.state_dict().items()})
            best = {"score": score, "epoch": epoch, "state": state}
        elif epoch - best["epoch"] >= cfg["patience"]:
            break
    _restore(towers, head, best["state"])
    probs = _probs(_logits(towers, head, test, data, cfg["batch_size"]), cfg["kind"])
    targets, valid = data["targets"][test], data["valid"][test]
    scalars, per_class = classification_metrics(probs, targets, valid, names, cfg["kind"])
    warnings = data["notes"] + undefined_unseen(
        per_class, scalars, objective.unseen, names, fraction
    )
    saved = _save_cell(Path(shared["out"]) / "tuned" / cell.key, towers, head)
    trainable = sum(t.report.trainable_parameters for t in towers)
    total = sum(t.report.encoder_parameters for t in towers)
    head_params = sum(p.numel() for p in head.parameters())
    return CellResult(
        task="classification",
        method=cell.params["label"],
        fraction=fraction,
        seed=seed,
        metrics=scalars,
        trainable_parameters=trainable + head_params,
        per_class=per_class,
        extra={
            "samples_per_s": seen / step_seconds if step_seconds else None,
            "peak_memory_mb": peak_mb,
            "trainable_percent": 100.0 * trainable / max(1, total),
            "encoder_parameters": total,
            "encoder_trainable_parameters": trainable,
            "head_parameters": head_params,
            "train_records": len(train),
            "best_epoch": best["epoch"],
            "val_score": float(best["score"]),
            "device": str(device),
            "warnings": warnings,
            "tuning": {t.side: t.report.to_dict() for t in towers},
            "saved": saved,
        },
    ).to_dict()


TASK = GridTask("tuned encoders", prepare_tuning, train_tuned_cell)


def _device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _logits(
    towers: list[_Tower], head: nn.Module, rows: Tensor, data: dict[str, Any], batch_size: int
) -> Tensor:
    """Head logits for the records ``rows``, in eval mode."""
    for t in towers:
        t.train(False)
    head.eval()
    chunks = [torch.empty(0, data["targets"].shape[1])]
    for batch in rows.split(batch_size):
        metas = [data["meta"][r] for r in batch.tolist()]
        feats = torch.cat([t.features(t.inputs(metas)) for t in towers], dim=1)
        chunks.append(head(feats).float().cpu())
    return torch.cat(chunks)


def _probs(logits: Tensor, kind: str) -> Tensor:
    return logits.softmax(-1) if kind == "multiclass" else logits.sigmoid()


def _val_score(
    towers: list[_Tower],
    head: nn.Module,
    val: Tensor,
    data: dict[str, Any],
    objective: Objective,
    names: list[str],
    cfg: dict[str, Any],
) -> float:
    """Validation macro AUROC; minus the validation loss where it is undefined (as the frozen path)."""
    logits = _logits(towers, head, val, data, cfg["batch_size"])
    targets, valid = data["targets"][val], data["valid"][val]
    scalars, _ = classification_metrics(
        _probs(logits, cfg["kind"]), targets, valid, names, cfg["kind"]
    )
    if scalars["auroc_macro"] is not None:
        return scalars["auroc_macro"]
    return -float(objective.loss(logits, targets, valid))


def _restore(towers: list[_Tower], head: nn.Module, state: dict[str, Tensor]) -> None:
    """Put the best epoch's trainable tensors back."""
    with torch.no_grad():
        for t in towers:
            for k, v in tuning_state(t.module).items():
                v.copy_(state[f"{t.side}.{k}"])
        head.load_state_dict(
            {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
        )


def _save_cell(folder: Path, towers: list[_Tower], head: nn.Module) -> dict[str, str]:
    """Each encoder's deltas and the head's weights, as safetensors; returns the file paths."""
    paths = {}
    for t in towers:
        path = folder / f"{t.side}-deltas.safetensors"
        save_deltas(t.module, t.report, path, base=t.encoder.info.to_dict())
        paths[t.side] = str(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    with atomic_open(folder / "head.safetensors", "wb") as fh:
        fh.write(save(tensors))
    paths["head"] = str(folder / "head.safetensors")
    atomic_write_json(folder / "tuning.json", {t.side: t.report.to_dict() for t in towers})
    return paths
