"""Build an index folder (:mod:`adaptor.retrieval.folder`): FAISS indexes over Adaptor-space
vectors plus metadata.

Both FAISS indexes are wrapped in ``IDMap2`` with the record's store row as label. Building
streams the shards batch by batch: vectors go straight into FAISS (an index that needs
training is trained on a uniform sample first, in a second pass). An approximate index is
then tuned: a uniform sample of the records' vectors, used as queries (text vectors
against the image index, image vectors against both), is searched exactly in the same
pass, and the search knob (``efSearch`` / ``nprobe``) is set to the smallest value that
reaches the target recall@10.
A killed build leaves no complete manifest and is simply rebuilt; a rebuild from the same
shards and Adaptor is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

from adaptor.data.image_io import ImageReadError
from adaptor.errors import AdaptorError
from adaptor.model import Adaptor, load_adaptor_for
from adaptor.retrieval.errors import RetrievalError
from adaptor.retrieval.folder import (
    SIDES,
    adaptor_sha256,
    copy_adaptor,
    existing_manifest,
    faiss_name,
    prepare,
    write_faiss,
    write_manifest,
)
from adaptor.retrieval.store import StoreWriter
from adaptor.retrieval.thumbnails import make_thumbnail
from adaptor.retrieval.tuning import ExactTopK, TuneResult, is_exact, layers, tune
from adaptor.shards import Manifest, ShardReader

EXACT_FACTORY = "Flat"
APPROX_FACTORY = "HNSW32,Flat"
AUTO_EXACT_MAX = 100_000  # ``factory=None``: exact search up to this many records, else HNSW
TUNE_K = 10
TUNE_QUERIES = 500  # sampled tuning queries (half image vectors, half text vectors)
TRAIN_PER_LIST = 64  # IVF training sample: this many vectors per inverted list …
TRAIN_MAX = 262_144  # … at most (and at least what PQ needs)

Log = Callable[[str], None]


@dataclass
class ProjectedBatch:
    """One batch of records in the shared space: shard metadata rows and unit vectors [B, W]."""

    meta: list[dict[str, Any]]
    image: np.ndarray
    text: np.ndarray


@dataclass
class SideInfo:
    """One FAISS index of the folder."""

    file: str
    factory: str
    count: int
    params: dict[str, int] = field(default_factory=dict)
    recall_at_10: float | None = None


@dataclass
class IndexInfo:
    """What :func:`build_index` left in ``out`` (``reused``: it was already up to date)."""

    out: Path
    count: int
    factory: str
    sides: dict[str, SideInfo]
    thumbnails: int
    reused: bool
    seconds: float


def build_index(
    shards: Path,
    adaptor_dir: Path,
    out: Path,
    *,
    factory: str | None = None,
    target_recall: float = 0.95,
    progress: bool = True,
    log: Log = tqdm.write,
    split: str | None = None,
    thumbnails: bool = True,
    batch_size: int = 1024,
) -> IndexInfo:
    """Project every record of ``shards`` through the Adaptor and index both sides in ``out``.

    ``factory`` is a FAISS factory string (``Flat``, ``HNSW32,Flat``, ``IVF4096,PQ64``…);
    None picks exact search up to 100k records and a tuned ``HNSW32,Flat`` above.
    ``split`` indexes only that split. Rebuilding for the same shards, Adaptor and options
    returns the existing index at once.
    """
    shards, adaptor_dir, out = Path(shards), Path(adaptor_dir), Path(out)
    if not 0.0 < target_recall <= 1.0:
        raise RetrievalError(f"target recall must be in (0, 1], got {target_recall}")
    reader = ShardReader(shards)
    adaptor = load_adaptor_for(adaptor_dir, reader.manifest, shards)
    key = {
        "shards": shards_key(reader.manifest),
        "adaptor_sha256": adaptor_sha256(adaptor_dir),
        "factory": factory or "auto",
        "target_recall": target_recall,
        "split": split,
        "thumbnails": thumbnails,
    }
    existing = existing_manifest(out)
    if existing and existing.get("complete") and existing.get("key") == key:
        log(f"[index] {out} is up to date ({existing['count']} records)")
        return _info(out, existing, reused=True)
    root = _source_root(reader.manifest.source, log) if thumbnails else None

    def batches() -> Iterator[ProjectedBatch]:
        return project_shards(reader, adaptor, split=split, batch_size=batch_size)

    return write_index(
        out,
        batches,
        total=reader.manifest.count,
        width=adaptor.config.width,
        encoders={
            role: {k: spec.get(k) for k in ("name", "fingerprint", "dim")}
            for role, spec in reader.manifest.encoders.items()
        },
        adaptor_dir=adaptor_dir,
        key=key,
        factory=factory,
        target_recall=target_recall,
        thumbnail_root=root,
        info={
            "shards": str(shards.resolve()),
            "source": reader.manifest.source,
            "image_root": str(root) if root else None,
            "split": split,
        },
        progress=progress,
        log=log,
    )


def project_shards(
    reader: ShardReader, adaptor: Adaptor, *, split: str | None = None, batch_size: int = 1024
) -> Iterator[ProjectedBatch]:
    """Stream the shards through the Adaptor's unpaired paths (as retrieval queries run)."""
    adaptor = adaptor.eval()
    for batch in reader.batches(batch_size, split=split):
        with torch.inference_mode():
            image = adaptor.encode_image(batch["image"]).float().numpy()
            text = adaptor.encode_text(batch["text"]).float().numpy()
        yield ProjectedBatch(batch["meta"], image, text)


