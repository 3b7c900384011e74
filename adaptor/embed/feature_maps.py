"""Cached multi-scale feature maps for segmentation, with each record's mask on the same grid.

Segmentation decoders read the frozen image encoder's feature maps, not its pooled
embedding. Running the encoder costs far more than a decoder step (see
``benchmarks/segmentation.py``), and downstream evaluation trains many decoders (methods ×
fractions × seeds × epochs) on the same images, so the maps are computed once and kept
on disk as float16, next to the mask and a grey view of the image that went in.

Layout of a cache folder (one per encoder fingerprint, input size, number of maps and
unannotated-record policy; see :func:`cache_folder`)::

    cache.json            what made it: encoder name + fingerprint, source, input size, shapes
    chunk-<digest>/       ids.json, map0.npy … mapK.npy [n, C, h, w] float16,
                          mask.npy [n, H, W] uint8, image.npy [n, H, W] uint8

Each file of a chunk is written atomically, ``ids.json`` last: a chunk without it is not
read, so a killed job leaves only whole chunks (here and, for a remote shard folder, on the
remote); a rerun extracts only the records no chunk holds. Readers memory-map the arrays,
so several worker processes share one copy through the page cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from adaptor.atomic import TMP_SUFFIX, atomic_open, atomic_write_json
from adaptor.config.downstream import Unannotated
from adaptor.data.masks import load_mask
from adaptor.data.records import RecordError
from adaptor.data.sources.base import SourceSpec
from adaptor.embed.pixels import load_pixels
from adaptor.encoders import ImageEncoder, ImagePreprocess
from adaptor.errors import AdaptorError

CACHE_FILE = "cache.json"
CHUNK_IDS = "ids.json"  # written last: a chunk holding it is whole
UNANNOTATED_POLICIES = get_args(Unannotated)
# Layouts where every positive study carries a mask, so a study without one is a negative.
COMPLETE_MASK_SOURCES = frozenset({"synthetic", "siim-acr", "rsna-pneumonia"})


class FeatureCacheError(AdaptorError, ValueError):
    """A feature-map cache folder that belongs to another job, or a request it cannot serve."""


@dataclass(frozen=True)
class SegmentationInputs:
    """How a record becomes decoder input: its source root, the preprocessing, the mask policy.

    ``unannotated`` is ``"negative"`` (a record without a mask has nothing to segment) or
    ``"skip"`` (it is left out of segmentation).
    """

    root: Path
    preprocess: ImagePreprocess
    unannotated: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what training workers receive)."""
        return {
            "root": str(self.root),
            "preprocess": self.preprocess.to_dict(),
            "unannotated": self.unannotated,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentationInputs:
        """The inverse of :meth:`to_dict`."""
        return cls(
            root=Path(data["root"]),
            preprocess=ImagePreprocess.from_dict(data["preprocess"]),
            unannotated=data["unannotated"],
        )


def resolve_unannotated(policy: str, source_spec: str) -> str:
    """``auto`` → ``negative`` for layouts whose positives all carry masks, else ``skip``."""
    if policy not in UNANNOTATED_POLICIES:
        raise FeatureCacheError(
            f"unknown unannotated-record policy {policy!r}; choose {', '.join(UNANNOTATED_POLICIES)}"
        )
    if policy != "auto":
        return policy
    return "negative" if SourceSpec.parse(source_spec).kind in COMPLETE_MASK_SOURCES else "skip"


def resized_preprocess(preprocess: ImagePreprocess, size: int | None) -> ImagePreprocess:
    """The encoder's preprocessing at a square ``size`` (same resize rule and crop fraction)."""
    return preprocess if size is None else dataclasses.replace(preprocess, size=(size, size))


def transform_mask(mask: np.ndarray, preprocess: ImagePreprocess) -> np.ndarray:
    """Apply the image's resize and centre crop to a ``[H, W]`` 0/1 mask, nearest neighbour."""
    nearest = dataclasses.replace(preprocess, interpolation="nearest-exact")
    channel = nearest(mask.astype(np.float32))[0].numpy()  # normalised like an image
    return (channel * preprocess.std[0] + preprocess.mean[0] > 0.5).astype(np.uint8)


def grey_view(pixels: Tensor, preprocess: ImagePreprocess) -> np.ndarray:
    """The first channel of preprocessed pixels ``[3, h, w]`` back in 0..255 (for plots)."""
    grey = pixels[0].numpy() * preprocess.std[0] + preprocess.mean[0]
    return np.round(np.clip(grey, 0.0, 1.0) * 255).astype(np.uint8)


def load_record(
    row: dict[str, Any], inputs: SegmentationInputs, log: Callable[[str], None] = print
) -> tuple[Tensor, np.ndarray] | None:
    """Preprocessed pixels ``[3, h, w]`` and the mask on the same grid, for one shard meta row.

    Returns ``None`` for a record without a mask when unannotated records are skipped.
    Raises :class:`RecordError` naming the record for an unreadable image or mask. A mask
    file whose size differs from the image is resized (nearest neighbour) with a warning.
    """
    if row.get("mask") is None and inputs.unannotated == "skip":
        return None
    path = inputs.root / row["image"]
    image = load_pixels(row["id"], path)
    height, width = image.shape
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mask = load_mask(row.get("mask"), height, width, base_dir=inputs.root)
    except AdaptorError as err:
        raise RecordError(row["id"], f"bad mask: {err}", path) from err
    for w in caught:
        log(f"warning: record {row['id']!r}: {w.message}")
    if mask is None:
        mask = np.zeros((height, width), np.uint8)
    return inputs.preprocess(image), transform_mask(mask, inputs.preprocess)


def cache_folder(
    parent: Path, encoder: dict[str, Any], size: tuple[int, int], levels: int, unannotated: str
) -> Path:
    """The cache folder of one encoder (``name``, ``fingerprint``), input size and map count."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", encoder["name"]).strip("-")
    return (
        Path(parent)
        / f"{name}-{encoder['fingerprint'][:12]}-{size[0]}x{size[1]}-maps{levels}-{unannotated}"
    )


class FeatureMapCache:
    """A finished (possibly partial) cache folder: memory-mapped maps, masks and images by id."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        path = self.folder / CACHE_FILE
        if not path.is_file():
            raise FeatureCacheError(f"no {CACHE_FILE} in {self.folder}: not a feature-map cache")
        self.info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        self._chunks: list[dict[str, np.ndarray]] = []
        self._where: dict[str, tuple[int, int]] = {}
        for chunk in sorted(self.folder.glob("chunk-*")):
            if not (chunk / CHUNK_IDS).is_file():
                continue  # cut short: its records are extracted again
            ids = json.loads((chunk / CHUNK_IDS).read_text(encoding="utf-8"))
            arrays = {
                f.stem: np.load(f, mmap_mode="r", allow_pickle=False) for f in chunk.glob("*.npy")
            }
            for row, record_id in enumerate(ids):
                self._where[record_id] = (len(self._chunks), row)
            self._chunks.append(arrays)

    @property
    def ids(self) -> list[str]:
        """Every record id the cache holds."""
        return list(self._where)

    @property
    def map_shapes(self) -> list[tuple[int, int, int]]:
        """``(channels, height, width)`` of each stored map, shallow → deep."""
        return [tuple(s) for s in self.info["map_shapes"]]

    def __contains__(self, record_id: str) -> bool:
        return record_id in self._where

    def nbytes(self) -> int:
        """Bytes on disk of every chunk's arrays."""
        return sum(a.nbytes for chunk in self._chunks for a in chunk.values())

    def gather(self, ids: Sequence[str], members: Sequence[str]) -> dict[str, Tensor]:
        """Rows of ``ids`` (in that order) of each member (``map0`` …, ``mask``, ``image``)."""
        missing = [i for i in ids if i not in self._where]
        if missing:
            raise FeatureCacheError(
                f"{len(missing)} record(s) are not in the cache {self.folder} (e.g. {missing[0]!r})"
            )
        where = np.array([self._where[i] for i in ids], dtype=np.int64).reshape(-1, 2)
        out = {}
        for member in members:
            shape, dtype = self._member_layout(member)
            array = np.empty((len(ids), *shape), dtype=dtype)
            for c in np.unique(where[:, 0]):
                pick = np.flatnonzero(where[:, 0] == c)
                array[pick] = self._chunks[c][member][where[pick, 1]]
            out[member] = torch.from_numpy(array)
        return out

    def _member_layout(self, member: str) -> tuple[tuple[int, ...], np.dtype]:
        if member.startswith("map"):
            return tuple(self.map_shapes[int(member[3:])]), np.dtype(np.float16)
        if member in ("mask", "image"):
            return tuple(self.info["input_size"]), np.dtype(np.uint8)
        raise FeatureCacheError(f"unknown cache member {member!r}")

    def maps(self, ids: Sequence[str]) -> list[Tensor]:
        """The feature maps of ``ids`` (float16), shallow → deep."""
        members = [f"map{i}" for i in range(len(self.map_shapes))]
        got = self.gather(ids, members)
        return [got[m] for m in members]


def build_feature_cache(
    folder: Path,
    encoder: ImageEncoder,
    rows: Sequence[dict[str, Any]],
    inputs: SegmentationInputs,
    *,
    source: str,
    levels: int,
    batch_size: int = 32,
    chunk_size: int = 256,
    loader_workers: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[FeatureMapCache, list[dict[str, str]]]:
    """Extract the deepest ``levels`` feature maps of every row not cached yet; open the cache.

    Returns the cache and the records left out (``{id, reason}``): unreadable images or
    masks, and unannotated records when the policy skips them.
    """
    folder = Path(folder)
    size = inputs.preprocess.size
    shapes = probe_feature_shapes(encoder, size)
    if levels < 1:
        raise FeatureCacheError(f"levels must be at least 1, got {levels}")
    info = {
        "encoder": encoder.info.to_dict(),
        "source": source,
        "input_size": list(size),
        "levels": levels,
        "map_shapes": [list(s) for s in shapes[-levels:]],
        "unannotated": inputs.unannotated,
        "preprocess": inputs.preprocess.to_dict(),
    }
    _open_folder(folder, info)
    for stale in folder.glob(f"chunk-*/*{TMP_SUFFIX}"):  # files of a killed run
        stale.unlink(missing_ok=True)
    cached = FeatureMapCache(folder)
    todo = [r for r in rows if r["id"] not in cached]
    if todo and len(todo) < len(rows):
        log(f"feature cache {folder}: {len(rows) - len(todo)} records cached, {len(todo)} to do")
    skipped: list[dict[str, str]] = []
    bar = tqdm(
        total=len(todo), unit="image", desc="feature maps", disable=not progress, leave=False
    )
    for start in range(0, len(todo), chunk_size):
        chunk_rows = todo[start : start + chunk_size]
        arrays, ids, bad = _extract(
            encoder, chunk_rows, inputs, levels, batch_size, loader_workers, bar, log
        )
        skipped += bad
        if ids:
            _write_chunk(folder, ids, arrays)
    bar.close()
    for entry in skipped:
        log(f"segmentation: skipped record {entry['id']!r}: {entry['reason']}")
    return FeatureMapCache(folder), skipped


def probe_feature_shapes(
    encoder: ImageEncoder, size: tuple[int, int]
) -> list[tuple[int, int, int]]:
    """``(channels, height, width)`` of each feature map at input ``size``, shallow → deep.

    Raises :class:`FeatureCacheError` when the encoder does not take that size.
    """
    try:
        maps = encoder.feature_maps(torch.zeros(1, 3, *size))
    except Exception as err:
        raise FeatureCacheError(
            f"image encoder {encoder.info.name!r} cannot produce feature maps at "
            f"{size[0]}x{size[1]} ({type(err).__name__}: {err}); choose another image size"
        ) from err
    return [(int(m.shape[1]), int(m.shape[2]), int(m.shape[3])) for m in maps]


def _open_folder(folder: Path, info: dict[str, Any]) -> None:
    path = folder / CACHE_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        diffs = [k for k in info if old.get(k) != info[k]]
        if diffs:
            raise FeatureCacheError(
                f"{folder} holds feature maps of another job (differs in {', '.join(diffs)}); "
                "choose another cache folder or delete it"
            )
        return
    atomic_write_json(path, info)


class _Rows(Dataset):
    """Loads one record's pixels and mask; a bad or skipped record comes back as a reason."""

    def __init__(self, rows: Sequence[dict[str, Any]], inputs: SegmentationInputs):
        self.rows, self.inputs = rows, inputs

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[int, Any, list[str]]:
        notes: list[str] = []
        try:
            loaded = load_record(self.rows[i], self.inputs, log=notes.append)
        except RecordError as err:
            return i, err.reason, notes
        return (
            i,
            loaded if loaded is not None else "no mask (unannotated records are skipped)",
            notes,
        )


def _extract(
    encoder: ImageEncoder,
    rows: Sequence[dict[str, Any]],
    inputs: SegmentationInputs,
    levels: int,
    batch_size: int,
    loader_workers: int,
    bar: tqdm,
    log: Callable[[str], None],
) -> tuple[dict[str, np.ndarray], list[str], list[dict[str, str]]]:
    loader = DataLoader(
        _Rows(rows, inputs),
        batch_size=batch_size,
        num_workers=loader_workers,
        collate_fn=list,
    )
    ids: list[str] = []
    bad: list[dict[str, str]] = []
    parts: dict[str, list[np.ndarray]] = {}
    for batch in loader:
        good = []
        for i, item, notes in batch:
            for note in notes:
                log(note)
            if isinstance(item, str):
                bad.append({"id": rows[i]["id"], "reason": item})
            else:
                good.append((i, item))
        bar.update(len(batch))
        if not good:
            continue
        pixels = torch.stack([pix for _, (pix, _) in good])
        maps = encoder.feature_maps(pixels)[-levels:]
        for k, m in enumerate(maps):
            parts.setdefault(f"map{k}", []).append(m.float().cpu().numpy().astype(np.float16))
        parts.setdefault("mask", []).append(np.stack([mask for _, (_, mask) in good]))
        parts.setdefault("image", []).append(
            np.stack([grey_view(pix, inputs.preprocess) for _, (pix, _) in good])
        )
        ids += [rows[i]["id"] for i, _ in good]
    return {k: np.concatenate(v) for k, v in parts.items()}, ids, bad


def _write_chunk(folder: Path, ids: list[str], arrays: dict[str, np.ndarray]) -> None:
    """Write one chunk: each array atomically, then its ``ids.json``, which marks it whole."""
    digest = hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()[:16]
    chunk = folder / f"chunk-{digest}"
    if (chunk / CHUNK_IDS).is_file():  # the same records extracted by an earlier run
        return
    for name, array in arrays.items():
        with atomic_open(chunk / f"{name}.npy", "wb") as fh:
            np.save(fh, array, allow_pickle=False)
    atomic_write_json(chunk / CHUNK_IDS, ids)
