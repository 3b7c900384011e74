"""Downstream results: one record per trained model, merged into ``RES/results.json``,
summarised as Markdown tables (mean ± std over seeds) and a metric-against-fraction plot.

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

# Columns per task, in table order; metrics a task reports beyond these are appended.
PRIMARY_METRICS = {
    "classification": ["auroc_macro", "auprc_macro", "accuracy", "f1_macro"],
    "segmentation": ["dice", "iou"],
}
# The metric plotted against the label fraction.
HEADLINE_METRIC = {"classification": "auroc_macro", "segmentation": "dice"}


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
        plot_metric_vs_fraction(all_cells, task, res_dir / f"{task}_vs_fraction.png")
    if any(c.extra.get("roc", {}).get("fpr") for c in all_cells):
        plot_roc_curves(all_cells, res_dir / "classification_roc.png")
    return md_path


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


def plot_metric_vs_fraction(cells: Sequence[CellResult], task: str, path: Path) -> None:
    """Headline metric against label fraction (log x), one line per method, std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = HEADLINE_METRIC.get(task)
    rows = [r for r in summarise(cells) if r["task"] == task and metric in r["metrics"]]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in sorted({r["method"] for r in rows}):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["fraction"])
        points = [(r["fraction"] * 100, r["metrics"][metric]) for r in mine]
        points = [(x, s) for x, s in points if s["mean"] is not None]
        if not points:
            continue
        xs, stats = zip(*points, strict=True)
        ax.errorbar(
            xs,
            [s["mean"] for s in stats],
            yerr=[s["std"] for s in stats],
            marker="o",
            capsize=3,
            label=method,
        )
    ax.set_xscale("log")
    ax.set_xlabel("training labels used (%)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"{task}: {metric} against label fraction")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)


def plot_roc_curves(cells: Sequence[CellResult], path: Path) -> None:
    """One panel per label fraction: the pooled (micro-averaged) test ROC of each method's first seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_roc = [
        c for c in cells if c.task == "classification" and c.extra.get("roc", {}).get("fpr")
    ]
    fractions = sorted({c.fraction for c in with_roc})
    if not fractions:
        return
    fig, axes = plt.subplots(1, len(fractions), figsize=(4.2 * len(fractions), 4), squeeze=False)
    for ax, fraction in zip(axes[0], fractions, strict=True):
        here = [c for c in with_roc if c.fraction == fraction]
        for method in sorted({c.method for c in here}):
            first = min((c for c in here if c.method == method), key=lambda c: c.seed)
            auroc = first.metrics.get("auroc_macro")
            label = f"{method} (macro AUROC {auroc:.3f})" if auroc is not None else method
            ax.plot(first.extra["roc"]["fpr"], first.extra["roc"]["tpr"], label=label)
        ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
        ax.set(
            xlabel="false positive rate",
            ylabel="true positive rate",
            title=f"{fraction * 100:g} % of labels",
            xlim=(0, 1),
            ylim=(0, 1),
        )
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("test ROC, all labels pooled (seed with the lowest number)")
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
