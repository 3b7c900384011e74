"""The encoder interfaces every frozen image or text encoder implements.

Encoders are frozen: parameters never require grad, the module is in eval mode, and
``encode`` runs under :func:`torch.inference_mode`. Outputs stay on the encoder's device.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from adaptor.errors import AdaptorError

if TYPE_CHECKING:
    from adaptor.encoders.transform import ImagePreprocess


class EncoderLoadError(AdaptorError, RuntimeError):
    """Pretrained weights or a tokenizer could not be loaded (typically: not cached, offline)."""


RANDOM_INIT_SEED = 0


@contextmanager
def fixed_init() -> Iterator[None]:
    """Create models under a fixed seed (:data:`RANDOM_INIT_SEED`), the caller's random
    state untouched, so a randomly initialised encoder (``@random``) builds the same
    weights every time: its shards, Adaptors and feature maps stay consistent."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        yield


@contextmanager
def hub_loading(what: str, hint: str = "") -> Iterator[None]:
    """Re-raise hub/file failures while loading ``what`` as :class:`EncoderLoadError`;
    models are created under :func:`fixed_init`."""
    try:
        with fixed_init():
            yield
    except (OSError, RuntimeError, ValueError) as err:
        raise EncoderLoadError(
            f"could not load {what} from the Hugging Face hub or a local path: {err}\n"
            "If it is a hub id: set HF_HUB_OFFLINE=0 and check the network, or download it "
            f"once into the cache; otherwise give an existing local path.{hint}"
        ) from err


@dataclass(frozen=True)
class EncoderInfo:
    """Identity of a built encoder: its registry name, weight fingerprint and embedding width."""

    name: str
    fingerprint: str
    dim: int

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass
class ImageOutput:
    """``global_``: [B, D] float32; ``patches``: [B, N, C] last-map tokens, when asked."""

    global_: Tensor
    patches: Tensor | None = None


@dataclass
class TextOutput:
    """``global_``: [B, D]; ``states``: [B, L, C] last hidden states and their [B, L] mask."""

    global_: Tensor
    states: Tensor | None = None
    attention_mask: Tensor | None = None


@dataclass
class TokenBatch:
    """Tokenized texts; ``truncated[i]`` is True when text ``i`` was cut at the length limit."""

    tensors: dict[str, Tensor]
    truncated: list[bool]


def freeze(module: nn.Module) -> nn.Module:
    """Make ``module`` a frozen feature extractor: no grads, eval mode."""
    return module.requires_grad_(False).eval()


def module_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter or buffer (CPU when it has none)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def select_multiscale(maps: list[Tensor], n_uniform: int = 4) -> list[Tensor]:
    """Pick multi-scale maps from per-block maps ordered shallow → deep.

    Keeps the deepest map of every distinct spatial size. A single-scale backbone (plain
    ViT: every block at the same stride) instead gets ``n_uniform`` evenly spaced blocks
    ending with the last one.
    """
    sizes = [m.shape[-2:] for m in maps]
    keep = [i for i in range(len(maps)) if i == len(maps) - 1 or sizes[i] != sizes[i + 1]]
    if len(keep) == 1:
        n = len(maps)
        keep = sorted({math.ceil((k + 1) * n / n_uniform) - 1 for k in range(n_uniform)})
    return [maps[i] for i in keep]


def flatten_map(feature_map: Tensor) -> Tensor:
    """[B, C, H, W] → [B, H*W, C] tokens, row-major."""
    return feature_map.flatten(2).transpose(1, 2).contiguous()


class ImageEncoder(ABC):
    """A frozen image encoder; pixels come from its own :attr:`preprocess`."""

    info: EncoderInfo
    preprocess: ImagePreprocess
    patch_dim: int | None

    def __init__(self, model: nn.Module):
        self._model = freeze(model)

    @property
    def module(self) -> nn.Module:
        """The underlying torch model."""
        return self._model

    def to(self, device: str | torch.device) -> ImageEncoder:
        """Move the model to ``device``; returns self."""
        self._model.to(device)
        return self

    def encode(self, pixels: Tensor, *, with_patches: bool = False) -> ImageOutput:
        """Embed preprocessed pixels [B, 3, h, w]; patches are the last map's tokens."""
        with torch.inference_mode():
            return self._encode(self._prepare(pixels), with_patches)

    def feature_maps(self, pixels: Tensor) -> list[Tensor]:
        """Multi-scale maps [B, C_i, H_i, W_i], shallow → deep."""
        with torch.inference_mode():
            return self._feature_maps(self._prepare(pixels))

    def _prepare(self, pixels: Tensor) -> Tensor:
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected pixels [B, 3, H, W], got {tuple(pixels.shape)}")
        return pixels.to(module_device(self._model), torch.float32)

    @abstractmethod
    def _encode(self, pixels: Tensor, with_patches: bool) -> ImageOutput: ...

    @abstractmethod
    def _feature_maps(self, pixels: Tensor) -> list[Tensor]: ...


class TextEncoder(ABC):
    """A frozen text encoder; tokens come from :meth:`make_tokenizer`."""

    info: EncoderInfo
    max_length: int
    state_dim: int

    def __init__(self, model: nn.Module):
        self._model = freeze(model)

    @property
    def module(self) -> nn.Module:
        """The underlying torch model."""
        return self._model

    def to(self, device: str | torch.device) -> TextEncoder:
        """Move the model to ``device``; returns self."""
        self._model.to(device)
        return self

    @abstractmethod
    def make_tokenizer(self) -> Callable[[list[str]], TokenBatch]:
        """A picklable callable (no model weights) that tokenizes a list of texts."""

    def encode(self, tokens: TokenBatch, *, with_states: bool = False) -> TextOutput:
        """Embed a token batch; ``states`` are the last hidden states when asked."""
        device = module_device(self._model)
        tensors = {k: v.to(device) for k, v in tokens.tensors.items()}
        with torch.inference_mode():
            return self._encode(tensors, with_states)

    @abstractmethod
    def _encode(self, tensors: dict[str, Tensor], with_states: bool) -> TextOutput: ...
