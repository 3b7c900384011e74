"""Join an image-side and a text-side shard folder of the same source into paired shards.

Each encoder then runs once per source (``adaptor embed`` with ``text_encoder: none`` or
``image_encoder: none``), and any image folder joins with any text folder of that source.
Storage only: no encoder is built or run. Records pair by id; shard ``i`` of the output
holds the records of shard ``i`` of both inputs (same source, same shard size), so a joined
folder has the layout, the sample keys and the member bytes of a paired ``adaptor embed``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from adaptor.atomic import remove_stale_partials
from adaptor.shards.manifest import MEMBER_ORDER, ROLE_MEMBERS, Manifest, ShardMismatchError
from adaptor.shards.writer import (
    PROGRESS_DIR,
    encode_sample,
    finished_shards,
    fold_finished,
    shard_count,
    write_shard,
)

Sample = dict[str, bytes]  # one raw sample: member file name (``image.npy``, ``json``) → bytes


@dataclass
class _Side:
    """One finished input folder and the role it gives the join."""

    role: str
    folder: Path
    manifest: Manifest
    progress: dict[int, dict[str, Any]]  # per-shard progress records: each shard's skips

    @property
    def members(self) -> list[str]:
        return [m for m in self.manifest.members if m in ROLE_MEMBERS[self.role]]

    def shard(self, index: int) -> dict[str, Sample]:
        """Shard ``index``'s samples by key, in stored order."""
        return read_shard(self.folder / self.progress[index]["shard"]["name"])

    def skips(self, index: int) -> list[dict[str, str]]:
        return self.progress[index]["skipped"]


def join_shards(
    image_dir: str | Path,
    text_dir: str | Path,
    out: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
) -> Manifest:
    """Write paired shards into ``out``: the image members of ``image_dir`` and the text
    members of ``text_dir`` for every record both hold; return the finished manifest.

    Records only one side holds are listed as skipped, their reason naming the side. The
    inputs must be finished folders of the same source and shard size (else
    :class:`ShardMismatchError`). ``out`` records its inputs' fingerprints
    (``joined_from``): a rerun from the same inputs does nothing (or finishes a killed run),
    one from changed inputs rebuilds ``out``. Every shard is written atomically.
    """
    image = _open_side(Path(image_dir), "image")
    text = _open_side(Path(text_dir), "text")
    out = Path(out)
    _check_joinable(image, text, out)
    wanted = _joined_manifest(image, text)
    manifest = _open_out(out, wanted, log)
    if not manifest.complete:
        done = finished_shards(out)  # a killed join's finished shards are kept
        n_shards = shard_count(manifest.total_items, manifest.shard_size)
        pending = [i for i in range(n_shards) if i not in done]
        for index in tqdm(pending, desc="join", unit="shard", disable=not progress):
            samples, skipped, truncated = _join_shard(image, text, index)
            write_shard(out, index, samples, skipped=skipped, truncated_reports=truncated)
        fold_finished(manifest, finished_shards(out))
        manifest.complete = True
        manifest.save(out)
        log(
            f"joined {manifest.count} records into {out}; {len(manifest.skipped)} skipped "
            f"(listed in {out / 'manifest.json'})"
        )
    if not manifest.count:
        raise ShardMismatchError(f"no record is in both {image.folder} and {text.folder}")
    return manifest


def read_shard(path: Path) -> dict[str, Sample]:
    """A shard's raw samples by key (``000000042``), in stored order."""
    samples: dict[str, Sample] = {}
    with tarfile.open(path) as tar:
        for info in tar:
            handle = tar.extractfile(info) if info.isfile() else None
            if handle is not None:
                key, _, member = info.name.partition(".")
                samples.setdefault(key, {})[member] = handle.read()
    return samples


def manifest_fingerprint(manifest: Manifest) -> str:
    """A hex sha256 of what a finished folder holds: its job, its shards' sha256s, its skips."""
    held = {
        "source": manifest.source,
        "encoders": manifest.encoders,
        "members": manifest.members,
        "shard_size": manifest.shard_size,
        "total_items": manifest.total_items,
        "shards": [(s.name, s.sha256) for s in manifest.shards],
        "skipped": manifest.skipped,
    }
    return hashlib.sha256(json.dumps(held, sort_keys=True).encode("utf-8")).hexdigest()


def _open_side(folder: Path, role: str) -> _Side:
    """A finished input folder holding ``role``'s embeddings; ShardMismatchError otherwise."""
    if not Manifest.exists(folder):
        raise ShardMismatchError(
            f"cannot join {folder}: no manifest.json (not a finished `adaptor embed` folder)"
        )
    manifest = Manifest.load(folder)
    if not manifest.complete:
        raise ShardMismatchError(
            f"cannot join {folder}: its shards are incomplete; rerun its `adaptor embed` first"
        )
    if role not in manifest.encoders:
        raise ShardMismatchError(
            f"cannot join {folder} as the {role} side: it holds no {role} embeddings"
        )
    done = finished_shards(folder)
    listed = {s.index: s.sha256 for s in manifest.shards}
    if {i: info["shard"]["sha256"] for i, info in done.items()} != listed:
        raise ShardMismatchError(
            f"cannot join {folder}: its shard files or progress records ({PROGRESS_DIR}/) do "
            "not match its manifest.json (copy shard folders whole)"
        )
    return _Side(role, folder, manifest, done)


