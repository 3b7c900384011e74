"""The one base class for failures meant for the user rather than a traceback."""

from __future__ import annotations


class AdaptorError(Exception):
    """An expected failure (bad input, bad config, unreachable cluster) with a message for the user.

    The ``adaptor`` command prints such errors as one ``error: …`` line and exits with
    status 2. Every module raises a subclass named after its stage (``EmbedError``, …).
    """
