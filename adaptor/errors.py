"""The one base class for failures meant for the user rather than a traceback, and the
decorator that turns them into one line for every command (``adaptor`` and the batch jobs)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: set on classes defined in Python, not on built-ins


class AdaptorError(Exception):
    """An expected failure (bad input, bad config, unreachable cluster) with a message for the user.

    The ``adaptor`` command prints such errors as one ``error: …`` line and exits with
    status 2. Every module raises a subclass named after its stage (``EmbedError``, …).

    Every subclass pickles with its message and fields whatever its ``__init__`` takes, so
    an error raised in a DataLoader worker, a Ray task or an actor reaches the parent as
    itself: the default unpickling calls ``cls(*args)``, which fails for an ``__init__``
    with other parameters (``RecordError(record_id, reason, path)``) and hides the error.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        _, args, *state = super().__reduce__()  # state: the fields in __dict__, when any
        return (_rebuild, (type(self), args), *state)


def _rebuild(cls: type[AdaptorError], args: tuple[Any, ...]) -> AdaptorError:
    """An ``AdaptorError`` of class ``cls`` holding ``args``, made without calling ``cls.__init__``.

    Only built-in methods run: ``__new__`` of the built-in class the instance is laid out on
    (``OSError`` under a ``FileNotFoundError`` subclass; any other ``__new__`` is refused as
    unsafe) and the first built-in ``__init__`` in the MRO, the one construction ends in.
    """
    layout: type = cls
    while layout.__flags__ & _HEAPTYPE:
        layout = layout.__base__
    builtin = next(c for c in cls.__mro__ if not c.__flags__ & _HEAPTYPE)
    err = layout.__new__(cls, *args)
    builtin.__init__(err, *args)
    return err


F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """Turn expected failures of a command into one clear line on stderr and exit code 2
    (130 on Ctrl-C); anything else keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            print(
                "interrupted: finished outputs are kept; rerun the same command to resume",
                file=sys.stderr,
            )
            raise SystemExit(130) from None
        except (AdaptorError, FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]
