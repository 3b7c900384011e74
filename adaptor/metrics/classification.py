"""Classification metrics (torchmetrics) that survive missing labels and absent classes.

Each class is scored on the records whose label for it is present. A class with no
positives (or no negatives) among them has an undefined AUROC/AUPRC, reported as
``None`` rather than a crash or a misleading 0; macro averages run over the defined
classes only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_average_precision,
    binary_f1_score,
    binary_roc,
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_average_precision,
    multiclass_f1_score,
)

Metric = float | None
SCALARS = ("auroc", "auprc", "accuracy", "f1")


def classification_metrics(
    probs: Tensor,
    targets: Tensor,
    valid: Tensor,
    label_names: Sequence[str],
    kind: str = "multilabel",
) -> tuple[dict[str, Metric], dict[str, dict[str, Metric]]]:
    """Scalar metrics (``auroc_macro``, ``auprc_macro``, ``accuracy``, ``f1_macro``) and per class.

    ``probs``/``targets``/``valid`` are ``(N, C)``. For ``kind="multiclass"`` probs are
    softmax outputs and a row counts when all its labels are present with exactly one positive.
    """
    if kind == "multiclass":
        return _multiclass(probs, targets, valid, label_names)
    per_class: dict[str, dict[str, Metric]] = {m: {} for m in SCALARS}
    for c, name in enumerate(label_names):
        rows = valid[:, c]
        p, t = probs[rows, c].float(), targets[rows, c].long()
        both = bool(t.numel()) and 0 < int(t.sum()) < t.numel()
        per_class["auroc"][name] = float(binary_auroc(p, t)) if both else None
        per_class["auprc"][name] = float(binary_average_precision(p, t)) if both else None
        per_class["accuracy"][name] = float(binary_accuracy(p, t)) if t.numel() else None
        per_class["f1"][name] = float(binary_f1_score(p, t)) if int(t.sum()) else None
    scalars = {
        "auroc_macro": _mean(per_class["auroc"].values()),
        "auprc_macro": _mean(per_class["auprc"].values()),
        "accuracy": _mean(per_class["accuracy"].values()),
        "f1_macro": _mean(per_class["f1"].values()),
    }
    return scalars, per_class


def _multiclass(
    probs: Tensor, targets: Tensor, valid: Tensor, label_names: Sequence[str]
) -> tuple[dict[str, Metric], dict[str, dict[str, Metric]]]:
    rows = valid.all(dim=1) & (targets.sum(dim=1) == 1)
    p, t = probs[rows].float(), targets[rows].argmax(dim=1)
    n = len(label_names)
    if not rows.any():
        return {f"{m}_macro" if m != "accuracy" else m: None for m in SCALARS}, {}
    present = torch.bincount(t, minlength=n) > 0
    auroc = multiclass_auroc(p, t, num_classes=n, average="none")
    auprc = multiclass_average_precision(p, t, num_classes=n, average="none")
    f1 = multiclass_f1_score(p, t, num_classes=n, average="none")
    per_class = {
        "auroc": _masked(auroc, present, label_names),
        "auprc": _masked(auprc, present, label_names),
        "f1": _masked(f1, present, label_names),
    }
    scalars = {
        "auroc_macro": _mean(per_class["auroc"].values()),
        "auprc_macro": _mean(per_class["auprc"].values()),
        "accuracy": float(multiclass_accuracy(p, t, num_classes=n, average="micro")),
        "f1_macro": _mean(per_class["f1"].values()),
    }
    return scalars, per_class


def pooled_roc(probs: Tensor, targets: Tensor, valid: Tensor) -> tuple[list[float], list[float]]:
    """Micro-averaged ROC curve (every present label pooled): false and true positive rates."""
    p, t = probs[valid].float(), targets[valid].long()
    if not (0 < int(t.sum()) < t.numel()):
        return [], []
    fpr, tpr, _ = binary_roc(p, t, thresholds=101)
    return fpr.tolist(), tpr.tolist()


def _masked(values: Tensor, present: Tensor, names: Sequence[str]) -> dict[str, Metric]:
    return {
        name: float(v) if ok else None
        for name, v, ok in zip(names, values.tolist(), present.tolist(), strict=True)
    }


def _mean(values) -> Metric:  # noqa: ANN001
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def undefined_unseen(
    per_class: dict[str, dict[str, Metric]],
    scalars: dict[str, Metric],
    unseen: Sequence[bool],
    label_names: Sequence[str],
    fraction: float,
) -> list[str]:
    """Mark classes without a training positive (``unseen``) undefined, in place, and
    recompute the macro averages without them; return the warning that says so."""
    dropped = [n for n, u in zip(label_names, unseen, strict=True) if u]
    if not dropped:
        return []
    for metric, values in per_class.items():
        for name in dropped:
            if name in values:
                values[name] = None
        macro = "accuracy" if metric == "accuracy" else f"{metric}_macro"
        if macro in scalars and values:
            defined = [v for v in values.values() if v is not None]
            scalars[macro] = sum(defined) / len(defined) if defined else None
    return [
        f"the {fraction:g} training subset has no positive for {', '.join(dropped)}: "
        "their metrics are undefined and left out of the macro averages"
    ]
