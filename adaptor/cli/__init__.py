"""The ``adaptor`` command: one verb per stage of the flow, plus ``run`` for all of them.

Each module registers its verbs on the one Typer ``app``:
``flow`` (synth, embed, pretrain, encoders, run, config), ``downstream`` (splits, finetune
heads|segment|tune), ``retrieval`` (index, search, serve), ``study`` (the transfer study). Their options are made from the
stage models of :mod:`adaptor.config` (:mod:`adaptor.config.cli`).
"""

from __future__ import annotations

from adaptor.cli import downstream, flow, retrieval, study  # noqa: F401  (register commands)
from adaptor.cli.app import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="adaptor")
