"""A Ray cluster of three hosts made of network namespaces: embed and pretrain across hosts,
a host lost mid-training, a host that never joins.

The head (no CPUs) runs in one namespace, a worker node with one CPU in each of two
others (:mod:`netns_hosts`); the drivers run on the head host, as a job would. With one
CPU per worker host and two Ray Train workers of one CPU each (``cpus_per_worker``: the
cluster's CPUs over the workers), Ray Train places one worker per host; two encoder
actors of one CPU each land one per host the same way. The test's folder is the shared
storage every host sees. Needs root and ``ip netns`` (iproute2); skips saying why
without them. One cluster serves the module and is torn down whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from netns_hosts import BIN, Host, HostDidNotJoin, NetnsCluster, sweep_stale, unavailable

from adaptor.embed import EmbedConfig, embed
from adaptor.shards.manifest import Manifest

pytestmark = pytest.mark.slow

JOIN_TIMEOUT = 90  # s for the worker hosts' nodes to register (2 shared cores: ~10 s)
JOB_TIMEOUT = 300  # s for one driver (embed, or both pretraining runs)
EPOCHS = 5
KILL_AFTER = 2  # epochs finished (and checkpointed) before host b dies; 3 remain
PACE = 0.3  # s slept before each step of the disturbed run: 2.7 s of its steps remain at the kill
OPTIONS = {
    "workers": 2,
    "epochs": EPOCHS,
    "batch_size": 4,
    "seed": 0,
    "use_gpu": False,
    "max_failures": 2,
    "model": {"width": 32, "heads": 4, "ffn_hidden": 64},
}
# The resumed run must end where the undisturbed one ends: it restarts from an epoch
# checkpoint holding the weights, the optimizer and the scheduler, each epoch's order is
# seeded by (seed, epoch, rank), dropout is off, each worker runs one thread and gloo's
# sum of two ranks is commutative, so the replayed steps compute the same numbers. For
# scale, seeds 0-4 of this run spread by a standard deviation of 0.32 in mean val recall
# and 0.15 in val loss (9 val pairs); the tolerance, float32 round-off, is far inside that.
TOLERANCE = 1e-6

_EMBED_DRIVER = """
import json, sys
from adaptor.config import ActorOptions
from adaptor.embed import EmbedConfig
from adaptor.embed.actors import embed_on_ray

job = json.loads(sys.argv[1])
placement = ActorOptions(actors=2, cpus_per_actor=1)
result = embed_on_ray(
    EmbedConfig(**job["config"]), address=job["address"], placement=placement, use_gpu=False, log=print
)
print(json.dumps({"count": result.count, "written": result.shards_written}))
"""

# Runs each of job["runs"] in turn in one driver; a run with "pace" sleeps that long before
# every step (the loop's fault hook, which injects nothing else here).
_PRETRAIN_DRIVER = """
import json, sys, time
from adaptor.pretrain import PretrainConfig, pretrain

job = json.loads(sys.argv[1])
for run in job["runs"]:
    def pace(step, seconds=run["pace"]):
        time.sleep(seconds)

    cfg = PretrainConfig(shards=job["shards"], out=run["out"], address=job["address"], **job["options"])
    pretrain(cfg, progress=False, log=print, fault=pace if run["pace"] else None)
    print("finished", run["out"], flush=True)
"""

# The check adaptor.pretrain makes before asking Ray Train for its workers (which would wait
# forever for hosts that never come), without pretrain's heavy imports.
_REFUSED_DRIVER = """
import sys
from adaptor.ray_env import RayConnectError, cpus_per_worker, start_ray

start_ray(sys.argv[1])
try:
    cpus_per_worker(int(sys.argv[2]), use_gpu=False)
except RayConnectError as err:
    print("REFUSED", err)
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    """Hosts ``head`` (10.77.0.2, the Ray head, no CPUs), ``a`` and ``b`` (.11, .12: one CPU
    each), all running; everything is killed and every namespace deleted afterwards."""
    reason = unavailable()
    if reason:
        pytest.skip(f"no network-namespace hosts here: {reason}")
    sweep_stale()
    with NetnsCluster(tmp_path_factory.mktemp("multihost-logs")) as net:
        head = net.add_host("head", 2)
        a, b = net.add_host("a", 11), net.add_host("b", 12)
        net.start_head(head, timeout=JOIN_TIMEOUT)
        net.start_worker(a)
        net.start_worker(b)
        net.wait_for([a, b], timeout=JOIN_TIMEOUT)
        yield net


