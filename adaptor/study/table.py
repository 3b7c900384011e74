"""The study table: ``OUT/study.json``, ``OUT/study.md`` and its plots.

Per task one table: rows encoder pair × preset × method (the frozen-encoder baselines
under their image encoder, preset ``baseline``), columns dataset × label fraction (0 % is
zero-shot), cells mean ± std over seeds of the headline metric (macro AUROC,
Dice), and the trainable parameters of the row's head (plus the Adaptor's, for
Adaptor rows). A unit that failed is listed with its error. Plots: a heat map of the
smallest fraction (rows × datasets) per task and the metric against the fraction per
dataset.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from adaptor.atomic import atomic_open, atomic_write_json
from adaptor.downstream.plots import HEADLINE_METRIC, _pyplot
from adaptor.downstream.results import CellResult, summarise

if TYPE_CHECKING:
    from adaptor.config.study import StudyConfig

BASELINE = "baseline"


@dataclass
class StudyRows:
    """What the study's units produced: summary rows, pretraining figures, failures."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    pretraining: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)

    def add_cells(
        self,
        dataset: str,
        image: str,
        text: str | None,
        preset: str | None,
        cells: Sequence[CellResult],
    ) -> None:
        """One unit's cells, summarised over seeds, tagged with where they come from."""
        for row in summarise(cells):
            self.rows.append(
                {
                    "dataset": dataset,
                    "image": image,
                    "text": text,
                    "preset": preset or BASELINE,
                    **row,
                }
            )

    def add_pretrain(self, image: str, text: str, preset: str, metrics: dict[str, Any]) -> None:
        """A trained Adaptor's size and validation figures."""
        self.pretraining.append(
            {
                "image": image,
                "text": text,
                "preset": preset,
                "trainable_parameters": metrics.get("trainable_parameters"),
                "best": metrics.get("best"),
            }
        )

    def fail(self, unit: dict[str, str], err: Exception, log: Any) -> None:
        """Record a unit that failed; the study goes on."""
        entry = {**unit, "error": str(err).splitlines()[0] if str(err) else type(err).__name__}
        self.failures.append(entry)
        log(f"failed: {', '.join(f'{k} {v}' for k, v in unit.items())}: {entry['error']}")


def write_study(root: Path, study: StudyRows, cfg: StudyConfig) -> tuple[Path, Path, list[Path]]:
    """Write ``study.json``, ``study.md`` and the plots under ``root``."""
    js = root / "study.json"
    atomic_write_json(
        js,
        {"rows": study.rows, "pretraining": study.pretraining, "failures": study.failures},
    )
    md = root / "study.md"
    with atomic_open(md, "w", encoding="utf-8") as fh:
        fh.write(study_markdown(study, list(cfg.evaluate), adaptor_sizes(study)))
    plots = []
    for task in sorted({r["task"] for r in study.rows}):
        plots += plot_study(study.rows, task, root)
    return md, js, plots


def adaptor_sizes(study: StudyRows) -> dict[tuple[str, str, str], int]:
    """Trainable parameters of each pretrained Adaptor, by (image, text, preset)."""
    return {
        (p["image"], p["text"], p["preset"]): p["trainable_parameters"] or 0
        for p in study.pretraining
    }


def row_label(row: dict[str, Any]) -> tuple[str, str, str]:
    """(encoders, preset, method) of a summary row."""
    pair = row["image"] if row["text"] is None else f"{row['image']} × {row['text']}"
    return pair, row["preset"], row["method"]


