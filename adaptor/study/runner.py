"""``adaptor study``: a transfer study as one resumable job.

Order of work, each unit written as it finishes so a rerun resumes:

1. **Checks** before any work: every encoder name is known; once synthetic sets are
   made (``OUT/raw/``), the corpus has reports, every evaluation dataset has the labels
   asked for, and zero-shot labels have prompts.
2. **Embedding, each encoder once**: every image encoder over every dataset, every text
   encoder over the corpus only (:data:`~adaptor.config.embed.NO_ENCODER` for the other
   side); the corpus's pair shards are joined from the two (storage only, no model runs).
3. **Pretraining**: one Adaptor per encoder pair × preset, under Ray Train.
4. **Evaluation** per dataset: frozen-encoder baselines once per image encoder; per pair ×
   preset the Adaptor's heads and zero-shot. Heads train as Ray tasks (one per model,
   ``workers``/``address`` as every grid), finished models are kept.
5. **The study table** (:mod:`adaptor.study.table`).

A unit that fails (an evaluation that raises, a pretraining that cannot run) is recorded
with its error and shown as failed in the table; the other units go on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from adaptor.config.embed import NO_ENCODER
from adaptor.config.study import CORPUS, StudyConfig
from adaptor.errors import AdaptorError
from adaptor.study.layout import StudyLayout
from adaptor.study.table import BASELINE, StudyRows, write_study

Log = Callable[[str], None]


class StudyError(AdaptorError, ValueError):
    """A study config that cannot run: the message names the dataset, encoder or label."""


@dataclass
class StudyResult:
    """Where the study left its table, and the units that failed."""

    table_md: Path
    table_json: Path
    plots: list[Path]
    failures: list[dict[str, str]] = field(default_factory=list)


def run_study(
    cfg: StudyConfig, out: Path, *, progress: bool = True, log: Log = tqdm.write
) -> StudyResult:
    """Run (or resume) every unit of the study; write and return the study table."""
    layout = StudyLayout(Path(out).resolve())
    _check_encoders(cfg)
    sources = _prepare_sources(cfg, layout, progress=progress, log=log)
    _check_data(cfg, sources)
    embed_datasets(cfg, layout, sources, progress=progress, log=log)
    rows = StudyRows()
    adaptors = _pretrain_all(cfg, layout, rows, progress=progress, log=log)
    for dataset in cfg.evaluate:
        _evaluate(cfg, layout, dataset, adaptors, rows, progress=progress, log=log)
    md, js, plots = write_study(layout.root, rows, cfg)
    return StudyResult(md, js, plots, rows.failures)


# ---------------------------------------------------------------- checks and data


def _source_name(cfg: StudyConfig, dataset: str) -> str:
    """The folder of the records a dataset reads: the corpus's, or its own."""
    return CORPUS if cfg.evaluate[dataset].source == CORPUS else dataset


def _prepare_sources(
    cfg: StudyConfig, layout: StudyLayout, *, progress: bool, log: Log
) -> dict[str, str]:
    """Source specs by dataset folder (``corpus`` and each evaluation set with its own
    records), making the synthetic ones that are missing."""
    from adaptor.data.synthetic import generate_synthetic

    specs = {CORPUS: cfg.corpus}
    specs.update({name: spec for name, spec in cfg.evaluate.items() if spec.source != CORPUS})
    sources = {}
    for name, spec in specs.items():
        if spec.source is not None:
            sources[name] = spec.source
            continue
        raw = layout.raw(name)
        if (raw / "records.jsonl").is_file():
            log(f"[data] reusing {raw}")
        else:
            log(f"[data] writing {spec.synth.n} synthetic records to {raw}")
            generate_synthetic(raw, progress=progress, **spec.synth.model_dump())
        sources[name] = f"synthetic:{raw}"
    return sources


def _check_encoders(cfg: StudyConfig) -> None:
    """Every encoder name of the grid is one the registry accepts (nothing is loaded)."""
    from adaptor.encoders.registry import check_encoder_name

    for image, text in cfg.encoders.pair_list():
        check_encoder_name("image", image)
        check_encoder_name("text", text)


