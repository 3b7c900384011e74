"""Pretraining (``adaptor pretrain``; the flow's ``pretrain:`` section) and the Adaptor's shape."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, model_validator

from adaptor.config.base import Options, RayAddress, describe_errors

Norm = Literal["post", "pre"]
Wiring = Literal["ours", "reference"]
Preset = Literal["ours", "reference"]

# What `preset: reference` fills in: the values of the reference Adaptor (holajoa/Adaptor-VL-SSL:
# models/adaptor.py for the shape, utils/args.py for the loss weight and the selection by val
# loss, shell/pretrain.sh for the recipe). Options given explicitly win over these.
REFERENCE: dict[str, Any] = {
    "t2i_weight": 0.75,
    "lr": 2e-5,
    "weight_decay": 0.01,
    "batch_size": 1024,
    "epochs": 50,
    "warmup_fraction": 0.02,
    "schedule": "linear",
    "select_by": "val_loss",
    "model": {
        "width": 768,
        "heads": 12,
        "layers": 2,
        "ffn_hidden": 2048,
        "dropout": 0.1,
        "norm": "post",
        "wiring": "reference",
    },
}

RECIPE_KEYS = frozenset({*REFERENCE, "preset", "model"})  # what a preset decides


class ModelOptions(Options):
    """The Adaptor's shape (``pretrain.model``); see :class:`adaptor.model.AdaptorConfig`."""

    width: int = Field(512, ge=8, description="shared embedding width")
    layers: int = Field(1, ge=0, description="attention layers")
    heads: int = Field(8, ge=1, description="attention heads; the width must be divisible by them")
    ffn_hidden: int = Field(2048, ge=1, description="hidden size of each feed-forward block")
    norm: Norm = Field("post", description="LayerNorm after (post) or before (pre) each block")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout in attention and feed-forward")
    wiring: Wiring = Field(
        "ours",
        description="layer wiring: ours, or the reference's (query = the other side, one layer "
        "shared by both sides)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ModelOptions:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.wiring == "reference" and self.norm != "post":
            raise ValueError(f"wiring 'reference' is post-norm, got norm={self.norm!r}")
        return self


class PretrainOptions(Options):
    """Contrastive pretraining of the Adaptor under Ray Train: optimisation, loss, cluster, shape."""

    preset: Preset = Field(
        "ours",
        description="ours, or reference: the reference's shape, recipe and selection fill every "
        "option not given",
    )
    epochs: int = Field(30, ge=1, description="training epochs")
    batch_size: int = Field(
        128, ge=2, description="pairs per worker per step (negatives: the global batch)"
    )
    lr: float = Field(5e-4, gt=0, description="peak AdamW learning rate")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay")
    warmup_fraction: float = Field(
        0.1, ge=0, le=1, description="share of the steps spent warming the learning rate up"
    )
    schedule: Literal["cosine", "linear"] = Field(
        "cosine", description="learning-rate decay after warm-up"
    )
    grad_clip: float = Field(1.0, gt=0, description="gradient norm clipping")
    objective: Literal["unpaired", "paired"] = Field(
        "unpaired",
        description="CLIP loss on each side encoded alone (unpaired) or on the cross-attended "
        "pair (paired)",
    )
    t2i_weight: float = Field(
        0.25,
        ge=0,
        le=1,
        description="loss weight of text→image, image→text takes the rest (the reference: 0.75)",
    )
    select_by: Literal["val_recall", "val_loss"] = Field(
        "val_recall",
        description="the epoch kept: highest mean val recall, or lowest val loss",
    )
    seed: int = Field(0, description="seed of the initial weights and the shuffling")
    workers: int = Field(
        1, ge=1, description="Ray Train workers; each reads a disjoint share of the shards"
    )
    address: RayAddress = None
    use_gpu: bool | None = Field(None, description="train on GPUs; default: if the cluster has any")
    max_failures: int = Field(
        2, ge=0, description="restarts from the newest checkpoint after a worker fails"
    )
    checkpoint_every_steps: int = Field(
        0, ge=0, description="extra checkpoints every N steps (0: per epoch only)"
    )
    model: ModelOptions = Field(default_factory=ModelOptions, description="the Adaptor's shape")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        """``preset: reference`` fills the keys not given with :data:`REFERENCE`."""
        if not isinstance(data, dict) or data.get("preset") != "reference":
            return data
        model = data.get("model", {})
        if isinstance(model, ModelOptions):
            model = model.model_dump(exclude_unset=True)
        if not isinstance(model, dict):
            return data  # not a shape: the field's own validation says so
        return {**REFERENCE, **data, "model": {**REFERENCE["model"], **model}}

    def with_preset(
        self, preset: Preset, overrides: dict[str, Any] | None = None
    ) -> PretrainOptions:
        """These options under another preset: the recipe and shape are the preset's own
        but for ``overrides``, the rest (seed, cluster, checkpoints, objective) is kept."""
        kept = {k: v for k, v in self.model_dump().items() if k not in RECIPE_KEYS}
        return PretrainOptions.model_validate({**kept, **(overrides or {}), "preset": preset})


def _check_preset_overrides(value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each preset's overrides must make valid pretraining options."""
    for preset, overrides in value.items():
        try:
            PretrainOptions().with_preset(preset, overrides)
        except ValidationError as err:
            raise ValueError(f"{preset}: {describe_errors(err)}") from None
    return value


# Presets by name, each with overrides of its recipe (``adaptor run``'s ``compare``, a study's
# ``presets``)
PresetOverrides = Annotated[dict[Preset, dict[str, Any]], AfterValidator(_check_preset_overrides)]
