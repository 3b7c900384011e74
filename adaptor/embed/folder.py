"""An embed job's output folder: open or check it, fold finished shards into its manifest.

Each finished shard leaves its own progress record (:mod:`adaptor.shards.writer`); the
manifest's shard list, skips and totals are folded from those, so writers never share a
file and the process that runs last finishes the folder.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

from adaptor.atomic import remove_stale_partials
from adaptor.embed.job import EmbedError
from adaptor.shards.manifest import Manifest, ShardEntry, encoder_differences
from adaptor.shards.writer import finished_shards

SHOWN_SKIP_REASONS = 5  # distinct skip reasons an error about an empty job quotes


def shard_count(total_items: int, shard_size: int) -> int:
    """Number of shards of a job with ``total_items`` records (at least one, maybe empty)."""
    return max(1, -(-total_items // shard_size))


def open_output(
    out: Path,
    *,
    source_spec: str,
    shard_size: int,
    total_items: int,
    members: list[str],
    encoders: dict[str, dict[str, Any]],
    shared: bool = False,
) -> Manifest:
    """Create the manifest of a new job, or check that an existing folder is this same job.

    ``shared``: other processes may be writing shards here now, so their partial files stay.
    """
    if out.is_dir() and Manifest.exists(out):
        old = Manifest.load(out)
        diffs = encoder_differences(old.encoders.get("image", {}), encoders["image"], "image")
        diffs += encoder_differences(old.encoders.get("text", {}), encoders["text"], "text")
        for what, before, now in (
            ("source", old.source, source_spec),
            ("shard size", old.shard_size, shard_size),
            ("number of records", old.total_items, total_items),
            ("stored members", old.members, members),
        ):
            if before != now:
                diffs.append(f"{what}: folder has {before!r}, this run has {now!r}")
        if diffs:
            raise EmbedError(
                f"{out} already holds shards of another embed job; refusing to mix them:\n  "
                + "\n  ".join(diffs)
                + "\nchoose another --out, or delete the folder to start over"
            )
        if not shared:
            remove_stale_partials(out)
        return old
    if out.is_dir() and any(out.glob("*.tar")):
        raise EmbedError(f"{out} holds .tar files but no manifest.json; refusing to mix shards")
    out.mkdir(parents=True, exist_ok=True)
    if not shared:
        remove_stale_partials(out)
    manifest = Manifest(
        source=source_spec,
        encoders=encoders,
        shard_size=shard_size,
        total_items=total_items,
        members=members,
    )
    manifest.save(out)
    return manifest


def require_samples(manifest: Manifest, out: Path) -> None:
    """Raise EmbedError when a finished job holds no sample, naming the source and the reasons
    its records were skipped; the manifest with its skip report stays in ``out``."""
    if manifest.count:
        return
    if not manifest.skipped:
        raise EmbedError(f"0 samples: the source {manifest.source} has no records")
    reasons = Counter(s["reason"] for s in manifest.skipped).most_common()
    shown = "; ".join(f"{n}x {reason}" for reason, n in reasons[:SHOWN_SKIP_REASONS])
    others = len(reasons) - SHOWN_SKIP_REASONS
    more = f"; and {others} other reason(s)" if others > 0 else ""
    raise EmbedError(
        f"0 samples: all {len(manifest.skipped)} records of {manifest.source} were skipped "
        f"({shown}{more}); every skip is listed in {out / 'manifest.json'}"
    )


def shares_of(out: Path, manifest: Manifest, wanted: list[int]) -> Manifest:
    """A copy of ``manifest`` holding only the finished shards in ``wanted`` (not saved)."""
    done = {i: info for i, info in finished_shards(out).items() if i in wanted}
    return _fold(dataclasses.replace(manifest, complete=False), done)


def finish_manifest(out: Path, manifest: Manifest | None = None) -> Manifest:
    """Fold every shard's progress record into the manifest and mark the job complete."""
    manifest = manifest if manifest is not None else Manifest.load(out)
    done = finished_shards(out)
    _fold(manifest, done)
    manifest.complete = len(done) == shard_count(manifest.total_items, manifest.shard_size)
    manifest.save(out)
    remove_stale_partials(out)
    return manifest


def _fold(manifest: Manifest, done: dict[int, dict[str, Any]]) -> Manifest:
    """Set the manifest's shard list and totals from progress records; return it."""
    manifest.shards = [ShardEntry(**done[i]["shard"]) for i in sorted(done)]
    manifest.skipped = [s for i in sorted(done) for s in done[i]["skipped"]]
    manifest.truncated_reports = sum(done[i]["truncated_reports"] for i in done)
    manifest.count = sum(s.count for s in manifest.shards)
    return manifest
