"""One embed job: its options, its summary, and the error that stops it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adaptor.config import EmbedOptions
from adaptor.errors import AdaptorError


class EmbedError(AdaptorError, RuntimeError):
    """The embed job cannot go on (strict mode, or an output folder it must not touch)."""


class EmbedConfig(EmbedOptions):
    """One ``adaptor embed`` run: the :class:`~adaptor.config.EmbedOptions` and its I/O."""

    source: str
    out: Path
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
