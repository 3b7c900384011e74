"""The HTTP retrieval service: a FastAPI app over one opened index folder.

Endpoints (OpenAPI schema at ``/openapi.json``, interactive docs at ``/docs``):

- ``POST /search/text``   JSON ``{"text": "...", "k": 10}`` → images, best first
- ``POST /search/image``  multipart field ``file`` (PNG, JPEG, DICOM); query ``k`` and
  ``target`` (``image`` or ``report``) → images or reports, best first
- ``POST /classify``      multipart field ``file`` and ``labels`` (comma-separated) or
  ``prompts`` (JSON) → zero-shot probability per label
- ``GET /records/{id}``   one record's metadata; ``GET /thumbnails/{id}`` its JPEG thumbnail
- ``GET /health``, ``GET /stats``; ``GET /`` the search page

Every input is bounded (:class:`ServiceLimits`) and every answer is one the schema declares:
a 422 is always FastAPI's list of validation errors (``{"detail": [{"loc", "msg", "type"}]}``),
every other 4xx/5xx an :class:`~adaptor.retrieval.routes.models.ErrorOut`
(``{"detail": "…"}``), so a client generated from the schema is never surprised. Records
are addressed by id through the metadata store only: no request names a file, so nothing
outside the index folder can be read. Concurrent queries are micro-batched through the
encoders (:mod:`adaptor.retrieval.batching`), all model work running on one thread. With an
API key set, every endpoint but ``/``, ``/health`` and the schema requires it in the
``X-API-Key`` header (and only then does the schema declare the key and its 401).

This module wires an app: its state, middleware, error handlers and the routers of
:mod:`adaptor.retrieval.routes`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from adaptor.config import ServiceLimits  # the bounds of `adaptor serve` (ServeOptions.limits)
from adaptor.retrieval.batching import BusyError, MicroBatcher
from adaptor.retrieval.errors import RetrievalError
from adaptor.retrieval.routes import auth, classify, records, search, status
from adaptor.retrieval.routes.state import ServiceState
from adaptor.retrieval.searcher import Searcher, open_searcher

API_KEY_ENV = "ADAPTOR_API_KEY"
_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; "
    "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"
)


def create_app(
    searcher: Searcher, limits: ServiceLimits | None = None, api_key: str | None = None
) -> FastAPI:
    """The FastAPI app serving ``searcher``; ``api_key`` (if given) guards the data endpoints."""
    limits = limits or ServiceLimits()
    app = FastAPI(
        title="adaptor retrieval",
        description="Search indexed studies by report text or by image (see `adaptor serve`).",
        version="1",
        lifespan=_lifespan,
    )
    app.state.service = ServiceState(searcher, limits, api_key)
    app.middleware("http")(_count_and_harden)
    app.add_exception_handler(BusyError, _busy)
    app.add_exception_handler(RetrievalError, _bad_request)
    # without a key the schema declares no security and no 401: the service asks for none
    guarded = auth.guard() if api_key else {}
    app.include_router(status.public)
    app.include_router(status.router, **guarded)
    app.include_router(search.router(limits), **guarded)
    app.include_router(records.router, **guarded)
    app.include_router(classify.router(limits), **guarded)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the text and image batchers on one model thread; stop them on shutdown."""
    state: ServiceState = app.state.service
    # one model thread: torch calls never overlap, batches queue up behind each other
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adaptor-model")
    bounds = {"max_batch": state.limits.max_batch, "max_pending": state.limits.max_pending}
    state.batchers = {
        "text": MicroBatcher(partial(search.search_texts, state.searcher), executor, **bounds),
        "image": MicroBatcher(partial(search.search_images, state.searcher), executor, **bounds),
    }
    for batcher in state.batchers.values():
        batcher.start()
    yield
    for batcher in state.batchers.values():
        await batcher.stop()
    executor.shutdown(wait=False, cancel_futures=True)


async def _count_and_harden(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Count responses by class, answer 413s in JSON, and add the security headers."""
    response = await call_next(request)
    if response.status_code == 413 and not response.headers.get("content-type", "").startswith(
        "application/json"
    ):
        # the body limit answers in plain text; say it in the declared shape, with the limit
        # (only the search and classify routes read a body, each under its own limit; no app-wide
        # limit: Starlette's would answer 413 in plain text outside this middleware)
        limit = getattr(request.scope.get("route"), "max_body_size", None)
        detail = "Content Too Large"
        if limit:
            detail += f": this endpoint takes at most {limit} bytes"
        response = JSONResponse({"detail": detail}, status_code=413)
    request.app.state.service.responses[f"{response.status_code // 100}xx"] += 1
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = _SECURITY_POLICY
    return response


async def _busy(request: Request, err: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": "1"})


async def _bad_request(request: Request, err: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(err)}, status_code=400)


def serve(
    index_dir: Path,
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
