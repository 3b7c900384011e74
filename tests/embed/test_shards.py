"""Shard writer and reader without encoders: atomic shards, manifest checks, splitting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adaptor.shards import Manifest, ShardEntry, ShardMismatchError, ShardReader
from adaptor.shards.writer import encode_sample, finished_shards, sample_key, write_shard

ENCODERS = {
    "image": {"name": "img-a", "fingerprint": "f1", "dim": 4, "dtype": "float16"},
    "text": {"name": "txt-a", "fingerprint": "f2", "dim": 3, "dtype": "float16"},
}


def _write_folder(folder: Path, n_shards: int = 3, per_shard: int = 4) -> None:
    manifest = Manifest(
        source="test:x",
        encoders=ENCODERS,
        shard_size=per_shard,
        total_items=n_shards * per_shard,
        members=["image", "text"],
    )
    manifest.save(folder)
    for index in range(n_shards):
        samples = []
        for j in range(per_shard):
            pos = index * per_shard + j
            arrays = {"image": np.full(4, pos, np.float16), "text": np.full(3, -pos, np.float16)}
            meta = {"id": f"r{pos}", "split": "train" if pos % 3 else "val", "labels": {}}
            samples.append(encode_sample(sample_key(pos), arrays, meta))
        write_shard(folder, index, samples, skipped=[], truncated_reports=0)
    manifest.shards = [ShardEntry(**d["shard"]) for _, d in sorted(finished_shards(folder).items())]
    manifest.count = n_shards * per_shard
    manifest.complete = True
    manifest.save(folder)


def test_round_trip_and_split_filter(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    reader = ShardReader(
        tmp_path, image_encoder={"name": "img-a", "dim": 4}, text_encoder={"fingerprint": "f2"}
    )
    table = reader.load()
    assert table.ids == [f"r{i}" for i in range(12)]
    assert table.arrays["image"].shape == (12, 4)
    assert table.arrays["image"][5].tolist() == [5.0] * 4
    assert table.arrays["text"][5].tolist() == [-5.0] * 3
    val = reader.load(split="val")
    assert val.ids == ["r0", "r3", "r6", "r9"]
    # only the arrays asked for are decoded
    assert reader.load(members=()).meta == table.meta
    sample = next(iter(reader.samples(members=("image",))))
    assert "image" in sample and "text" not in sample


def test_rank_subsets_are_disjoint_and_cover(tmp_path: Path) -> None:
    _write_folder(tmp_path, n_shards=5, per_shard=2)
    reader = ShardReader(tmp_path)
    seen = []
    for rank in range(2):
        seen.append({s["id"] for s in reader.samples(rank=rank, world_size=2)})
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {f"r{i}" for i in range(10)}


def test_batches_and_shuffle_is_seeded(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    reader = ShardReader(tmp_path)
    batches = list(reader.batches(5, rank=0, world_size=1))
    assert [len(b["ids"]) for b in batches] == [5, 5, 2]
    assert batches[0]["image"].shape == (5, 4)

    def order(seed: int) -> list[str]:
        return [s["id"] for s in reader.samples(shuffle=8, seed=seed, rank=0, world_size=1)]

    assert order(1) == order(1)
    assert sorted(order(1)) == sorted(order(2))
    assert order(1) != [f"r{i}" for i in range(12)]


def test_mismatched_encoders_are_refused_with_the_difference(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    with pytest.raises(ShardMismatchError) as err:
        ShardReader(tmp_path, image_encoder={"name": "other", "dim": 4}, text_encoder={"dim": 768})
    message = str(err.value)
    assert "image encoder name: shards have 'img-a', asked for 'other'" in message
    assert "text encoder dim: shards have 3, asked for 768" in message


def test_incomplete_or_missing_folder_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ShardReader(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="manifest"):
        ShardReader(tmp_path)
    Manifest(source="s", encoders=ENCODERS, shard_size=1, total_items=1, members=["image"]).save(
        tmp_path
    )
    with pytest.raises(ValueError, match="incomplete"):
        ShardReader(tmp_path)


def test_shard_bytes_are_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    _write_folder(a)
    _write_folder(b)
    assert [s.sha256 for s in Manifest.load(a).shards] == [
        s.sha256 for s in Manifest.load(b).shards
    ]
    assert not list(a.glob("*.partial"))
