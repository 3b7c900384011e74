"""Batch job ``pretrain``: the Adaptor on the config's shards, under Ray Train.

Reads ``OUT/<dataset>/<encoder-pair>/`` (made by ``pipelines.embed``) and writes
``OUT/runs/<dataset>/pretrain/``, exactly as ``adaptor run`` does; a resubmitted job
resumes from the newest checkpoint. ``pretrain.workers`` in the config sets the number
of Ray Train workers (the loss gathers the global batch across them)::

    ray job submit --working-dir . -- \\
        python -m pipelines.pretrain --config pipelines/configs/default.yaml --out /data_shards
"""

from __future__ import annotations

import typer

from pipelines.common import ClusterJobOptions, open_job, run_job


def main(options: ClusterJobOptions) -> None:
    """Pretrain the Adaptor on the config's embedding shards (contrastive, under Ray Train)."""
    from adaptor.run import stage_pretrain

    job = open_job(options, after="embed")
    job.connect()
    result = stage_pretrain(job.cfg, job.out, progress=options.progress, log=typer.echo)
    typer.echo(f"Adaptor saved to {result.adaptor_dir}")


if __name__ == "__main__":
    run_job(main)
