"""Read embedding shards back as samples, batches of tensors, or one in-memory table.

A reader first checks the folder's manifest: the job must be complete and the
encoders must match the ones asked for, or it refuses with what differs.
"""

from __future__ import annotations

import functools
import io
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

from adaptor.shards.manifest import Manifest, ShardMismatchError, check_encoders


@dataclass
class EmbeddingTable:
    """Every sample of a selection, held in memory: row ``i`` of each tensor is ``meta[i]``."""

    ids: list[str]
    arrays: dict[str, torch.Tensor]
    meta: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.ids)


class ShardReader:
    """A finished shard folder, checked against the encoders the caller expects.

    ``image_encoder`` / ``text_encoder`` are dicts with any of ``name``,
    ``fingerprint``, ``dim`` (e.g. ``encoder.info.to_dict()``).
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        image_encoder: dict[str, Any] | None = None,
        text_encoder: dict[str, Any] | None = None,
    ):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"shard folder not found: {self.folder}")
        self.manifest = Manifest.load(self.folder)
        if not self.manifest.complete:
            raise ValueError(
                f"shards in {self.folder} are incomplete: rerun the same `adaptor embed` to finish them"
            )
        check_encoders(self.manifest, self.folder, image=image_encoder, text=text_encoder)
        self.paths = [str(self.folder / s.name) for s in self.manifest.shards if s.count > 0]
        missing = [p for p in self.paths if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(
                f"shards listed in {self.folder}/manifest.json are missing: {missing}"
            )

    def __len__(self) -> int:
        return self.manifest.count

    def shard_subset(self, rank: int, world_size: int) -> list[str]:
        """The disjoint share of shards for one of ``world_size`` consumers."""
        return self.paths[rank::world_size]

    def samples(
        self,
        *,
        shuffle: int = 0,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        split: str | None = None,
        members: Sequence[str] | None = None,
    ) -> wds.WebDataset:
        """A WebDataset pipeline of decoded samples ``{key, id, <arrays>, meta}``.

        Shards are split across nodes by ``rank``/``world_size`` when given (else by
        torch.distributed, if initialised) and across DataLoader workers.
        ``shuffle`` > 0 shuffles shards and samples within a buffer of that size.
        ``members``: the arrays decoded (default: every stored one).
        """
        explicit = rank is not None and world_size is not None
        urls = self.shard_subset(rank, world_size) if explicit else self.paths
        dataset = wds.WebDataset(
            urls,
            shardshuffle=len(urls) if shuffle else False,
            nodesplitter=None if explicit else wds.split_by_node,
            workersplitter=wds.split_by_worker,
            seed=seed,
            empty_check=False,
        )
        if shuffle:
            dataset = dataset.shuffle(shuffle, rng=random.Random(seed))
        dataset = dataset.map(functools.partial(decode_sample, members=members))
        if split is not None:
            dataset = dataset.select(lambda s: s["meta"].get("split") == split)
        return dataset

    def batches(self, batch_size: int, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Batches of stacked tensors (``image``, ``text``, …) plus ``ids`` and ``meta`` lists."""
        batch: list[dict[str, Any]] = []
        for sample in self.samples(**kwargs):
            batch.append(sample)
            if len(batch) == batch_size:
                yield collate(batch)
                batch = []
        if batch:
            yield collate(batch)

    def load(
        self,
        split: str | None = None,
        members: tuple[str, ...] | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> EmbeddingTable:
        """Every sample of ``split`` (or all) in this rank's shards, in order, as float32 tensors.

        ``members``: the arrays to stack; default ``image`` and ``text``, those the folder
        stores (a one-sided folder has one of them). Asking for one it lacks is an error.
        """
        stored = self.manifest.members
        if members is None:
            members = tuple(m for m in ("image", "text") if m in stored)
        lacking = [m for m in members if m not in stored]
        if lacking:
            raise ShardMismatchError(
                f"shards in {self.folder} hold no {', '.join(lacking)} (they store {stored}); "
                "embed them with that encoder, or join them with a folder that has it"
            )
        rows = [
            s
            for s in self.samples(rank=rank, world_size=world_size, members=members)
            if split is None or s["meta"]["split"] == split
        ]
        return EmbeddingTable(
            ids=[r["id"] for r in rows],
            arrays={
                m: torch.from_numpy(np.stack([r[m] for r in rows]).astype(np.float32))
                if rows
                else torch.empty(0)
                for m in members
            },
            meta=[r["meta"] for r in rows],
        )


def decode_sample(raw: dict[str, Any], members: Sequence[str] | None = None) -> dict[str, Any]:
    """Turn a raw WebDataset sample (bytes per member) into metadata and the arrays of
    ``members`` (default: all)."""
    out: dict[str, Any] = {"key": raw["__key__"]}
    for member, value in raw.items():
        name = member.removesuffix(".npy")
        if name != member and (members is None or name in members):
            out[name] = np.load(io.BytesIO(value), allow_pickle=False)
    out["meta"] = json.loads(raw["json"])
    out["id"] = out["meta"]["id"]
    return out


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack fixed-size arrays into tensors; keep ids and metadata as lists."""
    batch: dict[str, Any] = {
        "ids": [s["id"] for s in samples],
        "meta": [s["meta"] for s in samples],
    }
    for name in ("image", "text"):
        if name in samples[0]:
            batch[name] = torch.from_numpy(np.stack([s[name] for s in samples]).astype(np.float32))
    return batch
