"""Downstream commands: ``splits`` (nested label fractions) and ``finetune`` (heads, results)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adaptor.cli.app import app, friendly_errors
from adaptor.config import TASKS


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


@app.command()
@friendly_errors
def splits(
    shards: Annotated[
        Path, typer.Option(help="embedding shard folder (its records' labels and splits)")
    ],
    out: Annotated[Path, typer.Option(help="JSON file to write the split ids to")],
    fractions: Annotated[str, typer.Option(help="nested training fractions")] = "0.01,0.1,1",
    seed: Annotated[int, typer.Option(help="the same seed gives the same subsets")] = 0,
) -> None:
    """Make nested, stratified, patient-level label fractions (1 % ⊂ 10 % ⊂ 100 %) of the train split.

    Every `adaptor finetune` run given the same file (`--splits`) sees the same patients.
    """
    from adaptor.data.splits import make_label_splits
    from adaptor.shards import ShardReader

    made = make_label_splits(ShardReader(shards).load().meta, _floats(fractions), seed)
    made.save(out)
    for w in made.warnings:
        typer.echo(f"warning: {w}", err=True)
    sizes = ", ".join(f"{k}: {len(v)}" for k, v in made.train.items())
    typer.echo(
        f"wrote {out}: train subsets ({sizes} records), val {len(made.val)}, test {len(made.test)}"
    )


@app.command()
@friendly_errors
def finetune(
    shards: Annotated[Path, typer.Option(help="embedding shard folder made by `adaptor embed`")],
    out: Annotated[
        Path, typer.Option(help="results folder (results.json/md, plots); reruns resume and merge")
    ],
    task: Annotated[str, typer.Option(help="classification or segmentation")] = "classification",
    adaptor: Annotated[
        Path | None,
        typer.Option(help="trained Adaptor folder (RUN/adaptor from `adaptor pretrain`)"),
    ] = None,
    fractions: Annotated[str, typer.Option(help="label fractions to train from")] = "0.01,0.1,1",
    seeds: Annotated[str, typer.Option(help="seeds per method and fraction")] = "0,1,2",
    splits_file: Annotated[
        Path | None,
        typer.Option("--splits", help="split file from `adaptor splits`; default OUT/splits.json"),
    ] = None,
    split_seed: Annotated[int, typer.Option(help="seed for making OUT/splits.json")] = 0,
    heads: Annotated[str, typer.Option(help="classification heads: linear, mlp")] = "linear,mlp",
    features: Annotated[
        str, typer.Option(help="classification features: encoder (baseline), adaptor")
    ] = "encoder,adaptor",
    labels: Annotated[
        str | None, typer.Option(help="comma-separated label names (default: all)")
    ] = None,
    kind: Annotated[
        str, typer.Option(help="multilabel (one sigmoid per label) or multiclass (softmax)")
    ] = "multilabel",
    uncertain: Annotated[
        str, typer.Option(help="uncertain (-1) labels: ignore, positive or negative")
    ] = "ignore",
    max_epochs: Annotated[
        int, typer.Option(min=1, help="classification: epoch limit (early stopping on val)")
    ] = 200,
    lr: Annotated[
        float | None,
        typer.Option(help="AdamW learning rate (default: 1e-2 classification, 2e-3 segmentation)"),
    ] = None,
    methods: Annotated[
        str, typer.Option(help="segmentation: decoder (baseline), decoder+adaptor")
    ] = "decoder,decoder+adaptor",
    feature_maps: Annotated[
        str,
        typer.Option(help="segmentation: cache the encoder's feature maps on disk, or online"),
    ] = "cache",
    image_size: Annotated[
        int, typer.Option(min=16, help="segmentation: input and mask size in pixels")
    ] = 128,
    steps: Annotated[
        int, typer.Option(min=1, help="segmentation: optimisation steps per decoder")
    ] = 150,
    tune: Annotated[
        str | None,
        typer.Option(
            help="classification from encoders tuned online: comma-separated methods out of "
            "frozen, lora, adapter, layernorm, apla, full (default: heads on cached embeddings)"
        ),
    ] = None,
    encoder: Annotated[
        str, typer.Option(help="--tune: the encoder(s) to tune: image, text or both")
    ] = "image",
    tune_options: Annotated[
        str | None,
        typer.Option(
            help="--tune: method options KEY=VALUE,… e.g. rank=8,alpha=16,ffn=true,"
            "bottleneck=48,fusion=true,attention=true,columns=0.25,seed=0"
        ),
    ] = None,
    tune_epochs: Annotated[
        int, typer.Option(min=1, help="--tune: epoch limit (early stopping on val)")
    ] = 5,
    tune_batch_size: Annotated[int, typer.Option(min=1, help="--tune: batch size")] = 16,
    encoder_lr: Annotated[
        float | None,
        typer.Option(help="--tune: encoder learning rate (default per method; the head uses --lr)"),
    ] = None,
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="--tune: recompute each encoder block in backward (less memory)")
    ] = False,
    tune_image_size: Annotated[
        int | None, typer.Option(min=16, help="--tune: image input size (default: the encoder's)")
    ] = None,
    device: Annotated[str, typer.Option(help="--tune: auto, cpu, cuda, cuda:1")] = "auto",
    workers: Annotated[int, typer.Option(min=1, help="Ray Train workers sharing the grid")] = 1,
    address: Annotated[
        str | None, typer.Option(help="HOST:PORT of a running Ray head; default: a local Ray")
    ] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Train downstream heads from nested label fractions and write a results table and plots.

    Classification compares heads on the frozen image encoder's own embedding (`encoder`)
    with heads on the Adaptor's image path (`adaptor`); with --tune, the encoder itself runs
    online with only a parameter-efficient method's parameters trainable (LoRA, adapters,
    LayerNorm-only, APLA, full or frozen). Segmentation compares a U-Net-style
    decoder over the encoder's feature maps (`decoder`) with the same decoder given the
    Adaptor's image embedding at its bottleneck (`decoder+adaptor`). Results merge into
    OUT/results.json and OUT/results.md (mean ± std over seeds), with ROC,
    metric-vs-fraction and segmentation-overlay plots.
    """
    from adaptor.data.splits import load_or_make_splits
    from adaptor.results import merge_results
    from adaptor.shards import ShardReader

    if task not in TASKS:
        raise ValueError(f"unknown --task {task!r}: choose {' or '.join(TASKS)}")
    if tune is not None and task != "classification":
        raise ValueError("--tune applies to --task classification only")
    fraction_list, seed_list = _floats(fractions), _ints(seeds)
    splits_path = splits_file or out / "splits.json"
    meta = ShardReader(shards).load().meta
    label_splits, made = load_or_make_splits(splits_path, meta, fraction_list, split_seed)
    typer.echo(f"{'made' if made else 'reusing'} label splits {splits_path}")
    optimiser = {"lr": lr} if lr is not None else {}  # else each task's own default
    if task == "classification" and tune is not None:
        from adaptor.cli.tune import run_tuning

        cells = run_tuning(
            shards=shards,
            out=out,
            splits=label_splits,
            methods=_names(tune) or [],
            encoder=encoder,
            options=tune_options,
            heads=_names(heads),
            fractions=fraction_list,
            seeds=seed_list,
            labels=_names(labels),
            kind=kind,
            uncertain=uncertain,
            epochs=tune_epochs,
            batch_size=tune_batch_size,
            lr=lr,
            encoder_lr=encoder_lr,
            gradient_checkpointing=gradient_checkpointing,
            image_size=tune_image_size,
            device=device,
            workers=workers,
            address=address,
            progress=progress,
            log=typer.echo,
        )
    elif task == "classification":
        from adaptor.train.finetune import ClassificationConfig, finetune_classification

        cfg = ClassificationConfig(
            shards=str(shards),
            out=str(out),
            adaptor=str(adaptor) if adaptor else None,
            fractions=fraction_list,
            seeds=seed_list,
            heads=_names(heads) or [],
            features=[f for f in _names(features) or [] if adaptor or f != "adaptor"],
            labels=_names(labels),
            kind=kind,
            uncertain=uncertain,
            max_epochs=max_epochs,
            **optimiser,
            workers=workers,
            address=address,
        )
        if adaptor is None:
            typer.echo("no --adaptor: training heads on the frozen encoder's features only")
        cells = finetune_classification(
            cfg, label_splits, splits_path=splits_path, progress=progress, log=typer.echo
        )
    else:  # segmentation
        from adaptor.train.segmentation import SegmentationConfig, finetune_segmentation

        chosen = [m for m in _names(methods) or [] if adaptor or m != "decoder+adaptor"]
        if adaptor is None:
            typer.echo("no --adaptor: training the plain decoder only")
        cells = finetune_segmentation(
            SegmentationConfig(
                shards=str(shards),
                out=str(out),
                adaptor=str(adaptor) if adaptor else None,
                fractions=fraction_list,
                seeds=seed_list,
                methods=chosen,
                image_size=image_size,
                feature_maps=feature_maps,
                steps=steps,
                **optimiser,
                workers=workers,
                address=address,
            ),
            label_splits,
            progress=progress,
            log=typer.echo,
        )
    md = merge_results(out, cells)
    typer.echo(md.read_text(encoding="utf-8"))
    if tune is not None:
        from adaptor.train.tune import write_tuning_table

        table = write_tuning_table(out)
        if table is not None:
            typer.echo(table.read_text(encoding="utf-8"))
    typer.echo(f"results in {out} (results.json, results.md, plots)")
