"""The metadata store of an index: one SQLite file mapping FAISS labels to records.

Row ``r`` of table ``records`` is the record whose vectors carry FAISS label ``r`` in both
the image and the text index. Thumbnails (small JPEGs made at build time from the indexed
images) live in their own table, so metadata reads never pull image bytes. The file is
written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from adaptor.atomic import TMP_SUFFIX, atomic_replace

STORE_NAME = "records.sqlite"
METADATA_FIELDS = ("id", "split", "patient_id", "labels", "report", "image")

_SCHEMA = """
CREATE TABLE records (
    row INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    split TEXT,
    patient_id TEXT,
    labels TEXT NOT NULL,
    report TEXT NOT NULL,
    image TEXT NOT NULL
);
CREATE TABLE thumbnails (row INTEGER PRIMARY KEY, jpeg BLOB NOT NULL);
"""


class StoreWriter:
    """Builds ``records.sqlite`` under a temporary name; :meth:`commit` renames it into place."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / STORE_NAME
        self._tmp = self.path.with_name(f"{STORE_NAME}.{os.getpid()}{TMP_SUFFIX}")
        self._tmp.unlink(missing_ok=True)
        self._db = sqlite3.connect(self._tmp)
        self._db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
        self.count = 0

    def add(self, meta: dict[str, Any]) -> int:
        """Append one record's metadata; returns its row (= its FAISS label)."""
        row = self.count
        try:
            self._db.execute(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    row,
                    str(meta["id"]),
                    meta.get("split"),
                    meta.get("patient_id"),
                    json.dumps(meta.get("labels") or {}, sort_keys=True),
                    meta.get("report") or "",
                    str(meta.get("image") or ""),
                ),
            )
        except sqlite3.IntegrityError as err:
            raise ValueError(f"record id {meta['id']!r} appears twice in the shards") from err
        self.count += 1
        return row

    def add_thumbnail(self, row: int, jpeg: bytes) -> None:
        """Store the thumbnail of ``row``."""
        self._db.execute("INSERT INTO thumbnails VALUES (?, ?)", (row, jpeg))

    def commit(self) -> Path:
        """Finish the file (fsync) and rename it to ``records.sqlite``."""
        self._db.commit()
        self._db.close()
        with open(self._tmp, "rb") as fh:
            os.fsync(fh.fileno())
        atomic_replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the unfinished file."""
        self._db.close()
        self._tmp.unlink(missing_ok=True)


class MetadataStore:
    """Read-only access to ``records.sqlite``, safe to share between threads."""

    def __init__(self, folder: Path):
        path = Path(folder) / STORE_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {STORE_NAME} in {folder}")
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0]

    def rows(self, rows: list[int]) -> dict[int, dict[str, Any]]:
        """Metadata of the given rows (FAISS labels), keyed by row; unknown rows are absent."""
        if not rows:
            return {}
        marks = ",".join("?" * len(rows))
        with self._lock:
            found = self._db.execute(
                f"SELECT r.*, t.row IS NOT NULL AS has_thumbnail FROM records r "
                f"LEFT JOIN thumbnails t ON t.row = r.row WHERE r.row IN ({marks})",
                [int(r) for r in rows],
            ).fetchall()
        return {item["row"]: _metadata(item) for item in found}

    def by_id(self, record_id: str) -> dict[str, Any] | None:
        """Metadata of one record, or None when no record has that id."""
        with self._lock:
            item = self._db.execute(
                "SELECT r.*, t.row IS NOT NULL AS has_thumbnail FROM records r "
                "LEFT JOIN thumbnails t ON t.row = r.row WHERE r.id = ?",
                (record_id,),
            ).fetchone()
        return None if item is None else _metadata(item)

    def first_with_image(self, split: str | None = None) -> dict[str, Any] | None:
        """The first record (of ``split``, if given) whose image was readable at build time."""
        with self._lock:
            item = self._db.execute(
                "SELECT r.*, 1 AS has_thumbnail FROM records r JOIN thumbnails t "
                "ON t.row = r.row WHERE ? IS NULL OR r.split = ? ORDER BY r.row LIMIT 1",
                (split, split),
            ).fetchone()
        return None if item is None else _metadata(item)

    def thumbnail(self, record_id: str) -> bytes | None:
        """The JPEG thumbnail of a record, or None (unknown id, or no image at build time)."""
        with self._lock:
            item = self._db.execute(
                "SELECT t.jpeg FROM records r JOIN thumbnails t ON t.row = r.row WHERE r.id = ?",
                (record_id,),
            ).fetchone()
        return None if item is None else bytes(item[0])

    def thumbnail_count(self) -> int:
        """How many records have a thumbnail."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM thumbnails").fetchone()[0]

    def close(self) -> None:
        """Close the connection."""
        self._db.close()


def _metadata(item: sqlite3.Row) -> dict[str, Any]:
    out = {name: item[name] for name in METADATA_FIELDS}
    out["labels"] = json.loads(out["labels"])
    out["has_thumbnail"] = bool(item["has_thumbnail"])
    return out
