"""Batch jobs on a real Ray head: submit, stop, resubmit, and match the local command bit for bit.

The test starts its own head on 127.0.0.1 (free ports, its own ``--temp-dir``) with
``ray start --head --block`` and stops exactly that: SIGTERM to the process it started
(Ray then stops the processes it spawned), then SIGKILL to any process still naming its
temp dir. It never runs ``ray stop``, which would kill every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from adaptor.config import ActorOptions
from adaptor.data.sources import SourceError
from adaptor.embed import EmbedConfig, EmbedError, embed
from adaptor.embed.actors import embed_on_ray, split_shards
from adaptor.encoders import UnknownEncoderError
from adaptor.ray_env import QUIET_ENV
from adaptor.shards.manifest import Manifest
from adaptor.shards.writer import finished_shards

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CPUS = os.cpu_count() or 1  # the head gets what a local run gets, so threads match
JOB_ENV = {**QUIET_ENV, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass
class Head:
    address: str  # GCS HOST:PORT, what --address takes
    dashboard: str  # what the job submission client takes
    temp_dir: Path


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _processes_naming(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    # short on purpose: Ray's socket paths under it must fit in 107 bytes
    temp_dir = Path(tempfile.mkdtemp(prefix="adr", dir="/tmp"))
    gcs, dash, client, nm, om, listen, grpc, rte, metrics = _free_ports(9)
    env = {
        **os.environ,
        **JOB_ENV,
        # the job's `python -m …` must find this interpreter (and its Ray) first
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("RAY_ADDRESS", None)
    cmd = [
        sys.executable,
        "-c",
        "from ray.scripts.scripts import main; main()",
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}",
        f"--node-manager-port={nm}",
        f"--object-manager-port={om}",
        f"--dashboard-agent-listen-port={listen}",
        f"--dashboard-agent-grpc-port={grpc}",
        f"--runtime-env-agent-port={rte}",
        f"--metrics-export-port={metrics}",
        f"--num-cpus={CPUS}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    log = open(temp_dir / "head.log", "wb")  # noqa: SIM115 (closed in the teardown)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{dash}"
    try:
        _wait_for_dashboard(url, proc, temp_dir / "head.log")
        yield Head(address=f"127.0.0.1:{gcs}", dashboard=url, temp_dir=temp_dir)
    finally:
        import ray

        ray.shutdown()  # this process may have joined the head as a driver
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)  # Ray's graceful drain; what is left is killed below
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pid in _processes_naming(str(temp_dir)):  # only processes of this head
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_dashboard(url: str, proc: subprocess.Popen, log: Path) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            JobSubmissionClient(url).list_jobs()
            return
        except Exception:
            time.sleep(1)
    pytest.fail(f"the Ray dashboard at {url} did not answer in 120 s:\n{log.read_text()[-3000:]}")


def _submit(head: Head, entrypoint: str) -> str:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head.dashboard)
    deadline = time.monotonic() + 120
    while True:
        try:
            return client.submit_job(
                entrypoint=entrypoint, runtime_env={"working_dir": str(REPO), "env_vars": JOB_ENV}
            )
        except RuntimeError as err:  # the head's job agent starts after its dashboard
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def _wait(head: Head, job_id: str, timeout: float = 300) -> tuple[str, str]:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(head.dashboard)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return str(status.value), client.get_job_logs(job_id)
        time.sleep(0.5)
    client.stop_job(job_id)
    pytest.fail(f"job {job_id} still {JobStatus.RUNNING} after {timeout} s")


def _embed_cfg(raw: Path, out: Path, **kw: object) -> EmbedConfig:
    options = dict(shard_size=10, batch_size=8, loader_workers=0, progress=False)
    options.update(kw)
    return EmbedConfig(source=f"synthetic:{raw}", out=out, **options)  # type: ignore[arg-type]


def test_split_shards_gives_contiguous_balanced_ranges() -> None:
    assert split_shards(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_shards([4, 9], 5) == [[4], [9]]
    assert split_shards([], 3) == [[]]


def test_actors_write_the_shards_of_a_local_embed_then_resume(
    head: Head, synthetic_dir: Path, tmp_path: Path
) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each 1-CPU actor uses
    try:
        local = embed(_embed_cfg(synthetic_dir, tmp_path / "local"))
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "ray"
    result = embed_on_ray(
        _embed_cfg(synthetic_dir, out), address=head.address, placement=ActorOptions(actors=2)
    )
    assert (result.count, result.shards_written, result.shards_reused) == (40, 4, 0)
    ours, theirs = Manifest.load(out), Manifest.load(tmp_path / "local")
    assert [s.sha256 for s in ours.shards] == [s.sha256 for s in theirs.shards]
    assert ours.complete and ours.count == local.count == 40

    # a job that died: one shard lost, and a half-written file of a killed actor left behind
    lost = out / ours.shards[2].name
    lost.unlink()
    (out / f"{ours.shards[3].name}.999.partial").write_bytes(b"cut short")
    kept = {s.name: (out / s.name).stat().st_mtime_ns for s in ours.shards if s.index != 2}
    again = embed_on_ray(
        _embed_cfg(synthetic_dir, out), address=head.address, placement=ActorOptions(actors=2)
    )
    assert (again.shards_written, again.shards_reused, again.count) == (1, 3, 40)
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept
    assert Manifest.load(out).shards == ours.shards  # the redone shard has the same bytes
    assert not list(out.glob("*.partial"))


def test_adaptor_embed_with_address_runs_actors(
    head: Head, synthetic_dir: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from adaptor.cli import app

    out = tmp_path / "cli"
    args = ["embed", "--source", f"synthetic:{synthetic_dir}", "--out", str(out)]
    args += ["--shard-size", "20", "--batch-size", "8", "--loader-workers", "0", "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--address", head.address, "--actors", "2"])
    assert result.exit_code == 0, result.output
    assert "embedding 2 shards with 2 actor(s)" in result.output
    manifest = Manifest.load(out)
    assert manifest.complete and manifest.count == 40 and len(manifest.shards) == 2

    refused = CliRunner().invoke(app, [*args, "--actors", "2"])
    assert refused.exit_code == 2 and "--actors needs --address" in refused.output


def test_bad_embed_input_fails_before_any_shard(
    head: Head, synthetic_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(SourceError, match="no records.jsonl"):
        embed_on_ray(_embed_cfg(tmp_path / "nothing", tmp_path / "a"), address=head.address)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(EmbedError, match="cannot write to"):
        embed_on_ray(_embed_cfg(synthetic_dir, blocker / "shards"), address=head.address)
    out = tmp_path / "b"
    with pytest.raises(UnknownEncoderError, match="no-such-encoder"):
        embed_on_ray(
            _embed_cfg(synthetic_dir, out, image_encoder="no-such-encoder"), address=head.address
        )
    assert not list(out.glob("*.tar"))


def _weights(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


def test_jobs_on_a_cluster_match_the_local_command(head: Head, tmp_path: Path) -> None:
    from ray.job_submission import JobSubmissionClient

    config = tmp_path / "small.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "dataset": "synthetic",
                "synth": {"n": 40, "seed": 7, "size": 224},
                "embed": {"shard_size": 2, "loader_workers": 0, "batch_size": 8},
                "pretrain": {"epochs": 2, "batch_size": 8, "model": {"width": 32}},
                "finetune": {"tasks": []},
            }
        )
    )
    cluster, local = tmp_path / "cluster", tmp_path / "local"
    shards = cluster / "synthetic" / "efficientnet-lite0__all-minilm-l6-v2"
    embed_job = (
        f"python -m pipelines.embed --config {config} --out {cluster} --no-progress "
        f"--cpus-per-actor {CPUS}"
    )

    # 1. an embed job that dies part-way (stopped through the job API) ...
    first = _submit(head, embed_job)
    client = JobSubmissionClient(head.dashboard)
    deadline = time.monotonic() + 240
    while not finished_shards(shards) and time.monotonic() < deadline:
        assert not client.get_job_status(first).is_terminal(), client.get_job_logs(first)
        time.sleep(0.1)
    client.stop_job(first)
    status, logs = _wait(head, first)
    kept = {
        i: (shards / info["shard"]["name"]).stat().st_mtime_ns
        for i, info in finished_shards(shards).items()
    }
    assert status == "STOPPED" and 0 < len(kept) < 20, (status, len(kept), logs)

    # 2. ... resubmitted, keeps its finished shards and does the rest
    status, logs = _wait(head, _submit(head, embed_job))
    assert status == "SUCCEEDED", logs
    done = finished_shards(shards)
    assert len(done) == 20 and Manifest.load(shards).complete
    for i, mtime in kept.items():  # not rewritten
        assert (shards / done[i]["shard"]["name"]).stat().st_mtime_ns == mtime
    summary = next(line for line in logs.splitlines() if line.startswith("[embed] 40 samples"))
    written = int(summary.split("(")[1].split(" shards written")[0])
    assert 0 < written <= 20 - len(kept) and f"{20 - written} reused" in summary, summary

    # 3. the default pretraining job on those shards, and beside it (4.) the local command on
    # the same shards, config and seed; both run 2 epochs of the same loop on CPUS threads
    local_run = subprocess.Popen(
        [
            *(sys.executable, "-m", "adaptor.cli", "pretrain"),
            *("--shards", str(shards), "--out", str(local)),
            *("--epochs", "2", "--batch-size", "8", "--width", "32", "--seed", "0"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **JOB_ENV},
    )
    status, logs = _wait(
        head,
        _submit(
            head, f"python -m pipelines.pretrain --config {config} --out {cluster} --no-progress"
        ),
    )
    local_output, _ = local_run.communicate(timeout=600)
    assert status == "SUCCEEDED", logs
    assert "Adaptor saved to" in logs
    # the default compare: {reference: {}} cannot train its batch of 1024 on 27 pairs: a
    # warning naming the key, and the job goes on
    assert "warning: compared preset 'reference' not pretrained" in logs
    assert "set compare.reference keys, e.g. batch_size" in logs
    assert local_run.returncode == 0, local_output[-3000:]
    jobs = client.list_jobs()  # Ray's own job API lists every job with its status
    assert sorted(j.status.value for j in jobs if "pipelines.embed" in j.entrypoint) == [
        "STOPPED",
        "SUCCEEDED",
    ]

    cluster_run = cluster / "runs" / "synthetic" / "pretrain"
    cluster_weights, local_weights = _weights(cluster_run / "adaptor"), _weights(local / "adaptor")
    assert cluster_weights.keys() == local_weights.keys()
    for name, tensor in cluster_weights.items():
        assert tensor.equal(local_weights[name]), name
    losses = [
        [
            json.loads(line)["train_loss"]
            for line in (folder / "metrics.jsonl").read_text().splitlines()
        ]
        for folder in (cluster_run, local)
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 2


def test_the_study_job_runs_on_a_ray_head(head: Head, tmp_path: Path) -> None:
    """`ray job submit … python -m pipelines.study`: a tiny study on the head, its table in
    the job's log (its resume is tested through `adaptor study` in tests/study)."""
    config = tmp_path / "study.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "corpus": {"synth": {"n": 40, "seed": 7, "size": 224}},
                "evaluate": {"corpus": {"source": "corpus", "tasks": ["classification"]}},
                "presets": {"ours": {"epochs": 2, "batch_size": 8, "model": {"width": 32}}},
                "embed": {"loader_workers": 0, "batch_size": 20},
                "fractions": [1.0],
                "seeds": [0],
                "classification": {"heads": ["linear"], "max_epochs": 3},
            }
        )
    )
    out = tmp_path / "study"
    job = f"python -m pipelines.study --config {config} --out {out} --no-progress"
    status, logs = _wait(head, _submit(head, job))
    assert status == "SUCCEEDED", logs
    assert "| efficientnet-lite0 × all-minilm-l6-v2 | ours | adaptor+linear |" in logs
    assert "| efficientnet-lite0 | baseline | encoder+linear |" in logs
    assert (out / "study.json").is_file()