def write_index(
    out: Path,
    batches: Callable[[], Iterator[ProjectedBatch]],
    *,
    total: int,
    width: int,
    encoders: dict[str, dict[str, Any]],
    adaptor_dir: Path,
    key: dict[str, Any],
    factory: str | None = None,
    target_recall: float = 0.95,
    thumbnail_root: Path | None = None,
    info: dict[str, Any] | None = None,
    progress: bool = True,
    log: Log = tqdm.write,
) -> IndexInfo:
    """Write an index folder from a re-iterable stream of projected batches.

    ``batches()`` must yield the same records in the same order each time it is called (it
    is read once for an exact index, twice for an approximate one). ``total`` is an upper
    bound on the record count, for progress and the automatic factory choice.
    """
    started = time.perf_counter()
    prepare(out)
    factory = factory or (EXACT_FACTORY if total <= AUTO_EXACT_MAX else APPROX_FACTORY)
    indexes = {side: new_index(width, factory) for side in SIDES}
    exact = is_exact(indexes["image"])
    trains = not indexes["image"].is_trained
    log(
        f"[index] {total} records -> {out} ({factory}, "
        + ("exact" if exact else f"approximate, tuned to recall@{TUNE_K} >= {target_recall}")
        + ")"
    )
    store = StoreWriter(out)
    try:
        first = _first_pass(
            batches, store, indexes, total, width, trains, exact, thumbnail_root, progress
        )
        if store.count == 0:
            raise RetrievalError("no records to index" + (f" in {info}" if info else ""))
        tuned: dict[str, TuneResult] = {}
        if trains or not exact:
            truth = _second_pass(batches, indexes, first, trains, exact, total, progress, log)
            for side in SIDES:
                if exact:
                    continue
                groups = first.queries[side]
                tuned[side] = tune(indexes[side], groups, truth[side], target_recall)
                _log_tuning(side, tuned[side], target_recall, log)
        store.commit()
    except BaseException:
        store.abort()
        raise
    for side in SIDES:
        write_faiss(out, side, indexes[side])
    sha256 = copy_adaptor(adaptor_dir, out)
    content = {
        "key": key,
        **(info or {}),
        "adaptor": {"path": str(Path(adaptor_dir).resolve()), "sha256": sha256, "width": width},
        "encoders": encoders,
        "metric": "inner_product",
        "count": store.count,
        "factory": factory,
        "target_recall": target_recall,
        "thumbnails": first.thumbnails,
        "sides": {
            side: {
                "file": faiss_name(side),
                "factory": factory,
                "count": int(indexes[side].ntotal),
                "params": tuned[side].params if side in tuned else {},
                f"recall_at_{TUNE_K}": tuned[side].recall if side in tuned else 1.0,
                "sweep": tuned[side].sweep if side in tuned else [],
            }
            for side in SIDES
        },
        "seconds": round(time.perf_counter() - started, 2),
    }
    manifest = write_manifest(out, content)
    log(
        f"[index] {store.count} records indexed ({indexes['text'].ntotal} with reports, "
        f"{first.thumbnails} thumbnails) in {manifest['seconds']:.1f}s"
    )
    return _info(out, manifest, reused=False)


