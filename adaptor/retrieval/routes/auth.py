"""The optional API key: a dependency checking the ``X-API-Key`` header, and its 401."""

import secrets
from typing import Any

from fastapi import Depends, HTTPException, Security
from fastapi.security import APIKeyHeader

from adaptor.retrieval.routes.models import ErrorOut
from adaptor.retrieval.routes.state import State

API_KEY_HEADER = "X-API-Key"
_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)


def require_key(state: State, given: str | None = Security(_key_header)) -> None:
    """Refuse the request (401) unless it sends the app's API key."""
    key = state.api_key
    if not (given and key and secrets.compare_digest(given.encode(), key.encode())):
        raise HTTPException(
            401, f"missing or wrong API key: send it in the {API_KEY_HEADER} header"
        )


def guard() -> dict[str, Any]:
    """``include_router`` arguments requiring the key on a router's routes and declaring the 401."""
    return {
        "dependencies": [Depends(require_key)],
        "responses": {
            401: {
                "model": ErrorOut,
                "description": f"missing or wrong API key (send it in the {API_KEY_HEADER} header)",
            }
        },
    }
