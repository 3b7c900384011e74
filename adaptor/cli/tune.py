"""What ``adaptor finetune --tune …`` runs: classification from encoders tuned online.

The Typer command lives in :mod:`adaptor.cli.downstream`; this module turns its options
into one :class:`~adaptor.train.tune.TuneConfig` per head and runs them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from adaptor.data.splits import LabelSplits
from adaptor.results import CellResult
from adaptor.train.tune import TuneConfig, TuneError, finetune_tuned


def parse_tune_options(text: str | None) -> dict[str, Any]:
    """``"rank=8,ffn=true,columns=0.25"`` → ``{"rank": 8, "ffn": True, "columns": 0.25}``.

    Values are read as JSON (numbers, ``true``/``false``, ``null``), else kept as text.
    """
    options: dict[str, Any] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TuneError(f"tuning options are KEY=VALUE pairs, got {item.strip()!r}")
        try:
            options[key.strip()] = json.loads(value.strip())
        except json.JSONDecodeError:
            options[key.strip()] = value.strip()
    return options


def run_tuning(
    *,
    shards: Path,
    out: Path,
    splits: LabelSplits,
    methods: list[str],
    encoder: str = "image",
    options: str | None = None,
    heads: list[str] | None = None,
    fractions: list[float] | None = None,
    seeds: list[int] | None = None,
    labels: list[str] | None = None,
    kind: str = "multilabel",
    uncertain: str = "ignore",
    epochs: int = 5,
    batch_size: int = 16,
    lr: float | None = None,
    encoder_lr: float | None = None,
    gradient_checkpointing: bool = False,
    image_size: int | None = None,
    device: str = "auto",
    workers: int = 1,
    address: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[CellResult]:
    """Train every method × head × fraction × seed with the encoder(s) tuned online.

    ``methods`` are tuning methods (``frozen`` runs the encoder online with nothing
    trainable, the same recipe as the others); ``options`` is a ``KEY=VALUE,…`` string
    (see :func:`parse_tune_options`), each key going to the methods that take it.
    """
    base = TuneConfig(
        shards=str(shards),
        out=str(out),
        methods=methods,
        encoder=encoder,
        options=parse_tune_options(options),
        labels=labels,
        kind=kind,
        uncertain=uncertain,
        epochs=epochs,
        batch_size=batch_size,
        encoder_lr=encoder_lr,
        gradient_checkpointing=gradient_checkpointing,
        image_size=image_size,
        device=device,
        workers=workers,
        address=address,
    )
    if fractions is not None:
        base = replace(base, fractions=fractions)
    if seeds is not None:
        base = replace(base, seeds=seeds)
    if lr is not None:
        base = replace(base, lr=lr)
    cells: list[CellResult] = []
    for head in heads or [base.head]:
        cells += finetune_tuned(replace(base, head=head), splits, progress=progress, log=log)
    return cells
