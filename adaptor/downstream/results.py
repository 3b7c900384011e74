"""Downstream results: one record per trained model, merged into ``RES/results.json``,
summarised as Markdown tables (``results.md``: mean ± std over seeds; ``tuning.md``: the
tuned encoders' costs) beside the plots of :mod:`adaptor.downstream.plots`.

Every task (classification, segmentation) and every method (heads on frozen features,
heads on the Adaptor, tuned encoders) writes :class:`CellResult` s into the same results
folder; :func:`merge_results` keeps one entry per (task, method, fraction, seed), so
runs can be added or redone one at a time.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adaptor.atomic import atomic_open, atomic_write_json
from adaptor.downstream.plots import Curve, plot_metric_vs_fraction, plot_roc_curves

# Columns per task, in table order; metrics a task reports beyond these are appended.
PRIMARY_METRICS = {
    "classification": ["auroc_macro", "auprc_macro", "accuracy", "f1_macro"],
    "segmentation": ["dice", "iou"],
}


@dataclass
class CellResult:
    """One trained model: task × method × label fraction × seed, evaluated on the test split."""

    task: str
    method: str
    fraction: float
    seed: int
    metrics: dict[str, float | None]
    trainable_parameters: int
    per_class: dict[str, dict[str, float | None]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, float, int]:
        return (self.task, self.method, float(self.fraction), int(self.seed))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellResult:
        return cls(**data)


def load_results(res_dir: Path) -> list[CellResult]:
    """The cells in ``RES/results.json`` (none when it does not exist yet)."""
    path = Path(res_dir) / "results.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return [CellResult.from_dict(c) for c in data.get("cells", [])]


def merge_results(res_dir: Path, cells: Iterable[CellResult], notes: Sequence[str] = ()) -> Path:
    """Merge ``cells`` into ``RES/results.json``; rewrite ``results.md`` and the fraction plot.

    Returns the path of ``results.md``.
    """
    res_dir = Path(res_dir)
    res_dir.mkdir(parents=True, exist_ok=True)
    merged = {c.key: c for c in load_results(res_dir)}
    merged.update({c.key: c for c in cells})
    all_cells = sorted(merged.values(), key=lambda c: c.key)
    old_notes = []
    if (res_dir / "results.json").is_file():
        old_notes = json.loads((res_dir / "results.json").read_text(encoding="utf-8")).get(
            "notes", []
        )
    all_notes = list(dict.fromkeys([*old_notes, *notes]))
    summary = summarise(all_cells)
    atomic_write_json(
        res_dir / "results.json",
        {"summary": summary, "cells": [c.to_dict() for c in all_cells], "notes": all_notes},
    )
    md_path = res_dir / "results.md"
    with atomic_open(md_path, "w", encoding="utf-8") as fh:
        fh.write(results_markdown(all_cells, all_notes))
    for task in {c.task for c in all_cells}:
        plot_metric_vs_fraction(summary, task, res_dir / f"{task}_vs_fraction.png")
    curves = roc_curves(all_cells)
    if curves:
        plot_roc_curves(curves, res_dir / "classification_roc.png")
    return md_path


def roc_curves(cells: Sequence[CellResult]) -> dict[float, list[Curve]]:
    """Per label fraction, each classification method's pooled test ROC of its lowest seed,
    as ``(legend, fpr, tpr)``; empty when no cell holds one."""
    with_roc = [
        c for c in cells if c.task == "classification" and c.extra.get("roc", {}).get("fpr")
    ]
    curves: dict[float, list[Curve]] = {}
    for fraction in sorted({c.fraction for c in with_roc}):
        here = [c for c in with_roc if c.fraction == fraction]
        curves[fraction] = []
        for method in sorted({c.method for c in here}):
            first = min((c for c in here if c.method == method), key=lambda c: c.seed)
            auroc = first.metrics.get("auroc_macro")
            legend = f"{method} (macro AUROC {auroc:.3f})" if auroc is not None else method
            curves[fraction].append((legend, first.extra["roc"]["fpr"], first.extra["roc"]["tpr"]))
    return curves


def summarise(cells: Sequence[CellResult]) -> list[dict[str, Any]]:
    """One row per (task, method, fraction): every metric's mean, std and seed count."""
    groups: dict[tuple[str, str, float], list[CellResult]] = defaultdict(list)
    for c in cells:
        groups[(c.task, c.method, float(c.fraction))].append(c)
    rows = []
    for (task, method, fraction), group in sorted(groups.items()):
        names = list(dict.fromkeys(m for c in group for m in c.metrics))
        rows.append(
            {
                "task": task,
                "method": method,
                "fraction": fraction,
                "seeds": sorted(c.seed for c in group),
                "trainable_parameters": max(c.trainable_parameters for c in group),
                "metrics": {m: mean_std([c.metrics.get(m) for c in group]) for m in names},
            }
        )
    return rows


