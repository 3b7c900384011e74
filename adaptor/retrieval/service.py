"""The HTTP retrieval service: a FastAPI app over one opened index folder.

Endpoints (OpenAPI schema at ``/openapi.json``, interactive docs at ``/docs``):

- ``POST /search/text``   JSON ``{"text": "...", "k": 10}`` → images, best first
- ``POST /search/image``  multipart field ``file`` (PNG, JPEG, DICOM); query ``k`` and
  ``target`` (``image`` or ``report``) → images or reports, best first
- ``GET /records/{id}``   one record's metadata; ``GET /thumbnails/{id}`` its JPEG thumbnail
- ``GET /health``, ``GET /stats``; ``GET /`` the search page

Every input is bounded (:class:`ServiceLimits`) and every answer is one the schema declares:
a 422 is always FastAPI's list of validation errors (``{"detail": [{"loc", "msg", "type"}]}``),
every other 4xx/5xx an :class:`ErrorOut` (``{"detail": "…"}``), so a client generated from
the schema is never surprised. Records are addressed by id through the metadata store
only: no request names a file, so nothing outside the index folder can be read. Concurrent
queries are micro-batched through the encoders (:mod:`adaptor.retrieval.batching`), all
model work running on one thread. With an API key set, every endpoint but ``/``,
``/health`` and the schema requires it in the ``X-API-Key`` header (and only then does the
schema declare the key and its 401).
"""

# No ``from __future__ import annotations``: FastAPI must see the request models defined
# inside create_app (their bounds come from the limits) as objects, not as names.
import os
import re
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

import torch
from fastapi import (
    Depends,
    FastAPI,
    File,
    HTTPException,
    Path,
    Query,
    Request,
    Security,
    UploadFile,
)
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from adaptor.retrieval.batching import BusyError, MicroBatcher
from adaptor.retrieval.errors import RetrievalError
from adaptor.retrieval.searcher import Hit, Searcher, open_searcher
from adaptor.retrieval.uploads import BadUploadError, UnsupportedUploadError, decode_upload

API_KEY_ENV = "ADAPTOR_API_KEY"
API_KEY_HEADER = "X-API-Key"
MAX_ID_CHARS = 512
_ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"  # no control characters
# one character that is white space to neither Python nor ECMAScript (they disagree on some)
_NOT_BLANK = r"[^\x09-\x0d\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
_FORM_OVERHEAD = 64 * 1024  # multipart boundaries and headers around the uploaded file
_JSON_CHAR_BYTES = 12  # worst case: an astral character escaped as two \uXXXX
_PAGE = "page.html"
_ERRORS = {
    400: "the request cannot be served by this index",
    401: f"missing or wrong API key (send it in the {API_KEY_HEADER} header)",
    404: "no such record in this index",
    413: "request body larger than the limit",
    415: "not a PNG, JPEG or DICOM file",
    503: "too many queries waiting; retry after the Retry-After seconds",
}


