"""The embed stage: records → frozen encoders → embedding shards, and feature-map caches.

- :mod:`~adaptor.embed.stage`: :func:`embed`, one process (or one share of a cluster job)
- :mod:`~adaptor.embed.actors`: the same job shared out to encoder actors on Ray
- :mod:`~adaptor.embed.feature_maps`: cached encoder feature maps for segmentation
- :mod:`~adaptor.embed.pixels`: how every one of them reads a record's image
"""

from adaptor.embed.folder import finish_manifest, require_samples, shard_count
from adaptor.embed.job import EmbedConfig, EmbedError, EmbedResult
from adaptor.embed.stage import embed

__all__ = [
    "EmbedConfig",
    "EmbedError",
    "EmbedResult",
    "embed",
    "finish_manifest",
    "require_samples",
    "shard_count",
]
