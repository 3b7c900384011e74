"""Output folders on S3 (``s3://…``), against a moto S3 server the tests start on 127.0.0.1.

Every stage through the ``adaptor`` command: embed killed with ``kill -9`` and resumed (the
same shards, byte for byte, as a local embed), a refused mix of jobs, pretraining whose
Ray Train checkpoints live on S3 resumed after a crash on a machine without the local copy,
the index and downstream heads; and the bad input (no bucket, writes refused, no
credentials), each one error before any work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import pytest
import s3fs
from moto.server import ThreadedMotoServer
from typer.testing import CliRunner

from adaptor.atomic import atomic_write_json, remove_stale_partials
from adaptor.cli import app
from adaptor.pretrain import PretrainConfig, PretrainError, pretrain
from adaptor.remote import StorageError, working_copy
from adaptor.shards import Manifest, ShardReader

BUCKET = "adaptor"
runner = CliRunner()


@dataclass
class S3:
    """The running server: its endpoint, a filesystem on it, and the working-copy cache."""

    endpoint: str
    fs: s3fs.S3FileSystem
    cache: Path

    def keys(self, prefix: str) -> list[str]:
        """The keys under ``BUCKET/prefix``, relative to it."""
        self.fs.invalidate_cache()
        root = f"{BUCKET}/{prefix}"
        return [p[len(root) + 1 :] for p in self.fs.find(root)]

    def objects(self, prefix: str) -> dict[str, bytes]:
        """Every object under ``BUCKET/prefix`` by its key relative to it."""
        self.fs.invalidate_cache()
        root = f"{BUCKET}/{prefix}"
        return {p[len(root) + 1 :]: self.fs.cat_file(p) for p in self.fs.find(root)}

    def assert_mirrors(self, prefix: str) -> None:
        """The remote folder holds every file of its working copy, the same bytes: nothing
        written was left behind (Ray Train writes its own folder, ``ray/``, to S3 itself)."""
        local = self.cache / "s3" / BUCKET / prefix
        files = (p for p in local.rglob("*") if p.is_file())
        here = {p.relative_to(local).as_posix(): p.read_bytes() for p in files}
        assert {k: v for k, v in here.items() if not _skipped(k)} == {
            k: v for k, v in self.objects(prefix).items() if not _skipped(k)
        }


def _skipped(name: str) -> bool:
    return name.endswith(".partial") or name.startswith("ray/")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fresh_clients() -> None:
    """Forget cached filesystems, so the next one reads the environment again."""
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """A moto S3 server on 127.0.0.1 with one bucket; the AWS variables point at it, and a
    fresh local Ray (started by the first stage that needs one) inherits them."""
    import ray

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as env:
        for key, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": str(cache / "none"),
            "AWS_CONFIG_FILE": str(cache / "none"),
            "ADAPTOR_CACHE": str(cache),
        }.items():
            env.setenv(key, value)
        ray.shutdown()  # Ray workers take the environment of the process that starts Ray
        _fresh_clients()
        try:
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            yield S3(endpoint=endpoint, fs=s3fs.S3FileSystem(), cache=cache)
        finally:
            ray.shutdown()
            _fresh_clients()
            server.stop()
    _fresh_clients()


@pytest.fixture(scope="module")
def remote_inputs(s3: S3, retrieval_index: tuple[Path, Path, Path]) -> tuple[str, str]:
    """The shared session's shards and small Adaptor, uploaded: (shards URI, Adaptor URI)."""
    shards, adaptor_dir, _ = retrieval_index
    s3.fs.put(f"{shards}/", f"{BUCKET}/inputs/shards", recursive=True)
    s3.fs.put(f"{adaptor_dir}/", f"{BUCKET}/inputs/adaptor", recursive=True)
    return f"s3://{BUCKET}/inputs/shards", f"s3://{BUCKET}/inputs/adaptor"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


