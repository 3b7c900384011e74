"""The embed stage on the offline default encoders: outputs, bad input, resume after kill -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from adaptor.embed import EmbedConfig, EmbedError, embed
from adaptor.shards import Manifest, ShardReader


def _cfg(source: str, out: Path, **kw: object) -> EmbedConfig:
    defaults = dict(batch_size=8, shard_size=16, loader_workers=0, progress=False, device="cpu")
    defaults.update(kw)
    return EmbedConfig(source=source, out=out, **defaults)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def default_shards(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "default"
    embed(_cfg(f"synthetic:{synthetic_dir}", out, loader_workers=2))
    return out


def test_embed_writes_every_record_with_its_metadata(
    default_shards: Path, synthetic_dir: Path
) -> None:
    manifest = Manifest.load(default_shards)
    assert manifest.complete and manifest.count == 40 and manifest.skipped == []
    assert [s.count for s in manifest.shards] == [16, 16, 8]
    assert manifest.encoders["image"]["name"] == "efficientnet-lite0"
    assert manifest.encoders["image"]["dim"] == 1280 and manifest.encoders["text"]["dim"] == 384
    assert manifest.encoders["text"]["dtype"] == "float16"
    assert all(len(s.sha256) == 64 for s in manifest.shards)

    table = ShardReader(
        default_shards, image_encoder={"name": "efficientnet-lite0", "dim": 1280}
    ).load()
    records = [
        json.loads(line) for line in (synthetic_dir / "records.jsonl").read_text().splitlines()
    ]
    assert table.ids == [r["id"] for r in records]
    assert table.arrays["image"].shape == (40, 1280) and table.arrays["text"].shape == (40, 384)
    assert np.isfinite(table.arrays["image"].numpy()).all()
    first = table.meta[0]
    assert first["report"] == records[0]["report"] and first["labels"] == records[0]["labels"]
    assert first["image"] == records[0]["image"] and first["split"] == records[0]["split"]
    # different records really get different embeddings
    assert not np.allclose(table.arrays["image"][0], table.arrays["image"][1])


def test_rerun_of_a_finished_job_reuses_everything(
    default_shards: Path, synthetic_dir: Path
) -> None:
    before = [s.sha256 for s in Manifest.load(default_shards).shards]
    result = embed(_cfg(f"synthetic:{synthetic_dir}", default_shards))
    assert result.shards_written == 0 and result.shards_reused == 3
    assert [s.sha256 for s in Manifest.load(default_shards).shards] == before


def test_folder_of_other_encoders_is_refused(
    default_shards: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    shutil.copytree(default_shards, other)
    raw = json.loads((other / "manifest.json").read_text())
    raw["encoders"]["image"]["fingerprint"] = "0" * 64
    raw["encoders"]["image"]["name"] = "timm:resnet18"
    (other / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(EmbedError, match="image encoder name: shards have 'timm:resnet18'"):
        embed(_cfg(f"synthetic:{synthetic_dir}", other))
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "shard-000000.tar").write_bytes(b"")
    with pytest.raises(EmbedError, match="no manifest.json"):
        embed(_cfg(f"synthetic:{synthetic_dir}", stray))


def _bad_input_source(synthetic_dir: Path, tmp_path: Path) -> Path:
    """A JSONL with two good records and one of each kind of bad input."""
    records = [
        json.loads(line) for line in (synthetic_dir / "records.jsonl").read_text().splitlines()
    ]
    img = tmp_path / "img"
    img.mkdir()
    good = synthetic_dir / records[0]["image"]
    for name in (
        "good1.png",
        "good2.png",
        "long.png",
        "dup.png",
        "empty.png",
        "label.png",
        "latin.png",
    ):
        shutil.copy(good, img / name)
    data = good.read_bytes()
    (img / "truncated.png").write_bytes(data[: len(data) // 2])
    (img / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(300))
    rows = [
        {
            "id": "good1",
            "image": "img/good1.png",
            "report": "Heart size is normal.",
            "labels": {"x": 1},
        },
        {"id": "truncated", "image": "img/truncated.png", "report": "ok"},
        {"id": "garbage", "image": "img/garbage.dcm", "report": "ok"},
        {"id": "missing", "image": "img/nope.png", "report": "ok"},
        {"id": "empty", "image": "img/empty.png", "report": "   "},
        {"id": "long", "image": "img/long.png", "report": "The lungs are clear. " * 400},
        {"id": "good1", "image": "img/dup.png", "report": "duplicate"},
        {"id": "label", "image": "img/label.png", "report": "ok", "labels": {"x": "perhaps"}},
        {"id": "good2", "image": "img/good2.png", "report": "Small left pleural effusion."},
    ]
    lines = [json.dumps(r).encode() for r in rows]
    lines.insert(6, b'{"id": "latin", "image": "img/latin.png", "report": "\xe9panchement"}')
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_each_bad_input_is_reported_counted_and_skipped(
    synthetic_dir: Path, tmp_path: Path
) -> None:
    source = _bad_input_source(synthetic_dir, tmp_path)
    lines: list[str] = []
    result = embed(_cfg(f"jsonl:{source}", tmp_path / "out", shard_size=4), log=lines.append)
    manifest = Manifest.load(tmp_path / "out")
    reasons = {s["id"]: s["reason"] for s in manifest.skipped}
    assert set(reasons) == {"truncated", "garbage", "missing", "empty", "good1", "label", "latin"}
    assert "cannot read image" in reasons["truncated"]
    assert "cannot read image" in reasons["garbage"]
    assert "cannot read image" in reasons["missing"]
    assert "empty report" in reasons["empty"]
    assert "duplicate id" in reasons["good1"]
    assert "unknown value 'perhaps'" in reasons["label"]
    assert "not valid UTF-8" in reasons["latin"]
    assert manifest.count == 3 and result.count == 3
    assert manifest.truncated_reports == 1
    assert ShardReader(tmp_path / "out").load().ids == ["good1", "long", "good2"]
    # one line per bad record, naming the record id and the file
    assert len(lines) == 7
    for line in lines:
        assert line.startswith("skipped record '")
    assert any("truncated.png" in line for line in lines)
    assert any("nope.png" in line for line in lines)


def test_strict_stops_at_the_first_bad_record(synthetic_dir: Path, tmp_path: Path) -> None:
    source = _bad_input_source(synthetic_dir, tmp_path)
    with pytest.raises(EmbedError, match="--strict: record 'empty'"):
        embed(_cfg(f"jsonl:{source}", tmp_path / "out", strict=True))
    no_prevalidation_errors = tmp_path / "only_image_errors.jsonl"
    rows = [json.loads(x) for x in source.read_bytes().splitlines()[:3]]
    no_prevalidation_errors.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(EmbedError, match="--strict: record 'truncated'"):
        embed(_cfg(f"jsonl:{no_prevalidation_errors}", tmp_path / "out2", strict=True))


def test_patch_tokens_and_text_states_are_stored(synthetic_dir: Path, tmp_path: Path) -> None:
    rows = (synthetic_dir / "records.jsonl").read_text().splitlines()[:4]
    source = synthetic_dir / "first4.jsonl"
    source.write_text("\n".join(rows) + "\n")
    embed(_cfg(f"jsonl:{source}", tmp_path / "out", patch_tokens=True, text_states=True))
    samples = list(ShardReader(tmp_path / "out").samples(rank=0, world_size=1))
    assert samples[0]["image_patches"].shape == (49, 1280)
    assert samples[0]["text_states"].shape[1] == 384
    assert samples[0]["text_states"].dtype == np.float16


@pytest.mark.slow
def test_kill_9_then_rerun_equals_a_clean_run(synthetic_dir: Path, tmp_path: Path) -> None:
    source = f"synthetic:{synthetic_dir}"
    args = [
        "--shard-size",
        "4",
        "--batch-size",
        "4",
        "--loader-workers",
        "0",
        "--no-progress",
        "--device",
        "cpu",
    ]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    cmd = [sys.executable, "-m", "adaptor.cli", "embed", "--source", source]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    proc = subprocess.Popen([*cmd, "--out", str(killed), *args], env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while (
        len(list(killed.glob("shard-*.tar"))) < 3
        and proc.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = Manifest.load(killed)
    assert not partial.complete, "the job finished before it could be killed; make it longer"
    done_before = len(list(killed.glob("shard-*.tar")))

    resumed = subprocess.run(
        [*cmd, "--out", str(killed), *args], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"{done_before - 1}" in resumed.stdout or "reused" in resumed.stdout
    subprocess.run([*cmd, "--out", str(clean), *args], env=env, check=True, capture_output=True)

    a, b = Manifest.load(killed), Manifest.load(clean)
    assert a.complete and a.count == b.count == 40
    assert [(s.name, s.count, s.sha256) for s in a.shards] == [
        (s.name, s.count, s.sha256) for s in b.shards
    ]
    keys = lambda folder: [s["key"] for s in ShardReader(folder).samples(rank=0, world_size=1)]  # noqa: E731
    assert keys(killed) == keys(clean) and len(set(keys(killed))) == 40
    assert not list(killed.glob("*.partial"))
