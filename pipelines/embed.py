"""Batch job ``embed``: the source (the synthetic set when the config names none) → shards.

Encoder actors (one per GPU, or one per ``--cpus-per-actor`` CPUs) each embed a range of
shard indices into ``OUT/<dataset>/<encoder-pair>/``, the folder ``adaptor run`` uses; a
resubmitted job keeps the finished shards::

    python -m pipelines.embed --config pipelines/configs/default.yaml --out data_shards
    ray job submit --working-dir . -- \\
        python -m pipelines.embed --config pipelines/configs/default.yaml --out /data_shards
"""

from __future__ import annotations

import typer

from adaptor.config import ActorOptions
from adaptor.embed import EmbedResult
from pipelines.common import ClusterJobOptions, Job, open_job, run_job


def embed_stage(job: Job, placement: ActorOptions, *, progress: bool) -> EmbedResult:
    """Run (or resume) the config's embed stage with Ray actors; return its summary."""
    from adaptor.embed import EmbedConfig
    from adaptor.embed.actors import embed_on_ray
    from adaptor.run import flow_paths, stage_source

    cfg, out = job.cfg, job.out
    source = stage_source(cfg, out, progress=progress, log=typer.echo)
    shards = flow_paths(cfg, out).shards
    typer.echo(f"[embed] {source} -> {shards}")
    result = embed_on_ray(
        EmbedConfig(source=source, out=shards, progress=progress, **cfg.embed.model_dump()),
        address=job.address,
        placement=placement,
        log=typer.echo,
    )
    typer.echo(
        f"[embed] {result.count} samples in {shards} ({result.shards_written} shards written, "
        f"{result.shards_reused} reused); {len(result.skipped)} skipped; "
        f"{result.truncated_reports} reports truncated"
    )
    return result


def embed_job(options: ClusterJobOptions, placement: ActorOptions) -> Job:
    """Check the config's source and encoders, join the cluster, embed; return the job."""
    job = open_job(options)
    job.connect()
    embed_stage(job, placement, progress=options.progress)
    return job


def main(options: ClusterJobOptions, placement: ActorOptions) -> None:
    """Embed the config's source with frozen encoders into WebDataset shards, on Ray actors."""
    embed_job(options, placement)


if __name__ == "__main__":
    run_job(main)
