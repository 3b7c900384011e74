"""Downstream heads on frozen features: classification heads and segmentation decoders."""

from adaptor.heads.classification import HeadError, LinearHead, MLPHead, build_head
from adaptor.heads.segmentation import SegmentationDecoder, segmentation_loss

__all__ = [
    "HeadError",
    "LinearHead",
    "MLPHead",
    "SegmentationDecoder",
    "build_head",
    "segmentation_loss",
]
