"""The YAML config of ``adaptor run`` and the batch jobs: one section per stage, each the
stage's own model, so a key means the same as the option of the stage's command."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from adaptor.config.base import (
    ConfigError,
    Loc,
    Options,
    describe_errors,
    dotted,
    field_help,
)
from adaptor.config.downstream import (
    ClassificationOptions,
    GridOptions,
    SegmentationOptions,
    SplitOptions,
)
from adaptor.config.embed import EmbedOptions
from adaptor.config.pretrain import PresetOverrides, PretrainOptions
from adaptor.config.retrieval import IndexOptions
from adaptor.config.synth import SynthOptions

Task = Literal["classification", "segmentation"]

# keys of older configs, and where they live now
MOVED = {
    "pretrain.width": "pretrain.model.width",
    "pretrain.layers": "pretrain.model.layers",
    **{
        f"finetune.{key}": f"finetune.classification.{key}"
        for key in ("heads", "labels", "kind", "uncertain", "max_epochs")
    },
}


class FinetuneOptions(GridOptions, SplitOptions):
    """The downstream stage of the flow: the grid every task shares, then each task's own."""

    tasks: list[Task] = Field(
        default_factory=lambda: ["classification", "segmentation"],
        description="downstream tasks to run ([] skips the stage)",
    )
    classification: ClassificationOptions = Field(
        default_factory=ClassificationOptions, description="classification heads"
    )
    # `adaptor run` trains each decoder 80 steps, not `adaptor finetune segment`'s 150: its
    # time budget on 2 cores (the README says so beside its results)
    segmentation: SegmentationOptions = Field(
        default_factory=lambda: SegmentationOptions(steps=80),
        description="segmentation decoders",
    )


class RunConfig(Options):
    """The whole flow. Every key is optional: an empty file runs the embedded default."""

    dataset: str = Field("synthetic", description="folder name under --out")
    source: str | None = Field(
        None, description="KIND:PATH of your own data; null: make the synthetic set"
    )
    synth: SynthOptions = Field(default_factory=SynthOptions, description="the synthetic set")
    embed: EmbedOptions = Field(default_factory=EmbedOptions, description="frozen encoders")
    pretrain: PretrainOptions = Field(
        default_factory=PretrainOptions, description="the Adaptor, under Ray Train"
    )
    compare: PresetOverrides = Field(
        default_factory=lambda: {"reference": {}},
        description="Adaptor presets also pretrained (their own recipe and shape, but for "
        "the pretrain keys given here) and evaluated beside `pretrain`: rows '… (PRESET)' in "
        "the table; {} for none",
    )
    finetune: FinetuneOptions = Field(
        default_factory=FinetuneOptions, description="downstream heads from label fractions"
    )
    index: IndexOptions = Field(default_factory=IndexOptions, description="the retrieval index")

    @field_validator("dataset")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError("dataset must be a plain folder name")
        return value


def load_config(path: str | Path | None) -> RunConfig:
    """Read a YAML config (or the defaults when ``path`` is None).

    Unknown keys, wrong types and out-of-range values are one :class:`ConfigError` naming
    the file and each dotted key: ``run.yaml: pretrain.model.width: must be ≥ 8, got 4``.
    """
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
        raise ConfigError(f"{path}: {describe_errors(err, explain=_unknown_key)}") from None


def _unknown_key(error: ErrorDetails) -> str | None:
    """Where an unknown key moved, or which keys its section knows."""
    if error["type"] != "extra_forbidden":
        return None
    key = dotted(error["loc"])
    if key in MOVED:
        return f"moved to {MOVED[key]}"
    return f"unknown key; known: {', '.join(_section(error['loc'][:-1]).model_fields)}"


def _section(loc: Loc) -> type[BaseModel]:
    model: type[BaseModel] = RunConfig
    for part in loc:
        model = model.model_fields[str(part)].annotation  # type: ignore[assignment]
    return model


def to_yaml(config: BaseModel) -> str:
    """``config`` as YAML with every field written and described (``adaptor config --show``);
    it loads back to an equal config."""
    return "\n".join(_yaml_lines(config, config.model_dump(mode="json"), "")) + "\n"


def _yaml_lines(model: BaseModel, values: dict[str, Any], indent: str) -> Iterator[str]:
    for name, info in type(model).model_fields.items():
        note = f"  # {field_help(info)}" if info.description else ""
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield f"{indent}{name}:{note}"
            yield from _yaml_lines(value, values[name], indent + "  ")
        else:
            text = yaml.safe_dump(values[name], default_flow_style=True, width=1 << 16)
            text = text.removesuffix("...\n").strip()  # a lone scalar is one document
            yield f"{indent}{name}: {text}{note}"
