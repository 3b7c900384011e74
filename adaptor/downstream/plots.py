"""Downstream plots (matplotlib, no display needed): a metric against the label fraction,
pooled ROC curves, and segmentation overlays on test images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adaptor.atomic import atomic_open

Curve = tuple[str, Sequence[float], Sequence[float]]  # legend, false and true positive rates
# The metric plotted against the label fraction.
HEADLINE_METRIC = {"classification": "auroc_macro", "segmentation": "dice"}


def _pyplot():  # noqa: ANN202
    """pyplot on the Agg backend, imported on first use (it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric_vs_fraction(summary: Sequence[dict[str, Any]], task: str, path: Path) -> None:
    """Headline metric against label fraction (log x), one line per method, std as error bars.

    ``summary``: the rows of :func:`~adaptor.downstream.results.summarise`.
    """
    metric = HEADLINE_METRIC.get(task)
    plt = _pyplot()
    rows = [r for r in summary if r["task"] == task and metric in r["metrics"]]
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


def plot_roc_curves(curves: Mapping[float, Sequence[Curve]], path: Path) -> None:
    """One panel per label fraction (the keys of ``curves``), one line per ``(legend, fpr, tpr)``.

    ``curves``: :func:`~adaptor.downstream.results.roc_curves`, each classification
    method's pooled test ROC of its lowest seed.
    """
    plt = _pyplot()
    fractions = sorted(curves)
    fig, axes = plt.subplots(1, len(fractions), figsize=(4.2 * len(fractions), 4), squeeze=False)
    for ax, fraction in zip(axes[0], fractions, strict=True):
        for label, fpr, tpr in curves[fraction]:
            ax.plot(fpr, tpr, label=label)
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


def plot_overlay_grid(
    shown: Sequence[tuple[str, np.ndarray, np.ndarray]],
    columns: Sequence[tuple[str, dict[str, np.ndarray]]],
    path: Path,
) -> None:
    """A grid of test images: image, true mask, then one predicted mask per column (yellow).

    ``shown``: ``(record id, grey image, true mask)`` per row; ``columns``: ``(title,
    {record id: predicted mask})``, a record missing from a column shows ``n/a``.
    """
    plt = _pyplot()
    titles = ["image", "truth", *(title for title, _ in columns)]
    fig, axes = plt.subplots(
        len(shown), len(titles), figsize=(1.9 * len(titles), 1.9 * len(shown)), squeeze=False
    )
    for r, (record_id, image, mask) in enumerate(shown):
        panels = [None, mask] + [preds.get(record_id) for _, preds in columns]
        for c, (ax, overlay) in enumerate(zip(axes[r], panels, strict=True)):
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            if overlay is not None:
                ax.imshow(np.ma.masked_equal(overlay, 0), cmap="autumn", alpha=0.55, vmin=0, vmax=1)
            elif c > 1:
                ax.text(0.5, 0.5, "n/a", color="white", ha="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=7)
        axes[r][0].set_ylabel(record_id, fontsize=6)
    fig.suptitle("segmentation on test images (yellow: mask)", fontsize=9)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
