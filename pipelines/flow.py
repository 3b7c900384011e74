"""Batch job ``flow``: every stage of the config, as ``adaptor run`` does, on a Ray cluster.

The embed stage runs on encoder actors (see ``pipelines.embed``); the rest is
:func:`adaptor.run.run_flow`, which finds the shards finished and goes on with pretraining,
downstream heads and the index. Resubmitting the job resumes whatever is unfinished::

    ray job submit --working-dir . -- \\
        python -m pipelines.flow --config pipelines/configs/default.yaml --out /data_shards
"""

from __future__ import annotations

import typer

from adaptor.config import ActorOptions
from pipelines.common import ClusterJobOptions, run_job
from pipelines.embed import embed_job


def main(options: ClusterJobOptions, placement: ActorOptions) -> None:
    """Run the whole flow of the config: source → shards → Adaptor → heads → index."""
    from adaptor.run import run_flow

    job = embed_job(options, placement)
    result = run_flow(job.cfg, job.out, progress=options.progress, log=typer.echo)
    typer.echo(f"done: shards in {result.paths.shards}, Adaptor in {result.pretrain.adaptor_dir}")


if __name__ == "__main__":
    run_job(main)
