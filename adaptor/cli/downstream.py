"""Downstream commands: ``splits`` (nested label fractions) and the ``finetune`` group
(``heads``, ``segment``, ``tune``).

Their options come from the models of :mod:`adaptor.config`: the grid every sub-command
shares (:class:`~adaptor.config.GridOptions`) and each one's own; only paths and
``--progress`` are declared here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, Field

from adaptor.cli.app import PATH_OR_URI, AdaptorDir, Shards, app
from adaptor.config import (
    ClassificationOptions,
    GridOptions,
    Options,
    SegmentationOptions,
    SplitOptions,
    TuningOptions,
    ZeroShotOptions,
)
from adaptor.config.cli import from_field, model_options
from adaptor.errors import friendly_errors
from adaptor.remote import uri_of, working_copy

if TYPE_CHECKING:
    from adaptor.data.splits import LabelSplits
    from adaptor.downstream.results import CellResult

C = TypeVar("C", bound=BaseModel)

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


class FinetuneRun(Options):
    """What every ``adaptor finetune`` sub-command reads and writes."""

    shards: str = Field(description="embedding shard folder made by `adaptor embed`" + PATH_OR_URI)
    out: str = Field(
        description="results folder (results.json/md, plots); reruns resume and merge" + PATH_OR_URI
    )
    splits: Path | None = Field(
        None, description="split file from `adaptor splits`; default OUT/splits.json"
    )
    progress: bool = Field(True, description="show progress bars")

    def opened(self, *, shards_writable: bool = False) -> FinetuneRun:
        """This run with its folders local: a URI's working copy, checked and fetched before any
        work (:mod:`adaptor.remote`)."""
        shards = working_copy(self.shards, writable=shards_writable)
        return self.model_copy(update={"shards": str(shards), "out": str(working_copy(self.out))})

    @property
    def out_dir(self) -> Path:
        """The results folder (local once :meth:`opened`)."""
        return Path(self.out)

    def label_splits(self, fractions: list[float], split: SplitOptions) -> tuple[LabelSplits, Path]:
        """The label splits every method sees (made on first use), and where they are."""
        from adaptor.data.splits import load_or_make_splits
        from adaptor.shards import ShardReader

        path = self.splits or self.out_dir / "splits.json"
        meta = ShardReader(self.shards).load().meta
        made_splits, made = load_or_make_splits(path, meta, fractions, split.split_seed)
        typer.echo(f"{'made' if made else 'reusing'} label splits {path}")
        return made_splits, path

    def config(self, stage: type[C], grid: GridOptions, options: Options, **changed: Any) -> C:
        """The stage's config: these paths, the grid, the stage's options (``changed``)."""
        own = {**options.model_dump(), **changed}
        return stage(shards=self.shards, out=self.out, **grid.model_dump(), **own)

    def write_results(self, cells: Sequence[CellResult]) -> None:
        """Merge ``cells`` into OUT/results.json and print OUT/results.md."""
        from adaptor.downstream.results import merge_results

        typer.echo(merge_results(self.out_dir, cells).read_text(encoding="utf-8"))


@app.command()
@friendly_errors
@model_options
def splits(
    shards: Annotated[
        str,
        typer.Option(help="embedding shard folder (its records' labels and splits)" + PATH_OR_URI),
    ],
    out: Annotated[Path, typer.Option(help="JSON file to write the split ids to")],
    fractions: list[float] = from_field(GridOptions, "fractions"),
    seed: int = from_field(SplitOptions, "split_seed", "--seed"),
) -> None:
    """Make nested, stratified, patient-level label fractions (1 % ⊂ 10 % ⊂ 100 %) of the train split.

    Every `adaptor finetune` run given the same file (`--splits`) sees the same patients.
    """
    from adaptor.data.splits import make_label_splits
    from adaptor.shards import ShardReader

    meta = ShardReader(working_copy(shards, writable=False)).load().meta
    made = make_label_splits(meta, fractions, seed)
    made.save(out)
    for w in made.warnings:
        typer.echo(f"warning: {w}", err=True)
    sizes = ", ".join(f"{k}: {len(v)}" for k, v in made.train.items())
    typer.echo(
        f"wrote {out}: train subsets ({sizes} records), val {len(made.val)}, test {len(made.test)}"
    )


@finetune_app.command("heads")
@friendly_errors
@model_options
def finetune_heads(
    run: FinetuneRun,
    split: SplitOptions,
    adaptor: AdaptorDir = None,
    *,
    grid: GridOptions,
    options: ClassificationOptions,
) -> None:
    """Classification heads on the cached embeddings, with and without the Adaptor.

    Heads (linear, MLP) train on the frozen image encoder's own embedding (`encoder`, the
    baseline) or on that embedding through the Adaptor's image path (`adaptor`). Writes
    OUT/results.json, OUT/results.md, ROC and metric-vs-fraction plots.
    """
    from adaptor.downstream.classification import ClassificationConfig, finetune_classification

    run, adaptor = run.opened(), _opened(adaptor)
    made, splits_path = run.label_splits(grid.fractions, split)
    if adaptor is None:
        typer.echo("no --adaptor: training heads on the frozen encoder's features only")
    features = [f for f in options.features if adaptor or f != "adaptor"] or options.features
    cfg = run.config(ClassificationConfig, grid, options, adaptor=adaptor, features=features)
    run.write_results(
        finetune_classification(
            cfg, made, splits_path=splits_path, progress=run.progress, log=typer.echo
        )
    )
    typer.echo(f"results in {uri_of(run.out_dir)} (results.json, results.md, plots)")


@finetune_app.command("segment")
@friendly_errors
@model_options
def finetune_segment(
    run: FinetuneRun,
    split: SplitOptions,
    adaptor: AdaptorDir = None,
    *,
    grid: GridOptions,
    options: SegmentationOptions,
) -> None:
    """Segmentation decoders on the frozen encoder's feature maps, with and without the Adaptor.

    A U-Net-style decoder over the encoder's multi-scale maps (`decoder`, the baseline)
    against the same decoder given the Adaptor's image embedding beside its bottleneck
    (`decoder+adaptor`), and the reference's heads (`adaptor-neck`, `adaptor-patches`).
    Writes OUT/results.json, OUT/results.md, a Dice-vs-fraction plot and
    OUT/segmentation_overlays.png.
    """
    from adaptor.downstream.segmentation import (
        ADAPTOR_METHODS,
        SegmentationConfig,
        finetune_segmentation,
    )

    # the feature-map cache goes beside the shards
    run, adaptor = run.opened(shards_writable=True), _opened(adaptor)
    made, _ = run.label_splits(grid.fractions, split)
    if adaptor is None:
        typer.echo("no --adaptor: training the plain decoder only")
    methods = [m for m in options.methods if adaptor or m not in ADAPTOR_METHODS] or options.methods
    cfg = run.config(SegmentationConfig, grid, options, adaptor=adaptor, methods=methods)
    run.write_results(finetune_segmentation(cfg, made, progress=run.progress, log=typer.echo))
    typer.echo(f"results in {uri_of(run.out_dir)} (results.json, results.md, plots)")


@finetune_app.command("tune")
@friendly_errors
@model_options
def finetune_tune(
    run: FinetuneRun, split: SplitOptions, grid: GridOptions, options: TuningOptions
) -> None:
    """Classification from encoders tuned online with a parameter-efficient method.

    The encoder runs on every batch with only the method's parameters trainable (LoRA,
    adapters, LayerNorm-only, APLA, full, or frozen: nothing), and a head on top. Saves each
    model's deltas and head under OUT/tuned/; writes OUT/results.json, OUT/results.md and
    OUT/tuning.md (trainable parameters, step memory, samples/s).
    """
    from adaptor.downstream.results import write_tuning_table
    from adaptor.downstream.tuning import TuneConfig, finetune_tuned

    run = run.opened()
    made, _ = run.label_splits(grid.fractions, split)
    cfg = run.config(TuneConfig, grid, options)
    run.write_results(finetune_tuned(cfg, made, progress=run.progress, log=typer.echo))
    table = write_tuning_table(run.out_dir)
    if table is not None:
        typer.echo(table.read_text(encoding="utf-8"))
    typer.echo(f"results in {uri_of(run.out_dir)} (results.json, results.md, tuning.md, plots)")


@app.command()
@friendly_errors
@model_options
def zeroshot(
    shards: Shards,
    adaptor: Annotated[
        str, typer.Option(help="trained Adaptor folder (RUN/adaptor)" + PATH_OR_URI)
    ],
    out: Annotated[
        str, typer.Option(help="folder for zeroshot.json and zeroshot.md" + PATH_OR_URI)
    ],
    *,
    options: ZeroShotOptions,
) -> None:
    """Classify without training on labels: a positive and a negative prompt per label.

    The prompts (built in for common chest findings, or --prompts FILE.yaml) go through the
    text encoder and the Adaptor's text path, each image through its image path; the
    probability of a label is the softmax over its two prompts. Writes AUROC per label.
    """
    from adaptor.downstream.zeroshot import run_zeroshot

    shards_dir, adaptor_dir = (working_copy(f, writable=False) for f in (shards, adaptor))
    folder = working_copy(out)
    result = run_zeroshot(shards_dir, adaptor_dir, folder, options)
    typer.echo(result.markdown())
    typer.echo(
        f"written to {uri_of(folder / 'zeroshot.json')} and {uri_of(folder / 'zeroshot.md')}"
    )


def _opened(folder: str | None) -> str | None:
    """A folder to read, local (a URI's working copy), or None."""
    return str(working_copy(folder, writable=False)) if folder else None