def _check_joinable(image: _Side, text: _Side, out: Path) -> None:
    """Raise one ShardMismatchError listing every reason the two folders cannot be joined."""
    diffs = [
        f"{what}: image side {getattr(image.manifest, key)!r}, "
        f"text side {getattr(text.manifest, key)!r}"
        for what, key in (
            ("source", "source"),
            ("shard size", "shard_size"),
            ("number of records", "total_items"),
        )
        if getattr(image.manifest, key) != getattr(text.manifest, key)
    ]
    if out.resolve() in (image.folder.resolve(), text.folder.resolve()):
        diffs.append(f"the output {out} is one of the inputs")
    if diffs:
        raise ShardMismatchError(
            f"cannot join {image.folder} (image) with {text.folder} (text):\n  "
            + "\n  ".join(diffs)
        )


def _joined_manifest(image: _Side, text: _Side) -> Manifest:
    """The new (unfinished) manifest of the join of ``image`` and ``text``."""
    kept = set(image.members) | set(text.members)
    return Manifest(
        source=image.manifest.source,
        encoders={
            "image": image.manifest.encoders["image"],
            "text": text.manifest.encoders["text"],
        },
        shard_size=image.manifest.shard_size,
        total_items=image.manifest.total_items,
        members=[m for m in MEMBER_ORDER if m in kept],
        joined_from={
            side.role: {
                "folder": str(side.folder.resolve()),
                "fingerprint": manifest_fingerprint(side.manifest),
            }
            for side in (image, text)
        },
    )


def _open_out(out: Path, wanted: Manifest, log: Callable[[str], None]) -> Manifest:
    """The manifest to continue in ``out``: its own when made from the same inputs, else
    ``wanted`` in a fresh (or cleared, when the inputs changed) folder."""
    if Manifest.exists(out):
        old = Manifest.load(out)
        if old.joined_from is None:
            raise ShardMismatchError(
                f"{out} holds the shards of an `adaptor embed` job, not of a join; "
                "choose another output folder"
            )
        if _fingerprints(old) == _fingerprints(wanted):
            remove_stale_partials(out)
            if old.complete:
                log(f"{out} is already joined from these inputs; nothing to do")
            return old
        log(f"the inputs of {out} changed since it was joined; rebuilding it")
        dataclasses.replace(old, complete=False).save(out)  # never complete with shards gone
        for tar in out.glob("shard-*.tar"):
            tar.unlink()
        shutil.rmtree(out / PROGRESS_DIR, ignore_errors=True)
    elif out.is_dir() and any(out.glob("*.tar")):
        raise ShardMismatchError(f"{out} holds .tar files but no manifest.json; refusing to mix")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    wanted.save(out)
    return wanted


def _fingerprints(manifest: Manifest) -> dict[str, str]:
    return {role: side["fingerprint"] for role, side in (manifest.joined_from or {}).items()}


def _join_shard(
    image: _Side, text: _Side, index: int
) -> tuple[list[Sample], list[dict[str, str]], int]:
    """Shard ``index`` of the join: its samples, its skipped records, its truncated reports."""
    texts: dict[str, Sample] = {}
    for sample in text.shard(index).values():
        texts.setdefault(_meta(sample)["id"], sample)
    samples, truncated, image_ids = [], 0, []
    for key, pixels in image.shard(index).items():
        meta = _meta(pixels)
        image_ids.append(meta["id"])
        words = texts.get(meta["id"])
        if words is None:
            continue
        meta["report_truncated"] = _meta(words).get("report_truncated", False)
        truncated += bool(meta["report_truncated"])
        arrays = {m: _array(pixels, m) for m in image.members}
        arrays |= {m: _array(words, m) for m in text.members}
        ordered = {m: arrays[m] for m in MEMBER_ORDER if m in arrays}
        samples.append(encode_sample(key, ordered, meta))
    return samples, _skips(image.skips(index), text.skips(index), image_ids, list(texts)), truncated


def _skips(
    image_skips: list[dict[str, str]],
    text_skips: list[dict[str, str]],
    image_ids: list[str],
    text_ids: list[str],
) -> list[dict[str, str]]:
    """One shard's records left out: the union of both sides' skips and of the records one
    side lacks, each reason naming its side unless both skipped it for the same reason."""
    by_id: dict[str, dict[str, str]] = {}
    for entry in text_skips:
        by_id.setdefault(entry["id"], entry)
    out, listed = [], set()
    for entry in image_skips:
        same = by_id.get(entry["id"], {}).get("reason") == entry["reason"]
        out.append(entry if same else {**entry, "reason": f"image side: {entry['reason']}"})
        listed.add(entry["id"])
    joined = set(image_ids) & set(text_ids)
    for record_id in image_ids:
        if record_id not in joined:
            entry = by_id.get(record_id, {"id": record_id, "reason": "not in its shards"})
            out.append({**entry, "reason": f"text side: {entry['reason']}"})
            listed.add(record_id)
    for entry in text_skips:
        if entry["id"] not in listed:
            out.append({**entry, "reason": f"text side: {entry['reason']}"})
            listed.add(entry["id"])
    for record_id in text_ids:
        if record_id not in joined and record_id not in listed:
            out.append({"id": record_id, "reason": "image side: not in its shards"})
    return out


def _meta(sample: Sample) -> dict[str, Any]:
    return json.loads(sample["json"])


def _array(sample: Sample, member: str) -> np.ndarray:
    return np.load(io.BytesIO(sample[f"{member}.npy"]), allow_pickle=False)
