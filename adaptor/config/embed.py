"""The embed stage (``adaptor embed``; the flow's ``embed:`` section) and its Ray actors."""

from __future__ import annotations

from pydantic import Field, model_validator

from adaptor.config.base import Options
from adaptor.encoders import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER

NO_ENCODER = "none"
"""An encoder name that embeds nothing on that side: one-sided shards (join them later with
:func:`adaptor.shards.join_shards`)."""


class EmbedOptions(Options):
    """Frozen encoders → embedding shards: what is embedded, and how."""

    image_encoder: str = Field(
        DEFAULT_IMAGE_ENCODER,
        description=f"image encoder name (see `adaptor encoders`); {NO_ENCODER}: text-only "
        "shards, no image is read",
    )
    text_encoder: str = Field(
        DEFAULT_TEXT_ENCODER,
        description=f"text encoder name (see `adaptor encoders`); {NO_ENCODER}: image-only "
        "shards, empty reports kept",
    )
    batch_size: int = Field(32, ge=1, description="records per encoder forward pass")
    shard_size: int = Field(500, ge=1, description="records per shard (by position in the source)")
    loader_workers: int = Field(
        2, ge=0, description="processes decoding images beside the encoders"
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    strict: bool = Field(False, description="stop at the first bad record instead of skipping it")
    allow_empty_reports: bool = Field(
        False,
        description="keep records whose report is empty (image-only layouts such as chexpert "
        "keep them without it)",
    )
    patch_tokens: bool = Field(False, description="also store the image encoder's patch tokens")
    text_states: bool = Field(False, description="also store the text encoder's token states")

    @model_validator(mode="after")
    def _some_encoder(self) -> EmbedOptions:
        if self.image_encoder == NO_ENCODER and self.text_encoder == NO_ENCODER:
            raise ValueError(
                f"image_encoder and text_encoder are both {NO_ENCODER!r}: nothing to embed"
            )
        return self


class ActorOptions(Options):
    """Where a cluster embed job runs its encoders: Ray actors (not in the flow's YAML: the
    shards are the same wherever they are made)."""

    actors: int | None = Field(
        None, ge=1, description="encoder actors; default: one per GPU, else one per CPU slot"
    )
    cpus_per_actor: int = Field(
        1,
        ge=1,
        description="CPUs (torch threads) per CPU actor; shards are byte-identical to a local "
        "`adaptor embed` when this equals that machine's thread count",
    )