def test_the_working_copy_follows_the_remote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rules on a filesystem in memory: uploads through temporary keys, the remote wins."""
    import fsspec

    monkeypatch.setenv("ADAPTOR_CACHE", str(tmp_path))
    fs = fsspec.filesystem("memory")
    local = working_copy("memory://rules/x")
    atomic_write_json(local / "a.json", {"a": 1})
    assert fs.cat_file("/rules/x/a.json") == (local / "a.json").read_bytes()

    def cut(*args: object, **kwargs: object) -> None:
        raise OSError("killed mid-upload")

    with monkeypatch.context() as patched:
        patched.setattr(type(fs), "mv", cut)
        with pytest.raises(StorageError, match="b.json: the storage cannot be used .*killed"):
            atomic_write_json(local / "b.json", {"b": 2})
    assert sorted(fs.find("/rules/x")) == [
        "/rules/x/a.json",
        f"/rules/x/b.json.{os.getpid()}.partial",
    ]

    fs.pipe_file("/rules/x/a.json", b'{"a": 3}')  # changed elsewhere
    assert working_copy("memory://rules/x") == local
    assert (local / "a.json").read_bytes() == b'{"a": 3}'
    assert not (local / "b.json").exists()  # never reached the remote: dropped here too
    remove_stale_partials(local)
    assert fs.find("/rules/x") == ["/rules/x/a.json"]
    fs.rm("/rules", recursive=True)


@pytest.mark.slow
def test_embed_killed_then_resumed_on_s3_equals_a_local_embed(
    s3: S3, synthetic_dir: Path, retrieval_index: tuple[Path, Path, Path]
) -> None:
    local = retrieval_index[0]  # the same source and options, embedded into a local folder
    expected = {s.name: s.sha256 for s in Manifest.load(local).shards}
    assert len(expected) == 3
    out = f"s3://{BUCKET}/killed"
    args = ["embed", "--source", f"synthetic:{synthetic_dir}", "--out", out]
    args += ["--batch-size", "16", "--shard-size", "16", "--no-progress"]  # default loader workers
    proc = subprocess.Popen(
        [sys.executable, "-m", "adaptor.cli", *args, "--loader-workers", "0"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline:
        if any(_finished(k) for k in s3.keys("killed")):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    before = s3.objects("killed")
    assert not json.loads(before["manifest.json"])["complete"], "finished before the kill"
    for name in (k for k in before if k.endswith(".tar")):  # no object under a final name
        assert _sha256(before[name]) == expected[name]  # is partial
    finished = [k for k in before if _finished(k)]
    assert 1 <= len(finished) < 3

    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming: {len(finished)} of 3 shards already finished" in resumed.output
    after = s3.objects("killed")
    manifest = json.loads(after["manifest.json"])
    assert manifest["complete"] and manifest["count"] == 40
    assert {s["name"]: s["sha256"] for s in manifest["shards"]} == expected
    assert {n: _sha256(after[n]) for n in expected} == expected  # byte-identical shards
    s3.assert_mirrors("killed")
    keys = [s["key"] for s in ShardReader(working_copy(out)).samples(rank=0, world_size=1)]
    assert keys == [s["key"] for s in ShardReader(local).samples(rank=0, world_size=1)]

    mixed = runner.invoke(app, [*args[:5], "--shard-size", "8"])  # other options: defaults
    assert mixed.exit_code == 2
    assert "already holds shards of another embed job" in mixed.output
    assert "shard size: folder has 16, this run has 8" in mixed.output
    assert s3.objects("killed") == after  # refused before writing anything


def _finished(key: str) -> bool:
    """Whether ``key`` is a shard's progress record under its final name: the shard is done."""
    return key.startswith(".progress/") and key.endswith(".json")


def _fail_at(step: int):  # noqa: ANN202
    """A fault that crashes the worker at global ``step`` (a closure: Ray pickles it by value)."""

    def fault(global_step: int) -> None:
        if global_step == step:
            raise RuntimeError(f"injected failure at step {global_step}")

    return fault


