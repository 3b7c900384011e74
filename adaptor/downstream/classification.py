"""Classification heads on cached embeddings: the frozen encoder's own features against the
Adaptor's image path, from nested label fractions, over several seeds.

Methods are ``<features>+<head>``: features ``encoder`` (the frozen image encoder's
global embedding, the baseline) or ``adaptor`` (that embedding through the trained
Adaptor's image path), heads ``linear`` or ``mlp``. Every method × fraction × seed is one
cell of a :func:`~adaptor.downstream.grid.run_grid` run, so a rerun resumes.

Features are standardised with the mean and std of all training-split images (no labels
used). Heads train with AdamW on a class-weighted loss, early-stopped on the validation
macro AUROC, and are scored on the test split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from adaptor.config import ClassificationOptions, GridOptions
from adaptor.data.splits import LabelSplits
from adaptor.downstream.grid import GridCell, GridTask, plan_cells, run_grid, setup_key
from adaptor.downstream.results import CellResult
from adaptor.errors import AdaptorError
from adaptor.heads.classification import (
    build_head,
    class_weights,
    label_matrix,
    masked_bce_loss,
    multiclass_rows,
    positive_weights,
)
from adaptor.metrics.classification import classification_metrics, pooled_roc, undefined_unseen
from adaptor.model import load_adaptor_for
from adaptor.shards import ShardReader


class FinetuneError(AdaptorError, ValueError):
    """A downstream configuration that cannot run on the given shards."""


class ClassificationConfig(ClassificationOptions, GridOptions):
    """What ``adaptor finetune heads`` trains: the options, the shards, the Adaptor (if any)
    and the results folder."""

    shards: str
    out: str
    adaptor: str | None = None

    def methods(self) -> list[str]:
        return [f"{f}+{h}" for f in self.features for h in self.heads]


def finetune_classification(
    cfg: ClassificationConfig,
    splits: LabelSplits,
    *,
    splits_path: Path,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
) -> list[CellResult]:
    """Train and test every method × fraction × seed; return one :class:`CellResult` each."""
    shards = Path(cfg.shards).resolve()
    reader = ShardReader(shards)
    if "adaptor" in cfg.features:
        if not cfg.adaptor:
            raise FinetuneError(
                "features 'adaptor' need --adaptor (a folder from `adaptor pretrain`)"
            )
        load_adaptor_for(Path(cfg.adaptor), reader.manifest, shards)  # fail before any training
    label_names = cfg.labels or splits.label_names
    missing = [n for n in label_names if n not in splits.label_names]
    if missing:
        raise FinetuneError(
            f"labels {missing} are not in the records (they have {splits.label_names})"
        )
    for w in splits.warnings:
        log(f"warning: {w}")

    shared = {
        "shards": str(shards),
        "adaptor": str(Path(cfg.adaptor).resolve()) if cfg.adaptor else None,
        "splits": str(Path(splits_path).resolve()),
        "label_names": label_names,
        "config": cfg.model_dump(),
    }
    cells = plan_cells({m: {"method": m} for m in cfg.methods()}, cfg.fractions, cfg.seeds)
    run_dir = Path(cfg.out) / "runs" / f"classification-{_config_hash(shared)}"
    results = run_grid(
        cells,
        TASK,
        shared=shared,
        run_dir=run_dir,
        workers=cfg.workers,
        address=cfg.address,
        progress=progress,
        log=log,
    )
    return [CellResult.from_dict(results[c.key]) for c in cells]


def _config_hash(shared: dict[str, Any]) -> str:
    """Identifies the training setup (config, splits file, Adaptor weights) a run's cells belong to."""
    weights = Path(shared["adaptor"] or "") / "model.safetensors"
    return setup_key(shared, [Path(shared["splits"]), weights])


# ---------------------------------------------------------------- worker side


def prepare_classification(shared: dict[str, Any]) -> dict[str, Any]:
    """Features, targets and index of every record (once per worker process)."""
    table = ShardReader(shared["shards"]).load()
    image = torch.from_numpy(np.asarray(table.arrays["image"], dtype=np.float32))
    features = {"encoder": image}
    if shared["adaptor"]:
        adaptor = load_adaptor_for(
            Path(shared["adaptor"]), ShardReader(shared["shards"]).manifest, shared["shards"]
        )
        with torch.inference_mode():
            features["adaptor"] = torch.cat([adaptor.encode_image(b) for b in image.split(1024)])
    is_train = torch.tensor([m.get("split") == "train" for m in table.meta])
    for name, x in features.items():
        mean, std = x[is_train].mean(0), x[is_train].std(0).clamp(min=1e-6)
        features[name] = (x - mean) / std
    cfg = shared["config"]
    targets, valid = label_matrix(table.meta, shared["label_names"], cfg["uncertain"])
    return {
        "features": features,
        "targets": targets,
        "valid": valid,
        "row": {record_id: i for i, record_id in enumerate(table.ids)},
        "splits": LabelSplits.load(Path(shared["splits"])),
    }


