"""The failures retrieval reports to the user (CLI ``error: …`` lines, HTTP 4xx details)."""

from __future__ import annotations

from adaptor.errors import AdaptorError


class RetrievalError(AdaptorError, ValueError):
    """A retrieval request or index that cannot be served; the message says what is wrong."""


class IndexMismatchError(RetrievalError):
    """An index folder used with other encoders or another Adaptor than the ones it was built for."""


class IndexNotFoundError(RetrievalError, FileNotFoundError):
    """A folder that holds no finished index."""
