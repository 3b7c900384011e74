"""Encoded samples and skips gathered per shard; each shard written once it is whole."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from adaptor.data.records import Record, RecordError, is_mask_path, relative_path
from adaptor.data.sources import SourceItem
from adaptor.embed.job import EmbedError
from adaptor.shards.writer import encode_sample, sample_key, write_shard


class ShardAssembler:
    """Collects encoded samples and errors per shard, and writes each shard once it is whole."""

    def __init__(
        self,
        folder: Path,
        items: list[SourceItem],
        shard_size: int,
        source_root: Path,
        log: Callable[[str], None],
        *,
        strict: bool,
    ):
        self.folder = folder
        self.items = items
        self.shard_size = shard_size
        self.source_root = source_root
        self.log = log
        self.strict = strict
        self.samples: dict[int, list[tuple[int, dict[str, bytes]]]] = {}
        self.skipped: dict[int, list[tuple[int, dict[str, str]]]] = {}
        self.truncated: dict[int, int] = {}
        self.seen: dict[int, int] = {}
        self.reported: list[str] = []

    def expected(self, index: int) -> int:
        """How many records of shard ``index`` reach the encoders (those not rejected up front)."""
        start, stop = index * self.shard_size, min((index + 1) * self.shard_size, len(self.items))
        return sum(isinstance(self.items[p], Record) for p in range(start, stop))

    def add_error(self, position: int, err: RecordError) -> None:
        """Record that the record at ``position`` failed in the loader."""
        self._skip(position, err)
        self._count(position)

    def add_encoded(
        self, positions: list[int], arrays: dict[str, list[np.ndarray]], truncated: list[bool]
    ) -> None:
        """Add one encoded batch: per-member arrays by row, in the order of ``positions``."""
        for row, position in enumerate(positions):
            record = self.items[position]
            assert isinstance(record, Record)
            sample_arrays = {name: values[row] for name, values in arrays.items()}
            if not all(np.isfinite(a).all() for a in sample_arrays.values()):
                self._skip(
                    position,
                    RecordError(record.id, "embedding is not finite (NaN or Inf)", record.image),
                )
            else:
                meta = self._meta(record, position, truncated[row])
                sample = encode_sample(sample_key(position), sample_arrays, meta)
                self.samples.setdefault(self._shard(position), []).append((position, sample))
                if truncated[row]:
                    self.truncated[self._shard(position)] = (
                        self.truncated.get(self._shard(position), 0) + 1
                    )
            self._count(position)

    def flush_if_ready(self, index: int) -> None:
        """Write shard ``index`` when every one of its records has come back."""
        if self.seen.get(index, 0) < self.expected(index):
            return
        start, stop = index * self.shard_size, min((index + 1) * self.shard_size, len(self.items))
        for position in range(start, stop):  # errors found before decoding belong to this shard too
            item = self.items[position]
            if isinstance(item, RecordError):
                self._skip(position, item)
        samples = [s for _, s in sorted(self.samples.pop(index, []), key=lambda t: t[0])]
        skipped = [s for _, s in sorted(self.skipped.pop(index, []), key=lambda t: t[0])]
        write_shard(
            self.folder,
            index,
            samples,
            skipped=skipped,
            truncated_reports=self.truncated.pop(index, 0),
        )

    def _skip(self, position: int, err: RecordError) -> None:
        if self.strict:
            raise EmbedError(f"--strict: {err}")
        entry = {"id": err.record_id, "reason": err.reason}
        if err.path:
            entry["file"] = err.path
        self.skipped.setdefault(self._shard(position), []).append((position, entry))
        line = f"skipped {err}"
        self.reported.append(line)
        self.log(line)

    def _count(self, position: int) -> None:
        index = self._shard(position)
        self.seen[index] = self.seen.get(index, 0) + 1
        self.flush_if_ready(index)

    def _shard(self, position: int) -> int:
        return position // self.shard_size

    def _meta(self, record: Record, position: int, truncated: bool) -> dict[str, Any]:
        mask: Any = record.mask
        if is_mask_path(mask):
            mask = relative_path(Path(mask), self.source_root)
        return {
            "id": record.id,
            "position": position,
            "split": record.split,
            "patient_id": record.patient_id,
            "labels": record.labels,
            "report": record.report,
            "image": relative_path(Path(record.image), self.source_root),
            "mask": mask,
            "report_truncated": truncated,
            **({"metadata": record.metadata} if record.metadata else {}),
        }
