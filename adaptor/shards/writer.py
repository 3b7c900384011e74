"""Write embedding samples into WebDataset tar shards, one finished shard at a time.

Each shard is written under a temporary name and renamed when complete; a small
progress file per shard (in ``.progress/``) is written after the rename. A shard
counts as finished only when both exist, so a job killed at any moment leaves
whole shards behind and a rerun redoes just the unfinished ones.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from adaptor.atomic import atomic_open, atomic_write_json
from adaptor.shards.manifest import Manifest, ShardEntry

PROGRESS_DIR = ".progress"


def shard_count(total_items: int, shard_size: int) -> int:
    """Number of shards of a job with ``total_items`` records (at least one, maybe empty)."""
    return max(1, -(-total_items // shard_size))


def shard_name(index: int) -> str:
    """File name of shard ``index``."""
    return f"shard-{index:06d}.tar"


def sample_key(position: int) -> str:
    """WebDataset key of the record at ``position`` in its source (ids may hold dots or slashes)."""
    return f"{position:09d}"


def encode_sample(
    key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]
) -> dict[str, bytes]:
    """Serialise one sample: each array as ``NAME.npy``, metadata as ``json``."""
    sample: dict[str, Any] = {"__key__": key}
    for name, array in arrays.items():
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        sample[f"{name}.npy"] = buf.getvalue()
    sample["json"] = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return sample


def write_shard(
    folder: Path,
    index: int,
    samples: list[dict[str, bytes]],
    *,
    skipped: list[dict[str, str]],
    truncated_reports: int,
) -> ShardEntry:
    """Write one complete shard atomically, then record it as finished; return its entry."""
    path = Path(folder) / shard_name(index)
    with atomic_open(path, "wb") as fh:
        # fixed owner and mtime make the tar bytes a pure function of the samples
        writer = wds.TarWriter(fh, encoder=False, mtime=0, user="adaptor", group="adaptor")
        for sample in samples:
            writer.write(sample)
        writer.close()
    entry = ShardEntry(
        name=path.name,
        index=index,
        count=len(samples),
        sha256=file_sha256(path),
        bytes=path.stat().st_size,
    )
    atomic_write_json(
        _progress_path(folder, index),
        {"shard": entry.__dict__, "skipped": skipped, "truncated_reports": truncated_reports},
    )
    return entry


def finished_shards(folder: Path) -> dict[int, dict[str, Any]]:
    """Progress records of shards that are complete on disk, keyed by shard index."""
    done: dict[int, dict[str, Any]] = {}
    progress_dir = Path(folder) / PROGRESS_DIR
    if not progress_dir.is_dir():
        return done
    for path in sorted(progress_dir.glob("shard-*.json")):
        info = json.loads(path.read_text(encoding="utf-8"))
        entry = info["shard"]
        tar = Path(folder) / entry["name"]
        if tar.is_file() and tar.stat().st_size == entry["bytes"]:
            done[entry["index"]] = info
    return done


def fold_finished(manifest: Manifest, done: dict[int, dict[str, Any]]) -> Manifest:
    """Set the manifest's shard list, skips and totals from progress records; return it."""
    manifest.shards = [ShardEntry(**done[i]["shard"]) for i in sorted(done)]
    manifest.skipped = [s for i in sorted(done) for s in done[i]["skipped"]]
    manifest.truncated_reports = sum(done[i]["truncated_reports"] for i in done)
    manifest.count = sum(s.count for s in manifest.shards)
    return manifest


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _progress_path(folder: Path, index: int) -> Path:
    return Path(folder) / PROGRESS_DIR / f"shard-{index:06d}.json"
