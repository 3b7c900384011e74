"""The pretraining curves: loss and val recall@k per epoch (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

from adaptor.atomic import atomic_open

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_pretraining(
    history: list[dict[str, Any]], path: Path, *, untrained: dict[str, float] | None = None
) -> None:
    """Loss and val recall@k per epoch, with chance level and the untrained Adaptor as dashed lines."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_recall) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    if history and "val_loss" in history[0]:
        ax_loss.plot(epochs, [h["val_loss"] for h in history], label="val")
    ax_loss.set(xlabel="epoch", ylabel="contrastive loss", title="loss")
    ax_loss.legend()
    for direction, name in (("t2i", "text→image"), ("i2t", "image→text")):
        for k, style in ((1, ":"), (10, "-")):
            key = f"val_{direction}_r@{k}"
            if history and key in history[0]:
                ax_recall.plot(epochs, [h[key] for h in history], style, label=f"{name} R@{k}")
    if history and "chance_r@10" in history[-1]:
        ax_recall.axhline(history[-1]["chance_r@10"], color="grey", ls="--", label="chance R@10")
    if untrained and "val_t2i_r@10" in untrained:
        ax_recall.axhline(
            untrained["val_t2i_r@10"], color="red", ls="--", label="untrained t→i R@10"
        )
    ax_recall.set(xlabel="epoch", ylabel="recall", title="val retrieval", ylim=(0, 1))
    if ax_recall.get_legend_handles_labels()[0]:
        ax_recall.legend(fontsize=8)
    else:
        ax_recall.text(0.5, 0.5, "no val records", ha="center", va="center")
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
