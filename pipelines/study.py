"""Batch job ``study``: the transfer study of a study config on a Ray cluster.

Every pretraining runs under Ray Train and every downstream model is one Ray task, on the
cluster the job is submitted to; resubmitting resumes whatever is unfinished::

    ray job submit --working-dir . -- \\
        python -m pipelines.study --config pipelines/configs/study-default.yaml --out /data_shards/study
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from pydantic import Field

from adaptor.config import Options
from pipelines.common import output_root, run_job


class StudyJobOptions(Options):
    """The study job's command line (the rest is in the study config)."""

    config: Path = Field(description="study YAML (pipelines/configs/study-default.yaml)")
    out: Path = Field(
        Path("data_shards/study"),
        description="output root, on storage every Ray node sees; absolute inside a Ray job",
    )
    address: str | None = Field(
        None, description="HOST:PORT of a Ray head; default: the cluster of `ray job submit`"
    )
    progress: bool = Field(True, description="show progress bars")


def main(options: StudyJobOptions) -> None:
    """Check the study config and OUT, join the cluster, run the study, print its table."""
    from adaptor.config.study import load_study
    from adaptor.ray_env import start_ray
    from adaptor.study import run_study

    cfg = load_study(options.config)
    out = output_root(options.out)
    address = options.address or os.environ.get("RAY_ADDRESS") or None
    start_ray(address)
    result = run_study(cfg.with_address(address), out, progress=options.progress, log=typer.echo)
    typer.echo(result.table_md.read_text(encoding="utf-8"))


if __name__ == "__main__":
    run_job(main)
