"""``adaptor finetune tune``: classification from encoders tuned online (PEFT methods)."""

from __future__ import annotations

from typing import Annotated

import typer

from adaptor.cli.app import friendly_errors
from adaptor.cli.downstream import (
    FRACTIONS,
    SEEDS,
    Address,
    Fractions,
    Kind,
    Labels,
    Lr,
    Out,
    Progress,
    Seeds,
    Shards,
    SplitSeed,
    SplitsFile,
    Uncertain,
    Workers,
    finetune_app,
    floats,
    ints,
    label_splits,
    names,
    write_results,
)


@finetune_app.command("tune")
@friendly_errors
def finetune_tune(
    shards: Shards,
    out: Out,
    methods: Annotated[
        str,
        typer.Option(
            help="tuning methods, comma-separated: frozen, lora, adapter, layernorm, apla, full"
        ),
    ] = "lora",
    encoder: Annotated[
        str, typer.Option(help="the encoder(s) to tune: image, text or both (concatenated)")
    ] = "image",
    options: Annotated[
        str | None,
        typer.Option(
            help="method options KEY=VALUE,… e.g. rank=8,alpha=16,ffn=true,"
            "bottleneck=48,fusion=true,attention=true,columns=0.25,seed=0"
        ),
    ] = None,
    heads: Annotated[str, typer.Option(help="heads on the tuned features: linear, mlp")] = (
        "linear,mlp"
    ),
    fractions: Fractions = FRACTIONS,
    seeds: Seeds = SEEDS,
    splits_file: SplitsFile = None,
    split_seed: SplitSeed = 0,
    labels: Labels = None,
    kind: Kind = "multilabel",
    uncertain: Uncertain = "ignore",
    epochs: Annotated[int, typer.Option(min=1, help="epoch limit (early stopping on val)")] = 5,
    batch_size: Annotated[int, typer.Option(min=1, help="records per training step")] = 16,
    lr: Lr = 1e-3,
    encoder_lr: Annotated[
        float | None,
        typer.Option(help="encoder learning rate (default: per method; the head uses --lr)"),
    ] = None,
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="recompute each encoder block in backward (less memory)")
    ] = False,
    image_size: Annotated[
        int | None, typer.Option(min=16, help="image input size (default: the encoder's)")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1")] = "auto",
    workers: Workers = 1,
    address: Address = None,
    progress: Progress = True,
) -> None:
    """Classification from encoders tuned online with a parameter-efficient method.

    The encoder runs on every batch with only the method's parameters trainable (LoRA,
    adapters, LayerNorm-only, APLA, full, or frozen: nothing), and a head on top. Saves each model's deltas and head under OUT/tuned/; writes OUT/results.json,
    OUT/results.md and OUT/tuning.md (trainable parameters, step memory, samples/s).
    """
    from adaptor.downstream.results import write_tuning_table
    from adaptor.downstream.tuning import TuneConfig, parse_tune_options, run_tuning

    fraction_list = floats(fractions)
    made, _ = label_splits(shards, out, splits_file, fraction_list, split_seed)
    cfg = TuneConfig(
        shards=str(shards),
        out=str(out),
        methods=names(methods) or [],
        encoder=encoder,
        options=parse_tune_options(options),
        fractions=fraction_list,
        seeds=ints(seeds),
        labels=names(labels),
        kind=kind,
        uncertain=uncertain,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        encoder_lr=encoder_lr,
        gradient_checkpointing=gradient_checkpointing,
        image_size=image_size,
        device=device,
        workers=workers,
        address=address,
    )
    cells = run_tuning(cfg, made, heads=names(heads), progress=progress, log=typer.echo)
    write_results(out, cells)
    table = write_tuning_table(out)
    if table is not None:
        typer.echo(table.read_text(encoding="utf-8"))
    typer.echo(f"results in {out} (results.json, results.md, tuning.md, plots)")
