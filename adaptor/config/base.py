"""What every config model shares: the base class, comma-list fields, and readable errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from adaptor.errors import AdaptorError

T = TypeVar("T")

Loc = tuple[int | str, ...]


class Options(BaseModel):
    """A config model: unknown keys are an error, every field has a default and a description."""

    model_config = ConfigDict(extra="forbid")


class ConfigError(AdaptorError, ValueError):
    """A config file or option value that cannot be used; names the file or option and the key."""


def _split_commas(value: Any) -> Any:
    """``"0.01,0.1,1"`` → ``["0.01", "0.1", "1"]`` (the command line's list form); others pass."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CommaList = Annotated[list[T], BeforeValidator(_split_commas)]
"""A list that YAML gives as a list and the command line as ``a,b,c``."""

RayAddress = Annotated[
    str | None, Field(description="HOST:PORT of a running Ray head; default: a local Ray")
]


_SIGNS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}  # a bound's name → its sign
_ERROR_SIGNS = {"greater_than_equal": "≥", "greater_than": ">"}
_ERROR_SIGNS |= {"less_than_equal": "≤", "less_than": "<"}


def field_help(info: FieldInfo) -> str:
    """A field's description with its choices and bounds: ``peak AdamW learning rate (> 0)``,
    ``learning-rate decay after warm-up (cosine or linear)``."""
    text = info.description or ""
    notes = [
        f"{sign} {getattr(m, bound)}"
        for m in info.metadata
        for bound, sign in _SIGNS.items()
        if getattr(m, bound, None) is not None
    ]
    choices = _choices(info.annotation)
    if choices and not all(c in text for c in choices):
        notes.insert(0, " or ".join(choices))
    return f"{text} ({', '.join(notes)})" if notes else text


def _choices(annotation: Any) -> list[str]:
    """The values of a ``Literal`` (also inside a list or an optional)."""
    if get_origin(annotation) is Literal:
        return [str(a) for a in get_args(annotation)]
    return [c for arg in get_args(annotation) for c in _choices(arg)]


def _shown(value: Any) -> str:
    """A value in a message: numbers as written (``0.01``, ``1``), anything else quoted."""
    text = f"{value:g}" if isinstance(value, float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def error_message(error: ErrorDetails) -> str:
    """One pydantic error as a short phrase: ``must be ≥ 8, got 4``."""
    kind, ctx, got = error["type"], error.get("ctx", {}), error.get("input")
    if kind in _ERROR_SIGNS:
        limit = next(iter(ctx.values()))
        return f"must be {_ERROR_SIGNS[kind]} {_shown(limit)}, got {_shown(got)}"
    if kind == "literal_error":
        return f"must be {ctx['expected']}, got {_shown(got)}"
    if kind == "too_short":
        return f"must hold at least {ctx['min_length']} item(s), got {_shown(got)}"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown key"
    message = error["msg"].removeprefix("Value error, ")
    if message.startswith("Input should be"):
        return f"must be{message.removeprefix('Input should be')}, got {_shown(got)}"
    return message


def dotted(loc: Loc) -> str:
    """``("finetune", "fractions", 0)`` → ``finetune.fractions[0]``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def describe_errors(
    err: ValidationError,
    name: Callable[[Loc], str] = dotted,
    explain: Callable[[ErrorDetails], str | None] = lambda _: None,
) -> str:
    """Every error of ``err`` as ``KEY: phrase``, ``; ``-separated; ``name`` spells the key
    (a dotted YAML key, an option), ``explain`` may replace the phrase (None: keep it)."""
    parts = []
    for error in err.errors():
        key, message = name(error["loc"]), explain(error) or error_message(error)
        parts.append(f"{key}: {message}" if key else message)
    return "; ".join(parts)
