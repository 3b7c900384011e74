"""``POST /classify``: zero-shot probabilities per label for an uploaded image.

Each label's prompts (built-in, or given as JSON) run through the index's text encoder and
the Adaptor's text path, the image through its image encoder and image path (see
:mod:`adaptor.downstream.zeroshot`): the searcher's own :class:`QueryEncoder`, no second copy
of the models. Requests are micro-batched as ``classify`` on the model thread of the app's
other batchers (the router's lifespan adds the batcher once the app's has started them),
and prompt vectors are cached by text. No ``from __future__ import annotations``: FastAPI
must see the response model as an object.
"""

import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Annotated

import torch
from fastapi import APIRouter, FastAPI, File, Form, UploadFile
from pydantic import BaseModel, Field

from adaptor.downstream.prompts import LabelPrompts, PromptError, parse_prompts, prompts_for
from adaptor.downstream.zeroshot import ZeroShotClassifier
from adaptor.retrieval.batching import MicroBatcher
from adaptor.retrieval.query import QueryEncoder
from adaptor.retrieval.routes.image_upload import FORM_OVERHEAD, invalid_field, upload_pixels
from adaptor.retrieval.routes.models import error_responses
from adaptor.retrieval.routes.state import ServiceState, State
from adaptor.retrieval.searcher import Searcher

if TYPE_CHECKING:
    from adaptor.config import ServiceLimits

MAX_LABELS = 32
MAX_PROMPTS = 8  # per side of a label
MAX_LABELS_CHARS = 2000
MAX_PROMPTS_CHARS = 32_000
CACHED_PROMPTS = 4096
_UTF8_CHAR_BYTES = 4

Prompts = dict[str, LabelPrompts]


class ClassifyOut(BaseModel):
    """Zero-shot probability of each label, in the order asked."""

    probabilities: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]]
    took_ms: float


class PromptVectors:
    """Shared-space vectors of prompt texts, each computed once (the newest ``size`` kept).

    Called on the model thread only.
    """

    def __init__(self, encoder: QueryEncoder, size: int = CACHED_PROMPTS):
        self._encoder = encoder
        self._size = size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """[N, width] unit vectors of ``texts``."""
        new = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if new:
            self._cache.update(zip(new, torch.from_numpy(self._encoder.texts(new)), strict=True))
        for text in texts:
            self._cache.move_to_end(text)
        vectors = torch.stack([self._cache[t] for t in texts])
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return vectors


def classify_images(
    searcher: Searcher, vectors: PromptVectors, items: list[tuple[torch.Tensor, Prompts]]
) -> list[dict[str, float]]:
    """One batch of ``(pixels, prompts)``: ``{label: P(label)}`` per image."""
    images = torch.from_numpy(searcher.encoder.images([pixels for pixels, _ in items]))
    scale = searcher.encoder.adaptor.logit_scale
    return [
        dict(
            zip(
                prompts,
                ZeroShotClassifier(prompts, vectors, scale).probabilities(image[None])[0].tolist(),
                strict=True,
            )
        )
        for image, (_, prompts) in zip(images, items, strict=True)
    ]


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Add the ``classify`` batcher beside the app's, on their model thread; stop it at the end."""
    state: ServiceState = app.state.service
    batcher = MicroBatcher(
        partial(classify_images, state.searcher, PromptVectors(state.searcher.encoder)),
        state.batchers["image"].executor,
        max_batch=state.limits.max_batch,
        max_pending=state.limits.max_pending,
    )
    state.batchers["classify"] = batcher
    batcher.start()
    yield
    await batcher.stop()


def router(limits: "ServiceLimits") -> APIRouter:
    """``/classify`` under ``limits``."""
    classify = APIRouter(lifespan=_lifespan)
    form_bytes = _UTF8_CHAR_BYTES * (MAX_LABELS_CHARS + MAX_PROMPTS_CHARS)

    @classify.post(
        "/classify",
        max_body_size=limits.max_upload_bytes + FORM_OVERHEAD + form_bytes,
        responses=error_responses(400, 413, 415, 503),
    )
    async def classify_image(
        state: State,
        file: UploadFile = File(description="PNG, JPEG or DICOM image"),
        labels: str | None = Form(
            None,
            max_length=MAX_LABELS_CHARS,
            description=f"comma-separated label names (at most {MAX_LABELS}), e.g. "
            "pleural_effusion,pneumothorax; built-in prompts cover common chest findings",
        ),
        prompts: str | None = Form(
            None,
            max_length=MAX_PROMPTS_CHARS,
            description='JSON {"label": {"positive": [...], "negative": [...]}}, at most '
            f"{MAX_PROMPTS} prompts a side; classifies its labels, or with labels gives "
            "prompts for those it names",
        ),
    ) -> ClassifyOut:
        """Zero-shot probability of each label for an uploaded image."""
        began = time.perf_counter()
        asked = _asked(labels, prompts, limits.max_text_chars)
        pixels = await upload_pixels(file, state)
        probabilities = await state.batchers["classify"].submit((pixels, asked))
        return ClassifyOut(
            probabilities=probabilities, took_ms=round((time.perf_counter() - began) * 1000, 2)
        )

    return classify


def _asked(labels: str | None, prompts: str | None, max_chars: int) -> Prompts:
    """The labels asked for and their prompts; a 422 on the field that is wrong."""
    user = _user_prompts(prompts, max_chars) if prompts is not None else None
    if labels is not None:
        names = [name.strip() for name in labels.split(",") if name.strip()]
        if not names:
            raise invalid_field("labels", "no label names (give them comma-separated)")
    elif user is not None:
        names = list(user)
    else:
        raise invalid_field("labels", "give labels (comma-separated) or prompts (JSON)")
    names = list(dict.fromkeys(names))
    if len(names) > MAX_LABELS:
        raise invalid_field("labels", f"{len(names)} labels; at most {MAX_LABELS} are accepted")
    try:
        return prompts_for(names, user)
    except PromptError as err:
        raise invalid_field("labels", str(err)) from None


def _user_prompts(text: str, max_chars: int) -> Prompts:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:  # RecursionError: nested too deep
        raise invalid_field("prompts", f"not valid JSON: {err}") from None
    try:
        parsed = parse_prompts(data, "prompts")
    except PromptError as err:
        raise invalid_field("prompts", str(err)) from None
    if len(parsed) > MAX_LABELS:
        raise invalid_field("prompts", f"{len(parsed)} labels; at most {MAX_LABELS} are accepted")
    for label, entry in parsed.items():
        for side, texts in (("positive", entry.positive), ("negative", entry.negative)):
            if len(texts) > MAX_PROMPTS:
                raise invalid_field("prompts", f"{label}.{side}: at most {MAX_PROMPTS} prompts")
            if any(len(t) > max_chars for t in texts):
                raise invalid_field(
                    "prompts", f"{label}.{side}: a prompt is longer than {max_chars} characters"
                )
    return parsed