@pytest.fixture(scope="module")
def local_shards(tmp_path_factory: pytest.TempPathFactory, synthetic_dir: Path) -> Path:
    """The synthetic set (40 records) embedded by this process alone, one torch thread."""
    import torch

    out = tmp_path_factory.mktemp("multihost-shared") / "local"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each one-CPU actor runs
    try:
        embed(_embed_cfg(synthetic_dir, out))
    finally:
        torch.set_num_threads(threads)
    return out


def _embed_cfg(raw: Path, out: Path) -> EmbedConfig:
    return EmbedConfig(
        source=f"synthetic:{raw}",
        out=out,
        shard_size=10,
        batch_size=8,
        loader_workers=0,
        progress=False,
    )


@dataclass
class Driver:
    """A Python driver running on the head host, and when it must be done."""

    proc: subprocess.Popen
    log: Path
    deadline: float

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()  # a test that failed leaves no driver behind

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session (popen)
            self.proc.wait()

    def finish(self) -> str:
        """Wait for the driver until its deadline (then kill it); its output, checked for rc 0."""
        try:
            self.proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the driver ran past its deadline; its output:\n{self.output()[-4000:]}")
        output = self.output()
        assert self.proc.returncode == 0, (
            f"the driver exited {self.proc.returncode}:\n{output[-4000:]}"
        )
        return output


def _driver(
    net: NetnsCluster, code: str, job: dict | list[str], name: str, *, timeout: float = JOB_TIMEOUT
) -> Driver:
    """Start ``python -c code JOB`` (a dict: as JSON; a list: its items) on the head host, in
    the repository root."""
    assert net.head is not None
    log = net.root / f"{name}-driver.log"
    args = [json.dumps(job)] if isinstance(job, dict) else job
    argv = [str(BIN / "python"), "-c", code, *args]
    proc = net.popen(net.head, argv, log, cwd=Path(__file__).resolve().parents[2])
    return Driver(proc, log, time.monotonic() + timeout)


def _wait_until(what: str, done: Callable[[], bool], driver: Driver) -> None:
    """Poll ``done`` until true; fail when the driver exits first or its deadline passes."""
    while not done():
        if driver.proc.poll() is not None:
            pytest.fail(
                f"the driver exited {driver.proc.returncode} before {what}:\n{driver.output()[-4000:]}"
            )
        if time.monotonic() > driver.deadline:
            pytest.fail(f"no {what} before the driver's deadline:\n{driver.output()[-4000:]}")
        time.sleep(0.05)


