"""What the routes read from the app: the searcher, limits, key, counters and batchers."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from adaptor.retrieval.batching import MicroBatcher
from adaptor.retrieval.searcher import Searcher

if TYPE_CHECKING:
    from adaptor.config import ServiceLimits


@dataclass
class ServiceState:
    """One app's state, kept on ``app.state.service``; the batchers are added at startup."""

    searcher: Searcher
    limits: ServiceLimits
    api_key: str | None
    started: float = field(default_factory=time.time)
    responses: Counter[str] = field(default_factory=Counter)
    batchers: dict[str, MicroBatcher[Any, Any]] = field(default_factory=dict)


def service_state(request: Request) -> ServiceState:
    """The state of the app serving ``request``."""
    return request.app.state.service


State = Annotated[ServiceState, Depends(service_state)]
