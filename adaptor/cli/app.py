"""The Typer application every command module registers on, and the path options they share
(every other option comes from a model of :mod:`adaptor.config`).

A folder option takes a local path or a URI (``s3://bucket/key``, any fsspec filesystem); a
command opens each with :func:`adaptor.remote.working_copy` before any work.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

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

PATH_OR_URI = " (a path, or a URI such as s3://bucket/key)"
Shards = Annotated[
    str, typer.Option(help="embedding shard folder made by `adaptor embed`" + PATH_OR_URI)
]
AdaptorDir = Annotated[
    str | None,
    typer.Option(
        "--adaptor",
        help="trained Adaptor folder (RUN/adaptor from `adaptor pretrain`)" + PATH_OR_URI,
    ),
]
Progress = Annotated[bool, typer.Option(help="show progress bars")]