# -- the build's key -----------------------------------------------------------------------


def shards_key(manifest: Manifest) -> str:
    """sha256 naming a shard folder's content: its source and every shard's checksum."""
    content = [manifest.source, manifest.encoders, [(s.name, s.sha256) for s in manifest.shards]]
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


# -- building blocks ------------------------------------------------------------------------


@dataclass
class _FirstPass:
    """Held-out tuning queries per side ([image queries, text queries]) and training samples."""

    queries: dict[str, list[np.ndarray]]
    train: dict[str, np.ndarray]
    thumbnails: int


class _Reservoir:
    """A uniform random sample of at most ``size`` vectors from a stream (reservoir sampling)."""

    def __init__(self, size: int, width: int, seed: int):
        self.size = size
        self.seen = 0
        self._rng = np.random.default_rng(seed)
        self._vectors = np.empty((size, width), dtype=np.float32)

    def add(self, vectors: np.ndarray) -> None:
        n = len(vectors)
        fill = min(max(self.size - self.seen, 0), n)
        self._vectors[self.seen : self.seen + fill] = vectors[:fill]
        if fill < n and self.size:
            # item t (0-based, over the whole stream) replaces slot j ~ U[0, t] when j < size
            t = self.seen + np.arange(fill, n)
            slots = (self._rng.random(n - fill) * (t + 1)).astype(np.int64)
            chosen = np.flatnonzero(slots < self.size)
            for offset, slot in zip(chosen, slots[chosen], strict=True):
                self._vectors[slot] = vectors[fill + offset]
        self.seen += n

    @property
    def sample(self) -> np.ndarray:
        return np.ascontiguousarray(self._vectors[: min(self.seen, self.size)])


def _first_pass(
    batches: Callable[[], Iterator[ProjectedBatch]],
    store: StoreWriter,
    indexes: dict[str, faiss.Index],
    total: int,
    width: int,
    trains: bool,
    exact: bool,
    thumbnail_root: Path | None,
    progress: bool,
) -> _FirstPass:
    """Metadata, thumbnails, samples; vectors go into an index that needs no training."""
    n_train = train_size(indexes["image"], total) if trains else 0
    n_query = 0 if exact else TUNE_QUERIES // 2
    train = {side: _Reservoir(n_train, width, seed=i) for i, side in enumerate(SIDES)}
    queries = {q: _Reservoir(n_query, width, seed=10 + i) for i, q in enumerate(SIDES)}
    thumbnails = 0
    bar = tqdm(total=total, desc="index: read", unit="rec", disable=not progress)
    for batch in batches():
        rows = np.array([store.add(m) for m in batch.meta], dtype=np.int64)
        if thumbnail_root is not None:
            thumbnails += _add_thumbnails(store, rows, batch.meta, thumbnail_root)
        vectors = _side_vectors(batch, rows)
        for side, (vecs, labels) in vectors.items():
            train[side].add(vecs)
            queries[side].add(vecs)
            if not trains:
                indexes[side].add_with_ids(vecs, labels)
        bar.update(len(rows))
    bar.close()
    sample = {side: queries[side].sample for side in SIDES}
    # the image index answers text and image queries; the report index answers image queries
    return _FirstPass(
        queries={"image": [sample["text"], sample["image"]], "text": [sample["image"]]},
        train={side: train[side].sample for side in SIDES},
        thumbnails=thumbnails,
    )


def _second_pass(
    batches: Callable[[], Iterator[ProjectedBatch]],
    indexes: dict[str, faiss.Index],
    first: _FirstPass,
    trains: bool,
    exact: bool,
    total: int,
    progress: bool,
    log: Log,
) -> dict[str, list[np.ndarray]]:
    """Train (if needed) and add vectors; collect the exact top-k of the tuning queries."""
    if trains:
        for side in SIDES:
            sample = first.train[side]
            if len(sample) == 0:
                continue
            log(f"[index] training the {side} index on {len(sample)} sampled vectors")
            indexes[side].train(sample)
    truth = {
        side: [ExactTopK(q, TUNE_K) for q in first.queries[side]] if not exact else []
        for side in SIDES
    }
    bar = tqdm(
        total=total,
        desc="index: add" if trains else "index: tune",
        unit="rec",
        disable=not progress,
    )
    row = 0
    for batch in batches():
        rows = np.arange(row, row + len(batch.meta), dtype=np.int64)
        row += len(rows)
        for side, (vecs, labels) in _side_vectors(batch, rows).items():
            if trains and len(vecs):
                indexes[side].add_with_ids(vecs, labels)
            for acc in truth[side]:
                acc.add(vecs, labels)
        bar.update(len(rows))
    bar.close()
    return {side: [acc.labels() for acc in truth[side]] for side in SIDES}


