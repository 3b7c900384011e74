"""The epoch kept: highest mean val recall (ours) or lowest val loss (the reference)."""

from __future__ import annotations

from typing import Any

import pytest

from adaptor.pretrain.loop import SELECTION_METRIC, improves


def _kept(history: list[dict[str, Any]], select_by: str) -> int | None:
    """The 1-based epoch the loop's rule keeps (None: none)."""
    best = None
    for epoch, metrics in enumerate(history, 1):
        score = improves(metrics, best, select_by)
        if score is not None:
            best = {"score": score, "epoch": epoch}
    return best["epoch"] if best else None


HISTORY = [
    {"val_loss": 3.0, SELECTION_METRIC: 0.2},
    {"val_loss": 2.0, SELECTION_METRIC: 0.5},
    {"val_loss": 1.0, SELECTION_METRIC: 0.4},
    {"val_loss": 1.0, SELECTION_METRIC: 0.5},
]


@pytest.mark.parametrize(("select_by", "epoch"), [("val_recall", 2), ("val_loss", 3)])
def test_rule_and_first_of_ties(select_by: str, epoch: int) -> None:
    assert _kept(HISTORY, select_by) == epoch


@pytest.mark.parametrize("select_by", ["val_recall", "val_loss"])
def test_no_val_records_choose_nothing(select_by: str) -> None:
    assert _kept([{"train_loss": 1.0}, {"train_loss": 0.5}], select_by) is None
