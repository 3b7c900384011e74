"""The Adaptor: a small trainable cross-attention stack on top of frozen, cached embeddings.

Each modality is linearly projected into a shared ``width`` and L2-normalised token by
token. Each side is a token sequence ``[global, *extra tokens]``. The output of each side
is its first token, L2-normalised. Two layer wirings (``AdaptorConfig.wiring``):

``"ours"``: every layer has image-side and text-side weights and updates both sides at
once from that layer's inputs; image tokens attend to text tokens (query = image,
key/value = text) and back, each followed by a GELU feed-forward block, with residuals
and LayerNorm (post-norm by default). The logit scale is clamped to ``max_logit_scale``.
With one token per side the paired image output is a function of its text, so the
paired contrastive loss can be solved by copying.

``"reference"``: as github holajoa/Adaptor-VL-SSL (``models/adaptor.py``): one set of
weights per layer serves both sides, attention takes query = the other side and
key/value = this side, residual on this side, post-norm, ReLU feed-forward; the image is
updated first and the text then attends over the updated image. Projections have no
bias and the logit scale is not clamped. With one token per side nothing crosses between
modalities (softmax over one key is 1), so paired and single-side outputs are equal.

Without the other modality (downstream use) a side runs self-attention over itself with
the same weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import Tensor, nn

from adaptor.atomic import atomic_open, atomic_write_json
from adaptor.config.base import describe_errors
from adaptor.config.pretrain import ModelOptions, Norm, Wiring

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
_SHAPE = ModelOptions()


@dataclass
class AdaptorConfig:
    """Shape and hyper-parameters of an :class:`Adaptor`; JSON round-trips via ``to_dict``.

    The shape (``width`` … ``wiring``) takes its defaults, bounds and choices from
    :class:`adaptor.config.ModelOptions`. ``wiring`` picks the layer wiring (see the module
    docstring); with ``"reference"``, ``max_logit_scale`` is unused. Keys missing from a
    saved config take these defaults.
    """

    image_dim: int
    text_dim: int
    width: int = _SHAPE.width
    layers: int = _SHAPE.layers
    heads: int = _SHAPE.heads
    ffn_hidden: int = _SHAPE.ffn_hidden
    dropout: float = _SHAPE.dropout
    norm: Norm = _SHAPE.norm
    image_patch_dim: int | None = None
    text_state_dim: int | None = None
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100)
    encoders: dict | None = None
    wiring: Wiring = _SHAPE.wiring

    def __post_init__(self) -> None:
        for name in ("image_dim", "text_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        try:
            ModelOptions.model_validate({k: getattr(self, k) for k in ModelOptions.model_fields})
        except ValidationError as err:
            raise ValueError(describe_errors(err)) from None

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AdaptorConfig:
        """Build from :meth:`to_dict` output; unknown keys are an error, missing ones default."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown AdaptorConfig keys: {sorted(unknown)}")
        return cls(**data)


@dataclass
class AdaptorOutput:
    """L2-normalised ``image`` and ``text`` embeddings [B, width] and the log-scale."""

    image: Tensor
    text: Tensor | None
    logit_scale: Tensor


class _Side(nn.Module):
    """One direction of a layer: attention of a side's tokens over a context, then an FFN."""

    def __init__(self, config: AdaptorConfig, activation: type[nn.Module]) -> None:
        super().__init__()
        self.pre = config.norm == "pre"
        self.attn = nn.MultiheadAttention(
            config.width, config.heads, dropout=config.dropout, batch_first=True
        )
        self.ffn = nn.Sequential(
            nn.Linear(config.width, config.ffn_hidden),
            activation(),
            nn.Dropout(config.dropout),
            nn.Linear(config.ffn_hidden, config.width),
        )
        self.norm_attn = nn.LayerNorm(config.width)
        self.norm_ffn = nn.LayerNorm(config.width)
        self.drop = nn.Dropout(config.dropout)

    def attn_input(self, x: Tensor) -> Tensor:
        """What this side contributes to attention (queries or keys/values)."""
        return self.norm_attn(x) if self.pre else x

    def forward(
        self, x: Tensor, query: Tensor, context: Tensor, context_pad: Tensor | None
    ) -> Tensor:
        """Update ``x`` [B, N, W]; ``context_pad`` [B, M] is True at padding."""
        h = self.attn(query, context, context, key_padding_mask=context_pad, need_weights=False)[0]
        if self.pre:
            x = x + self.drop(h)
            return x + self.drop(self.ffn(self.norm_ffn(x)))
        x = self.norm_attn(x + self.drop(h))
        return self.norm_ffn(x + self.drop(self.ffn(x)))