def _side_vectors(
    batch: ProjectedBatch, rows: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Unit vectors and labels per side; records with an empty report have no text vector."""
    image = _unit(batch.image)
    has_report = np.array([bool((m.get("report") or "").strip()) for m in batch.meta], dtype=bool)
    text = _unit(batch.text[has_report])
    return {"image": (image, rows), "text": (text, rows[has_report])}


def _unit(vectors: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(vectors, dtype=np.float32).copy()
    if len(out):
        faiss.normalize_L2(out)
    return out


def new_index(width: int, factory: str) -> faiss.Index:
    """An empty ``IDMap2``-wrapped inner-product index from a FAISS factory string."""
    try:
        index = faiss.index_factory(width, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        message = str(err).strip().splitlines()[-1]
        raise RetrievalError(
            f"invalid FAISS factory string {factory!r} for {width}-d vectors ({message}); "
            "examples: Flat, HNSW32,Flat, IVF1024,Flat, IVF4096,PQ64"
        ) from None
    # PQ: skip polysemous training (codes for Hamming pre-filtering, which search never uses;
    # it costs more than the k-means itself)
    for layer in layers(index):
        if hasattr(layer, "do_polysemous_training"):
            layer.do_polysemous_training = False
    return index


def train_size(index: faiss.Index, total: int) -> int:
    """How many sampled vectors train ``index`` (k-means needs ~39+ per centroid, PQ 256)."""
    try:
        nlist = faiss.extract_index_ivf(index).nlist
    except RuntimeError:
        nlist = 64
    return int(min(total, TRAIN_MAX, max(TRAIN_PER_LIST * nlist, 10_000)))


def _add_thumbnails(
    store: StoreWriter, rows: np.ndarray, meta: list[dict[str, Any]], root: Path
) -> int:
    made = 0
    for row, item in zip(rows.tolist(), meta, strict=True):
        image = Path(str(item.get("image") or ""))
        if not str(image) or str(image) == ".":
            continue
        try:
            store.add_thumbnail(row, make_thumbnail(image if image.is_absolute() else root / image))
        except ImageReadError:
            continue  # the image moved since embedding: the record is still searchable
        made += 1
    return made


def _source_root(source: str, log: Log) -> Path | None:
    """The folder the shards' image paths are relative to, or None if it cannot be opened."""
    from adaptor.data.sources import open_source

    try:
        return Path(open_source(source).root)
    except (AdaptorError, OSError) as err:
        log(f"[index] no thumbnails: cannot open the shards' source {source!r} ({err})")
        return None


def _log_tuning(side: str, result: TuneResult, target: float, log: Log) -> None:
    sweep = ", ".join(f"{v}: {r:.3f}" for v, r in result.sweep)
    knob = ", ".join(f"{k}={v}" for k, v in result.params.items())
    if result.reached:
        log(f"[index] {side}: {knob} reaches recall@{TUNE_K} {result.recall:.3f} ({sweep})")
    else:
        log(
            f"[index] warning: {side}: no setting reaches recall@{TUNE_K} {target} "
            f"(best {result.recall:.3f} at {knob}; {sweep}); use a finer factory, e.g. "
            "HNSW32,Flat or IVF…,Flat instead of PQ"
        )


def _info(out: Path, manifest: dict[str, Any], *, reused: bool) -> IndexInfo:
    sides = {
        side: SideInfo(
            file=spec["file"],
            factory=spec["factory"],
            count=spec["count"],
            params=spec.get("params") or {},
            recall_at_10=spec.get(f"recall_at_{TUNE_K}"),
        )
        for side, spec in manifest["sides"].items()
    }
    return IndexInfo(
        out=out,
        count=manifest["count"],
        factory=manifest["factory"],
        sides=sides,
        thumbnails=manifest.get("thumbnails", 0),
        reused=reused,
        seconds=manifest.get("seconds", 0.0),
    )
