"""Contrastive pretraining of the Adaptor on cached embeddings, under Ray Train.

- :mod:`~adaptor.pretrain.driver`: :func:`pretrain` (checks, the ``TorchTrainer``, outputs)
- :mod:`~adaptor.pretrain.loop`: what each Ray Train worker runs, and its checkpoints
- :mod:`~adaptor.pretrain.curves`: the loss and recall curves (``RUN/curves.png``)
"""

from adaptor.pretrain.driver import (
    LAST_EPOCH,
    PretrainConfig,
    PretrainError,
    PretrainResult,
    describe,
    pretrain,
)
from adaptor.pretrain.loop import SELECTION_METRIC, Fault

__all__ = [
    "LAST_EPOCH",
    "SELECTION_METRIC",
    "Fault",
    "PretrainConfig",
    "PretrainError",
    "PretrainResult",
    "describe",
    "pretrain",
]
