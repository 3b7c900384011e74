"""Batch job ``index``: the retrieval index over the config's shards in Adaptor space.

Needs ``pipelines.embed`` and ``pipelines.pretrain`` done for the same config and OUT;
writes ``OUT/runs/<dataset>/index/`` as ``adaptor run`` does::

    ray job submit --working-dir . -- \\
        python -m pipelines.index --config pipelines/configs/default.yaml --out /data_shards
"""

from __future__ import annotations

import typer

from pipelines.common import JobOptions, open_job, run_job


def main(options: JobOptions) -> None:
    """Build (or reuse) the retrieval index of the config's shards with the trained Adaptor."""
    from adaptor.run import stage_index

    job = open_job(options, after="pretrain")
    stage_index(job.cfg, job.out, progress=options.progress, log=typer.echo)


if __name__ == "__main__":
    run_job(main)
