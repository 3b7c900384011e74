"""Downstream grids: classification heads, segmentation decoders and encoder tuning
(``adaptor finetune heads|segment|tune``; the flow's ``finetune:`` section)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from adaptor.config.base import CommaList, Options, RayAddress

HeadName = Literal["linear", "mlp"]
TargetKind = Literal["multilabel", "multiclass"]
UncertainPolicy = Literal["ignore", "positive", "negative"]
Feature = Literal["encoder", "adaptor"]
SegmentationMethod = Literal["decoder", "decoder+adaptor", "adaptor-neck", "adaptor-patches"]
SegmentationLoss = Literal["bce+dice", "focal+logdice"]
FeatureMaps = Literal["cache", "online"]
Unannotated = Literal["auto", "negative", "skip"]
TuningMethod = Literal["frozen", "lora", "adapter", "layernorm", "apla", "full"]
TunedSide = Literal["image", "text", "both"]
# the encoder's learning rate per tuning method, unless encoder_lr is given
ENCODER_LR: dict[TuningMethod, float] = {
    "frozen": 0.0,
    "lora": 5e-4,
    "adapter": 5e-4,
    "layernorm": 1e-3,
    "apla": 1e-4,
    "full": 2e-5,
}


def parse_key_values(text: Any) -> Any:
    """``"rank=8,ffn=true,columns=0.25"`` → ``{"rank": 8, "ffn": True, "columns": 0.25}``.

    Values are read as JSON (numbers, ``true``/``false``, ``null``), else kept as text;
    anything but a string (a YAML mapping, None) passes unchanged.
    """
    if not isinstance(text, str):
        return {} if text is None else text
    options: dict[str, Any] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"tuning options are KEY=VALUE pairs, got {item.strip()!r}")
        try:
            options[key.strip()] = json.loads(value.strip())
        except json.JSONDecodeError:
            options[key.strip()] = value.strip()
    return options


class GridOptions(Options):
    """The method × label fraction × seed grid every downstream task trains, and where."""

    fractions: CommaList[Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=lambda: [0.01, 0.1, 1.0],
        min_length=1,
        description="label fractions to train from (nested: 1 % ⊂ 10 % ⊂ 100 % of train)",
    )
    seeds: CommaList[int] = Field(
        default_factory=lambda: [0, 1, 2], min_length=1, description="seeds per method and fraction"
    )
    workers: int = Field(1, ge=1, description="models trained at once (one Ray task each)")
    address: RayAddress = None


class SplitOptions(Options):
    """How the nested label splits (``OUT/splits.json``) are drawn."""

    split_seed: int = Field(
        0, description="seed of the label splits; the same seed, the same patients"
    )


class LabelOptions(Options):
    """Which labels a classifier predicts, and how."""

    labels: CommaList[str] | None = Field(None, description="label names (default: all)")
    kind: TargetKind = Field(
        "multilabel", description="one sigmoid per label (multilabel) or one softmax (multiclass)"
    )
    uncertain: UncertainPolicy = Field("ignore", description="what uncertain (-1) labels count as")


class ClassificationOptions(LabelOptions):
    """Heads on the cached embeddings, on the encoder's features and through the Adaptor."""

    heads: CommaList[HeadName] = Field(
        default_factory=lambda: ["linear", "mlp"], min_length=1, description="heads"
    )
    features: CommaList[Feature] = Field(
        default_factory=lambda: ["encoder", "adaptor"],
        min_length=1,
        description="features: the frozen encoder's (encoder, the baseline), through the "
        "Adaptor (adaptor)",
    )
    max_epochs: int = Field(200, ge=1, description="epoch limit (early stopping on val)")
    patience: int = Field(15, ge=1, description="epochs without a better val AUROC before stopping")
    batch_size: int = Field(128, ge=1, description="records per training step")
    lr: float = Field(1e-2, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")


class SegmentationOptions(Options):
    """Decoders on the frozen image encoder's feature maps, with and without the Adaptor."""

    methods: CommaList[SegmentationMethod] = Field(
        default_factory=lambda: ["decoder", "decoder+adaptor", "adaptor-neck"],
        min_length=1,
        description="decoder (the baseline), decoder+adaptor (Adaptor vector beside the "
        "bottleneck), adaptor-neck (the reference's CNN head: the vector through a "
        "transposed-conv neck replacing the bottleneck), adaptor-patches (the reference's "
        "ViT head: the Adaptor over every patch token, decoded without skips)",
    )
    image_size: int | None = Field(
        128, ge=16, description="input and mask side in pixels (null: the encoder's own)"
    )
    levels: int = Field(4, ge=1, description="deepest encoder feature maps the decoder reads")
    feature_maps: FeatureMaps = Field(
        "cache", description="cache the encoder's feature maps on disk, or run it online"
    )
    unannotated: Unannotated = Field(
        "auto",
        description="records without a mask: negatives, skipped, or auto (negatives where "
        "every positive of the layout has a mask)",
    )
    steps: int = Field(150, ge=1, description="optimisation steps per decoder")
    eval_every: int = Field(25, ge=1, description="steps between validations")
    patience: int = Field(3, ge=1, description="validations without a better Dice before stopping")
    batch_size: int = Field(16, ge=1, description="images per training step")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    loss: SegmentationLoss = Field(
        "bce+dice",
        description="bce+dice (ours) or focal+logdice (the reference: 10·focal − log Dice)",
    )
    balance: bool = Field(
        False,
        description="train on every positive and as many randomly drawn negatives (the "
        "reference's SIIM recipe)",
    )
    overlay_images: int = Field(4, ge=1, description="test images in the overlay figure")
    extract_batch_size: int = Field(32, ge=1, description="images per encoder pass into the cache")
    loader_workers: int = Field(0, ge=0, description="processes decoding images for the cache")


class TuningOptions(LabelOptions):
    """Classification from encoders tuned online with a parameter-efficient method."""

    methods: CommaList[TuningMethod] = Field(
        default_factory=lambda: ["lora"],
        min_length=1,
        description="tuning methods: frozen, lora, adapter, layernorm, apla, full",
    )
    encoder: TunedSide = Field(
        "image", description="the encoder(s) to tune: image, text or both (concatenated)"
    )
    options: Annotated[dict[str, Any], BeforeValidator(parse_key_values)] = Field(
        default_factory=dict,
        description="method options KEY=VALUE,… e.g. rank=8,alpha=16,ffn=true,bottleneck=48,"
        "fusion=true,attention=true,columns=0.25,seed=0",
    )
    heads: CommaList[HeadName] = Field(
        default_factory=lambda: ["linear", "mlp"],
        min_length=1,
        description="heads on the tuned features (one grid each)",
    )
    epochs: int = Field(5, ge=1, description="epoch limit (early stopping on val)")
    patience: int = Field(2, ge=1, description="epochs without a better val AUROC before stopping")
    batch_size: int = Field(16, ge=1, description="records per training step")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate of the head")
    encoder_lr: float | None = Field(
        None,
        ge=0,
        description="encoder learning rate (default per method: "
        + ", ".join(f"{m} {lr:g}" for m, lr in ENCODER_LR.items())
        + ")",
    )
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    gradient_checkpointing: bool = Field(
        False, description="recompute each encoder block in backward (less memory)"
    )
    image_size: int | None = Field(
        None, ge=16, description="image input size (default: the encoder's)"
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")


class ZeroShotOptions(Options):
    """Zero-shot classification: prompts through the Adaptor's text path, no labels trained on."""

    labels: CommaList[str] | None = Field(
        None, description="label names (default: every label of the records that has prompts)"
    )
    prompts: str | None = Field(
        None, description="YAML file of prompts (label: {positive: [...], negative: [...]})"
    )
    split: Literal["test", "val", "train", "all"] = Field(
        "test", description="the records scored: a split, or all"
    )
    uncertain: UncertainPolicy = Field("ignore", description="what uncertain (-1) labels count as")
    device: str = Field("cpu", description="torch device for the encoders and the Adaptor")