def _epochs(run: Path) -> int:
    try:
        return len((run / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def _actor_hosts(net: NetnsCluster, class_name: str) -> Counter:
    """How many actors of ``class_name`` ever ran on each host (by name), dead ones included."""
    by_ip = {h.ip: h.name for h in net.hosts.values()}
    actors = net.state()["actors"]
    return Counter(by_ip.get(a["ip"], a["ip"]) for a in actors if a["class"] == class_name)


def test_encoder_actors_on_two_hosts_write_the_shards_of_a_local_embed(
    cluster: NetnsCluster, local_shards: Path, synthetic_dir: Path
) -> None:
    out = local_shards.parent / "cluster"
    job = {
        "address": cluster.address,
        "config": _embed_cfg(synthetic_dir, out).model_dump(mode="json"),
    }
    with _driver(cluster, _EMBED_DRIVER, job, "embed") as driver:
        output = driver.finish()
    assert json.loads(output.strip().splitlines()[-1]) == {"count": 40, "written": 4}, output
    assert _actor_hosts(cluster, "_EmbedWorker") == {"a": 1, "b": 1}  # one actor on each host

    ours, theirs = Manifest.load(out), Manifest.load(local_shards)
    assert ours.complete and ours.count == theirs.count == 40
    # byte-identical tar files: each actor ran one torch thread, as the local embed did
    assert [(s.name, s.sha256) for s in ours.shards] == [(s.name, s.sha256) for s in theirs.shards]


@pytest.fixture
def host_b(cluster: NetnsCluster) -> Iterator[Host]:
    """Worker host b; started again afterwards if the test left it dead."""
    b = cluster.hosts["b"]
    yield b
    if b.proc is None:
        cluster.start_worker(b)
        cluster.wait_for([b], timeout=JOIN_TIMEOUT)


def test_a_host_lost_mid_training_is_replaced_and_the_run_resumes_from_its_checkpoint(
    cluster: NetnsCluster, host_b: Host, local_shards: Path
) -> None:
    b = host_b
    shared = local_shards.parent
    undisturbed, disturbed = shared / "undisturbed", shared / "disturbed"
    job = {
        "address": cluster.address,
        "shards": str(local_shards),
        "options": OPTIONS,
        "runs": [{"out": str(undisturbed), "pace": 0}, {"out": str(disturbed), "pace": PACE}],
    }
    started = time.monotonic()
    with _driver(cluster, _PRETRAIN_DRIVER, job, "pretrain") as driver:
        _wait_until("the undisturbed run's outputs", (undisturbed / "metrics.json").is_file, driver)
        print(f"undisturbed run done after {time.monotonic() - started:.1f} s")
        _wait_until(
            f"epoch {KILL_AFTER} of the disturbed run",
            lambda: _epochs(disturbed) >= KILL_AFTER,
            driver,
        )

        # host b dies: its raylet, its Ray Train worker and every other process in it
        assert cluster.kill(b) and not b.pids()
        print(f"host b killed after {time.monotonic() - started:.1f} s")
        state = cluster.state(dead=[b], timeout=30)
        assert b.ip not in {n["ip"] for n in state["nodes"] if n["alive"]}, state["nodes"]
        # Ray Train cannot place two one-CPU workers on the one CPU left, so it waits for
        # resources (it would wait forever): no epoch ends until a machine takes b's place
        at_loss = _epochs(disturbed)
        cluster.start_worker(b)  # the replacement: same address, a new Ray node
        cluster.wait_for([b], timeout=JOIN_TIMEOUT)
        assert _epochs(disturbed) == at_loss < EPOCHS and driver.proc.poll() is None
        print(f"host b replaced after {time.monotonic() - started:.1f} s")
        output = driver.finish()
        print(f"disturbed run done after {time.monotonic() - started:.1f} s")
    assert f"finished {disturbed}" in output, output[-4000:]

    calm = json.loads((undisturbed / "metrics.json").read_text())
    hit = json.loads((disturbed / "metrics.json").read_text())
    steps = calm["final"]["global_step"] // EPOCHS
    # resumed once, from an epoch checkpoint written before the kill (not from scratch)
    assert len(hit["resumed_at_steps"]) == 1, hit["resumed_at_steps"]
    resumed = hit["resumed_at_steps"][0]
    assert resumed % steps == 0 and steps <= resumed <= at_loss * steps, (resumed, at_loss, steps)
    assert calm["resumed_at_steps"] == [] and hit["epochs"] == calm["epochs"] == EPOCHS
    val = {k: v for k, v in calm["final"].items() if k.startswith("val_")}
    print(f"final val, undisturbed: {val}\nfinal val, disturbed: {hit['final']}")
    assert "val_t2i_r@10" in val and "val_loss" in val and val["val_size"] == 9
    for key, value in val.items():  # recall@1/5/10 both ways, their mean, the loss
        assert abs(hit["final"][key] - value) <= TOLERANCE, (key, hit["final"][key], value)
    assert hit["final"]["global_step"] == calm["final"]["global_step"]
    assert hit["best_epoch"] == calm["best_epoch"]
    # every training worker ran on a worker host, one per host in each worker group: the
    # undisturbed run's, the disturbed run's before the kill and after it (b: its replacement)
    workers = _actor_hosts(cluster, "RayTrainWorker")
    assert set(workers) == {"a", "b"} and min(workers.values()) >= 3, workers


def test_a_host_that_never_joins_is_named_in_one_error(cluster: NetnsCluster) -> None:
    c = cluster.add_host("c", 13)
    try:
        cluster.unplug(c)  # a machine that cannot reach the head
        started = time.monotonic()
        cluster.start_worker(c)
        with pytest.raises(HostDidNotJoin, match=r"host 'c' \(10\.77\.0\.13\)") as err:
            cluster.wait_for([c], timeout=5)
        assert time.monotonic() - started < 60, "the wait overran its timeout"
        assert f"cluster at {cluster.address}" in str(err.value)
    finally:
        cluster.kill(c)

    # a pretraining job sized for three worker hosts is refused at once, saying what joined
    with _driver(
        cluster, _REFUSED_DRIVER, [cluster.address, "3"], "refused", timeout=120
    ) as driver:
        output = driver.finish()
    assert "REFUSED asked for 3 workers but the Ray cluster has 2 CPUs" in output, output[-3000:]