@dataclass(frozen=True)
class ServiceLimits:
    """Bounds on every input; all settable from ``adaptor serve`` options."""

    max_k: int = 100
    max_text_chars: int = 2000
    max_upload_bytes: int = 20 * 1024 * 1024
    max_image_side: int = 8192
    max_batch: int = 32
    max_pending: int = 256

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


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


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` declaring :class:`ErrorOut` bodies for ``codes``."""
    return {code: {"model": ErrorOut, "description": _ERRORS[code]} for code in codes}


def _invalid_upload(message: str) -> RequestValidationError:
    """A 422 for the ``file`` field, shaped like every other validation error."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", "file"), "msg": message, "input": None}]
    )


def create_app(
    searcher: Searcher, limits: ServiceLimits | None = None, api_key: str | None = None
) -> FastAPI:
    """The FastAPI app serving ``searcher``; ``api_key`` (if given) guards the data endpoints."""
    limits = limits or ServiceLimits()
    counters: Counter[str] = Counter()
    started = time.time()

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

        @field_validator("text")
        @classmethod
        def _not_blank(cls, value: str) -> str:
            if not re.search(_NOT_BLANK, value):
                raise ValueError("text is blank")
            return value

    def run_texts(items: list[tuple[str, int]]) -> list[list[Hit]]:
        hits = searcher.search_text([text for text, _ in items], k=max(k for _, k in items))
        return [found[:k] for found, (_, k) in zip(hits, items, strict=True)]

    def run_images(items: list[tuple[torch.Tensor, int, str]]) -> list[list[Hit]]:
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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # one model thread: torch calls never overlap, batches queue up behind each other
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adaptor-model")
        app.state.text_batcher = MicroBatcher(
            run_texts, executor, max_batch=limits.max_batch, max_pending=limits.max_pending
        )
        app.state.image_batcher = MicroBatcher(
            run_images, executor, max_batch=limits.max_batch, max_pending=limits.max_pending
        )
        app.state.text_batcher.start()
        app.state.image_batcher.start()
        yield
        await app.state.text_batcher.stop()
        await app.state.image_batcher.stop()
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="adaptor retrieval",
        description="Search indexed studies by report text or by image (see `adaptor serve`).",
        version="1",
        lifespan=lifespan,
    )
    # Only the search routes read a body, each under its own limit. There is no app-wide
    # limit: Starlette's would answer 413 in plain text outside count_and_harden.
    body_limits = {
        "/search/text": _JSON_CHAR_BYTES * limits.max_text_chars + 1024,
        "/search/image": limits.max_upload_bytes + _FORM_OVERHEAD,
    }
    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)

    def require_key(given: str | None = Security(key_header)) -> None:
        if not (given and api_key and secrets.compare_digest(given.encode(), api_key.encode())):
            raise HTTPException(
                401, f"missing or wrong API key: send it in the {API_KEY_HEADER} header"
            )

    # without a key the schema declares no security and no 401: the service asks for none
    guarded = [Depends(require_key)] if api_key else []
    keyed = (401,) if api_key else ()

    @app.middleware("http")
    async def count_and_harden(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        if response.status_code == 413 and not response.headers.get("content-type", "").startswith(
            "application/json"
        ):
            # the body limit answers in plain text; say it in the declared shape, with the limit
            limit = body_limits.get(getattr(request.scope.get("route"), "path", ""))
            detail = "Content Too Large"
            if limit:
                detail += f": this endpoint takes at most {limit} bytes"
            response = JSONResponse({"detail": detail}, status_code=413)
        counters[f"{response.status_code // 100}xx"] += 1
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' blob: data:; "
            "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"
        )
        return response

    @app.exception_handler(BusyError)
    async def _busy(request: Request, err: BusyError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(RetrievalError)
    async def _bad(request: Request, err: RetrievalError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=400)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(resources.files(__package__).joinpath(_PAGE).read_text("utf-8"))

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness: the index is loaded and answering."""
        return {"status": "ok", "records": len(searcher)}

    @app.get("/stats", dependencies=guarded, responses=_errors(*keyed))
    def stats() -> dict[str, Any]:
        """The index, the limits, and request and batching counters."""
        return {
            **searcher.stats(),
            "limits": asdict(limits),
            "api_key_required": bool(api_key),
            "uptime_s": round(time.time() - started, 1),
            "responses": dict(counters),
            "batching": {
                "text": app.state.text_batcher.stats.to_dict(),
                "image": app.state.image_batcher.stats.to_dict(),
            },
        }

    @app.post(
        "/search/text",
        dependencies=guarded,
        max_body_size=body_limits["/search/text"],
        responses=_errors(400, *keyed, 413, 503),
    )
    async def search_text(query: TextQuery) -> SearchOut:
        """Images closest to a report-like text, best first."""
        began = time.perf_counter()
        hits = await app.state.text_batcher.submit((query.text, query.k))
        return _result("image", query.k, hits, began)

    @app.post(
        "/search/image",
        dependencies=guarded,
        max_body_size=body_limits["/search/image"],
        responses=_errors(400, *keyed, 413, 415, 503),
    )
    async def search_image(
        file: UploadFile = File(description="PNG, JPEG or DICOM image"),
        k: int = Query(10, ge=1, le=limits.max_k),
        target: Literal["image", "report"] = Query(
            "image", description="image: similar images; report: matching reports"
        ),
    ) -> SearchOut:
        """Images or reports closest to an uploaded image, best first."""
        began = time.perf_counter()
        data = await file.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise HTTPException(413, f"upload exceeds {limits.max_upload_bytes} bytes")
        if not data:
            raise _invalid_upload("the uploaded file is empty")
        try:
            grey = await run_in_threadpool(
                decode_upload, data, file.filename or "upload", limits.max_image_side
            )
            pixels = await run_in_threadpool(searcher.encoder.pixels, grey)
        except UnsupportedUploadError as err:
            raise HTTPException(415, str(err)) from None
        except BadUploadError as err:
            raise _invalid_upload(str(err)) from None
        hits = await app.state.image_batcher.submit((pixels, k, target))
        return _result(target, k, hits, began)

    @app.get("/records/{record_id:path}", dependencies=guarded, responses=_errors(*keyed, 404))
    def record(record_id: RecordId) -> RecordOut:
        """One indexed record's metadata."""
        meta = searcher.record(record_id)
        if meta is None:
            raise HTTPException(404, f"no record with id {record_id!r} in this index")
        url = f"/thumbnails/{record_id}" if meta["has_thumbnail"] else None
        return RecordOut(**meta, thumbnail_url=url)

    @app.get(
        "/thumbnails/{record_id:path}",
        dependencies=guarded,
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, **_errors(*keyed, 404)},
    )
    def thumbnail(record_id: RecordId) -> Response:
        """The record's JPEG thumbnail, made from its indexed image when the index was built."""
        data = searcher.thumbnail(record_id)
        if data is None:
            raise HTTPException(404, f"no thumbnail for id {record_id!r} in this index")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private"})

    return app


def serve(
    index_dir: FilePath,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServiceLimits | None = None,
    api_key_env: str = API_KEY_ENV,
    log_level: str = "info",
) -> None:
    """Load the index, encoders and Adaptor once, then serve them with uvicorn until stopped."""
    import uvicorn

    searcher = open_searcher(index_dir)
    searcher.encoder.warm()
    api_key = os.environ.get(api_key_env) or None
    app = create_app(searcher, limits, api_key)
    print(
        f"serving {len(searcher)} records from {index_dir} on http://{host}:{port}/ "
        f"(API key {'required' if api_key else 'not required'}; set {api_key_env} to require one)",
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def _result(target: str, k: int, hits: list[Hit], began: float) -> SearchOut:
    return SearchOut(
        target=target,  # type: ignore[arg-type]
        k=k,
        hits=[HitOut(**hit.to_dict()) for hit in hits],
        took_ms=round((time.perf_counter() - began) * 1000, 2),
    )