@pytest.mark.slow
def test_pretrain_on_s3_resumes_from_checkpoints_on_s3(
    s3: S3, remote_inputs: tuple[str, str]
) -> None:
    shards, _ = remote_inputs
    run = f"s3://{BUCKET}/pretrain"
    shape = {"width": 32, "heads": 4, "ffn_hidden": 64}
    reader = ShardReader(working_copy(shards, writable=False))
    train = [m for m in reader.load().meta if m["split"] == "train"]
    steps = len(train) // 8  # per epoch at batch 8
    cfg = PretrainConfig(
        shards=str(working_copy(shards, writable=False)),
        out=str(working_copy(run)),
        epochs=2,
        batch_size=8,
        max_failures=0,
        model=shape,
    )
    with pytest.raises(PretrainError, match="injected failure"):
        pretrain(cfg, progress=False, fault=_fail_at(steps + 1))
    stored = s3.objects("pretrain")
    assert len(stored["metrics.jsonl"].splitlines()) == 1  # epoch 1 was checkpointed
    assert any(k.startswith("ray/pretrain/checkpoint_") for k in stored)  # by Ray, on S3

    shutil.rmtree(s3.cache / "s3")  # another machine: nothing but what reached S3
    args = ["pretrain", "--shards", shards, "--out", run, "--epochs", "2", "--batch-size", "8"]
    args += ["--width", "32", "--heads", "4", "--ffn-hidden", "64"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"Adaptor saved to {run}/adaptor" in result.output
    stored = s3.objects("pretrain")
    metrics = json.loads(stored["metrics.json"])
    assert metrics["resumed_at_steps"] == [steps] and metrics["epochs"] == 2
    assert {"adaptor/model.safetensors", "adaptor/config.json", "curves.png"} <= set(stored)
    s3.assert_mirrors("pretrain")


@pytest.mark.slow
def test_index_and_heads_write_to_s3(s3: S3, remote_inputs: tuple[str, str]) -> None:
    shards, adaptor = remote_inputs
    index = f"s3://{BUCKET}/index"
    built = runner.invoke(app, ["index", "--shards", shards, "--adaptor", adaptor, "--out", index])
    assert built.exit_code == 0, built.output
    assert f"index written: {index}" in built.output
    stored = s3.objects("index")
    assert json.loads(stored["manifest.json"])["complete"]
    assert {"image.faiss", "text.faiss", "records.sqlite"} <= set(stored)
    s3.assert_mirrors("index")
    shutil.rmtree(s3.cache / "s3")  # searched from what reached S3 alone
    found = runner.invoke(app, ["search", "--index", index, "--text", "effusion", "--json"])
    assert found.exit_code == 0, found.output
    assert len(json.loads(found.output)["hits"]) == 10

    res = f"s3://{BUCKET}/heads"
    args = ["finetune", "heads", "--shards", shards, "--adaptor", adaptor, "--out", res]
    heads = runner.invoke(app, [*args, "--fractions", "1", "--seeds", "0", "--heads", "linear"])
    assert heads.exit_code == 0, heads.output
    assert f"results in {res}" in heads.output
    stored = s3.objects("heads")
    assert {"splits.json", "results.json", "results.md"} <= set(stored)
    assert len(json.loads(stored["results.json"])["cells"]) == 2  # encoder and adaptor
    s3.assert_mirrors("heads")


def test_bad_storage_is_one_error_before_any_work(
    s3: S3, synthetic_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    embed = ["embed", "--source", f"synthetic:{synthetic_dir}"]

    missing = runner.invoke(app, [*embed, "--out", "s3://no-such-bucket/x"])
    assert missing.exit_code == 2
    assert "s3://no-such-bucket/x: the bucket does not exist" in _error_line(missing.output)
    pretrain_args = ["pretrain", "--shards", "s3://no-such-bucket/s", "--out", "run"]
    missing = runner.invoke(app, pretrain_args)
    assert missing.exit_code == 2
    assert "s3://no-such-bucket/s: the bucket does not exist" in _error_line(missing.output)

    iam = boto3.client("iam")
    iam.create_user(UserName="reader")
    read_only = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}
        ],
    }
    iam.put_user_policy(
        UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps(read_only)
    )
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    _fresh_clients()
    httpx.post(f"{s3.endpoint}/moto-api/reset-auth", content=b"0")  # check every request now
    try:
        refused = runner.invoke(app, [*embed, "--out", f"s3://{BUCKET}/refused"])
    finally:
        httpx.post(f"{s3.endpoint}/moto-api/reset-auth", content=b"inf")
    assert refused.exit_code == 2
    line = _error_line(refused.output)
    assert f"s3://{BUCKET}/refused: writing there is refused" in line and "Access Denied" in line

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    _fresh_clients()
    anonymous = runner.invoke(app, [*embed, "--out", f"s3://{BUCKET}/anonymous"])
    assert anonymous.exit_code == 2
    assert f"s3://{BUCKET}/anonymous: no credentials found" in _error_line(anonymous.output)

    monkeypatch.undo()  # the module's credentials again
    _fresh_clients()
    assert s3.objects("refused") == {} and s3.objects("anonymous") == {}
    assert not (s3.cache / "s3" / "no-such-bucket").exists()
