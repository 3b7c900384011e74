"""The index folder: its files, its manifest, and loading what it holds.

Layout::

    manifest.json      what it was built from (shards, Adaptor sha256, encoder fingerprints),
                       per side: factory, count, tuned search parameters, measured recall@10
    image.faiss        image vectors (Adaptor image path), inner product on unit vectors
    text.faiss         report vectors (Adaptor text path); records with empty reports are left out
    records.sqlite     FAISS label → record id, split, labels, report, image path, thumbnail
    adaptor/           a copy of the Adaptor the vectors came from (queries need it)

Every file is written under a temporary name and renamed; ``manifest.json`` comes last and
says ``complete``, so a folder without a complete manifest holds no usable index.
Building is :mod:`adaptor.retrieval.index`; searching :mod:`adaptor.retrieval.searcher`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import faiss

from adaptor.atomic import (
    TMP_SUFFIX,
    atomic_open,
    atomic_replace,
    atomic_write_json,
    remove,
    remove_stale_partials,
)
from adaptor.model import Adaptor
from adaptor.model.adaptor import CONFIG_NAME, WEIGHTS_NAME
from adaptor.retrieval.errors import IndexMismatchError, IndexNotFoundError
from adaptor.retrieval.tuning import set_search_params

MANIFEST_NAME = "manifest.json"
ADAPTOR_DIR = "adaptor"
FORMAT_VERSION = 1
SIDES = ("image", "text")


def faiss_name(side: str) -> str:
    """The file name of one side's FAISS index."""
    return f"{side}.faiss"


# -- the manifest ---------------------------------------------------------------------------


def prepare(folder: Path) -> None:
    """Make ``folder`` ready for a build: created, no partial files, no manifest (incomplete)."""
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(folder)
    remove(folder / MANIFEST_NAME)


def existing_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest ``folder`` holds, finished or not (None: none, or unreadable)."""
    try:
        return json.loads((Path(folder) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a finished index folder; raises IndexNotFoundError otherwise."""
    folder = Path(folder)
    manifest = existing_manifest(folder)
    if manifest is None:
        raise IndexNotFoundError(
            f"no index in {folder}: {MANIFEST_NAME} is missing (build one with `adaptor index`)"
        )
    if not manifest.get("complete"):
        raise IndexNotFoundError(f"the index in {folder} is incomplete: rerun `adaptor index`")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexMismatchError(
            f"the index in {folder} has format {manifest.get('format_version')}, this version "
            f"reads {FORMAT_VERSION}: rebuild it with `adaptor index`"
        )
    return manifest


def write_manifest(folder: Path, content: dict[str, Any]) -> dict[str, Any]:
    """Write the manifest, last, marking the folder complete; returns what was written."""
    manifest = {"format_version": FORMAT_VERSION, "complete": True, **content}
    atomic_write_json(Path(folder) / MANIFEST_NAME, manifest)
    return manifest


# -- FAISS indexes --------------------------------------------------------------------------


def write_faiss(folder: Path, side: str, index: faiss.Index) -> None:
    """Write one side's FAISS index (under a temporary name, synced, then renamed)."""
    path = Path(folder) / faiss_name(side)
    tmp = path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        atomic_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_faiss(folder: Path, manifest: dict[str, Any], side: str) -> faiss.Index:
    """Read one side's FAISS index and apply its tuned search parameters."""
    spec = manifest["sides"][side]
    path = Path(folder) / spec["file"]
    if not path.is_file():
        raise IndexNotFoundError(f"the index in {folder} lacks {spec['file']}: rebuild it")
    index = faiss.read_index(str(path))
    set_search_params(index, spec.get("params") or {})
    return index


# -- the Adaptor ----------------------------------------------------------------------------


def adaptor_sha256(adaptor_dir: Path) -> str:
    """sha256 over an Adaptor folder's weights and config (what the index manifest names)."""
    digest = hashlib.sha256()
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        path = Path(adaptor_dir) / name
        if not path.is_file():
            raise FileNotFoundError(f"no Adaptor at {adaptor_dir}: {name} is missing")
        with open(path, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def copy_adaptor(adaptor_dir: Path, folder: Path) -> str:
    """Copy an Adaptor's weights and config into the folder; the copy's sha256."""
    dst = Path(folder) / ADAPTOR_DIR
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        with open(Path(adaptor_dir) / name, "rb") as fh, atomic_open(dst / name, "wb") as copy:
            shutil.copyfileobj(fh, copy)
    return adaptor_sha256(dst)


def load_index_adaptor(folder: Path, manifest: dict[str, Any]) -> Adaptor:
    """The Adaptor copy in the index folder, refused if it is not the one the index names."""
    folder = Path(folder)
    found = adaptor_sha256(folder / ADAPTOR_DIR)
    if found != manifest["adaptor"]["sha256"]:
        raise IndexMismatchError(
            f"the Adaptor in {folder / ADAPTOR_DIR} (sha256 {found[:12]}…) is not the one the "
            f"index was built with (sha256 {manifest['adaptor']['sha256'][:12]}…): rebuild the "
            "index with `adaptor index`"
        )
    return Adaptor.from_pretrained(folder / ADAPTOR_DIR).eval()
