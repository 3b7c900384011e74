"""Embedding shards: WebDataset tars plus a manifest, written atomically and read back checked."""

from adaptor.shards.join import join_shards
from adaptor.shards.manifest import Manifest, ShardEntry, ShardMismatchError, check_encoders
from adaptor.shards.reader import EmbeddingTable, ShardReader

__all__ = [
    "EmbeddingTable",
    "Manifest",
    "ShardEntry",
    "ShardMismatchError",
    "ShardReader",
    "check_encoders",
    "join_shards",
]
