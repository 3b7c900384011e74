"""Queries into the shared space: frozen encoders, then the index's Adaptor.

A text runs through the text encoder's own tokenizer; an image is read with
:func:`~adaptor.data.image_io.load_image` and the image encoder's ``preprocess``. The
encoders are the ones the index manifest names, and their fingerprints must match: vectors
from other encoders would be compared with the index's as if they meant the same thing.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaptor.data.image_io import load_image
from adaptor.encoders import ImageEncoder, TextEncoder, build_image_encoder, build_text_encoder
from adaptor.model import Adaptor
from adaptor.retrieval.errors import IndexMismatchError

ImageInput = np.ndarray | str | Path


class QueryEncoder:
    """Turns texts and images into unit vectors of the index's shared space.

    ``encoders`` is the index manifest's ``{"image": {name, fingerprint, dim}, "text": …}``.
    Encoders passed in are checked against it; missing ones are built on first use.
    """

    def __init__(
        self,
        adaptor: Adaptor,
        encoders: dict[str, dict[str, Any]],
        *,
        device: str = "cpu",
        image_encoder: ImageEncoder | None = None,
        text_encoder: TextEncoder | None = None,
    ):
        self.adaptor = adaptor.eval().to(device)
        self.expected = encoders
        self.device = device
        self._lock = threading.Lock()
        self._image = self._checked("image", image_encoder) if image_encoder else None
        self._text = self._checked("text", text_encoder) if text_encoder else None
        self._tokenizer = self._text.make_tokenizer() if self._text else None

    def warm(self) -> None:
        """Build both encoders now (a service loads everything once, at start)."""
        self.image_encoder()
        self.text_encoder()

    def image_encoder(self) -> ImageEncoder:
        """The image encoder, built on first use."""
        with self._lock:
            if self._image is None:
                built = build_image_encoder(self.expected["image"]["name"], self.device)
                self._image = self._checked("image", built)
            return self._image

    def text_encoder(self) -> TextEncoder:
        """The text encoder, built on first use."""
        with self._lock:
            if self._text is None:
                built = build_text_encoder(self.expected["text"]["name"], self.device)
                self._text = self._checked("text", built)
                self._tokenizer = self._text.make_tokenizer()
            return self._text

    def texts(self, texts: list[str]) -> np.ndarray:
        """[N, width] unit vectors for report-like texts."""
        encoder = self.text_encoder()
        tokens = self._tokenizer(list(texts))  # type: ignore[misc]
        with torch.inference_mode():
            vectors = self.adaptor.encode_text(encoder.encode(tokens).global_.float())
        return vectors.cpu().numpy().astype(np.float32)

    def pixels(self, image: ImageInput) -> torch.Tensor:
        """One image (a path, or a grey [H, W] array in [0, 1]) as the encoder's input [3, h, w]."""
        grey = load_image(image) if isinstance(image, (str, Path)) else image
        return self.image_encoder().preprocess(np.asarray(grey, dtype=np.float32))

    def images(self, images: list[ImageInput | torch.Tensor]) -> np.ndarray:
        """[N, width] unit vectors for images (paths, grey arrays, or :meth:`pixels` outputs)."""
        encoder = self.image_encoder()
        batch = torch.stack([x if isinstance(x, torch.Tensor) else self.pixels(x) for x in images])
        with torch.inference_mode():
            vectors = self.adaptor.encode_image(encoder.encode(batch).global_.float())
        return vectors.cpu().numpy().astype(np.float32)

    def _checked(self, role: str, encoder: ImageEncoder | TextEncoder) -> Any:
        want = self.expected.get(role) or {}
        have = encoder.info.to_dict()
        diffs = [
            f"{key} {have.get(key)!r} (index: {want.get(key)!r})"
            for key in ("name", "fingerprint", "dim")
            if want.get(key) is not None and have.get(key) != want.get(key)
        ]
        if diffs:
            raise IndexMismatchError(
                f"refusing {role} queries: the query {role} encoder differs from the one the "
                f"index was built with: {'; '.join(diffs)}. Query with the index's encoders or "
                "rebuild the index from shards made by this encoder"
            )
        return encoder