def _check_data(cfg: StudyConfig, sources: dict[str, str]) -> None:
    """What the records must hold, refused before the first encoder runs: a corpus with
    reports, the labels each dataset is asked for, and prompts for zero-shot labels."""
    from adaptor.data.sources import open_source
    from adaptor.data.sources.base import has_reports
    from adaptor.downstream.prompts import PromptError, load_prompts, prompts_for

    corpus = open_source(sources[CORPUS])
    if not has_reports(corpus):
        raise StudyError(
            f"corpus {sources[CORPUS]!r} has no reports: pretraining needs a paired "
            "image–report corpus (image-only sets belong under `evaluate`)"
        )
    user_prompts = load_prompts(cfg.prompts) if cfg.prompts else None
    for name, spec in cfg.evaluate.items():
        if not spec.labels:
            continue
        have = _label_names(sources[_source_name(cfg, name)])
        missing = [label for label in spec.labels if label not in have]
        if missing:
            raise StudyError(
                f"evaluate.{name}: labels {missing} are not in its records (they have {have})"
            )
        if "zeroshot" in spec.tasks:
            try:
                prompts_for(spec.labels, user_prompts)
            except PromptError as err:
                raise StudyError(f"evaluate.{name}: {err}") from None


def _label_names(source: str) -> list[str]:
    """The label names the records of a source carry."""
    from adaptor.data.records import RecordError
    from adaptor.data.sources import open_source

    names: dict[str, None] = {}
    for item in open_source(source).items():
        if not isinstance(item, RecordError):
            names.update(dict.fromkeys(item.labels or {}))
    return list(names)


# ---------------------------------------------------------------- embedding


def embed_datasets(
    cfg: StudyConfig, layout: StudyLayout, sources: dict[str, str], *, progress: bool, log: Log
) -> None:
    """Each image encoder once per dataset, each text encoder once on the corpus, then the
    corpus's pair shards joined from them."""
    from adaptor.embed import EmbedConfig, embed
    from adaptor.shards import join_shards

    options = cfg.embed.model_dump(exclude={"image_encoder", "text_encoder"})
    runs = [
        (name, layout.image_shards(name, image), image, NO_ENCODER)
        for name in sources
        for image in cfg.encoders.images()
    ]
    runs += [(CORPUS, layout.text_shards(text), NO_ENCODER, text) for text in cfg.encoders.texts()]
    for name, folder, image, text in runs:
        which = image if text == NO_ENCODER else text
        log(f"[embed] {which} over {name} -> {folder}")
        done = embed(
            EmbedConfig(
                source=sources[name],
                out=folder,
                image_encoder=image,
                text_encoder=text,
                progress=progress,
                **options,
            ),
            log=log,
        )
        log(f"[embed] {done.count} records, {len(done.skipped)} skipped")
    for image, text in cfg.encoders.pair_list():
        join_shards(
            layout.image_shards(CORPUS, image),
            layout.text_shards(text),
            layout.pair_shards(image, text),
            progress=progress,
            log=log,
        )


# ---------------------------------------------------------------- pretraining


def _pretrain_all(
    cfg: StudyConfig, layout: StudyLayout, rows: StudyRows, *, progress: bool, log: Log
) -> dict[tuple[str, str, str], Path]:
    """One Adaptor per pair × preset; returns the folders of those that trained."""
    from adaptor.pretrain import PretrainConfig, describe, pretrain

    adaptors = {}
    for image, text in cfg.encoders.pair_list():
        for preset in cfg.presets:
            run_dir = layout.pretrain(image, text, preset)
            unit = {"stage": "pretrain", "pair": f"{image} × {text}", "preset": preset}
            log(f"[pretrain] {image} × {text}, preset {preset} -> {run_dir}")
            try:
                trained = pretrain(
                    PretrainConfig(
                        shards=str(layout.pair_shards(image, text)),
                        out=str(run_dir),
                        **cfg.preset_options(preset).model_dump(),
                    ),
                    progress=progress,
                    log=log,
                )
            except AdaptorError as err:
                rows.fail(unit, err, log)
                continue
            log(f"[pretrain] {describe(trained.metrics)}")
            rows.add_pretrain(image, text, preset, trained.metrics)
            adaptors[(image, text, preset)] = trained.adaptor_dir
    return adaptors


# ---------------------------------------------------------------- evaluation


