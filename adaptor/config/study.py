"""The transfer study (``adaptor study``): pretrain on a paired corpus, evaluate on other
datasets, across a grid of encoder pairs and Adaptor presets."""

from __future__ import annotations

from itertools import product
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from adaptor.config.base import CommaList, ConfigError, Options, describe_errors
from adaptor.config.downstream import (
    ClassificationOptions,
    GridOptions,
    SegmentationOptions,
    SplitOptions,
    UncertainPolicy,
)
from adaptor.config.embed import EmbedOptions
from adaptor.config.pretrain import RECIPE_KEYS, PresetOverrides, PretrainOptions
from adaptor.config.synth import SynthOptions
from adaptor.encoders import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER

StudyTask = Literal["classification", "segmentation", "zeroshot"]
CORPUS = "corpus"  # an evaluation dataset whose records are the corpus's own test split


class DatasetOptions(Options):
    """A dataset of the study: a published layout or your own files, or a synthetic set."""

    source: str | None = Field(
        None,
        description="KIND:PATH (see `adaptor embed --help`); null: a synthetic set made from "
        "`synth`; for an evaluation set, 'corpus' reuses the corpus's records",
    )
    synth: SynthOptions = Field(
        default_factory=SynthOptions, description="the synthetic set made when source is null"
    )


class EvaluationOptions(DatasetOptions):
    """An evaluation dataset and the tasks scored on it (its own train/val/test splits)."""

    tasks: CommaList[StudyTask] = Field(
        default_factory=lambda: ["classification", "segmentation", "zeroshot"],
        min_length=1,
        description="classification (heads from 1/10/100 % labels), segmentation, zeroshot "
        "(the 0 % row of classification)",
    )
    labels: CommaList[str] | None = Field(
        None, description="labels classified (default: all; zero-shot: all that have prompts)"
    )
    uncertain: UncertainPolicy = Field("ignore", description="what uncertain (-1) labels count as")


class EncoderGrid(Options):
    """The frozen encoder pairs: every image × text encoder, or the pairs listed."""

    image: CommaList[str] = Field(
        default_factory=lambda: [DEFAULT_IMAGE_ENCODER], min_length=1, description="image encoders"
    )
    text: CommaList[str] = Field(
        default_factory=lambda: [DEFAULT_TEXT_ENCODER], min_length=1, description="text encoders"
    )
    pairs: list[tuple[str, str]] | None = Field(
        None, description="explicit [image, text] pairs instead of every combination"
    )

    def pair_list(self) -> list[tuple[str, str]]:
        """The (image, text) encoder pairs of the study, in order."""
        return list(self.pairs) if self.pairs else list(product(self.image, self.text))

    def images(self) -> list[str]:
        """Every image encoder some pair uses (each runs once per dataset)."""
        return list(dict.fromkeys(i for i, _ in self.pair_list()))

    def texts(self) -> list[str]:
        """Every text encoder some pair uses (each runs once on the corpus)."""
        return list(dict.fromkeys(t for _, t in self.pair_list()))


class StudyConfig(GridOptions, SplitOptions):
    """A whole transfer study. Every key is optional: an empty file is the default study."""

    corpus: DatasetOptions = Field(
        default_factory=DatasetOptions, description="the paired pretraining corpus"
    )
    evaluate: dict[str, EvaluationOptions] = Field(
        default_factory=lambda: {CORPUS: EvaluationOptions(source=CORPUS)},
        min_length=1,
        description="evaluation datasets by name (folder-safe names)",
    )
    encoders: EncoderGrid = Field(default_factory=EncoderGrid, description="the encoder grid")
    presets: PresetOverrides = Field(
        default_factory=lambda: {"ours": {}, "reference": {}},
        min_length=1,
        description="Adaptor presets compared, each with overrides of its pretrain keys",
    )
    embed: EmbedOptions = Field(
        default_factory=EmbedOptions,
        description="how records are embedded (its encoder keys are ignored: the grid names them)",
    )
    pretrain: PretrainOptions = Field(
        default_factory=PretrainOptions,
        description="pretraining options every preset shares (seed, cluster, checkpoints; "
        "recipe keys go under presets)",
    )
    classification: ClassificationOptions = Field(
        default_factory=ClassificationOptions,
        description="classification heads (labels and uncertainty come from each dataset)",
    )
    segmentation: SegmentationOptions = Field(
        default_factory=lambda: SegmentationOptions(steps=80), description="segmentation heads"
    )
    prompts: str | None = Field(
        None, description="YAML file of zero-shot prompts (default: the built-in ones)"
    )

    @field_validator("evaluate")
    @classmethod
    def _safe_names(cls, value: dict[str, EvaluationOptions]) -> dict[str, EvaluationOptions]:
        for name in value:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"{name!r}: dataset names must be plain folder names")
        return value

    @model_validator(mode="after")
    def _corpus_named_once(self) -> StudyConfig:
        if self.corpus.source == CORPUS:
            raise ValueError(f"corpus.source: {CORPUS!r} only names the corpus in `evaluate`")
        if CORPUS in self.evaluate and self.evaluate[CORPUS].source != CORPUS:
            raise ValueError(f"evaluate.{CORPUS}: the name is kept for source {CORPUS!r}")
        recipe = sorted(self.pretrain.model_fields_set & RECIPE_KEYS)
        if recipe:
            raise ValueError(
                f"pretrain.{recipe[0]}: a preset's recipe key; set it per preset under "
                "presets (e.g. presets: {ours: {epochs: 10}})"
            )
        return self

    def with_address(self, address: str | None) -> StudyConfig:
        """This study on the Ray cluster at ``address`` (pretraining and every grid)."""
        pretrain = self.pretrain.model_copy(update={"address": address})
        return self.model_copy(update={"address": address, "pretrain": pretrain})

    def preset_options(self, preset: str) -> PretrainOptions:
        """The pretraining options of one preset."""
        return self.pretrain.with_preset(preset, self.presets[preset])

    def label_options(self, dataset: str) -> dict[str, Any]:
        """The classification options of one evaluation dataset (its labels, its policy)."""
        spec = self.evaluate[dataset]
        return {
            **self.classification.model_dump(),
            "labels": spec.labels,
            "uncertain": spec.uncertain,
        }


def load_study(path: str | Path | None) -> StudyConfig:
    """Read a study YAML (the default study when ``path`` is None); errors name file and key."""
    if path is None:
        return StudyConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return StudyConfig.model_validate(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    except ValidationError as err:
        raise ConfigError(f"{path}: {describe_errors(err)}") from None
