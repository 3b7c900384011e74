"""Start or join Ray quietly, and check a job fits before asking Ray for it.

Ray Train's controller retries forever when asked for more CPUs than exist, so
resources are checked here first and a clear error is raised instead.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from adaptor.errors import AdaptorError

QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DEDUP_LOGS": "0",
    "RAY_TRAIN_V2_ENABLED": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


class RayConnectError(AdaptorError, RuntimeError):
    """The Ray cluster address cannot be reached, or it lacks the resources asked for."""


def start_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join ``address`` (``host:port`` of a running head, or ``auto``) or start a contained local Ray.

    Reuses Ray when it is already initialised in this process.
    """
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    if address:
        _check_reachable(address)
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level="ERROR", log_to_driver=True)
        return
    temp_dir = Path(tempfile.gettempdir()) / f"adaptor-ray-{os.getuid()}"
    ray.init(
        num_cpus=num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,  # workers report through metrics.jsonl and errors
        _temp_dir=str(temp_dir),
        runtime_env={"env_vars": {k: os.environ[k] for k in QUIET_ENV}},
    )


def cpus_per_worker(workers: int, use_gpu: bool) -> int:
    """CPUs each training worker may take; raise RayConnectError when the cluster is too small."""
    import ray

    total_cpus = int(ray.cluster_resources().get("CPU", 0))
    if workers > max(total_cpus, 0):
        raise RayConnectError(
            f"asked for {workers} workers but the Ray cluster has {total_cpus} CPUs; use --workers {max(total_cpus, 1)} or fewer"
        )
    if use_gpu and int(ray.cluster_resources().get("GPU", 0)) < workers:
        raise RayConnectError(
            f"asked for {workers} GPU workers but the Ray cluster has too few GPUs"
        )
    return max(1, total_cpus // workers)


def _check_reachable(address: str) -> None:
    if address == "auto" or address.startswith("ray://"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise RayConnectError(
            f"bad --address {address!r}: expected HOST:PORT of a Ray head (e.g. 127.0.0.1:6379)"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as err:
        raise RayConnectError(f"cannot reach a Ray head at {address}: {err}") from err
