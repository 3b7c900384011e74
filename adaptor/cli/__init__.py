"""The ``adaptor`` command: one verb per stage of the flow, plus ``run`` for all of them.

Each module registers its verbs on the one Typer ``app``:
``flow`` (synth, embed, pretrain, encoders, run), ``downstream`` (splits, finetune heads,
finetune segment), ``tune`` (finetune tune), ``retrieval`` (index, search, serve).
"""

from __future__ import annotations

from adaptor.cli import downstream, flow, retrieval, tune  # noqa: F401  (register their commands)
from adaptor.cli.app import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="adaptor")
