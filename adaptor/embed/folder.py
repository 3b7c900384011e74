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
from adaptor.config.embed import NO_ENCODER
from adaptor.embed.job import EmbedError
from adaptor.shards.manifest import Manifest, encoder_differences
from adaptor.shards.writer import finished_shards, fold_finished, shard_count

__all__ = ["finish_manifest", "open_output", "require_samples", "shard_count", "shares_of"]

SHOWN_SKIP_REASONS = 5  # distinct skip reasons an error about an empty job quotes


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
        diffs = []
        for role in ("image", "text"):
            held, ran = old.encoders.get(role), encoders.get(role)
            if held and ran:
                diffs += encoder_differences(held, ran, role)
            elif held or ran:
                diffs.append(
                    f"{role} encoder: folder has {_name(held)!r}, this run has {_name(ran)!r}"
                )
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


def _name(encoder: dict[str, Any] | None) -> str:
    return encoder["name"] if encoder else NO_ENCODER


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
    return fold_finished(dataclasses.replace(manifest, complete=False), done)


def finish_manifest(out: Path, manifest: Manifest | None = None) -> Manifest:
    """Fold every shard's progress record into the manifest and mark the job complete."""
    manifest = manifest if manifest is not None else Manifest.load(out)
    done = finished_shards(out)
    fold_finished(manifest, done)
    manifest.complete = len(done) == shard_count(manifest.total_items, manifest.shard_size)
    manifest.save(out)
    remove_stale_partials(out)
    return manifest