def _evaluate(
    cfg: StudyConfig,
    layout: StudyLayout,
    dataset: str,
    adaptors: dict[tuple[str, str, str], Path],
    rows: StudyRows,
    *,
    progress: bool,
    log: Log,
) -> None:
    """Baselines per image encoder, then every trained Adaptor's heads and zero-shot."""
    from adaptor.data.splits import load_or_make_splits
    from adaptor.shards import ShardReader

    spec = cfg.evaluate[dataset]
    folder = _source_name(cfg, dataset)
    first = layout.image_shards(folder, cfg.encoders.images()[0])
    splits_path = layout.splits(dataset)
    meta = ShardReader(first).load(members=()).meta
    splits, _ = load_or_make_splits(splits_path, meta, cfg.fractions, cfg.split_seed)
    grid = cfg.model_dump(include={"fractions", "seeds", "workers", "address"})
    units: list[tuple[str, str | None, str | None]] = [
        (image, None, None) for image in cfg.encoders.images()
    ]
    units += [(i, t, preset) for i, t in cfg.encoders.pair_list() for preset in cfg.presets]
    for image, text, preset in units:
        pair = image if text is None else f"{image} × {text}"
        unit = {"dataset": dataset, "pair": pair, "preset": preset or BASELINE}
        adaptor = adaptors.get((image, text, preset)) if preset else None
        if preset and adaptor is None:
            rows.fail(unit, StudyError("its Adaptor did not pretrain"), log)
            continue
        shards = layout.image_shards(folder, image)
        out = (
            layout.evaluation(dataset, image, text, preset)
            if preset
            else layout.baseline(dataset, image)
        )
        for task in spec.tasks:
            if task == "zeroshot" and adaptor is None:
                continue  # no shared space without an Adaptor
            log(f"[eval] {dataset}: {task}, {pair}, {unit['preset']}")
            try:
                if task == "zeroshot":
                    cells = [_zeroshot(cfg, dataset, shards, adaptor, out, log)]
                else:
                    cells = _heads(
                        cfg, task, dataset, shards, adaptor, out, splits, splits_path, grid,
                        progress=progress, log=log,
                    )  # fmt: skip
            except AdaptorError as err:
                rows.fail({**unit, "task": task}, err, log)
                continue
            rows.add_cells(dataset, image, text, preset, cells)


def _heads(
    cfg: StudyConfig,
    task: str,
    dataset: str,
    shards: Path,
    adaptor: Path | None,
    out: Path,
    splits: Any,
    splits_path: Path,
    grid: dict[str, Any],
    *,
    progress: bool,
    log: Log,
) -> list[Any]:
    """A classification or segmentation grid: the baseline methods without an Adaptor,
    the Adaptor's methods with one."""
    io = {"shards": str(shards), "out": str(out), "adaptor": str(adaptor) if adaptor else None}
    if task == "classification":
        from adaptor.downstream.classification import ClassificationConfig, finetune_classification

        options = cfg.label_options(dataset)
        options["features"] = ["adaptor"] if adaptor else ["encoder"]
        return finetune_classification(
            ClassificationConfig(**io, **grid, **options),
            splits,
            splits_path=splits_path,
            progress=progress,
            log=log,
        )
    from adaptor.downstream.segmentation import (
        ADAPTOR_METHODS,
        SegmentationConfig,
        finetune_segmentation,
    )

    options = cfg.segmentation.model_dump()
    methods = [m for m in options["methods"] if (m in ADAPTOR_METHODS) == bool(adaptor)]
    if not methods:
        return []
    options["methods"] = methods
    return finetune_segmentation(
        SegmentationConfig(**io, **grid, **options), splits, progress=progress, log=log
    )


def _zeroshot(
    cfg: StudyConfig, dataset: str, shards: Path, adaptor: Path, out: Path, log: Log
) -> Any:
    """The zero-shot row (fraction 0) of one Adaptor on one dataset's test split."""
    from adaptor.config import ZeroShotOptions
    from adaptor.downstream.zeroshot import run_zeroshot

    spec = cfg.evaluate[dataset]
    options = ZeroShotOptions(labels=spec.labels, prompts=cfg.prompts, uncertain=spec.uncertain)
    return run_zeroshot(shards, adaptor, out, options, log=log).to_cell()
