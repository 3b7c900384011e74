"""Commands of the pretraining flow: synth, embed, pretrain, encoders, run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adaptor.cli.app import app, friendly_errors
from adaptor.config import load_config
from adaptor.data.sources import source_kinds


@app.command()
@friendly_errors
def synth(
    out: Annotated[
        Path, typer.Option(help="folder to write records.jsonl, images/ and masks/ into")
    ],
    n: Annotated[int, typer.Option(help="number of records")] = 2000,
    seed: Annotated[
        int, typer.Option(help="random seed; the same seed gives byte-identical output")
    ] = 0,
    size: Annotated[int, typer.Option(help="image side in pixels (224–512)")] = 256,
) -> None:
    """Write a synthetic paired chest-radiograph set: images, reports, labels, masks, splits."""
    from adaptor.data.synthetic import generate_synthetic

    records = generate_synthetic(out, n=n, seed=seed, size=size)
    typer.echo(f"wrote {len(records)} records to {out / 'records.jsonl'}")


def _encoder_help() -> str:
    from adaptor.encoders import describe_encoder_names

    return describe_encoder_names()


@app.command()
@friendly_errors
def embed(
    source: Annotated[
        str,
        typer.Option(help=f"records to embed, as KIND:PATH; kinds: {', '.join(source_kinds())}"),
    ],
    out: Annotated[Path, typer.Option(help="shard folder to write (a rerun resumes it)")],
    image_encoder: Annotated[
        str, typer.Option(help="image encoder name (see `adaptor encoders`)")
    ] = "efficientnet-lite0",
    text_encoder: Annotated[
        str, typer.Option(help="text encoder name (see `adaptor encoders`)")
    ] = "all-minilm-l6-v2",
    batch_size: Annotated[int, typer.Option(min=1, help="records per encoder forward pass")] = 32,
    shard_size: Annotated[
        int, typer.Option(min=1, help="records per shard (by position in the source)")
    ] = 500,
    loader_workers: Annotated[
        int, typer.Option(min=0, help="processes decoding images beside the encoders")
    ] = 2,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    strict: Annotated[
        bool, typer.Option(help="stop at the first bad record instead of skipping it")
    ] = False,
    allow_empty_reports: Annotated[
        bool,
        typer.Option(
            help="keep records whose report is empty (image-only layouts such as chexpert "
            "keep them without it)"
        ),
    ] = False,
    patch_tokens: Annotated[
        bool, typer.Option(help="also store the image encoder's patch tokens")
    ] = False,
    text_states: Annotated[
        bool, typer.Option(help="also store the text encoder's token states")
    ] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    address: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT of a running Ray head: embed with encoder actors on that cluster "
            "(OUT must be storage every node sees); default: embed in this process"
        ),
    ] = None,
    actors: Annotated[
        int | None,
        typer.Option(
            min=1, help="with --address: encoder actors (default one per GPU or CPU slot)"
        ),
    ] = None,
    cpus_per_actor: Annotated[
        int, typer.Option(min=1, help="with --address: CPUs (torch threads) per CPU actor")
    ] = 1,
) -> None:
    """Run the frozen encoders over a source and write WebDataset embedding shards.

    Bad records are reported, skipped and listed in manifest.json; a run that keeps
    no record at all is an error. A killed job, rerun with the same command, keeps its
    finished shards and does the rest.
    With --address the shards are shared out to encoder actors on a Ray cluster;
    they write the same shards as a local run.
    """
    from adaptor.embed import EmbedConfig
    from adaptor.embed import embed as run_embed

    if address is None and actors is not None:
        raise typer.BadParameter("--actors needs --address (a Ray cluster to run them on)")
    job = EmbedConfig(
        source=source,
        out=out,
        image_encoder=image_encoder,
        text_encoder=text_encoder,
        batch_size=batch_size,
        shard_size=shard_size,
        loader_workers=loader_workers,
        device=device,
        strict=strict,
        allow_empty_reports=allow_empty_reports,
        patch_tokens=patch_tokens,
        text_states=text_states,
        progress=progress,
    )
    if address is None:
        result = run_embed(job)
    else:
        from adaptor.embed.actors import embed_on_ray

        result = embed_on_ray(
            job, address=address, actors=actors, cpus_per_actor=cpus_per_actor, log=typer.echo
        )
    typer.echo(
        f"{result.count} samples in {out} ({result.shards_written} shards written, "
        f"{result.shards_reused} reused); {len(result.skipped)} skipped; "
        f"{result.truncated_reports} reports truncated; {result.samples_per_s:.1f} samples/s"
    )


@app.command()
@friendly_errors
def pretrain(
    shards: Annotated[Path, typer.Option(help="embedding shard folder made by `adaptor embed`")],
    out: Annotated[Path, typer.Option(help="run folder; rerunning the same command resumes it")],
    epochs: Annotated[int, typer.Option(min=1)] = 30,
    batch_size: Annotated[
        int, typer.Option(min=2, help="pairs per worker per step (negatives: the global batch)")
    ] = 128,
    workers: Annotated[
        int,
        typer.Option(min=1, help="Ray Train workers; each reads a disjoint share of the shards"),
    ] = 1,
    address: Annotated[
        str | None, typer.Option(help="HOST:PORT of a running Ray head; default: a local Ray")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    lr: Annotated[float, typer.Option(help="peak AdamW learning rate")] = 5e-4,
    schedule: Annotated[str, typer.Option(help="cosine or linear decay after warmup")] = "cosine",
    width: Annotated[int, typer.Option(help="shared embedding width")] = 512,
    layers: Annotated[int, typer.Option(help="cross-attention layers")] = 1,
    checkpoint_every_steps: Annotated[
        int, typer.Option(help="extra checkpoints every N steps (0: per epoch only)")
    ] = 0,
) -> None:
    """Train the cross-attention Adaptor on cached embeddings with a CLIP loss, under Ray Train.

    Writes RUN/adaptor/ (best weights), RUN/metrics.jsonl (one line per epoch),
    RUN/metrics.json and RUN/curves.png. A crash or kill, then the same command,
    resumes from the newest checkpoint.
    """
    from adaptor.pretrain import PretrainConfig, describe
    from adaptor.pretrain import pretrain as run_pretrain

    result = run_pretrain(
        PretrainConfig(
            shards=str(shards),
            out=str(out),
            epochs=epochs,
            batch_size=batch_size,
            workers=workers,
            address=address,
            seed=seed,
            lr=lr,
            schedule=schedule,
            width=width,
            layers=layers,
            checkpoint_every_steps=checkpoint_every_steps,
        )
    )
    typer.echo(describe(result.metrics))
    typer.echo(f"Adaptor saved to {result.adaptor_dir}")


@app.command()
def encoders() -> None:
    """List the accepted image and text encoder names."""
    typer.echo(_encoder_help())


@app.command()
@friendly_errors
def run(
    out: Annotated[Path, typer.Option(help="output root for every stage")] = Path("data_shards"),
    config: Annotated[
        Path | None, typer.Option(help="YAML config; omitted: the embedded default")
    ] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Run every stage end to end (synth → embed → pretrain → finetune → index), resuming what
    is done, and print the results table and example searches."""
    from tqdm import tqdm

    from adaptor.run import run_flow

    cfg = load_config(config)
    result = run_flow(cfg, out, progress=progress, log=tqdm.write)  # not onto the bars
    if result.results_md is not None:
        typer.echo(result.results_md.read_text(encoding="utf-8"))
    typer.echo(f"example searches (more: adaptor serve --index {result.paths.index}):\n")
    typer.echo(result.examples)
    typer.echo(
        f"\ndone: shards in {result.paths.shards}, Adaptor in {result.pretrain.adaptor_dir}, "
        f"downstream results in {result.paths.downstream}, index in {result.paths.index}"
    )
