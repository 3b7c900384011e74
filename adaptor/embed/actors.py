"""The embed stage on a Ray cluster: encoder actors over shard ranges, one shared shard folder.

Shards are the unit of work: shard ``i`` always holds source positions
``[i*shard_size, (i+1)*shard_size)`` and is encoded in the same batches wherever it runs,
so the actors write the same samples as a local ``adaptor embed`` (byte-identical when each
actor runs as many CPU threads as the local run; otherwise CPU kernels may round the last
float16 bit differently). Each actor (one per GPU,
or one per ``cpus_per_actor`` CPUs) runs :func:`adaptor.embed.embed` on a contiguous range
of the unfinished shard indices and writes each shard atomically into the output folder,
which must be storage every node sees at the same path (a local disk for one machine,
NFS or another shared mount for a cluster), or the working copy of a remote folder
(:mod:`adaptor.remote`: each actor then opens its own node's copy). The driver checks
everything it can before any actor starts, then completes ``manifest.json``. A resubmitted
job keeps the finished shards and does the rest.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from adaptor.atomic import atomic_write_json, remove, remove_stale_partials
from adaptor.config import ActorOptions
from adaptor.data.sources import open_source
from adaptor.embed.folder import finish_manifest, require_samples, shard_count
from adaptor.embed.job import EmbedConfig, EmbedError, EmbedResult
from adaptor.embed.stage import embed
from adaptor.errors import AdaptorError
from adaptor.ray_env import RayConnectError, start_ray
from adaptor.remote import uri_of, working_copy
from adaptor.shards.manifest import Manifest
from adaptor.shards.writer import finished_shards


def embed_on_ray(
    cfg: EmbedConfig,
    *,
    address: str | None = None,
    placement: ActorOptions | None = None,
    use_gpu: bool | None = None,
    log: Callable[[str], None] = tqdm.write,
) -> EmbedResult:
    """Run (or resume) the embed job ``cfg`` with encoder actors on a Ray cluster.

    ``address``: a running Ray head (``HOST:PORT`` or ``auto``); None starts a local Ray.
    ``placement.actors``: how many encoder actors (default: one per GPU, else one per
    ``placement.cpus_per_actor`` CPUs of the cluster), never more than the shards left to do.
    """
    placement = placement or ActorOptions()
    cpus_per_actor = placement.cpus_per_actor
    started = time.perf_counter()
    out = Path(cfg.out).resolve()
    if cfg.only_shards is not None:
        raise EmbedError("embed_on_ray assigns shards itself; leave only_shards unset")
    total_items = sum(1 for _ in open_source(cfg.source).items())  # a missing source fails here
    check_writable(out)
    n_shards = shard_count(total_items, cfg.shard_size)

    start_ray(address)
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = gpus > 0 if use_gpu is None else use_gpu
    worker = ray.remote(_EmbedWorker).options(
        num_cpus=cpus_per_actor,
        num_gpus=1 if use_gpu else 0,
        max_restarts=1,
        max_task_retries=1,  # safe: a retried share redoes only its unfinished shards
    )
    slots = _slots(ray.cluster_resources(), cpus_per_actor=cpus_per_actor, use_gpu=use_gpu)
    base = cfg.model_copy(update={"out": out, "progress": False})
    location = uri_of(out)  # what an actor on any node opens

    if Manifest.exists(out):
        remove_stale_partials(out)  # nothing else writes here yet: leftovers of a dead run
    pool = [worker.remote(cpus_per_actor)]
    try:
        # one actor opens (or checks) the job folder before the others start: a mismatched
        # folder, an unknown encoder or weights that cannot load fail here, before any shard
        _get(pool[0].run.remote(base.model_copy(update={"only_shards": []}), location), out)
        reused = set(finished_shards(out))
        pending = [i for i in range(n_shards) if i not in reused]
        if reused:
            log(f"resuming: {len(reused)} of {n_shards} shards already finished in {out}")
        shares = split_shards(pending, min(placement.actors or slots, max(1, len(pending))))
        pool += [worker.remote(cpus_per_actor) for _ in shares[1:]]
        log(f"embedding {len(pending)} shards with {len(shares)} actor(s) into {out}")
        phase_started = time.perf_counter()
        refs = [
            actor.run.remote(base.model_copy(update={"only_shards": share}), location)
            for actor, share in zip(pool, shares, strict=True)
        ]
        results = _wait_with_progress(refs, out, n_shards, len(reused), progress=cfg.progress)
        phase_seconds = time.perf_counter() - phase_started
    finally:
        for actor in pool:
            ray.kill(actor)

    working_copy(location)  # the shards actors on other nodes sent to a remote folder
    manifest = finish_manifest(out)
    if not manifest.complete:
        raise EmbedError(f"{out}: the actors finished but some shards are missing; resubmit")
    require_samples(manifest, out)
    encoded = sum(r.count for r in results)
    return EmbedResult(
        folder=out,
        count=manifest.count,
        skipped=manifest.skipped,
        truncated_reports=manifest.truncated_reports,
        shards_written=sum(r.shards_written for r in results),
        shards_reused=len(reused),
        seconds=time.perf_counter() - started,
        samples_per_s=encoded / phase_seconds if encoded and phase_seconds > 0 else 0.0,
        new_skips=[line for r in results for line in r.new_skips],
    )


def split_shards(indices: list[int], parts: int) -> list[list[int]]:
    """``indices`` cut into ``parts`` contiguous ranges whose sizes differ by at most one."""
    parts = max(1, min(parts, len(indices))) if indices else 1
    size, extra = divmod(len(indices), parts)
    shares, start = [], 0
    for part in range(parts):
        stop = start + size + (part < extra)
        shares.append(indices[start:stop])
        start = stop
    return shares


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove a file can be written there; raise EmbedError if not."""
    probe = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(probe, {"pid": os.getpid()})
        remove(probe)
    except OSError as err:
        raise EmbedError(
            f"cannot write to {folder}: {err.strerror or err}; outputs must go to a writable "
            "folder every Ray node sees at the same path"
        ) from err


