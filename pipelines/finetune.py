"""Batch job ``finetune``: downstream heads on the config's shards and pretrained Adaptor.

Needs ``pipelines.embed`` and ``pipelines.pretrain`` done for the same config and OUT;
writes ``OUT/runs/<dataset>/downstream/`` (splits, results.json/md, plots) as
``adaptor run`` does::

    ray job submit --working-dir . -- \\
        python -m pipelines.finetune --config pipelines/configs/rsna.yaml --out /data_shards
"""

from __future__ import annotations

import typer

from pipelines.common import ClusterJobOptions, open_job, run_job


def main(options: ClusterJobOptions) -> None:
    """Train downstream heads from nested label fractions; print the results table."""
    from adaptor.run import stage_finetune

    job = open_job(options, after="pretrain")
    job.connect()
    results_md = stage_finetune(job.cfg, job.out, progress=options.progress, log=typer.echo)
    if results_md is None:
        typer.echo("finetune.tasks is empty in the config: nothing to do")
    else:
        typer.echo(results_md.read_text(encoding="utf-8"))


if __name__ == "__main__":
    run_job(main)
