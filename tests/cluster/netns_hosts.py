"""Test hosts made of Linux network namespaces, and a Ray cluster across them.

Each host is a network namespace with its own loopback and one veth link to a bridge that
lives in a further "switch" namespace, so the test network (``10.77.0.0/24``) touches
nothing in the machine's own namespace and two runs side by side cannot collide (the
namespace names carry this process's id). The hosts share the filesystem: a folder of
it stands in for the cluster's shared storage.

Namespaces do not separate process ids, so ``ray stop`` run "in" a namespace would stop
every Ray on the machine. The processes of a host are instead found by their network
namespace (``ip netns pids``) and killed by pid; that is also how a host dies in the
tests. Every wait has a deadline, and a worker host that does not join the cluster in
time is reported by name (:class:`HostDidNotJoin`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptor.ray_env import QUIET_ENV

SUBNET = "10.77.0"  # the hosts' /24
GCS_PORT = 6379  # every host has its own ports: the head's can be fixed
BIN = Path(sys.executable).parent  # the venv's python and ray, for every host
PREFIX = "adm"  # namespaces are named adm<pid of the test process>-<host>
NETNS_ETC = Path("/etc/netns")  # per-namespace files that `ip netns exec` mounts over /etc
COMMAND_TIMEOUT = 30  # seconds for one `ip` command
# Ray notices a dead host after health_check_failure_threshold missed checks: ~1.5 s, not 15 s
RAY_ENV = {
    **QUIET_ENV,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    # the hosts share one hostname (namespaces do not separate it), which resolves to loopback:
    # torch's gloo must take the host's own link instead, as on machines with several NICs
    "GLOO_SOCKET_IFNAME": "eth0",
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    # Ray Train extras that only cost processes and CPU on 2 shared cores: metrics export, and
    # a watcher of nodes drained ahead of a preemption (hosts die abruptly here)
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}

# Polls the head's GCS through Ray's own (private) table reader: no driver, no dashboard until the given node IPs are alive or
# gone; prints the node and actor tables as JSON. argv: address, JSON {"alive": [...],
# "dead": [...]} (empty: do not wait), timeout in seconds.
_STATE_SCRIPT = """
import json, sys, time
from ray._private.state import GlobalState
from ray._raylet import GcsClientOptions

address, want, timeout = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
state = GlobalState()
state._initialize_global_state(
    GcsClientOptions.create(address, None, allow_cluster_id_nil=True, fetch_cluster_id_if_nil=False)
)
deadline = time.monotonic() + timeout
while True:
    nodes = [
        {"ip": n["NodeManagerAddress"], "alive": n["Alive"], "id": n["NodeID"],
         "resources": n.get("Resources", {})}
        for n in state.node_table()
    ]
    alive = {n["ip"] for n in nodes if n["alive"]}
    missing = sorted(set(want["alive"]) - alive)
    lingering = sorted(set(want["dead"]) & alive)
    if not (missing or lingering) or time.monotonic() > deadline:
        break
    time.sleep(0.25)
actors = [
    {"class": a["ActorClassName"], "ip": a["Address"]["IPAddress"], "state": a["State"],
     "id": a["ActorID"]}
    for a in state.actor_table(None).values()
]
print(json.dumps({"nodes": nodes, "actors": actors, "missing": missing, "lingering": lingering}))
"""


class HostError(RuntimeError):
    """A test host could not be made, started or reached; the message names it."""


class HostDidNotJoin(HostError):
    """A worker host's Ray node did not register with the head in time."""