def study_markdown(
    study: StudyRows, datasets: Sequence[str], sizes: dict[tuple[str, str, str], int]
) -> str:
    """One table per task: rows pair × preset × method, columns dataset × fraction."""
    parts = [
        "# Study",
        "",
        "Test-split metric per dataset and label fraction, mean ± std over seeds "
        "(0 % = zero-shot). Trainable parameters: the head's, plus the Adaptor's for "
        "Adaptor rows (pretrained once, shared by every dataset).",
    ]
    for task in sorted({r["task"] for r in study.rows}):
        metric = HEADLINE_METRIC[task]
        rows = [r for r in study.rows if r["task"] == task]
        columns = sorted(
            {(r["dataset"], r["fraction"]) for r in rows},
            key=lambda c: (list(datasets).index(c[0]) if c[0] in datasets else len(datasets), c[1]),
        )
        by_label: dict[tuple[str, str, str], dict[tuple[str, float], dict[str, Any]]] = defaultdict(
            dict
        )
        params: dict[tuple[str, str, str], int] = {}
        for r in rows:
            label = row_label(r)
            by_label[label][(r["dataset"], r["fraction"])] = r["metrics"].get(metric)
            adaptor = sizes.get((r["image"], r["text"], r["preset"]), 0)
            params[label] = max(params.get(label, 0), r["trainable_parameters"] + adaptor)
        header = ["encoders", "preset", "method"]
        header += [f"{d} {f * 100:g} %" for d, f in columns] + ["trainable params"]
        parts += ["", f"## {task} ({metric})", ""]
        parts.append("| " + " | ".join(header) + " |")
        parts.append("|" + "|".join(["---"] * len(header)) + "|")
        for label in sorted(by_label, key=lambda lab: (lab[0], lab[1] != BASELINE, lab[1], lab[2])):
            values = [_format(by_label[label].get(c)) for c in columns]
            parts.append("| " + " | ".join([*label, *values, f"{params[label]:,}"]) + " |")
    if study.failures:
        parts += ["", "## Failed units", ""]
        for f in study.failures:
            where = ", ".join(f"{k} {v}" for k, v in f.items() if k != "error")
            parts.append(f"- {where}: {f['error']}")
    return "\n".join(parts) + "\n"


def _format(stat: dict[str, Any] | None) -> str:
    if stat is None:
        return "—"
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def plot_study(rows: Sequence[dict[str, Any]], task: str, root: Path) -> list[Path]:
    """A heat map of the smallest non-zero fraction (rows × datasets), and the metric
    against the fraction per dataset (0 % = zero-shot at the left)."""
    plt = _pyplot()
    metric = HEADLINE_METRIC[task]
    rows = [
        r
        for r in rows
        if r["task"] == task and r["metrics"].get(metric, {}).get("mean") is not None
    ]
    if not rows:
        return []
    written = []
    smallest = min((r["fraction"] for r in rows if r["fraction"] > 0), default=None)
    if smallest is not None:
        at = [r for r in rows if r["fraction"] == smallest]
        labels = sorted({" · ".join(row_label(r)) for r in at})
        datasets = list(dict.fromkeys(r["dataset"] for r in at))
        grid = np.full((len(labels), len(datasets)), np.nan)
        for r in at:
            grid[labels.index(" · ".join(row_label(r))), datasets.index(r["dataset"])] = r[
                "metrics"
            ][metric]["mean"]
        fig, ax = plt.subplots(
            figsize=(4 + 1.6 * len(datasets), 1.5 + 0.45 * len(labels)), layout="constrained"
        )
        image = ax.imshow(grid, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(datasets)), datasets)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        for (i, j), value in np.ndenumerate(grid):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="w", fontsize=7)
        fig.colorbar(image, ax=ax, label=metric)
        ax.set_title(f"{task}: {metric} at {smallest * 100:g} % labels")
        path = root / f"study_{task}_heatmap.png"
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=120)
        plt.close(fig)
        written.append(path)
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        here = [r for r in rows if r["dataset"] == dataset]
        fractions = sorted({r["fraction"] for r in here})
        fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
        for label in sorted({row_label(r) for r in here}):
            points = sorted(
                (fractions.index(r["fraction"]), r["metrics"][metric])
                for r in here
                if row_label(r) == label
            )
            ax.errorbar(
                [x for x, _ in points],
                [s["mean"] for _, s in points],
                yerr=[s["std"] or 0 for _, s in points],
                marker="o",
                capsize=3,
                label=" · ".join(label),
            )
        ax.set_xticks(range(len(fractions)), [f"{f * 100:g} %" for f in fractions])
        ax.set_xlabel("labels (0 % = zero-shot)")
        ax.set_ylabel(metric)
        ax.set_title(f"{task} on {dataset}")
        ax.legend(fontsize=6, loc="lower right")
        path = root / f"study_{task}_{dataset}.png"
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=120)
        plt.close(fig)
        written.append(path)
    return written
