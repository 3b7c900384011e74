"""Batch job ``embed``: the source (the synthetic set when the config names none) → shards.

Encoder actors (one per GPU, or one per ``--cpus-per-actor`` CPUs) each embed a range of
shard indices into ``OUT/<dataset>/<encoder-pair>/``, the folder ``adaptor run`` uses; a
resubmitted job keeps the finished shards::

    python -m pipelines.embed --config pipelines/configs/default.yaml --out data_shards
    ray job submit --working-dir . -- \\
        python -m pipelines.embed --config pipelines/configs/default.yaml --out /data_shards
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adaptor.embed import EmbedResult
from pipelines.common import (
    AddressOption,
    ConfigOption,
    Job,
    OutOption,
    ProgressOption,
    check_encoders,
    check_source,
    open_job,
    run_job,
)

ActorsOption = Annotated[
    int | None,
    typer.Option(min=1, help="encoder actors; default: one per GPU, else one per CPU slot"),
]
CpusPerActorOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="CPUs (torch threads) per CPU actor; shards are byte-identical to a local "
        "`adaptor embed` when this equals that machine's thread count",
    ),
]


def embed_stage(
    job: Job, *, actors: int | None, cpus_per_actor: int, progress: bool
) -> EmbedResult:
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
        actors=actors,
        cpus_per_actor=cpus_per_actor,
        log=typer.echo,
    )
    typer.echo(
        f"[embed] {result.count} samples in {shards} ({result.shards_written} shards written, "
        f"{result.shards_reused} reused); {len(result.skipped)} skipped; "
        f"{result.truncated_reports} reports truncated"
    )
    return result


def main(
    config: ConfigOption,
    out: OutOption = Path("data_shards"),
    address: AddressOption = None,
    actors: ActorsOption = None,
    cpus_per_actor: CpusPerActorOption = 1,
    progress: ProgressOption = True,
) -> None:
    """Embed the config's source with frozen encoders into WebDataset shards, on Ray actors."""
    job = open_job(config, out, address)
    check_source(job.cfg)
    check_encoders(job.cfg)
    job.connect()
    embed_stage(job, actors=actors, cpus_per_actor=cpus_per_actor, progress=progress)


if __name__ == "__main__":
    run_job(main)
