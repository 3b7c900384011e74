"""The search endpoints, and the batched model calls behind them.

Their bounds come from the app's limits and are part of the schema, so the router is made
per app (:func:`router`). No ``from __future__ import annotations``: FastAPI must see the
request model made there as an object, not as a name.
"""

import re
import time
from typing import TYPE_CHECKING, Literal

import torch
from fastapi import APIRouter, File, Query, UploadFile
from pydantic import BaseModel, ConfigDict, Field, field_validator

from adaptor.retrieval.routes.image_upload import FORM_OVERHEAD, upload_pixels
from adaptor.retrieval.routes.models import HitOut, SearchOut, error_responses
from adaptor.retrieval.routes.state import State
from adaptor.retrieval.searcher import Hit, Searcher

if TYPE_CHECKING:
    from adaptor.config import ServiceLimits

# one character that is white space to neither Python nor ECMAScript (they disagree on some)
_NOT_BLANK = r"[^\x09-\x0d\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
_JSON_CHAR_BYTES = 12  # worst case: an astral character escaped as two \uXXXX


def search_texts(searcher: Searcher, items: list[tuple[str, int]]) -> list[list[Hit]]:
    """One batch of ``(text, k)`` text → image queries."""
    hits = searcher.search_text([text for text, _ in items], k=max(k for _, k in items))
    return [found[:k] for found, (_, k) in zip(hits, items, strict=True)]


def search_images(
    searcher: Searcher, items: list[tuple[torch.Tensor, int, str]]
) -> list[list[Hit]]:
    """One batch of ``(pixels, k, target)`` image queries, one index search per target."""
    vectors = searcher.encoder.images([pixels for pixels, _, _ in items])
    out: list[list[Hit]] = [[] for _ in items]
    for target in {t for _, _, t in items}:
        rows = [i for i, (_, _, t) in enumerate(items) if t == target]
        found = searcher.search_vectors(
            vectors[rows],
            max(items[i][1] for i in rows),
            target,  # type: ignore[arg-type]
        )
        for i, hits in zip(rows, found, strict=True):
            out[i] = hits[: items[i][1]]
    return out


def router(limits: "ServiceLimits") -> APIRouter:
    """``/search/text`` and ``/search/image`` under ``limits``."""
    search = APIRouter()

    class TextQuery(BaseModel):
        """A report-like text; finds the images whose embedding is closest to it."""

        model_config = ConfigDict(extra="forbid")
        text: str = Field(
            min_length=1,
            max_length=limits.max_text_chars,
            description="a report-like text, not only white space",
            json_schema_extra={"pattern": _NOT_BLANK},
        )
        k: int = Field(10, ge=1, le=limits.max_k)

        @field_validator("k", mode="before")
        @classmethod
        def _not_bool(cls, value: object) -> object:
            # JSON Schema's integer takes 80.0 but not true; pydantic's lax int takes both
            if isinstance(value, bool):
                raise ValueError("k must be an integer, not a boolean")
            return value

        @field_validator("text")
        @classmethod
        def _not_blank(cls, value: str) -> str:
            if not re.search(_NOT_BLANK, value):
                raise ValueError("text is blank")
            return value

    @search.post(
        "/search/text",
        max_body_size=_JSON_CHAR_BYTES * limits.max_text_chars + 1024,
        responses=error_responses(400, 413, 503),
    )
    async def search_text(query: TextQuery, state: State) -> SearchOut:
        """Images closest to a report-like text, best first."""
        began = time.perf_counter()
        hits = await state.batchers["text"].submit((query.text, query.k))
        return _result("image", query.k, hits, began)

    @search.post(
        "/search/image",
        max_body_size=limits.max_upload_bytes + FORM_OVERHEAD,
        responses=error_responses(400, 413, 415, 503),
    )
    async def search_image(
        state: State,
        file: UploadFile = File(description="PNG, JPEG or DICOM image"),
        k: int = Query(10, ge=1, le=limits.max_k),
        target: Literal["image", "report"] = Query(
            "image", description="image: similar images; report: matching reports"
        ),
    ) -> SearchOut:
        """Images or reports closest to an uploaded image, best first."""
        began = time.perf_counter()
        pixels = await upload_pixels(file, state)
        hits = await state.batchers["image"].submit((pixels, k, target))
        return _result(target, k, hits, began)

    return search


def _result(target: str, k: int, hits: list[Hit], began: float) -> SearchOut:
    return SearchOut(
        target=target,  # type: ignore[arg-type]
        k=k,
        hits=[HitOut(**hit.to_dict()) for hit in hits],
        took_ms=round((time.perf_counter() - began) * 1000, 2),
    )
