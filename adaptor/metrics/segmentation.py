"""Dice and IoU of binary masks (torchmetrics), over the whole split and per image.

* ``dice`` / ``iou``: aggregate scores pooling every pixel of the split (2·TP / (2·TP + FP +
  FN) and TP / (TP + FP + FN)), so images without a finding count through their false
  positives. These are the table's headline numbers.
* ``dice_per_image`` / ``iou_per_image``: the mean over images whose true mask is not empty.
* ``empty_accuracy``: the share of images with an empty true mask predicted empty.

A score with nothing to measure (no foreground anywhere, no positive image, no negative
image) is ``None`` (undefined), never a crash. Per-image values are ``None`` where both
masks are empty.
"""

from __future__ import annotations

import math

from torch import Tensor
from torchmetrics.classification import BinaryJaccardIndex
from torchmetrics.functional.segmentation import dice_score, mean_iou
from torchmetrics.segmentation import DiceScore


class SegmentationScores:
    """Accumulates predictions and true masks batch by batch; :meth:`compute` scores them."""

    def __init__(self) -> None:
        self.dice = DiceScore(num_classes=1, average="macro", aggregation_level="global")
        self.iou = BinaryJaccardIndex(zero_division=math.nan)
        self.image_dice: list[float | None] = []
        self.image_iou: list[float | None] = []
        self.positive: list[bool] = []
        self.predicted_empty: list[bool] = []
        self.foreground = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch of binary masks ``[B, H, W]`` (prediction, truth)."""
        if pred.shape != target.shape or pred.ndim != 3:
            raise ValueError(
                f"expected prediction and truth masks [B, H, W] of one shape, got "
                f"{tuple(pred.shape)} and {tuple(target.shape)}"
            )
        p, t = pred.bool()[:, None], target.bool()[:, None]
        self.dice.update(p.long(), t.long())
        self.iou.update(p.long(), t.long())
        per_dice = dice_score(p.long(), t.long(), num_classes=1, average="none")[:, 0]
        per_iou = mean_iou(p, t, num_classes=1, per_class=True)[:, 0]
        both_empty = (~(p | t).flatten(1).any(1)).tolist()
        self.image_dice += [
            None if e else float(v) for v, e in zip(per_dice, both_empty, strict=True)
        ]
        self.image_iou += [
            None if e else float(v) for v, e in zip(per_iou, both_empty, strict=True)
        ]
        self.positive += t.flatten(1).any(1).tolist()
        self.predicted_empty += (~p.flatten(1).any(1)).tolist()
        self.foreground += int(p.sum() + t.sum())

    def compute(self) -> dict[str, float | None]:
        """The scalar scores (see the module docstring); ``None`` where undefined."""
        defined = self.foreground > 0
        pos = [i for i, is_pos in enumerate(self.positive) if is_pos]
        neg = [i for i, is_pos in enumerate(self.positive) if not is_pos]
        return {
            "dice": float(self.dice.compute()) if defined else None,
            "iou": float(self.iou.compute()) if defined else None,
            "dice_per_image": _mean([self.image_dice[i] for i in pos]),
            "iou_per_image": _mean([self.image_iou[i] for i in pos]),
            "empty_accuracy": _mean([float(self.predicted_empty[i]) for i in neg]),
        }


def _mean(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None
