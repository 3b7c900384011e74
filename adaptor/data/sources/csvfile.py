"""Opening CSV files for every source: no field-size limit, a BOM skipped, bad bytes kept apart.

Python's ``csv`` refuses a field over 131,072 characters (``_csv.Error: field larger
than field limit``), so one long report would end the whole read. :func:`open_csv`
lifts that limit (process-wide, to the largest value a C ``long`` holds) before it
opens the file; a long report then reaches the text encoder, which truncates it and
counts it as truncated.
"""

from __future__ import annotations

import csv
import ctypes
import gzip
import sys
from pathlib import Path
from typing import IO

# the largest field size csv accepts: its limit is a C long (32 bits on Windows)
FIELD_SIZE_LIMIT = min(sys.maxsize, 2 ** (8 * ctypes.sizeof(ctypes.c_long) - 1) - 1)


def open_csv(path: Path, *, errors: str = "replace") -> IO[str]:
    """Open a ``.csv`` (or ``.csv.gz``) file as UTF-8 text for ``csv`` readers.

    A leading byte-order mark is skipped. ``errors`` is the decoding policy for bytes
    that are not UTF-8: ``replace`` (U+FFFD) by default, ``surrogateescape`` to find
    them afterwards and report the row.
    """
    csv.field_size_limit(FIELD_SIZE_LIMIT)
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", newline="", encoding="utf-8-sig", errors=errors)
    return open(path, newline="", encoding="utf-8-sig", errors=errors)
