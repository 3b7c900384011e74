"""The trainable Adaptor and its contrastive loss."""

from adaptor.model.adaptor import Adaptor, AdaptorConfig, AdaptorOutput
from adaptor.model.loss import ClipLoss, clip_loss

__all__ = ["Adaptor", "AdaptorConfig", "AdaptorOutput", "ClipLoss", "clip_loss"]
