"""The shapes the service declares: record ids, answers, and its error responses."""

import re
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import AfterValidator, BaseModel

MAX_ID_CHARS = 512
_ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"  # no control characters
_ERRORS = {
    400: "the request cannot be served by this index",
    404: "no such record in this index",
    413: "request body larger than the limit",
    415: "not a PNG, JPEG or DICOM file",
    503: "too many queries waiting; retry after the Retry-After seconds",
}


class RecordMeta(BaseModel):
    """What the index stores about a record."""

    split: str | None
    patient_id: str | None
    labels: dict[str, int | None]
    report: str
    image: str
    has_thumbnail: bool


class HitOut(BaseModel):
    """One result, best first (``rank`` 0)."""

    id: str
    score: float
    rank: int
    metadata: RecordMeta


class SearchOut(BaseModel):
    """Results of one query."""

    target: Literal["image", "report"]
    k: int
    hits: list[HitOut]
    took_ms: float


class RecordOut(RecordMeta):
    """One record with the URL of its thumbnail (None when it has none)."""

    id: str
    thumbnail_url: str | None


class ErrorOut(BaseModel):
    """Every 4xx/5xx but 422: what is wrong, in words."""

    detail: str


def _checked_id(record_id: str) -> str:
    if not re.fullmatch(_ID_PATTERN, record_id):
        raise ValueError(
            f"a record id is 1 to {MAX_ID_CHARS} characters, none of them control characters"
        )
    return record_id


RecordId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=MAX_ID_CHARS,
        description="the record's id as indexed (no control characters)",
        json_schema_extra={"pattern": _ID_PATTERN},
    ),
    AfterValidator(_checked_id),
]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` declaring :class:`ErrorOut` bodies for ``codes``."""
    return {code: {"model": ErrorOut, "description": _ERRORS[code]} for code in codes}
