"""Image and text towers of an open_clip model (CLIP, BiomedCLIP, ...) as frozen encoders.

Globals are the towers' un-normalised ``encode_image`` / ``encode_text`` embeddings.
Image patches and feature maps come from the tower's ``forward_intermediates`` with the
final norm applied. Text is always padded to the model's fixed context length (its
positional embedding and causal mask are that long).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from adaptor.encoders.base import (
    EncoderInfo,
    ImageEncoder,
    ImageOutput,
    TextEncoder,
    TextOutput,
    TokenBatch,
    flatten_map,
    hub_loading,
    select_multiscale,
)
from adaptor.encoders.fingerprint import fingerprint_module, tokenizer_digest
from adaptor.encoders.transform import ImagePreprocess


def load_open_clip(model_name: str, pretrained: str | None) -> nn.Module:
    """Create an open_clip model; ``pretrained=None`` gives random init (schema names ignore it)."""
    import open_clip

    weights = f"@{pretrained}" if pretrained else ""
    with hub_loading(f"open_clip model {model_name}{weights}"):
        return open_clip.create_model(model_name, pretrained=pretrained, device="cpu")


class OpenClipImageEncoder(ImageEncoder):
    """The visual tower; only ``model.visual`` is kept."""

    def __init__(self, name: str, model_name: str, pretrained: str | None):
        visual = load_open_clip(model_name, pretrained).visual
        super().__init__(visual)
        self.preprocess = ImagePreprocess.from_open_clip(visual)
        h, w = self.preprocess.size
        probe = self.encode(torch.zeros(1, 3, h, w), with_patches=True)
        self.patch_dim = probe.patches.shape[-1]
        extra = {"kind": "open_clip-image", "preprocess": self.preprocess.to_dict()}
        self.info = EncoderInfo(name, fingerprint_module(visual, extra), probe.global_.shape[-1])

    def _intermediates(self, pixels: Tensor, indices: int | None) -> dict:
        return self._model.forward_intermediates(
            pixels, indices=indices, normalize_intermediates=True, output_fmt="NCHW"
        )

    def _encode(self, pixels: Tensor, with_patches: bool) -> ImageOutput:
        if not with_patches:
            return ImageOutput(global_=self._model(pixels).float())
        out = self._intermediates(pixels, indices=1)
        patches = flatten_map(out["image_intermediates"][-1]).float()
        return ImageOutput(global_=out["image_features"].float(), patches=patches)

    def _feature_maps(self, pixels: Tensor) -> list[Tensor]:
        return select_multiscale(self._intermediates(pixels, indices=None)["image_intermediates"])


class OpenClipTokenize:
    """Picklable open_clip tokenizer that also reports truncation at the context length."""

    def __init__(self, tokenizer: Callable, context_length: int):
        self.tokenizer = tokenizer
        self.context_length = context_length

    def _length(self, text: str) -> int:
        """Token count of ``text`` with special tokens and no truncation."""
        from open_clip.tokenizer import (
            SigLipTokenizer,
            SimpleTokenizer,
            basic_clean,
            canonicalize_text,
        )

        tok = self.tokenizer
        if isinstance(tok, SimpleTokenizer):
            return len(tok.encode(text)) + 2  # start and end of text
        clean = (
            canonicalize_text(basic_clean(text))
            if isinstance(tok, SigLipTokenizer)
            else tok.clean_fn(text)
        )
        return len(tok.tokenizer(clean, verbose=False)["input_ids"])

    def __call__(self, texts: list[str]) -> TokenBatch:
        """Tokenize ``texts`` to [B, context_length] ids and a matching attention mask."""
        input_ids = self.tokenizer(list(texts), context_length=self.context_length)
        lengths = torch.tensor([self._length(t) for t in texts])
        positions = torch.arange(self.context_length)
        attention_mask = (positions[None] < lengths.clamp(max=self.context_length)[:, None]).long()
        truncated = (lengths > self.context_length).tolist()
        return TokenBatch({"input_ids": input_ids, "attention_mask": attention_mask}, truncated)


class OpenClipTextEncoder(TextEncoder):
    """The text tower; the visual tower is dropped."""

    def __init__(self, name: str, model_name: str, pretrained: str | None):
        import open_clip

        model = load_open_clip(model_name, pretrained)
        model.visual = nn.Identity()
        super().__init__(model)
        with hub_loading(f"open_clip tokenizer for {model_name!r}"):
            tokenizer = open_clip.get_tokenizer(model_name)
        self.max_length = int(tokenizer.context_length)
        self._tokenizer = tokenizer
        probe = self.encode(self.make_tokenizer()(["probe"]), with_states=True)
        self.state_dim = probe.states.shape[-1]
        extra = {
            "kind": "open_clip-text",
            "max_length": self.max_length,
            "tokenizer": tokenizer_digest(getattr(tokenizer, "tokenizer", tokenizer)),
        }
        self.info = EncoderInfo(name, fingerprint_module(model, extra), probe.global_.shape[-1])

    def make_tokenizer(self) -> OpenClipTokenize:
        """Tokenizer callable for DataLoader workers."""
        return OpenClipTokenize(self._tokenizer, self.max_length)

    def _encode(self, tensors: dict[str, Tensor], with_states: bool) -> TextOutput:
        ids, mask = tensors["input_ids"], tensors["attention_mask"]
        if not with_states:
            return TextOutput(global_=self._model.encode_text(ids).float())
        from open_clip.hf_model import HFTextEncoder

        text = getattr(self._model, "text", None)
        if isinstance(text, HFTextEncoder):  # HF text tower (BiomedCLIP)
            hidden = text.transformer(input_ids=ids, attention_mask=mask)
            global_ = text.proj(text.pooler(hidden, mask))
            states = hidden.last_hidden_state
        else:
            out = self._model.forward_intermediates(
                text=ids, text_indices=1, normalize=False, normalize_intermediates=True
            )
            global_, states = out["text_features"], out["text_intermediates"][-1]
        return TextOutput(global_=global_.float(), states=states.float(), attention_mask=mask)