class _Layer(nn.Module):
    """Symmetric cross-attention layer with separate image-side and text-side weights."""

    def __init__(self, config: AdaptorConfig) -> None:
        super().__init__()
        self.image = _Side(config, nn.GELU)
        self.text = _Side(config, nn.GELU)

    def forward(
        self,
        image: Tensor | None,
        text: Tensor | None,
        text_pad: Tensor | None,
        first_only: bool = False,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Cross-attention when both sides are given, self-attention for a lone side.

        ``first_only``: update only each side's first token (its output), attending over
        every token; the last layer needs no more.
        """
        img_in = self.image.attn_input(image) if image is not None else None
        txt_in = self.text.attn_input(text) if text is not None else None
        first = _first if first_only else _whole
        if image is not None and text is not None:
            return (
                self.image(first(image), first(img_in), txt_in, text_pad),
                self.text(first(text), first(txt_in), img_in, None),
            )
        if image is not None:
            return self.image(first(image), first(img_in), img_in, None), None
        return None, self.text(first(text), first(txt_in), txt_in, text_pad)


class _SharedLayer(nn.Module):
    """Reference wiring: one post-norm ReLU block for both sides, query = the other side."""

    def __init__(self, config: AdaptorConfig) -> None:
        super().__init__()
        self.shared = _Side(config, nn.ReLU)

    def forward(
        self,
        image: Tensor | None,
        text: Tensor | None,
        text_pad: Tensor | None,
        first_only: bool = False,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Image first, then text over the updated image; self-attention for a lone side.

        Paired inputs are one token per side (the caller checks), so ``text_pad`` only
        applies on the text-only path. ``first_only``: as :class:`_Layer`.
        """
        if image is not None and text is not None:
            image = self.shared(image, text, image, None)
            return image, self.shared(text, image, text, None)
        first = _first if first_only else _whole
        if image is not None:
            return self.shared(first(image), first(image), image, None), None
        return None, self.shared(first(text), first(text), text, text_pad)


class Adaptor(nn.Module):
    """Trainable cross-attention adaptor mapping frozen image/text embeddings to a shared space."""

    def __init__(self, config: AdaptorConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        reference = config.wiring == "reference"
        bias = not reference
        self.image_proj = nn.Linear(config.image_dim, w, bias=bias)
        self.text_proj = nn.Linear(config.text_dim, w, bias=bias)
        self.image_patch_proj = (
            nn.Linear(config.image_patch_dim, w, bias=bias) if config.image_patch_dim else None
        )
        self.text_state_proj = (
            nn.Linear(config.text_state_dim, w, bias=bias) if config.text_state_dim else None
        )
        layer = _SharedLayer if reference else _Layer
        self.layers = nn.ModuleList(layer(config) for _ in range(config.layers))
        final = config.norm == "pre" and config.layers > 0
        self.image_final_norm = nn.LayerNorm(w) if final else nn.Identity()
        self.text_final_norm = nn.LayerNorm(w) if final else nn.Identity()
        self.logit_scale_raw = nn.Parameter(torch.tensor(float(config.init_logit_scale)))

    @property
    def logit_scale(self) -> Tensor:
        """Log of the contrastive temperature's inverse.

        Clamped to ``max_logit_scale`` for wiring ``"ours"``, unclamped for ``"reference"``.
        """
        if self.config.wiring == "reference":
            return self.logit_scale_raw
        return self.logit_scale_raw.clamp(max=self.config.max_logit_scale)

    def num_trainable_parameters(self) -> int:
        """Number of parameter elements that require grad."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # -- token sequences -------------------------------------------------------------

    def _image_seq(self, image: Tensor, image_tokens: Tensor | None) -> Tensor:
        _check_2d(image, self.config.image_dim, "image")
        seq = self.image_proj(image).unsqueeze(1)
        if image_tokens is not None:
            if self.image_patch_proj is None:
                raise ValueError("image_tokens given but the config has no image_patch_dim")
            _check_tokens(image_tokens, image.shape[0], self.config.image_patch_dim, "image")
            seq = torch.cat([seq, self.image_patch_proj(image_tokens)], dim=1)
        return F.normalize(seq, dim=-1)

    def _text_seq(
        self, text: Tensor, text_tokens: Tensor | None, text_token_mask: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """Return the normalised token sequence and its key padding mask (True = padding)."""
        _check_2d(text, self.config.text_dim, "text")
        seq = self.text_proj(text).unsqueeze(1)
        if text_tokens is None:
            if text_token_mask is not None:
                raise ValueError("text_token_mask given without text_tokens")
            return F.normalize(seq, dim=-1), None
        if self.text_state_proj is None:
            raise ValueError("text_tokens given but the config has no text_state_dim")
        _check_tokens(text_tokens, text.shape[0], self.config.text_state_dim, "text")
        seq = F.normalize(torch.cat([seq, self.text_state_proj(text_tokens)], dim=1), dim=-1)
        if text_token_mask is None:
            return seq, None
        if text_token_mask.shape != text_tokens.shape[:2]:
            raise ValueError(
                f"text_token_mask has shape {tuple(text_token_mask.shape)}, "
                f"expected {tuple(text_tokens.shape[:2])}"
            )
        valid = torch.cat(
            [text_token_mask.new_ones(text.shape[0], 1, dtype=torch.bool), text_token_mask.bool()],
            dim=1,
        )
        return seq, ~valid

    # -- forward paths ---------------------------------------------------------------

    def forward(
        self,
        image: Tensor,
        text: Tensor | None = None,
        *,
        image_tokens: Tensor | None = None,
        text_tokens: Tensor | None = None,
        text_token_mask: Tensor | None = None,
        cross: bool = True,
    ) -> AdaptorOutput:
        """Embed a batch; ``text=None`` runs the image-only (self-attention) path.

        ``cross=False`` encodes each side on its own (self-attention), as retrieval
        does; with ``cross=True`` each image attends to its paired text and back. The
        ``"reference"`` wiring pairs one global token per side: extra tokens are
        accepted only with ``cross=False`` or on a single-side path.

        ``image`` [B, image_dim] and ``text`` [B, text_dim] are global embeddings;
        ``image_tokens`` [B, N, image_patch_dim] and ``text_tokens`` [B, T, text_state_dim]
        are optional extra tokens; ``text_token_mask`` [B, T] is True at valid tokens.
        """
        if text is None:
            if text_tokens is not None or text_token_mask is not None:
                raise ValueError("text_tokens / text_token_mask given without text")
            return AdaptorOutput(self.encode_image(image, image_tokens), None, self.logit_scale)
        if text.shape[0] != image.shape[0]:
            raise ValueError(f"batch sizes differ: image {image.shape[0]}, text {text.shape[0]}")
        if not cross:
            return AdaptorOutput(
                self.encode_image(image, image_tokens),
                self.encode_text(text, text_tokens, text_token_mask),
                self.logit_scale,
            )
        if self.config.wiring == "reference" and (
            image_tokens is not None or text_tokens is not None
        ):
            raise ValueError(
                "wiring 'reference' pairs one global token per side: image_tokens / "
                "text_tokens are only accepted with cross=False or on a single-side path"
            )
        img = self._image_seq(image, image_tokens)
        txt, pad = self._text_seq(text, text_tokens, text_token_mask)
        for last, layer in _with_last(self.layers):
            img, txt = layer(img, txt, pad, first_only=last)
        return AdaptorOutput(
            F.normalize(self.image_final_norm(img[:, 0]), dim=-1),
            F.normalize(self.text_final_norm(txt[:, 0]), dim=-1),
            self.logit_scale,
        )

    def encode_image(self, image: Tensor, image_tokens: Tensor | None = None) -> Tensor:
        """Image-only embedding [B, width]: self-attention, image-side (or shared) weights."""
        img = self._image_seq(image, image_tokens)
        for last, layer in _with_last(self.layers):
            img, _ = layer(img, None, None, first_only=last)
        return F.normalize(self.image_final_norm(img[:, 0]), dim=-1)

    def encode_image_tokens(self, tokens: Tensor) -> Tensor:
        """Every output token [B, N, width] of the image-only path run over ``tokens`` alone.

        The reference's ViT segmentation path (``DINOv2Segmenter``): patch tokens
        [B, N, C] are projected (by the patch projection when the Adaptor was trained with
        patch tokens of width C, else by the global image projection, as the reference
        does, when C is the image width), L2-normalised, and self-attend through every
        layer. No global token is added and the output tokens are not normalised.
        """
        c = self.config
        if tokens.ndim != 3:
            raise ValueError(f"image tokens must have shape [B, N, C], got {tuple(tokens.shape)}")
        if self.image_patch_proj is not None and tokens.shape[2] == c.image_patch_dim:
            proj = self.image_patch_proj
        elif tokens.shape[2] == c.image_dim:
            proj = self.image_proj
        else:
            raise ValueError(
                f"image tokens have {tokens.shape[2]} channels; this Adaptor takes image vectors "
                f"of {c.image_dim}"
                + (f" and patch tokens of {c.image_patch_dim}" if c.image_patch_dim else "")
            )
        seq = F.normalize(proj(tokens), dim=-1)
        for layer in self.layers:
            seq, _ = layer(seq, None, None)
        return self.image_final_norm(seq)

    def encode_text(
        self,
        text: Tensor,
        text_tokens: Tensor | None = None,
        text_token_mask: Tensor | None = None,
    ) -> Tensor:
        """Text-only embedding [B, width]: self-attention, text-side (or shared) weights."""
        txt, pad = self._text_seq(text, text_tokens, text_token_mask)
        for last, layer in _with_last(self.layers):
            _, txt = layer(None, txt, pad, first_only=last)
        return F.normalize(self.text_final_norm(txt[:, 0]), dim=-1)

    # -- persistence -----------------------------------------------------------------

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` into folder ``path``.

        Each file is written to a temporary name and renamed into place. The config is
        also stored in the weights' metadata, so :meth:`from_pretrained` detects a folder
        whose two files come from different saves (a save killed between the renames).
        """
        path = Path(path)
        config = self.config.to_dict()
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        blob = save(tensors, metadata={"config": json.dumps(config, sort_keys=True)})
        with atomic_open(path / WEIGHTS_NAME, "wb") as fh:
            fh.write(blob)
        atomic_write_json(path / CONFIG_NAME, config)

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> Adaptor:
        """Load an Adaptor written by :meth:`save_pretrained`."""
        path = Path(path)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (path / name).is_file():
                raise FileNotFoundError(
                    f"no Adaptor at {path}: {name} is missing (expected a folder written by "
                    "Adaptor.save_pretrained with config.json and model.safetensors)"
                )
        config_dict = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
        with safe_open(str(path / WEIGHTS_NAME), framework="pt") as fh:
            saved = (fh.metadata() or {}).get("config")
        if saved is not None and json.loads(saved) != config_dict:
            raise RuntimeError(
                f"{path}: config.json does not match the config stored with the weights "
                "(an interrupted save?); save the model again"
            )
        model = cls(AdaptorConfig.from_dict(config_dict))
        device = torch.device(map_location)
        model.load_state_dict(load_file(str(path / WEIGHTS_NAME), device=str(device)))
        return model.to(device)


def _first(x: Tensor) -> Tensor:
    return x[:, :1] if x.shape[1] > 1 else x


def _whole(x: Tensor) -> Tensor:
    """The tokens unsliced: the same object, so attention keeps its self-attention path."""
    return x


def _with_last(layers: nn.ModuleList) -> Iterator[tuple[bool, nn.Module]]:
    """Each layer with whether it is the last (whose only needed output is the first token)."""
    for i, layer in enumerate(layers):
        yield i == len(layers) - 1, layer


def _check_2d(x: Tensor, dim: int, name: str) -> None:
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{name} must have shape [B, {dim}], got {tuple(x.shape)}")


def _check_tokens(x: Tensor, batch: int, dim: int | None, name: str) -> None:
    if x.ndim != 3 or x.shape[0] != batch or x.shape[2] != dim:
        raise ValueError(f"{name} tokens must have shape [{batch}, N, {dim}], got {tuple(x.shape)}")