class _EmbedWorker:
    """One encoder actor: runs the embed stage on the shard indices it is given."""

    def __init__(self, threads: int):
        import torch

        torch.set_num_threads(threads)

    def run(self, cfg: EmbedConfig, location: str) -> EmbedResult:
        out = working_copy(location)  # a remote folder: this node's own working copy
        check_writable(out)  # this node may not see the storage the driver saw
        return embed(cfg.model_copy(update={"out": out}), log=print)


def _slots(resources: dict[str, float], *, cpus_per_actor: int, use_gpu: bool) -> int:
    """How many actors the cluster can hold at once; raise RayConnectError if none fits."""
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    if cpus < cpus_per_actor:
        raise RayConnectError(
            f"the Ray cluster has {cpus} CPUs; one embed actor needs {cpus_per_actor}"
        )
    if use_gpu and gpus == 0:
        raise RayConnectError("asked for GPU embed actors but the Ray cluster has no GPUs")
    return min(cpus // cpus_per_actor, gpus) if use_gpu else cpus // cpus_per_actor


def _get(ref: Any, out: Path) -> Any:
    """``ray.get`` that turns an actor's failure into the user-facing error it stands for."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError, UnserializableException

    try:
        return ray.get(ref)
    except UnserializableException as err:  # the actor's error did not survive unpickling here
        last = str(err).strip().splitlines()[-1]
        raise EmbedError(
            f"an embed actor failed: {last}; finished shards are kept in {out}, "
            "resubmit the job to resume"
        ) from None
    except RayTaskError as err:
        cause = err.cause
        if isinstance(cause, AdaptorError):
            raise cause from None
        raise EmbedError(
            f"an embed actor failed: {type(cause).__name__}: {cause}; finished shards are "
            f"kept in {out}, resubmit the job to resume"
        ) from None
    except RayActorError as err:
        raise EmbedError(
            f"an embed actor died ({err}); finished shards are kept in {out}, "
            "resubmit the job to resume"
        ) from None


def _wait_with_progress(
    refs: list[Any], out: Path, n_shards: int, already: int, *, progress: bool
) -> list[EmbedResult]:
    """Wait for every actor, showing finished shards as they land on the shared storage."""
    import ray

    bar = tqdm(
        total=n_shards,
        initial=already,
        unit="shard",
        desc="embed (ray)",
        disable=not progress,
        dynamic_ncols=True,
    )
    waiting = list(refs)
    try:
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=1.0)
            for ref in done:
                _get(ref, out)  # raise the first failure at once
            bar.n = len(finished_shards(out))
            bar.refresh()
    finally:
        bar.close()
    return [_get(ref, out) for ref in refs]
