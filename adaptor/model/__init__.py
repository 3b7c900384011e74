"""The trainable Adaptor and its contrastive loss."""

from adaptor.model.adaptor import Adaptor, AdaptorConfig, AdaptorOutput
from adaptor.model.compat import AdaptorMismatchError, load_adaptor_for
from adaptor.model.loss import ClipLoss, clip_loss

__all__ = [
    "Adaptor",
    "AdaptorConfig",
    "AdaptorMismatchError",
    "AdaptorOutput",
    "ClipLoss",
    "clip_loss",
    "load_adaptor_for",
]