def record_rows(data: dict[str, Any], ids: Sequence[str]) -> torch.Tensor:
    """The rows (in ``data["row"]``) of the records ``ids`` that the shards hold."""
    return torch.tensor([data["row"][i] for i in ids if i in data["row"]], dtype=torch.long)


def train_classification_cell(
    cell: GridCell, shared: dict[str, Any], data: dict[str, Any]
) -> dict[str, Any]:
    """Train one head (one method × fraction × seed) and score it on the test split."""
    cfg = shared["config"]
    names = shared["label_names"]
    method, fraction, seed = cell.params["method"], cell.params["fraction"], cell.params["seed"]
    feature_kind, head_kind = method.split("+")
    splits: LabelSplits = data["splits"]
    x = data["features"][feature_kind]
    train, val, test = (
        record_rows(data, ids) for ids in (splits.train_ids(fraction), splits.val, splits.test)
    )
    torch.manual_seed(seed)
    head = build_head(head_kind, x.shape[1], len(names))
    objective = Objective(cfg["kind"], data["targets"][train], data["valid"][train], len(names))
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    generator = torch.Generator().manual_seed(seed)
    best = {"score": -np.inf, "epoch": -1, "state": None}
    for epoch in range(cfg["max_epochs"]):
        head.train()
        for batch in train[torch.randperm(len(train), generator=generator)].split(
            cfg["batch_size"]
        ):
            loss = objective.loss(head(x[batch]), data["targets"][batch], data["valid"][batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        score = _val_score(head, x, val, data, objective, names, cfg["kind"])
        if score > best["score"]:
            best = {
                "score": score,
                "epoch": epoch,
                "state": {k: v.clone() for k, v in head.state_dict().items()},
            }
        elif epoch - best["epoch"] >= cfg["patience"]:
            break
    head.load_state_dict(best["state"])
    probs = _predict(head, x[test], cfg["kind"])
    targets, valid = data["targets"][test], data["valid"][test]
    scalars, per_class = classification_metrics(probs, targets, valid, names, cfg["kind"])
    warnings = undefined_unseen(per_class, scalars, objective.unseen, names, fraction)
    fpr, tpr = pooled_roc(probs, targets, valid) if cfg["kind"] == "multilabel" else ([], [])
    return CellResult(
        task="classification",
        method=method,
        fraction=fraction,
        seed=seed,
        metrics=scalars,
        trainable_parameters=sum(p.numel() for p in head.parameters()),
        per_class=per_class,
        extra={
            "train_records": len(train),
            "best_epoch": best["epoch"],
            "val_score": float(best["score"]),
            "warnings": warnings,
            "roc": {"fpr": fpr, "tpr": tpr},
        },
    ).to_dict()


TASK = GridTask("classification heads", prepare_classification, train_classification_cell)


class Objective:
    """The class-weighted loss of one training subset (multi-label BCE or multi-class CE)."""

    def __init__(self, kind: str, targets: torch.Tensor, valid: torch.Tensor, n_classes: int):
        self.kind = kind
        if kind == "multiclass":
            classes, usable = multiclass_rows(targets, valid)
            if not usable.any():
                raise FinetuneError(
                    "no training record has exactly one positive label (multiclass)"
                )
            self.weight = class_weights(classes[usable], n_classes)
            self.unseen = (torch.bincount(classes[usable], minlength=n_classes) == 0).tolist()
        else:
            self.weight = positive_weights(targets, valid)
            self.unseen = ((targets * valid).sum(0) == 0).tolist()

    def loss(
        self, logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        if self.kind == "multiclass":
            classes, usable = multiclass_rows(targets, valid)
            if not usable.any():
                return logits.sum() * 0.0
            return F.cross_entropy(logits[usable], classes[usable], weight=self.weight)
        return masked_bce_loss(logits, targets, valid, pos_weight=self.weight)


def _predict(head: torch.nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    head.eval()
    with torch.no_grad():
        logits = head(x)
    return logits.softmax(-1) if kind == "multiclass" else logits.sigmoid()


def _val_score(head, x, val, data, objective, names, kind) -> float:  # noqa: ANN001
    """Validation macro AUROC; minus the validation loss where AUROC is undefined."""
    probs = _predict(head, x[val], kind)
    scalars, _ = classification_metrics(
        probs, data["targets"][val], data["valid"][val], names, kind
    )
    if scalars["auroc_macro"] is not None:
        return scalars["auroc_macro"]
    with torch.no_grad():
        return -float(objective.loss(head(x[val]), data["targets"][val], data["valid"][val]))