def unavailable() -> str | None:
    """Why namespace hosts cannot be made here (a reason to skip), or None if they can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"adprobe{os.getpid()}"
    try:
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"`ip netns add` failed: {made.stderr.strip()}"
        veth = _ip(*f"-n {probe} link add name vp0 type veth peer name vp1".split(), check=False)
        if veth.returncode != 0:
            return f"cannot make veth pairs in a namespace: {veth.stderr.strip()}"
        inside = _ip("netns", "exec", probe, "true", check=False)
        if inside.returncode != 0:
            return f"cannot run a command in a namespace: {inside.stderr.strip()}"
    finally:
        _ip("netns", "delete", probe, check=False)
    return None


def sweep_stale() -> list[str]:
    """Delete the namespaces (and kill their processes) left by test processes that died
    before their teardown; those of live processes are left alone. Their names."""
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    stale = []
    for ns in (line.split()[0] for line in listed if line.strip()):
        owner = ns[len(PREFIX) :].partition("-")[0]
        if not ns.startswith(PREFIX) or not owner.isdigit() or Path(f"/proc/{owner}").exists():
            continue
        for pid in _ip("netns", "pids", ns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        _ip("netns", "delete", ns, check=False)
        shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
        stale.append(ns)
    with contextlib.suppress(OSError):
        NETNS_ETC.rmdir()  # only if no namespace keeps files there
    return stale


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )
    if check and done.returncode != 0:
        raise HostError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


def _tail(path: Path, chars: int = 2500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


@dataclass
class Host:
    """One test host: a network namespace with one address, and the Ray node started in it."""

    name: str
    ns: str
    ip: str
    temp_dir: Path  # this host's Ray --temp-dir (short: socket paths must fit 107 bytes)
    proc: subprocess.Popen | None = None  # `ray start --block`, while the node runs
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.logs[-1]

    def pids(self) -> list[int]:
        """Every process in this host's namespace (Ray's and any driver run there)."""
        done = _ip("netns", "pids", self.ns, check=False)
        return [int(p) for p in done.stdout.split()]


class NetnsCluster:
    """A switch namespace with a bridge, host namespaces wired to it, and Ray nodes in them.

    Use as a context manager: on exit every process in the hosts' namespaces is killed and
    every namespace deleted, whatever happened before.
    """

    def __init__(self, root: Path):
        self.root = root
        self.tag = f"{PREFIX}{os.getpid()}-"
        self.switch = f"{self.tag}switch"
        self.hosts: dict[str, Host] = {}
        self.head: Host | None = None
        self._temp = Path(tempfile.mkdtemp(prefix="adn", dir="/tmp"))

    # ------------------------------------------------------------------ network

    def __enter__(self) -> NetnsCluster:
        try:
            _ip("netns", "add", self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_host(self, name: str, octet: int) -> Host:
        """A namespace ``name`` at ``SUBNET.octet``, loopback up, linked to the bridge."""
        ns = f"{self.tag}{name}"
        host = Host(name=name, ns=ns, ip=f"{SUBNET}.{octet}", temp_dir=self._temp / name)
        self.hosts[name] = host
        port = f"p{name}"  # its end in the switch namespace (names there are the switch's)
        _ip("netns", "add", ns)
        _ip(*f"-n {self.switch} link add name {port} type veth peer name eth0 netns {ns}".split())
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        # a default route, so that "which of my addresses reaches the outside" has an answer
        _ip("-n", ns, "route", "add", "default", "dev", "eth0")
        host.temp_dir.mkdir(parents=True)
        self._write_etc()
        return host

    def _write_etc(self) -> None:
        """Each host's /etc/hosts names every host, and its resolver answers at once: `ip netns
        exec` mounts /etc/netns/NS/* over /etc. Without this, reverse lookups of the peers'
        addresses (torch's c10d does them) wait for the machine's DNS server, which no test host
        can reach, and time out after seconds each."""
        names = "".join(f"{h.ip} {h.ns} host-{h.name}\n" for h in self.hosts.values())
        for host in self.hosts.values():
            etc = NETNS_ETC / host.ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(f"127.0.0.1 localhost\n{names}")
            # no DNS server: a loopback one refuses at once (nothing listens on port 53)
            (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")

    def unplug(self, host: Host) -> None:
        """Take the host's link down: it can no longer reach any other host."""
        _ip("-n", host.ns, "link", "set", "eth0", "down")

    # ------------------------------------------------------------------ processes

    def env(self) -> dict[str, str]:
        env = {**os.environ, **RAY_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        # this cluster for whatever looks for "the" Ray (Ray Train's placement-group cleaner
        # does, every second): the pid namespace is shared, so a search would also find
        # every other Ray on the machine, and fail
        env.pop("RAY_ADDRESS", None)
        if self.head is not None:
            env["RAY_ADDRESS"] = self.address
        return env

    def popen(self, host: Host, argv: list[str], log: Path, **kw: Any) -> subprocess.Popen:
        """Start ``argv`` inside ``host``'s namespace, its output to ``log``."""
        with open(log, "ab") as out:
            return subprocess.Popen(
                ["ip", "netns", "exec", host.ns, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
                start_new_session=True,
                **kw,
            )

    def python(self, host: Host, code: str, *args: str, timeout: float) -> str:
        """Run ``python -c code args`` in ``host``; its stdout, or HostError with its output."""
        try:
            done = subprocess.run(
                ["ip", "netns", "exec", host.ns, str(BIN / "python"), "-c", code, *args],
                capture_output=True,
                text=True,
                env=self.env(),
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            raise HostError(f"a command in host {host.name!r} ran past {timeout} s") from err
        if done.returncode != 0:
            raise HostError(
                f"a command in host {host.name!r} exited {done.returncode}:\n{done.stderr[-3000:]}"
            )
        return done.stdout

    @property
    def address(self) -> str:
        assert self.head is not None, "no head started"
        return f"{self.head.ip}:{GCS_PORT}"

    def _ray_start(self, host: Host, *args: str) -> None:
        host.starts += 1
        host.logs.append(self.root / f"{host.name}-{host.starts}.log")
        argv = [str(BIN / "ray"), "start", "--block", f"--node-ip-address={host.ip}"]
        argv += [f"--temp-dir={host.temp_dir}", "--disable-usage-stats"]
        argv += ["--object-store-memory=100000000", *args]
        host.proc = self.popen(host, argv, host.log)

    def start_head(self, host: Host, *, num_cpus: int = 0, timeout: float = 90) -> None:
        """The Ray head in ``host`` (no CPUs by default: work goes to the worker hosts)."""
        self.head = host
        self._ray_start(
            host,
            "--head",
            f"--port={GCS_PORT}",
            f"--num-cpus={num_cpus}",
            "--include-dashboard=false",
        )
        self.wait_for([host], timeout=timeout)

    def start_worker(self, host: Host, *, num_cpus: int = 1) -> None:
        """Start a worker node in ``host`` joining the head; :meth:`wait_for` waits for it."""
        self._ray_start(host, f"--address={self.address}", f"--num-cpus={num_cpus}")

    def state(self, *, alive: list[Host] = (), dead: list[Host] = (), timeout: float = 0) -> dict:
        """The head's node and actor tables, after waiting up to ``timeout`` s for the
        ``alive`` hosts to be alive and the ``dead`` ones gone."""
        assert self.head is not None, "no head started"
        want = {"alive": [h.ip for h in alive], "dead": [h.ip for h in dead]}
        out = self.python(
            self.head,
            _STATE_SCRIPT,
            self.address,
            json.dumps(want),
            str(timeout),
            timeout=timeout + 30,
        )
        return json.loads(out.strip().splitlines()[-1])

    def wait_for(self, hosts: list[Host], *, timeout: float) -> dict:
        """Wait until every host's Ray node is registered and alive; the head's tables.

        Raises HostDidNotJoin naming the first host whose ``ray start`` exited, or that is
        still missing at the deadline, with the end of its log.
        """
        deadline = time.monotonic() + timeout
        while True:
            for host in hosts:
                if host.proc is not None and host.proc.poll() is not None:
                    raise HostDidNotJoin(
                        f"host {host.name!r} ({host.ip}): `ray start` exited with "
                        f"{host.proc.returncode} before joining the cluster at {self.address}; "
                        f"its log:\n{_tail(host.log)}"
                    )
            left = deadline - time.monotonic()
            try:
                state = self.state(alive=hosts, timeout=max(0.0, min(left, 5.0)))
            except HostError as err:  # the head's GCS does not answer (yet)
                if left > 0:
                    time.sleep(0.5)
                    continue
                raise HostDidNotJoin(
                    f"the head {self.head.name!r} ({self.head.ip}) does not answer at "
                    f"{self.address}: {err}\nits log:\n{_tail(self.head.log)}"
                ) from err
            missing = [h for h in hosts if h.ip in state["missing"]]
            if not missing:
                return state
            if left <= 0:
                others = ", ".join(repr(h.name) for h in missing[1:])
                host = missing[0]
                raise HostDidNotJoin(
                    f"host {host.name!r} ({host.ip}) did not join the Ray cluster at "
                    f"{self.address} within {timeout:.0f} s"
                    + (f" (nor did {others})" if others else "")
                    + f"; its `ray start` log:\n{_tail(host.log)}"
                )

    def kill(self, host: Host, *, timeout: float = 10) -> list[int]:
        """SIGKILL every process of ``host`` (found by its namespace) until none is left (one
        killed mid-fork may leave a child; one exiting is listed until it is gone), or until
        ``timeout``; their pids."""
        killed: list[int] = []
        deadline = time.monotonic() + timeout
        while (pids := host.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed += [p for p in pids if p not in killed]
            time.sleep(0.05)
        if host.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                host.proc.wait(timeout=5)  # reap `ray start`
            host.proc = None
        return killed

    def close(self) -> None:
        """Kill every process of every host and delete every namespace (nothing to keep)."""
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                self.kill(host)
        for ns in [*(h.ns for h in self.hosts.values()), self.switch]:
            _ip("netns", "delete", ns, check=False)
            shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
        with contextlib.suppress(OSError):
            NETNS_ETC.rmdir()  # only if no other namespace keeps files there
        self.hosts.clear()
        shutil.rmtree(self._temp, ignore_errors=True)
