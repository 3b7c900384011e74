"""Classification metrics against hand-computed values; missing labels and absent classes."""

from __future__ import annotations

import pytest
import torch

from adaptor.heads.classification import label_matrix, masked_bce_loss, positive_weights
from adaptor.metrics.classification import classification_metrics, pooled_roc


def test_binary_metrics_match_hand_computed_values() -> None:
    # sorted by score: 0.8 (pos), 0.4 (neg), 0.35 (pos), 0.1 (neg)
    probs = torch.tensor([[0.1], [0.4], [0.35], [0.8]])
    targets = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    valid = torch.ones_like(targets, dtype=torch.bool)
    scalars, per_class = classification_metrics(probs, targets, valid, ["x"])
    assert scalars["auroc_macro"] == pytest.approx(0.75)  # 3 of 4 pos/neg pairs ordered
    assert scalars["auprc_macro"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert scalars["accuracy"] == pytest.approx(0.75)  # threshold 0.5: one positive missed
    assert scalars["f1_macro"] == pytest.approx(2 / 3)  # tp 1, fp 0, fn 1
    assert per_class["auroc"]["x"] == pytest.approx(0.75)


def test_missing_labels_are_left_out() -> None:
    probs = torch.tensor([[0.1], [0.4], [0.35], [0.8], [0.99]])
    targets = torch.tensor([[0.0], [0.0], [1.0], [1.0], [0.0]])
    valid = torch.tensor([[True], [True], [True], [True], [False]])  # the last would hurt
    scalars, _ = classification_metrics(probs, targets, valid, ["x"])
    assert scalars["auroc_macro"] == pytest.approx(0.75)


def test_class_without_positives_is_undefined_not_zero() -> None:
    probs = torch.tensor([[0.9, 0.2], [0.1, 0.3], [0.8, 0.1]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    valid = torch.ones_like(targets, dtype=torch.bool)
    scalars, per_class = classification_metrics(probs, targets, valid, ["a", "b"])
    assert per_class["auroc"] == {"a": 1.0, "b": None}
    assert per_class["f1"]["b"] is None
    assert scalars["auroc_macro"] == 1.0  # mean over defined classes only


def test_multiclass_metrics() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]])
    targets = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    valid = torch.ones_like(targets, dtype=torch.bool)
    scalars, per_class = classification_metrics(probs, targets, valid, list("abc"), "multiclass")
    assert scalars["accuracy"] == pytest.approx(0.75)  # the last row is argmax a, truth b
    assert per_class["auroc"]["c"] == pytest.approx(1.0)
    # class a one-vs-rest: scores of a = [.7 (pos), .1, .2, .5] → the positive beats all 3
    assert per_class["auroc"]["a"] == pytest.approx(1.0)
    # class b: positives .8 and .4, negatives .2 and .2 → 4 of 4 pairs
    assert per_class["auroc"]["b"] == pytest.approx(1.0)


def test_label_matrix_policies_and_masked_loss() -> None:
    rows = [{"labels": {"a": 1, "b": -1}}, {"labels": {"a": 0, "b": None}}, {"labels": {}}]
    targets, valid = label_matrix(rows, ["a", "b"])
    assert targets.tolist() == [[1, 0], [0, 0], [0, 0]]
    assert valid.tolist() == [[True, False], [True, False], [False, False]]
    targets, valid = label_matrix(rows, ["a", "b"], uncertain="positive")
    assert targets[0, 1] == 1 and bool(valid[0, 1])
    logits = torch.tensor([[2.0, 100.0], [-2.0, -100.0], [50.0, 50.0]])
    targets, valid = label_matrix(rows, ["a", "b"])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([2.0, -2.0]), torch.tensor([1.0, 0.0])
    )
    assert masked_bce_loss(logits, targets, valid) == pytest.approx(float(expected))


def test_positive_weights_balance_classes() -> None:
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    valid = torch.ones_like(targets, dtype=torch.bool)
    assert positive_weights(targets, valid).tolist() == [3.0, 1.0]


def test_pooled_roc_spans_the_unit_square() -> None:
    probs = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    targets = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    fpr, tpr = pooled_roc(probs, targets, torch.ones_like(targets, dtype=torch.bool))
    assert fpr[0] == 0 and tpr[-1] == 1 and min(fpr) == 0 and max(fpr) == 1
