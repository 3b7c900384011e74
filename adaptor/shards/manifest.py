"""``manifest.json``: what a shard folder holds and which encoders made it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adaptor.atomic import atomic_write_json
from adaptor.errors import AdaptorError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
# the arrays a sample may store, in the order a manifest lists them, and whose encoder made each
MEMBER_ORDER = ("image", "text", "image_patches", "text_states")
ROLE_MEMBERS = {"image": ("image", "image_patches"), "text": ("text", "text_states")}


class ShardMismatchError(AdaptorError, ValueError):
    """Shards made by other encoders (or another source) than the ones asked for."""


@dataclass
class ShardEntry:
    """One finished tar file."""

    name: str
    index: int
    count: int
    sha256: str
    bytes: int


@dataclass
class Manifest:
    """Everything a reader needs to trust a shard folder.

    ``encoders`` maps ``image``/``text`` to ``{name, fingerprint, dim, dtype}``.
    ``skipped`` lists ``{id, reason}`` for every record left out. A one-sided folder
    (``adaptor embed`` with an encoder ``none``) has one role only; a folder made by
    :func:`~adaptor.shards.join.join_shards` names its inputs in ``joined_from``.
    """

    source: str
    encoders: dict[str, dict[str, Any]]
    shard_size: int
    total_items: int
    members: list[str]
    complete: bool = False
    count: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    truncated_reports: int = 0
    shards: list[ShardEntry] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    joined_from: dict[str, dict[str, str]] | None = None

    def save(self, folder: str | Path) -> None:
        """Write ``folder/manifest.json`` atomically (``joined_from`` only when set)."""
        raw = asdict(self)
        if raw["joined_from"] is None:
            del raw["joined_from"]
        atomic_write_json(Path(folder) / MANIFEST_NAME, raw)

    @classmethod
    def load(cls, folder: str | Path) -> Manifest:
        """Read ``folder/manifest.json``; raise FileNotFoundError naming the folder when absent."""
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"no {MANIFEST_NAME} in {folder}: not a shard folder (run `adaptor embed`)"
            )
        raw = json.loads(path.read_text(encoding="utf-8"))
        raw["shards"] = [ShardEntry(**s) for s in raw.get("shards", [])]
        return cls(**raw)

    @staticmethod
    def exists(folder: str | Path) -> bool:
        return (Path(folder) / MANIFEST_NAME).is_file()


def encoder_differences(found: dict[str, Any], wanted: dict[str, Any], role: str) -> list[str]:
    """Human-readable differences between the encoder a manifest names and the one wanted."""
    diffs = []
    for key in ("name", "fingerprint", "dim"):
        if key in wanted and wanted[key] is not None and found.get(key) != wanted[key]:
            diffs.append(
                f"{role} encoder {key}: shards have {found.get(key)!r}, asked for {wanted[key]!r}"
            )
    return diffs


def check_encoders(manifest: Manifest, folder: str | Path, **wanted: dict[str, Any] | None) -> None:
    """Raise ShardMismatchError listing every difference between the manifest and ``wanted``.

    ``wanted`` is ``image=`` and/or ``text=`` as dicts with any of name, fingerprint, dim.
    """
    diffs: list[str] = []
    for role, spec in wanted.items():
        if spec is None:
            continue
        if role not in manifest.encoders:
            diffs.append(f"shards hold no {role} embeddings")
            continue
        diffs += encoder_differences(manifest.encoders[role], spec, role)
    if diffs:
        raise ShardMismatchError(
            f"shards in {folder} do not match the encoders asked for:\n  " + "\n  ".join(diffs)
        )
