"""``adaptor study``: the transfer study (pretrain on a corpus, evaluate on other datasets,
across an encoder grid and Adaptor presets) as one resumable command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adaptor.cli.app import Progress, app
from adaptor.errors import friendly_errors

StudyFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="study YAML (pipelines/configs/study-default.yaml); omitted: the default study",
    ),
]


@app.command()
@friendly_errors
def study(
    out: Annotated[Path, typer.Option(help="output root of the study")] = Path("data_shards/study"),
    config: StudyFile = None,
    address: Annotated[
        str | None, typer.Option(help="HOST:PORT of a Ray head for every grid and pretraining")
    ] = None,
    progress: Progress = True,
) -> None:
    """Run a transfer study end to end and print its table.

    Each image encoder embeds each dataset once and each text encoder the corpus once; one
    Adaptor per encoder pair × preset is pretrained on the corpus; every evaluation dataset
    gets the frozen-encoder baselines, the Adaptor's heads from 1/10/100 % labels and
    zero-shot (the 0 % column). Writes OUT/study.md, OUT/study.json and plots; a rerun
    resumes, and a unit that fails is listed in the table while the rest finish.
    """
    from tqdm import tqdm

    from adaptor.config.study import load_study
    from adaptor.study import run_study

    cfg = load_study(config)
    if address:
        cfg = cfg.with_address(address)
    result = run_study(cfg, out, progress=progress, log=tqdm.write)
    typer.echo(result.table_md.read_text(encoding="utf-8"))
    plots = ", ".join(p.name for p in result.plots)
    typer.echo(f"study in {out} (study.md, study.json{', ' + plots if plots else ''})")
    if result.failures:
        typer.echo(f"{len(result.failures)} unit(s) failed: see the table; rerun to retry them")
