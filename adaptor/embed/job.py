"""One embed job: its options, its summary, and the error that stops it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adaptor.encoders import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER
from adaptor.errors import AdaptorError


class EmbedError(AdaptorError, RuntimeError):
    """The embed job cannot go on (strict mode, or an output folder it must not touch)."""


@dataclass
class EmbedConfig:
    """Options of one ``adaptor embed`` run."""

    source: str
    out: Path
    image_encoder: str = DEFAULT_IMAGE_ENCODER
    text_encoder: str = DEFAULT_TEXT_ENCODER
    batch_size: int = 32
    shard_size: int = 1000
    loader_workers: int = 2
    device: str = "auto"
    strict: bool = False
    allow_empty_reports: bool = False
    patch_tokens: bool = False
    text_states: bool = False
    progress: bool = True
    # a share of the job (cluster actors): embed only these shard indices, leave other writers'
    # partial files alone, and leave the manifest for the driver's finish_manifest
    only_shards: list[int] | None = None


@dataclass
class EmbedResult:
    """What an embed run did."""

    folder: Path
    count: int
    skipped: list[dict[str, str]]
    truncated_reports: int
    shards_written: int
    shards_reused: int
    seconds: float  # the whole run, model loading included
    samples_per_s: float  # records encoded per second of the decode → encode → write loop
    new_skips: list[str] = field(default_factory=list)
