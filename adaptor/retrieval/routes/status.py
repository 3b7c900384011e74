"""The search page and the service's health (open to all) and statistics."""

import time
from dataclasses import asdict
from importlib import resources
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from adaptor.retrieval.routes.state import State

_PAGE = "page.html"

public = APIRouter()
router = APIRouter()


@public.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> HTMLResponse:
    return HTMLResponse(resources.files("adaptor.retrieval").joinpath(_PAGE).read_text("utf-8"))


@public.get("/health")
def health(state: State) -> dict[str, Any]:
    """Liveness: the index is loaded and answering."""
    return {"status": "ok", "records": len(state.searcher)}


@router.get("/stats")
def stats(state: State) -> dict[str, Any]:
    """The index, the limits, and request and batching counters."""
    return {
        **state.searcher.stats(),
        "limits": asdict(state.limits),
        "api_key_required": bool(state.api_key),
        "uptime_s": round(time.time() - state.started, 1),
        "responses": dict(state.responses),
        "batching": {name: batcher.stats.to_dict() for name, batcher in state.batchers.items()},
    }
