"""Weighted symmetric contrastive (CLIP) loss, single-process and distributed.

``t2i_weight`` weights the text→image direction: each text row is classified over all
images (``CE(logits.T, targets)`` with ``logits = scale * image @ text.T``).
``1 - t2i_weight`` weights image→text (``CE(logits, targets)``: each image row over all
texts). The reference (holajoa/Adaptor-VL-SSL, ``CLIPLossFromSimilarities(0.75)`` on
``logits_per_text``) puts 0.75 on text→image; pretraining's default
(:class:`adaptor.config.PretrainOptions`) keeps 0.75 on image→text, ``t2i_weight=0.25``.

Distributed (:class:`ClipLoss`): every rank all-gathers both embeddings *with gradients*
and computes the loss of its own rows against all global columns (open_clip's
``gather_with_grad`` + ``local_loss``). With equal per-rank batches, the mean of the
per-rank losses is the global-batch loss. No rescaling is needed for the gradients: the
backward of ``torch.distributed.nn.functional.all_gather`` sums, onto each rank, the
gradients that all ranks' losses send into that rank's embeddings. So rank ``s`` ends up
with ``d(sum_r L_r)/d e_s = W * dL/d e_s``, where ``L`` is the mean loss and ``W`` the
world size. DDP then averages the parameter gradients over ranks:
``(1/W) * sum_s W * dL/d e_s * d e_s/d theta = dL/d theta``. That is exactly the
single-worker gradient with the whole global batch. ``logit_scale``'s gradient is purely
local: ``dL_r/ds``, averaged by DDP, gives ``dL/ds``.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _direction_weights(t2i_weight: float) -> tuple[float, float]:
    """(image→text, text→image) weights."""
    if not 0.0 <= t2i_weight <= 1.0:
        raise ValueError(f"direction weights must be in [0, 1], got t2i_weight={t2i_weight}")
    return 1 - t2i_weight, t2i_weight


def clip_loss(image: Tensor, text: Tensor, logit_scale: Tensor, *, t2i_weight: float) -> Tensor:
    """Weighted symmetric InfoNCE over a batch of paired, L2-normalised embeddings [B, D].

    ``logits = exp(logit_scale) * image @ text.T``; matching pairs are on the diagonal.
    Returns ``t2i_weight * CE(logits.T, arange(B))`` (text→image: each text picks its
    image) ``+ (1 - t2i_weight) * CE(logits, arange(B))`` (image→text).
    """
    return _weighted(image, text, logit_scale, *_direction_weights(t2i_weight))


def _weighted(image: Tensor, text: Tensor, logit_scale: Tensor, i2t: float, t2i: float) -> Tensor:
    """``i2t * CE(logits) + t2i * CE(logits.T)`` with ``logits = scale * image @ text.T``."""
    logits = logit_scale.exp() * image @ text.T
    targets = torch.arange(image.shape[0], device=image.device)
    return i2t * F.cross_entropy(logits, targets) + t2i * F.cross_entropy(logits.T, targets)


def _gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0, keeping the autograd graph."""
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
            category=FutureWarning,
        )
        return torch.cat(all_gather(x), dim=0)


class ClipLoss(nn.Module):
    """:func:`clip_loss` that uses negatives from all ranks when running distributed.

    With ``torch.distributed`` initialised, a world size above 1 and ``gather=True``, each
    rank's rows are scored against every rank's columns (see the module docstring for why
    DDP-averaged gradients then equal the single-worker, global-batch gradients). All ranks
    must pass the same batch size. Otherwise this is plain :func:`clip_loss`.

    ``t2i_weight`` weights text→image, image→text takes the rest.
    """

    def __init__(self, *, t2i_weight: float, gather: bool = True) -> None:
        super().__init__()
        self.i2t_weight, self.t2i_weight = _direction_weights(t2i_weight)
        self.gather = gather

    def forward(self, image: Tensor, text: Tensor, logit_scale: Tensor) -> Tensor:
        """Loss of the local rows; its mean over ranks is the global-batch loss."""
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.gather and distributed):
            return _weighted(image, text, logit_scale, self.i2t_weight, self.t2i_weight)
        all_image = _gather_with_grad(image)
        all_text = _gather_with_grad(text)
        scale = logit_scale.exp()
        batch = image.shape[0]
        targets = torch.arange(batch, device=image.device) + dist.get_rank() * batch
        per_image = F.cross_entropy(scale * image @ all_text.T, targets)
        per_text = F.cross_entropy(scale * text @ all_image.T, targets)
        return self.i2t_weight * per_image + self.t2i_weight * per_text
