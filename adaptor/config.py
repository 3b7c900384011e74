"""The YAML config of ``adaptor run``: one section per stage, validated with pydantic.

Every field has a default, so an empty file (or no file) runs the embedded
default: a synthetic paired set embedded with the offline default encoders.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from adaptor.encoders import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER
from adaptor.errors import AdaptorError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SynthConfig(_Section):
    """The synthetic paired set made when no ``source`` is given."""

    n: int = Field(2000, ge=10, description="number of records")
    seed: int = 0
    size: int = Field(256, ge=224, le=512, description="image side in pixels")


class EmbedSection(_Section):
    """Options of the embed stage (see ``adaptor embed --help``)."""

    image_encoder: str = DEFAULT_IMAGE_ENCODER
    text_encoder: str = DEFAULT_TEXT_ENCODER
    batch_size: int = Field(32, ge=1)
    shard_size: int = Field(500, ge=1)
    loader_workers: int = Field(2, ge=0)
    device: str = "auto"
    strict: bool = False
    allow_empty_reports: bool = False
    patch_tokens: bool = False
    text_states: bool = False


class PretrainSection(_Section):
    """Options of the pretrain stage (see ``adaptor pretrain --help``)."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(5e-4, gt=0)
    workers: int = Field(1, ge=1)
    address: str | None = None
    seed: int = 0
    width: int = Field(512, ge=8)
    layers: int = Field(1, ge=1)
    schedule: str = "cosine"


class SegmentationSection(_Section):
    """Segmentation decoders of the finetune stage (see ``adaptor finetune --help``)."""

    methods: list[str] = Field(default_factory=lambda: ["decoder", "decoder+adaptor"])
    image_size: int = Field(128, ge=16)
    feature_maps: str = "cache"
    steps: int = Field(80, ge=1)  # fewer than `adaptor finetune`'s 150: the run's time budget


TASKS = ("classification", "segmentation")


class FinetuneSection(_Section):
    """Downstream heads (see ``adaptor finetune --help``); ``tasks: []`` skips the stage."""

    tasks: list[str] = Field(default_factory=lambda: list(TASKS))
    fractions: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    split_seed: int = 0
    heads: list[str] = Field(default_factory=lambda: ["linear", "mlp"])
    labels: list[str] | None = None
    kind: str = "multilabel"
    uncertain: str = "ignore"
    max_epochs: int = Field(200, ge=1)
    workers: int = Field(1, ge=1)
    address: str | None = None
    segmentation: SegmentationSection = SegmentationSection()

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: list[str]) -> list[str]:
        unknown = set(value) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}: choose from {', '.join(TASKS)}")
        return value


class IndexSection(_Section):
    """The retrieval index (see ``adaptor index --help``)."""

    factory: str | None = None  # None: exact up to 100k records, tuned HNSW above
    target_recall: float = Field(0.95, gt=0, le=1)


class RunConfig(_Section):
    """The whole flow. ``source`` (``KIND:PATH``) replaces the synthetic set when given."""

    dataset: str = "synthetic"
    source: str | None = None
    synth: SynthConfig = SynthConfig()
    embed: EmbedSection = EmbedSection()
    pretrain: PretrainSection = PretrainSection()
    finetune: FinetuneSection = FinetuneSection()
    index: IndexSection = IndexSection()

    @field_validator("dataset")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError("dataset must be a plain folder name")
        return value


class ConfigError(AdaptorError, ValueError):
    """A config file that cannot be used; names the file and the fields at fault."""


def load_config(path: str | Path | None) -> RunConfig:
    """Read a YAML config (or the defaults when ``path`` is None)."""
    if path is None:
        return RunConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return RunConfig.model_validate(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    except ValidationError as err:
        raise ConfigError(f"{path}: {err}") from err
