"""Batch job ``flow``: every stage of the config, as ``adaptor run`` does, on a Ray cluster.

The embed stage runs on encoder actors (see ``pipelines.embed``); the rest is
:func:`adaptor.run.run_flow`, which finds the shards finished and goes on with pretraining,
downstream heads and the index. Resubmitting the job resumes whatever is unfinished::

    ray job submit --working-dir . -- \\
        python -m pipelines.flow --config pipelines/configs/default.yaml --out /data_shards
"""

from __future__ import annotations

from pathlib import Path

import typer

from pipelines.common import (
    AddressOption,
    ConfigOption,
    OutOption,
    ProgressOption,
    check_encoders,
    check_source,
    open_job,
    run_job,
)
from pipelines.embed import ActorsOption, CpusPerActorOption, embed_stage


def main(
    config: ConfigOption,
    out: OutOption = Path("data_shards"),
    address: AddressOption = None,
    actors: ActorsOption = None,
    cpus_per_actor: CpusPerActorOption = 1,
    progress: ProgressOption = True,
) -> None:
    """Run the whole flow of the config: source → shards → Adaptor → heads → index."""
    from adaptor.run import run_flow

    job = open_job(config, out, address)
    check_source(job.cfg)
    check_encoders(job.cfg)
    job.connect()
    embed_stage(job, actors=actors, cpus_per_actor=cpus_per_actor, progress=progress)
    result = run_flow(job.cfg, job.out, progress=progress, log=typer.echo)
    typer.echo(f"done: shards in {result.paths.shards}, Adaptor in {result.pretrain.adaptor_dir}")


if __name__ == "__main__":
    run_job(main)
