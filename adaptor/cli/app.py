"""The Typer application every command module registers on, and its error handling."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from adaptor.errors import AdaptorError

# Offline by default: hub names fail fast instead of hanging for tens of seconds.
# Users with a network opt in with HF_HUB_OFFLINE=0.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

app = typer.Typer(
    help=(
        "Parameter-efficient medical vision-language pretraining on frozen encoders.\n\n"
        "Flow: synth (or your data) → embed (frozen encoders → shards) → pretrain (Adaptor, "
        "Ray Train) → splits + finetune (downstream heads) and index → search / serve "
        "(retrieval). Run `adaptor run` to do every stage on the embedded default."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """Turn expected failures into one clear line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            typer.echo(
                "interrupted: finished outputs are kept; rerun the same command to resume", err=True
            )
            raise typer.Exit(130) from None
        except (AdaptorError, FileNotFoundError, ValueError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]
