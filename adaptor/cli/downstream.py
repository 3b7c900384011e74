"""Downstream commands: ``splits`` (nested label fractions) and the ``finetune`` group.

``adaptor finetune heads`` and ``adaptor finetune segment`` live here, ``adaptor finetune
tune`` in :mod:`adaptor.cli.tune`; the options they share are declared once below.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from adaptor.cli.app import app, friendly_errors

if TYPE_CHECKING:
    from adaptor.data.splits import LabelSplits
    from adaptor.downstream.results import CellResult

finetune_app = typer.Typer(
    short_help="Train downstream models (heads, segment, tune) from 1 / 10 / 100 % of the labels.",
    help=(
        "Train downstream models from nested label fractions (1 % ⊂ 10 % ⊂ 100 % of the "
        "train split) and write a results table and plots. Every run into the same --out "
        "merges into OUT/results.json and OUT/results.md (mean ± std over seeds)."
    ),
    no_args_is_help=True,
)
app.add_typer(finetune_app, name="finetune")

FRACTIONS = "0.01,0.1,1"
SEEDS = "0,1,2"

Shards = Annotated[Path, typer.Option(help="embedding shard folder made by `adaptor embed`")]
Out = Annotated[
    Path, typer.Option(help="results folder (results.json/md, plots); reruns resume and merge")
]
AdaptorDir = Annotated[
    Path | None,
    typer.Option("--adaptor", help="trained Adaptor folder (RUN/adaptor from `adaptor pretrain`)"),
]
Fractions = Annotated[str, typer.Option(help="label fractions to train from")]
Seeds = Annotated[str, typer.Option(help="seeds per method and fraction")]
SplitsFile = Annotated[
    Path | None,
    typer.Option("--splits", help="split file from `adaptor splits`; default OUT/splits.json"),
]
SplitSeed = Annotated[int, typer.Option(help="seed for making OUT/splits.json")]
Labels = Annotated[str | None, typer.Option(help="comma-separated label names (default: all)")]
Kind = Annotated[
    str, typer.Option(help="multilabel (one sigmoid per label) or multiclass (softmax)")
]
Uncertain = Annotated[str, typer.Option(help="uncertain (-1) labels: ignore, positive or negative")]
Lr = Annotated[float, typer.Option(help="AdamW learning rate")]
Workers = Annotated[int, typer.Option(min=1, help="models trained at once (one Ray task each)")]
Address = Annotated[
    str | None, typer.Option(help="HOST:PORT of a running Ray head; default: a local Ray")
]
Progress = Annotated[bool, typer.Option(help="show progress bars")]


def floats(text: str) -> list[float]:
    """``"0.01,0.1,1"`` → ``[0.01, 0.1, 1.0]``."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


def ints(text: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]``."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def names(text: str | None) -> list[str] | None:
    """``"a, b"`` → ``["a", "b"]``; None stays None."""
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def label_splits(
    shards: Path, out: Path, splits_file: Path | None, fractions: list[float], split_seed: int
) -> tuple[LabelSplits, Path]:
    """The label splits every method sees: ``splits_file`` (default ``OUT/splits.json``),
    made on first use; and where they are."""
    from adaptor.data.splits import load_or_make_splits
    from adaptor.shards import ShardReader

    path = splits_file or out / "splits.json"
    made_splits, made = load_or_make_splits(
        path, ShardReader(shards).load().meta, fractions, split_seed
    )
    typer.echo(f"{'made' if made else 'reusing'} label splits {path}")
    return made_splits, path


def write_results(out: Path, cells: Sequence[CellResult]) -> None:
    """Merge ``cells`` into OUT/results.json and print OUT/results.md."""
    from adaptor.downstream.results import merge_results

    typer.echo(merge_results(out, cells).read_text(encoding="utf-8"))


@app.command()
@friendly_errors
def splits(
    shards: Annotated[
        Path, typer.Option(help="embedding shard folder (its records' labels and splits)")
    ],
    out: Annotated[Path, typer.Option(help="JSON file to write the split ids to")],
    fractions: Annotated[str, typer.Option(help="nested training fractions")] = FRACTIONS,
    seed: Annotated[int, typer.Option(help="the same seed gives the same subsets")] = 0,
) -> None:
    """Make nested, stratified, patient-level label fractions (1 % ⊂ 10 % ⊂ 100 %) of the train split.

    Every `adaptor finetune` run given the same file (`--splits`) sees the same patients.
    """
    from adaptor.data.splits import make_label_splits
    from adaptor.shards import ShardReader

    made = make_label_splits(ShardReader(shards).load().meta, floats(fractions), seed)
    made.save(out)
    for w in made.warnings:
        typer.echo(f"warning: {w}", err=True)
    sizes = ", ".join(f"{k}: {len(v)}" for k, v in made.train.items())
    typer.echo(
        f"wrote {out}: train subsets ({sizes} records), val {len(made.val)}, test {len(made.test)}"
    )


