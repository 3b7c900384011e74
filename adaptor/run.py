"""``adaptor run``: every stage, in order, each resumable from its outputs.

Each stage is a function of the config and the output root, shared with the batch jobs
in ``pipelines/``, so a cluster job and ``adaptor run`` write the same files.

Layout under ``OUT``::

    OUT/raw/synthetic/                 the synthetic paired set (records.jsonl, images/, masks/)
    OUT/<dataset>/<encoder-pair>/      embedding shards + manifest.json
    OUT/runs/<dataset>/pretrain/       Adaptor weights (adaptor/), metrics, curves, Ray checkpoints
    OUT/runs/<dataset>/downstream/     splits.json, results.json/md, plots, per-model cells
    OUT/runs/<dataset>/pretrain-<preset>/, downstream-<preset>/
                                       each preset of ``compare``, pretrained and evaluated
                                       the same way; its rows join the main results table
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from adaptor.config import GridOptions, PretrainOptions, RunConfig
from adaptor.data.synthetic import generate_synthetic
from adaptor.embed import EmbedConfig, EmbedResult, embed
from adaptor.pretrain import PretrainConfig, PretrainError, PretrainResult, describe, pretrain

if TYPE_CHECKING:
    from adaptor.data.splits import LabelSplits
    from adaptor.downstream.results import CellResult

Log = Callable[[str], None]  # the default, tqdm.write, keeps messages off the progress bars


@dataclass(frozen=True)
class FlowPaths:
    """Where each stage of one config writes under the output root."""

    raw: Path
    shards: Path
    pretrain: Path
    downstream: Path
    index: Path

    @property
    def adaptor(self) -> Path:
        return self.pretrain / "adaptor"

    def compared(self, preset: str) -> FlowPaths:
        """Where the Adaptor of a compared preset is pretrained and evaluated."""
        return replace(
            self,
            pretrain=self.pretrain.with_name(f"pretrain-{preset}"),
            downstream=self.downstream.with_name(f"downstream-{preset}"),
        )


@dataclass
class RunResult:
    """Where each stage left its output."""

    source: str
    paths: FlowPaths
    embed: EmbedResult
    pretrain: PretrainResult
    results_md: Path | None = None
    examples: str = ""


def encoder_pair_id(image_encoder: str, text_encoder: str) -> str:
    """A folder-safe name for an (image, text) encoder pair."""
    return "__".join(
        re.sub(r"[^A-Za-z0-9._-]+", "-", n).strip("-") for n in (image_encoder, text_encoder)
    )


def flow_paths(cfg: RunConfig, out: Path) -> FlowPaths:
    """The output folders of every stage for ``cfg`` under ``out``."""
    out = Path(out)
    runs = out / "runs" / cfg.dataset
    return FlowPaths(
        raw=out / "raw" / cfg.dataset,
        shards=out / cfg.dataset / encoder_pair_id(cfg.embed.image_encoder, cfg.embed.text_encoder),
        pretrain=runs / "pretrain",
        downstream=runs / "downstream",
        index=runs / "index",
    )


def stage_source(cfg: RunConfig, out: Path, *, progress: bool = True, log: Log = tqdm.write) -> str:
    """The source spec to embed: ``cfg.source``, or the synthetic set (written if missing)."""
    if cfg.source is not None:
        return cfg.source
    raw = flow_paths(cfg, out).raw
    if (raw / "records.jsonl").is_file():
        log(f"[synth] reusing {raw}/records.jsonl")
    else:
        log(f"[synth] writing {cfg.synth.n} synthetic records to {raw}")
        generate_synthetic(raw, progress=progress, **cfg.synth.model_dump())
    return f"synthetic:{raw}"


def stage_embed(
    cfg: RunConfig, out: Path, *, progress: bool = True, log: Log = tqdm.write
) -> EmbedResult:
    """Frozen encoders → embedding shards (resumes finished shards)."""
    source = stage_source(cfg, out, progress=progress, log=log)
    shards = flow_paths(cfg, out).shards
    log(f"[embed] {source} -> {shards}")
    result = embed(
        EmbedConfig(source=source, out=shards, progress=progress, **cfg.embed.model_dump())
    )
    log(
        f"[embed] {result.count} samples in {len(list(shards.glob('*.tar')))} shards, "
        f"{len(result.skipped)} skipped, {result.truncated_reports} reports truncated"
    )
    return result


def compared_presets(cfg: RunConfig) -> list[str]:
    """The presets of ``cfg.compare`` other than the main Adaptor's own, in order."""
    return [p for p in cfg.compare if p != cfg.pretrain.preset]


def stage_pretrain(
    cfg: RunConfig, out: Path, *, progress: bool = True, log: Log = tqdm.write
) -> PretrainResult:
    """Contrastive Adaptor pretraining on the shards (resumes from checkpoints), then the
    Adaptor of every compared preset; returns the main Adaptor's result.

    A compared preset that cannot train on these shards (its batch larger than the
    training set, say) is a warning naming the key to set, not the end of the flow: its
    rows are left out of the table.
    """
    paths = flow_paths(cfg, out)
    trained = _pretrain_preset(cfg.pretrain, paths, progress=progress, log=log)
    for preset in compared_presets(cfg):
        options = cfg.pretrain.with_preset(preset, cfg.compare[preset])
        try:
            _pretrain_preset(options, paths.compared(preset), progress=progress, log=log)
        except PretrainError as err:
            log(
                f"warning: compared preset {preset!r} not pretrained, its rows are left out: "
                f"{err} (set compare.{preset} keys, e.g. batch_size, or compare: {{}})"
            )
    return trained


