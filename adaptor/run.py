"""``adaptor run``: every stage that exists, in order, each resumable from its outputs.

Layout under ``OUT``::

    OUT/raw/synthetic/            the synthetic paired set (records.jsonl, images/, masks/)
    OUT/<dataset>/<encoder-pair>/ embedding shards + manifest.json
    OUT/runs/<dataset>/pretrain/  Adaptor weights (adaptor/), metrics, curves, Ray checkpoints
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from adaptor.config import RunConfig
from adaptor.data.synthetic import generate_synthetic
from adaptor.embed import EmbedConfig, EmbedResult, embed
from adaptor.train.pretrain import PretrainConfig, PretrainResult, describe, pretrain


@dataclass
class RunResult:
    """Where each stage left its output."""

    source: str
    shards: Path
    embed: EmbedResult
    pretrain: PretrainResult


def encoder_pair_id(image_encoder: str, text_encoder: str) -> str:
    """A folder-safe name for an (image, text) encoder pair."""
    return "__".join(
        re.sub(r"[^A-Za-z0-9._-]+", "-", n).strip("-") for n in (image_encoder, text_encoder)
    )


def run_flow(
    cfg: RunConfig, out: Path, *, progress: bool = True, log: Callable[[str], None] = print
) -> RunResult:
    """Run synth (unless a source is given), embed, then pretrain, resuming whatever is already done."""
    out = Path(out)
    source = cfg.source
    if source is None:
        raw = out / "raw" / cfg.dataset
        if (raw / "records.jsonl").is_file():
            log(f"[synth] reusing {raw}/records.jsonl")
        else:
            log(f"[synth] writing {cfg.synth.n} synthetic records to {raw}")
            generate_synthetic(
                raw, n=cfg.synth.n, seed=cfg.synth.seed, size=cfg.synth.size, progress=progress
            )
        source = f"synthetic:{raw}"

    shards = out / cfg.dataset / encoder_pair_id(cfg.embed.image_encoder, cfg.embed.text_encoder)
    log(f"[embed] {source} -> {shards}")
    result = embed(
        EmbedConfig(source=source, out=shards, progress=progress, **cfg.embed.model_dump())
    )
    log(
        f"[embed] {result.count} samples in {len(list(shards.glob('*.tar')))} shards, "
        f"{len(result.skipped)} skipped, {result.truncated_reports} reports truncated"
    )
    run_dir = out / "runs" / cfg.dataset / "pretrain"
    log(f"[pretrain] {shards} -> {run_dir}")
    trained = pretrain(
        PretrainConfig(shards=str(shards), out=str(run_dir), **cfg.pretrain.model_dump()),
        progress=progress,
        log=log,
    )
    log(f"[pretrain] {describe(trained.metrics)}")
    return RunResult(source=source, shards=shards, embed=result, pretrain=trained)
