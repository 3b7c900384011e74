"""Atomic file output: write to a temporary sibling, fsync, then rename into place.

A reader (or a rerun after ``kill -9``) therefore sees either the old file or the
complete new one, never a partial write. A file put in place inside the working copy of a
remote folder is uploaded right after, the same way (:mod:`adaptor.remote`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from adaptor import remote
from adaptor.remote import TMP_SUFFIX


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Open ``path`` for writing so that it only appears once the block exits cleanly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        atomic_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_replace(tmp: str | Path, path: str | Path) -> None:
    """Rename the finished file ``tmp`` onto ``path`` (and upload it, in a remote folder's
    working copy): for files that a library writes to a temporary name itself."""
    with remote.publishing(Path(path)):
        os.replace(tmp, path)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as pretty JSON atomically."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


def remove(path: str | Path) -> None:
    """Delete a file (and its remote copy, in the working copy of a remote folder)."""
    remote.remove(Path(path))


def remove_stale_partials(folder: str | Path) -> int:
    """Delete leftovers of writes that were killed mid-way (here and on the remote, for a
    working copy); return how many were here."""
    removed = 0
    for stale in Path(folder).glob(f"*{TMP_SUFFIX}"):
        stale.unlink(missing_ok=True)
        removed += 1
    remote.remove_partials(Path(folder))
    return removed