def _pretrain_preset(
    options: PretrainOptions, where: FlowPaths, *, progress: bool, log: Log
) -> PretrainResult:
    log(f"[pretrain] preset {options.preset}: {where.shards} -> {where.pretrain}")
    trained = pretrain(
        PretrainConfig(shards=str(where.shards), out=str(where.pretrain), **options.model_dump()),
        progress=progress,
        log=log,
    )
    log(f"[pretrain] preset {options.preset}: {describe(trained.metrics)}")
    return trained


def stage_finetune(
    cfg: RunConfig, out: Path, *, progress: bool = True, log: Log = tqdm.write
) -> Path | None:
    """Downstream heads from nested label splits; returns ``results.md`` (None if no tasks).

    Every compared preset's Adaptor is evaluated on the same splits by the methods that
    read an Adaptor (the encoder baselines are not retrained); its rows are named
    ``METHOD (PRESET)`` in the one results table.
    """
    from adaptor.data.splits import load_or_make_splits
    from adaptor.downstream.results import merge_results
    from adaptor.shards import ShardReader

    if not cfg.finetune.tasks:
        return None
    paths = flow_paths(cfg, out)
    splits_path = paths.downstream / "splits.json"
    meta = ShardReader(paths.shards).load(members=()).meta
    splits, _ = load_or_make_splits(
        splits_path, meta, cfg.finetune.fractions, cfg.finetune.split_seed
    )
    cells = _finetune_cells(cfg, paths, splits, splits_path, progress=progress, log=log)
    for preset in compared_presets(cfg):
        if not (paths.compared(preset).adaptor / "config.json").is_file():
            continue  # not pretrained (stage_pretrain said why)
        compared = _finetune_cells(
            cfg,
            paths.compared(preset),
            splits,
            splits_path,
            preset=preset,
            progress=progress,
            log=log,
        )
        cells += [replace(c, method=f"{c.method} ({preset})") for c in compared]
    results_md = merge_results(paths.downstream, cells, notes=splits.warnings)
    log(f"[finetune] results in {results_md}")
    return results_md


def _finetune_cells(
    cfg: RunConfig,
    paths: FlowPaths,
    splits: LabelSplits,
    splits_path: Path,
    *,
    preset: str | None = None,
    progress: bool,
    log: Log,
) -> list[CellResult]:
    """Every task's cells for the Adaptor in ``paths``; with ``preset`` (a compared
    Adaptor), only the methods that read the Adaptor."""
    from adaptor.downstream.classification import ClassificationConfig, finetune_classification
    from adaptor.downstream.segmentation import (
        ADAPTOR_METHODS,
        SegmentationConfig,
        finetune_segmentation,
    )

    ft = cfg.finetune
    io = {
        "shards": str(paths.shards),
        "out": str(paths.downstream),
        "adaptor": str(paths.adaptor),
        **ft.model_dump(include=set(GridOptions.model_fields)),
    }
    label = f" ({preset})" if preset else ""
    cells: list[CellResult] = []
    classification = ft.classification.model_dump()
    if preset:
        classification["features"] = [f for f in classification["features"] if f == "adaptor"]
    if "classification" in ft.tasks and classification["features"]:
        log(f"[finetune] classification heads{label} -> {paths.downstream}")
        cells += finetune_classification(
            ClassificationConfig(**io, **classification),
            splits,
            splits_path=splits_path,
            progress=progress,
            log=log,
        )
    segmentation = ft.segmentation.model_dump()
    if preset:
        segmentation["methods"] = [m for m in segmentation["methods"] if m in ADAPTOR_METHODS]
    if "segmentation" in ft.tasks and segmentation["methods"]:
        log(f"[finetune] segmentation decoders{label} -> {paths.downstream}")
        cells += finetune_segmentation(
            SegmentationConfig(**io, **segmentation), splits, progress=progress, log=log
        )
    return cells


def stage_index(cfg: RunConfig, out: Path, *, progress: bool = True, log: Log = tqdm.write) -> str:
    """FAISS index of every embedded record (as ``adaptor index``); returns example searches."""
    from adaptor.retrieval import build_index, example_searches, open_searcher

    paths = flow_paths(cfg, out)
    log(f"[index] {paths.shards} -> {paths.index}")
    build_index(
        paths.shards,
        paths.adaptor,
        paths.index,
        **cfg.index.model_dump(),
        progress=progress,
        log=log,
    )
    searcher = open_searcher(paths.index)
    try:
        return example_searches(searcher)
    finally:
        searcher.close()


def run_flow(
    cfg: RunConfig, out: Path, *, progress: bool = True, log: Log = tqdm.write
) -> RunResult:
    """Run every stage, resuming whatever is already done."""
    embedded = stage_embed(cfg, out, progress=progress, log=log)
    trained = stage_pretrain(cfg, out, progress=progress, log=log)
    results_md = stage_finetune(cfg, out, progress=progress, log=log)
    examples = stage_index(cfg, out, progress=progress, log=log)
    paths = flow_paths(cfg, out)
    return RunResult(
        source=cfg.source or f"synthetic:{paths.raw}",
        paths=paths,
        embed=embedded,
        pretrain=trained,
        results_md=results_md,
        examples=examples,
    )
