"""The embed stage: records → frozen encoders → WebDataset embedding shards.

Records go to shards by position (shard ``i`` holds positions
``[i*shard_size, (i+1)*shard_size)``), so the layout depends only on the source
and the shard size. Finished shards are kept across runs; a rerun after a crash
or ``kill -9`` does only the unfinished ones and ends with exactly the samples
of an uninterrupted run. Bad records are reported, counted and skipped, wherever they
fail (a decoding error in a loader worker comes back as that record's skip); a job
that keeps no sample at all is an error.

One side may be left out (``image_encoder`` or ``text_encoder`` ``none``): the shards then
store that side's members only, and a text-only job never opens an image, so a record whose
image file is missing or broken is not skipped for that (a source layout that checks image
files while listing its records still reports those). Two one-sided folders of the same
source join into a paired one with :func:`adaptor.shards.join_shards`.

Shard indices are also the unit of work on a cluster: ``EmbedConfig.only_shards``
embeds just some of them into a job folder shared with other processes
(:mod:`adaptor.embed.actors`), and :func:`~adaptor.embed.folder.finish_manifest`
completes the folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from adaptor.config.embed import NO_ENCODER, EmbedOptions
from adaptor.data.records import Record, RecordError
from adaptor.data.sources import SourceItem, open_source
from adaptor.data.sources.base import has_reports
from adaptor.embed.assembler import ShardAssembler
from adaptor.embed.folder import (
    finish_manifest,
    open_output,
    require_samples,
    shard_count,
    shares_of,
)
from adaptor.embed.job import EmbedConfig, EmbedError, EmbedResult
from adaptor.embed.loader import make_loader
from adaptor.encoders import ImageEncoder, TextEncoder, build_image_encoder, build_text_encoder
from adaptor.shards.manifest import MEMBER_ORDER
from adaptor.shards.writer import finished_shards

STORED_DTYPE = np.float16


def embed(cfg: EmbedConfig, log: Callable[[str], None] = tqdm.write) -> EmbedResult:
    """Run (or resume) the embed job described by ``cfg``; return a summary.

    With ``cfg.image_encoder`` ``none`` no image file is opened, so a record whose image is
    missing or broken is kept (its report embedded) rather than skipped.
    """
    started = time.perf_counter()
    out = Path(cfg.out)
    members = stored_members(cfg)
    if not members:
        raise EmbedError(f"image and text encoders are both {NO_ENCODER!r}: nothing to embed")
    source = open_source(cfg.source)
    with_text = cfg.text_encoder != NO_ENCODER
    items = _validated_items(
        source.items(),
        allow_empty_reports=cfg.allow_empty_reports or not has_reports(source) or not with_text,
        progress=cfg.progress,
    )
    if cfg.strict:
        first_bad = next((it for it in items if isinstance(it, RecordError)), None)
        if first_bad is not None:
            raise EmbedError(f"--strict: {first_bad}")

    device = _pick_device(cfg.device)
    image_encoder = (
        build_image_encoder(cfg.image_encoder, device=device)
        if cfg.image_encoder != NO_ENCODER
        else None
    )
    text_encoder = build_text_encoder(cfg.text_encoder, device=device) if with_text else None
    shared = cfg.only_shards is not None
    encoders = {"image": image_encoder, "text": text_encoder}
    manifest = open_output(
        out,
        source_spec=source.spec,
        shard_size=cfg.shard_size,
        total_items=len(items),
        members=members,
        encoders={
            role: {**encoder.info.to_dict(), "dtype": np.dtype(STORED_DTYPE).name}
            for role, encoder in encoders.items()
            if encoder is not None
        },
        shared=shared,
    )

    n_shards = shard_count(len(items), cfg.shard_size)
    wanted = _wanted_shards(cfg.only_shards, n_shards)
    done = {i: info for i, info in finished_shards(out).items() if i in wanted}
    pending = [i for i in wanted if i not in done]
    if done:
        log(f"resuming: {len(done)} of {len(wanted)} shards already finished in {out}")

    writer = ShardAssembler(out, items, cfg.shard_size, source.root, log, strict=cfg.strict)
    loader = make_loader(
        items, pending, cfg, image_encoder.preprocess if image_encoder else None, text_encoder
    )
    todo = sum(writer.expected(i) for i in pending)
    bar = tqdm(
        total=todo, unit="sample", desc="embed", disable=not cfg.progress, dynamic_ncols=True
    )
    for index in pending:
        writer.flush_if_ready(index)  # shards whose records were all rejected up front
    encoded = 0
    loop_started = time.perf_counter()
    with torch.inference_mode():
        for batch in loader:
            for position, err in batch["errors"]:
                writer.add_error(position, err)
            if batch["positions"]:
                arrays = _encode_batch(batch, image_encoder, text_encoder, device, cfg)
                tokens = batch["tokens"]
                truncated = (
                    tokens.truncated if tokens is not None else [False] * len(batch["positions"])
                )
                writer.add_encoded(batch["positions"], arrays, truncated)
                encoded += len(batch["positions"])
            bar.update(len(batch["positions"]) + len(batch["errors"]))
    bar.close()
    loop_seconds = time.perf_counter() - loop_started

    if shared:
        manifest = shares_of(out, manifest, wanted)
    else:
        manifest = finish_manifest(out, manifest)
        require_samples(manifest, out)
    seconds = time.perf_counter() - started
    return EmbedResult(
        folder=out,
        count=manifest.count,
        skipped=manifest.skipped,
        truncated_reports=manifest.truncated_reports,
        shards_written=len(pending),
        shards_reused=len(done),
        seconds=seconds,
        samples_per_s=encoded / loop_seconds if encoded else 0.0,
        new_skips=writer.reported,
    )


def stored_members(cfg: EmbedOptions) -> list[str]:
    """The arrays each sample of ``cfg``'s shards holds, in manifest order: a side whose
    encoder is ``none`` stores nothing (``patch_tokens``/``text_states`` then do nothing)."""
    wanted = {
        "image": cfg.image_encoder != NO_ENCODER,
        "text": cfg.text_encoder != NO_ENCODER,
    }
    wanted["image_patches"] = wanted["image"] and cfg.patch_tokens
    wanted["text_states"] = wanted["text"] and cfg.text_states
    return [m for m in MEMBER_ORDER if wanted[m]]


def _wanted_shards(only: list[int] | None, n_shards: int) -> list[int]:
    if only is None:
        return list(range(n_shards))
    outside = sorted(i for i in only if not 0 <= i < n_shards)
    if outside:
        raise EmbedError(f"shard indices {outside} are outside this job's 0..{n_shards - 1}")
    return sorted(set(only))


def _validated_items(items: Any, *, allow_empty_reports: bool, progress: bool) -> list[SourceItem]:
    """All source items in order, with duplicate ids and empty reports turned into errors."""
    seen: dict[str, int] = {}
    out: list[SourceItem] = []
    for position, item in enumerate(
        tqdm(items, desc="reading records", unit="record", leave=False, disable=not progress)
    ):
        if isinstance(item, Record):
            if item.id in seen:
                item = RecordError(
                    item.id, f"duplicate id (first seen at record #{seen[item.id]})", item.image
                )
            elif not item.report.strip() and not allow_empty_reports:
                seen[item.id] = position
                item = RecordError(
                    item.id, "empty report (use --allow-empty-reports to keep it)", item.image
                )
            else:
                seen[item.id] = position
        out.append(item)
    return out


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _encode_batch(
    batch: dict[str, Any],
    image_encoder: ImageEncoder | None,
    text_encoder: TextEncoder | None,
    device: torch.device,
    cfg: EmbedConfig,
) -> dict[str, list[np.ndarray]]:
    """Run the encoders on one batch; return per-sample float16 arrays by member name."""
    arrays: dict[str, list[np.ndarray]] = {}
    if image_encoder is not None:
        image_out = image_encoder.encode(batch["pixels"].to(device), with_patches=cfg.patch_tokens)
        arrays["image"] = list(_to_numpy(image_out.global_))
        if cfg.patch_tokens and image_out.patches is not None:
            arrays["image_patches"] = list(_to_numpy(image_out.patches))
    if text_encoder is None:
        return arrays
    text_out = text_encoder.encode(batch["tokens"], with_states=cfg.text_states)
    arrays["text"] = list(_to_numpy(text_out.global_))
    if cfg.text_states and text_out.states is not None:
        lengths = text_out.attention_mask.sum(dim=1).tolist()
        arrays["text_states"] = [
            s[: int(n)] for s, n in zip(_to_numpy(text_out.states), lengths, strict=True)
        ]
    return arrays


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(STORED_DTYPE)