def mean_std(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean and (population) std over the defined values, and how many were undefined."""
    defined = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not defined:
        return {"mean": None, "std": None, "n": 0, "undefined": len(values)}
    return {
        "mean": float(np.mean(defined)),
        "std": float(np.std(defined)),
        "n": len(defined),
        "undefined": len(values) - len(defined),
    }


def results_markdown(cells: Sequence[CellResult], notes: Sequence[str] = ()) -> str:
    """Markdown: one table per task, rows method × fraction, metric columns mean ± std."""
    summary = summarise(cells)
    parts = ["# Downstream results", ""]
    parts.append(
        "Test-split metrics, mean ± std over seeds (`n/a` = undefined, e.g. no positives). "
        "Label fractions are nested subsets of the training split (see `splits.json`)."
    )
    for task in sorted({row["task"] for row in summary}):
        rows = [r for r in summary if r["task"] == task]
        metric_names = list(PRIMARY_METRICS.get(task, []))
        for r in rows:
            for m in r["metrics"]:
                if m not in metric_names:
                    metric_names.append(m)
        metric_names = [m for m in metric_names if any(m in r["metrics"] for r in rows)]
        parts += ["", f"## {task}", ""]
        header = ["method", "labels", *metric_names, "seeds", "trainable params"]
        parts.append("| " + " | ".join(header) + " |")
        parts.append("|" + "|".join(["---"] * len(header)) + "|")
        for r in sorted(rows, key=lambda r: (r["fraction"], r["method"])):
            cells_md = [_format(r["metrics"].get(m)) for m in metric_names]
            parts.append(
                "| "
                + " | ".join(
                    [
                        r["method"],
                        f"{r['fraction'] * 100:g} %",
                        *cells_md,
                        str(len(r["seeds"])),
                        f"{r['trainable_parameters']:,}",
                    ]
                )
                + " |"
            )
    if notes:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"


def _format(stat: dict[str, Any] | None) -> str:
    if stat is None or stat["mean"] is None:
        return "n/a"
    text = f"{stat['mean']:.3f} ± {stat['std']:.3f}"
    if stat["undefined"]:
        text += f" ({stat['undefined']} n/a)"
    return text


def tuning_markdown(cells: Sequence[CellResult]) -> str:
    """Tuned-encoder methods side by side: trainable parameters (count, % of the encoder),
    peak memory of a training step, training samples/s (medians over a method's cells) and
    test macro AUROC per label fraction (mean ± std over seeds)."""
    tuned = [c for c in cells if c.task == "classification" and "tuning" in c.extra]
    fractions = sorted({float(c.fraction) for c in tuned})
    groups: dict[str, list[CellResult]] = defaultdict(list)
    for c in tuned:
        groups[c.method].append(c)
    header = [
        "method", "encoder trainable", "% of encoder", "peak step MiB", "train samples/s",
        *(f"AUROC {f * 100:g} %" for f in fractions), "device",
    ]  # fmt: skip
    lines = [
        "# Tuned encoders",
        "",
        "Cost of one training step and test macro AUROC per label fraction (mean ± std over "
        "seeds). Peak memory: weights and buffers held plus the peak of tensor memory "
        "allocated during the first training step (CUDA max allocated on a GPU, an operator-"
        "level allocation tracker on CPU).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * len(header)) + "|",
    ]
    for method, group in sorted(groups.items()):
        first = group[0].extra
        auroc = []
        for f in fractions:
            stat = mean_std([c.metrics.get("auroc_macro") for c in group if c.fraction == f])
            auroc.append(
                "n/a" if stat["mean"] is None else f"{stat['mean']:.3f} ± {stat['std']:.3f}"
            )
        row = [
            method,
            f"{first['encoder_trainable_parameters']:,}",
            f"{first['trainable_percent']:.3f}",
            _median_text([c.extra.get("peak_memory_mb") for c in group], ".0f"),
            _median_text([c.extra.get("samples_per_s") for c in group], ".1f"),
            *auroc,
            first.get("device", "?"),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_tuning_table(out: str | Path) -> Path | None:
    """Write ``OUT/tuning.md`` from the tuned cells in ``OUT/results.json``; None if none."""
    cells = load_results(Path(out))
    if not any("tuning" in c.extra for c in cells):
        return None
    path = Path(out) / "tuning.md"
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(tuning_markdown(cells))
    return path


def _median_text(values: list[float | None], spec: str) -> str:
    defined = [v for v in values if v is not None]
    return format(float(np.median(defined)), spec) if defined else "n/a"