@finetune_app.command("heads")
@friendly_errors
def finetune_heads(
    shards: Shards,
    out: Out,
    adaptor: AdaptorDir = None,
    fractions: Fractions = FRACTIONS,
    seeds: Seeds = SEEDS,
    splits_file: SplitsFile = None,
    split_seed: SplitSeed = 0,
    heads: Annotated[str, typer.Option(help="heads: linear, mlp")] = "linear,mlp",
    features: Annotated[
        str, typer.Option(help="features: encoder (the baseline), adaptor")
    ] = "encoder,adaptor",
    labels: Labels = None,
    kind: Kind = "multilabel",
    uncertain: Uncertain = "ignore",
    max_epochs: Annotated[
        int, typer.Option(min=1, help="epoch limit (early stopping on val)")
    ] = 200,
    lr: Lr = 1e-2,
    workers: Workers = 1,
    address: Address = None,
    progress: Progress = True,
) -> None:
    """Classification heads on the cached embeddings, with and without the Adaptor.

    Heads (linear, MLP) train on the frozen image encoder's own embedding (`encoder`, the
    baseline) or on that embedding through the Adaptor's image path (`adaptor`). Writes
    OUT/results.json, OUT/results.md, ROC and metric-vs-fraction plots.
    """
    from adaptor.downstream.classification import ClassificationConfig, finetune_classification

    fraction_list = floats(fractions)
    made, splits_path = label_splits(shards, out, splits_file, fraction_list, split_seed)
    if adaptor is None:
        typer.echo("no --adaptor: training heads on the frozen encoder's features only")
    cfg = ClassificationConfig(
        shards=str(shards),
        out=str(out),
        adaptor=str(adaptor) if adaptor else None,
        fractions=fraction_list,
        seeds=ints(seeds),
        heads=names(heads) or [],
        features=[f for f in names(features) or [] if adaptor or f != "adaptor"],
        labels=names(labels),
        kind=kind,
        uncertain=uncertain,
        max_epochs=max_epochs,
        lr=lr,
        workers=workers,
        address=address,
    )
    cells = finetune_classification(
        cfg, made, splits_path=splits_path, progress=progress, log=typer.echo
    )
    write_results(out, cells)
    typer.echo(f"results in {out} (results.json, results.md, plots)")


@finetune_app.command("segment")
@friendly_errors
def finetune_segment(
    shards: Shards,
    out: Out,
    adaptor: AdaptorDir = None,
    fractions: Fractions = FRACTIONS,
    seeds: Seeds = SEEDS,
    splits_file: SplitsFile = None,
    split_seed: SplitSeed = 0,
    methods: Annotated[
        str, typer.Option(help="decoder (the baseline), decoder+adaptor")
    ] = "decoder,decoder+adaptor",
    feature_maps: Annotated[
        str, typer.Option(help="cache the encoder's feature maps on disk, or run it online")
    ] = "cache",
    image_size: Annotated[int, typer.Option(min=16, help="input and mask size in pixels")] = 128,
    steps: Annotated[int, typer.Option(min=1, help="optimisation steps per decoder")] = 150,
    lr: Lr = 2e-3,
    workers: Workers = 1,
    address: Address = None,
    progress: Progress = True,
) -> None:
    """Segmentation decoders on the frozen encoder's feature maps, with and without the Adaptor.

    A U-Net-style decoder over the encoder's multi-scale maps (`decoder`, the baseline)
    against the same decoder given the Adaptor's image embedding at its bottleneck
    (`decoder+adaptor`). Writes OUT/results.json, OUT/results.md, a Dice-vs-fraction plot
    and OUT/segmentation_overlays.png.
    """
    from adaptor.downstream.segmentation import SegmentationConfig, finetune_segmentation

    fraction_list = floats(fractions)
    made, _ = label_splits(shards, out, splits_file, fraction_list, split_seed)
    if adaptor is None:
        typer.echo("no --adaptor: training the plain decoder only")
    cfg = SegmentationConfig(
        shards=str(shards),
        out=str(out),
        adaptor=str(adaptor) if adaptor else None,
        fractions=fraction_list,
        seeds=ints(seeds),
        methods=[m for m in names(methods) or [] if adaptor or m != "decoder+adaptor"],
        image_size=image_size,
        feature_maps=feature_maps,
        steps=steps,
        lr=lr,
        workers=workers,
        address=address,
    )
    write_results(out, finetune_segmentation(cfg, made, progress=progress, log=typer.echo))
    typer.echo(f"results in {out} (results.json, results.md, plots)")
