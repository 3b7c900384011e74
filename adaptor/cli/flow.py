"""Commands of the pretraining flow: synth, embed, pretrain, encoders, run, config.

Their options come from the stage models of :mod:`adaptor.config` (one option per field,
same default as the YAML of ``adaptor run``); only paths and ``--progress`` are declared here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adaptor.cli.app import PATH_OR_URI, Progress, Shards, app
from adaptor.config import (
    ActorOptions,
    EmbedOptions,
    PretrainOptions,
    SynthOptions,
    load_config,
    to_yaml,
)
from adaptor.config.cli import model_options
from adaptor.data.sources import source_kinds
from adaptor.errors import friendly_errors
from adaptor.remote import uri_of, working_copy

Config = Annotated[Path | None, typer.Option(help="YAML config; omitted: the embedded default")]


@app.command()
@friendly_errors
@model_options
def synth(
    out: Annotated[
        Path, typer.Option(help="folder to write records.jsonl, images/ and masks/ into")
    ],
    options: SynthOptions,
) -> None:
    """Write a synthetic paired chest-radiograph set: images, reports, labels, masks, splits."""
    from adaptor.data.synthetic import generate_synthetic

    records = generate_synthetic(out, **options.model_dump())
    typer.echo(f"wrote {len(records)} records to {out / 'records.jsonl'}")


def _encoder_help() -> str:
    from adaptor.encoders import describe_encoder_names

    return describe_encoder_names()


@app.command()
@friendly_errors
@model_options
def embed(
    source: Annotated[
        str,
        typer.Option(help=f"records to embed, as KIND:PATH; kinds: {', '.join(source_kinds())}"),
    ],
    out: Annotated[
        str, typer.Option(help="shard folder to write (a rerun resumes it)" + PATH_OR_URI)
    ],
    options: EmbedOptions,
    placement: ActorOptions,
    address: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT of a running Ray head: embed with encoder actors on that cluster "
            "(OUT must be storage every node sees); default: embed in this process"
        ),
    ] = None,
    progress: Progress = True,
) -> None:
    """Run the frozen encoders over a source and write WebDataset embedding shards.

    Bad records are reported, skipped and listed in manifest.json; a run that keeps
    no record at all is an error. A killed job, rerun with the same command, keeps its
    finished shards and does the rest.
    With --address the shards are shared out to encoder actors on a Ray cluster
    (--actors, --cpus-per-actor); they write the same shards as a local run.
    """
    from adaptor.embed import EmbedConfig
    from adaptor.embed import embed as run_embed

    if address is None and placement.actors is not None:
        raise typer.BadParameter("--actors needs --address (a Ray cluster to run them on)")
    folder = working_copy(out)
    job = EmbedConfig(source=source, out=folder, progress=progress, **options.model_dump())
    if address is None:
        result = run_embed(job)
    else:
        from adaptor.embed.actors import embed_on_ray

        result = embed_on_ray(job, address=address, placement=placement, log=typer.echo)
    typer.echo(
        f"{result.count} samples in {out} ({result.shards_written} shards written, "
        f"{result.shards_reused} reused); {len(result.skipped)} skipped; "
        f"{result.truncated_reports} reports truncated; {result.samples_per_s:.1f} samples/s"
    )


@app.command()
@friendly_errors
@model_options
def pretrain(
    shards: Shards,
    out: Annotated[
        str, typer.Option(help="run folder; rerunning the same command resumes it" + PATH_OR_URI)
    ],
    options: PretrainOptions,
) -> None:
    """Train the cross-attention Adaptor on cached embeddings with a CLIP loss, under Ray Train.

    Writes RUN/adaptor/ (best weights), RUN/metrics.jsonl (one line per epoch),
    RUN/metrics.json and RUN/curves.png. A crash or kill, then the same command,
    resumes from the newest checkpoint. The Adaptor's shape (--width … --wiring) is
    `pretrain.model` in the YAML of `adaptor run`.
    """
    from adaptor.pretrain import PretrainConfig, describe
    from adaptor.pretrain import pretrain as run_pretrain

    shards_dir, run_dir = working_copy(shards, writable=False), working_copy(out)
    result = run_pretrain(
        PretrainConfig(shards=str(shards_dir), out=str(run_dir), **options.model_dump())
    )
    typer.echo(describe(result.metrics))
    typer.echo(f"Adaptor saved to {uri_of(result.adaptor_dir)}")


@app.command()
def encoders() -> None:
    """List the accepted image and text encoder names."""
    typer.echo(_encoder_help())


@app.command()
@friendly_errors
def run(
    out: Annotated[
        str, typer.Option(help="output root for every stage" + PATH_OR_URI)
    ] = "data_shards",
    config: Config = None,
    progress: Progress = True,
) -> None:
    """Run every stage end to end (synth → embed → pretrain → finetune → index), resuming what
    is done, and print the results table and example searches."""
    from tqdm import tqdm

    from adaptor.run import run_flow

    cfg = load_config(config)
    root = working_copy(out)
    result = run_flow(cfg, root, progress=progress, log=tqdm.write)  # not onto the bars
    if result.results_md is not None:
        typer.echo(result.results_md.read_text(encoding="utf-8"))
    paths = result.paths
    typer.echo(f"example searches (more: adaptor serve --index {uri_of(paths.index)}):\n")
    typer.echo(result.examples)
    typer.echo(
        f"\ndone: shards in {uri_of(paths.shards)}, Adaptor in {uri_of(paths.adaptor)}, "
        f"downstream results in {uri_of(paths.downstream)}, index in {uri_of(paths.index)}"
    )


@app.command("config")
@friendly_errors
def config_command(
    config: Config = None,
    show: Annotated[
        bool, typer.Option(help="print the effective configuration, every default filled in")
    ] = False,
) -> None:
    """Check a YAML config of `adaptor run` (and the batch jobs); --show prints it in full.

    Every key is optional; --show writes each with its value and what it means, so its
    output is a complete config to start from.
    """
    cfg = load_config(config)
    typer.echo(to_yaml(cfg) if show else f"{config or 'the embedded default'}: valid")
