"""The embed stage: records → frozen encoders → WebDataset embedding shards.

Records go to shards by position (shard ``i`` holds positions
``[i*shard_size, (i+1)*shard_size)``), so the layout depends only on the source
and the shard size. Finished shards are kept across runs; a rerun after a crash
or ``kill -9`` does only the unfinished ones and ends with exactly the samples
of an uninterrupted run. Bad records are reported, counted and skipped, wherever they
fail (a decoding error in a loader worker comes back as that record's skip); a job
that keeps no sample at all is an error.

Shard indices are also the unit of work on a cluster: ``EmbedConfig.only_shards``
embeds just some of them into a job folder shared with other processes
(:mod:`adaptor.embed_actors`), and :func:`finish_manifest` completes the folder.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from adaptor.atomic import remove_stale_partials
from adaptor.data.image_io import load_image
from adaptor.data.records import Record, RecordError, is_mask_path, relative_path
from adaptor.data.sources import SourceItem, open_source
from adaptor.data.sources.base import has_reports
from adaptor.encoders import (
    DEFAULT_IMAGE_ENCODER,
    DEFAULT_TEXT_ENCODER,
    ImageEncoder,
    ImagePreprocess,
    TextEncoder,
    TokenBatch,
    build_image_encoder,
    build_text_encoder,
)
from adaptor.errors import AdaptorError
from adaptor.shards.manifest import Manifest, ShardEntry, encoder_differences
from adaptor.shards.writer import encode_sample, finished_shards, sample_key, write_shard

STORED_DTYPE = np.float16
SHOWN_SKIP_REASONS = 5  # distinct skip reasons an error about an empty job quotes


class EmbedError(AdaptorError, RuntimeError):
    """The embed job cannot go on (strict mode, or an output folder it must not touch)."""


@dataclass
class EmbedConfig:
    """Options of one ``adaptor embed`` run."""

    source: str
    out: Path
    image_encoder: str = DEFAULT_IMAGE_ENCODER
    text_encoder: str = DEFAULT_TEXT_ENCODER
    batch_size: int = 32
    shard_size: int = 1000
    loader_workers: int = 2
    device: str = "auto"
    strict: bool = False
    allow_empty_reports: bool = False
    patch_tokens: bool = False
    text_states: bool = False
    progress: bool = True
    # a share of the job (cluster actors): embed only these shard indices, leave other writers'
    # partial files alone, and leave the manifest for the driver's finish_manifest
    only_shards: list[int] | None = None


@dataclass
class EmbedResult:
    """What an embed run did."""

    folder: Path
    count: int
    skipped: list[dict[str, str]]
    truncated_reports: int
    shards_written: int
    shards_reused: int
    seconds: float  # the whole run, model loading included
    samples_per_s: float  # records encoded per second of the decode → encode → write loop
    new_skips: list[str] = field(default_factory=list)


def embed(cfg: EmbedConfig, log: Callable[[str], None] = tqdm.write) -> EmbedResult:
    """Run (or resume) the embed job described by ``cfg``; return a summary."""
    started = time.perf_counter()
    out = Path(cfg.out)
    source = open_source(cfg.source)
    items = _validated_items(
        source.items(),
        allow_empty_reports=cfg.allow_empty_reports or not has_reports(source),
        progress=cfg.progress,
    )
    if cfg.strict:
        first_bad = next((it for it in items if isinstance(it, RecordError)), None)
        if first_bad is not None:
            raise EmbedError(f"--strict: {first_bad}")

    device = _pick_device(cfg.device)
    image_encoder = build_image_encoder(cfg.image_encoder, device=device)
    text_encoder = build_text_encoder(cfg.text_encoder, device=device)
    members = ["image", "text"] + (["image_patches"] if cfg.patch_tokens else [])
    members += ["text_states"] if cfg.text_states else []
    shared = cfg.only_shards is not None
    manifest = _open_output(
        out, cfg, source.spec, len(items), members, image_encoder, text_encoder, shared=shared
    )

    n_shards = shard_count(len(items), cfg.shard_size)
    wanted = _wanted_shards(cfg.only_shards, n_shards)
    done = {i: info for i, info in finished_shards(out).items() if i in wanted}
    pending = [i for i in wanted if i not in done]
    if done:
        log(f"resuming: {len(done)} of {len(wanted)} shards already finished in {out}")

    writer = _ShardAssembler(out, items, cfg.shard_size, source.root, log, strict=cfg.strict)
    loader = _make_loader(items, pending, cfg, image_encoder.preprocess, text_encoder)
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
                writer.add_encoded(batch["positions"], arrays, batch["tokens"].truncated)
                encoded += len(batch["positions"])
            bar.update(len(batch["positions"]) + len(batch["errors"]))
    bar.close()
    loop_seconds = time.perf_counter() - loop_started

    if shared:
        manifest = _shares_of(out, manifest, wanted)
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


def require_samples(manifest: Manifest, out: Path) -> None:
    """Raise EmbedError when a finished job holds no sample, naming the source and the reasons
    its records were skipped; the manifest with its skip report stays in ``out``."""
    if manifest.count:
        return
    if not manifest.skipped:
        raise EmbedError(f"0 samples: the source {manifest.source} has no records")
    reasons = Counter(s["reason"] for s in manifest.skipped).most_common()
    shown = "; ".join(f"{n}x {reason}" for reason, n in reasons[:SHOWN_SKIP_REASONS])
    others = len(reasons) - SHOWN_SKIP_REASONS
    more = f"; and {others} other reason(s)" if others > 0 else ""
    raise EmbedError(
        f"0 samples: all {len(manifest.skipped)} records of {manifest.source} were skipped "
        f"({shown}{more}); every skip is listed in {out / 'manifest.json'}"
    )


def shard_count(total_items: int, shard_size: int) -> int:
    """Number of shards of a job with ``total_items`` records (at least one, maybe empty)."""
    return max(1, -(-total_items // shard_size))


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


def _open_output(
    out: Path,
    cfg: EmbedConfig,
    source_spec: str,
    total_items: int,
    members: list[str],
    image_encoder: ImageEncoder,
    text_encoder: TextEncoder,
    *,
    shared: bool = False,
) -> Manifest:
    """Create the manifest of a new job, or check that an existing folder is this same job.

    ``shared``: other processes may be writing shards here now, so their partial files stay.
    """
    encoders = {
        "image": {**image_encoder.info.to_dict(), "dtype": np.dtype(STORED_DTYPE).name},
        "text": {**text_encoder.info.to_dict(), "dtype": np.dtype(STORED_DTYPE).name},
    }
    if out.is_dir() and Manifest.exists(out):
        old = Manifest.load(out)
        diffs = encoder_differences(old.encoders.get("image", {}), encoders["image"], "image")
        diffs += encoder_differences(old.encoders.get("text", {}), encoders["text"], "text")
        for what, before, now in (
            ("source", old.source, source_spec),
            ("shard size", old.shard_size, cfg.shard_size),
            ("number of records", old.total_items, total_items),
            ("stored members", old.members, members),
        ):
            if before != now:
                diffs.append(f"{what}: folder has {before!r}, this run has {now!r}")
        if diffs:
            raise EmbedError(
                f"{out} already holds shards of another embed job; refusing to mix them:\n  "
                + "\n  ".join(diffs)
                + "\nchoose another --out, or delete the folder to start over"
            )
        if not shared:
            remove_stale_partials(out)
        return old
    if out.is_dir() and any(out.glob("*.tar")):
        raise EmbedError(f"{out} holds .tar files but no manifest.json; refusing to mix shards")
    out.mkdir(parents=True, exist_ok=True)
    if not shared:
        remove_stale_partials(out)
    manifest = Manifest(
        source=source_spec,
        encoders=encoders,
        shard_size=cfg.shard_size,
        total_items=total_items,
        members=members,
    )
    manifest.save(out)
    return manifest


class _RecordImages(Dataset):
    """Decodes and preprocesses one record's image; a bad record comes back as its error."""

    def __init__(self, items: list[SourceItem], preprocess: ImagePreprocess):
        self.items = items
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | RecordError]:
        record = self.items[position]
        assert isinstance(record, Record)
        try:
            return position, self.preprocess(load_image(record.image))
        except Exception as err:  # any decoding failure skips this record, never the job
            reason = getattr(err, "reason", None) or f"{type(err).__name__}: {err}"
            return position, RecordError(record.id, f"cannot read image: {reason}", record.image)


class _Collate:
    """Stacks good images, tokenizes their reports, and passes errors through."""

    def __init__(self, items: list[SourceItem], tokenize: Callable[[list[str]], TokenBatch]):
        self.items = items
        self.tokenize = tokenize

    def __call__(self, batch: list[tuple[int, torch.Tensor | RecordError]]) -> dict[str, Any]:
        good = [(p, x) for p, x in batch if isinstance(x, torch.Tensor)]
        errors = [(p, x) for p, x in batch if isinstance(x, RecordError)]
        positions = [p for p, _ in good]
        reports = [self.items[p].report for p in positions]  # type: ignore[union-attr]
        return {
            "positions": positions,
            "pixels": torch.stack([x for _, x in good]) if good else None,
            "tokens": self.tokenize(reports) if good else None,
            "errors": errors,
        }


def _make_loader(
    items: list[SourceItem],
    pending: list[int],
    cfg: EmbedConfig,
    preprocess: ImagePreprocess,
    text_encoder: TextEncoder,
) -> DataLoader:
    """Batches never cross a shard boundary, so each shard's content is independent of the others."""
    batches = []
    for index in pending:
        start, stop = index * cfg.shard_size, min((index + 1) * cfg.shard_size, len(items))
        good = [p for p in range(start, stop) if isinstance(items[p], Record)]
        batches += [good[i : i + cfg.batch_size] for i in range(0, len(good), cfg.batch_size)]
    return DataLoader(
        _RecordImages(items, preprocess),
        batch_sampler=batches,
        num_workers=cfg.loader_workers,
        collate_fn=_Collate(items, text_encoder.make_tokenizer()),
        persistent_workers=False,
    )


def _encode_batch(
    batch: dict[str, Any],
    image_encoder: ImageEncoder,
    text_encoder: TextEncoder,
    device: torch.device,
    cfg: EmbedConfig,
) -> dict[str, list[np.ndarray]]:
    """Run both encoders on one batch; return per-sample float16 arrays by member name."""
    image_out = image_encoder.encode(batch["pixels"].to(device), with_patches=cfg.patch_tokens)
    text_out = text_encoder.encode(batch["tokens"], with_states=cfg.text_states)
    arrays: dict[str, list[np.ndarray]] = {
        "image": list(_to_numpy(image_out.global_)),
        "text": list(_to_numpy(text_out.global_)),
    }
    if cfg.patch_tokens and image_out.patches is not None:
        arrays["image_patches"] = list(_to_numpy(image_out.patches))
    if cfg.text_states and text_out.states is not None:
        lengths = text_out.attention_mask.sum(dim=1).tolist()
        arrays["text_states"] = [
            s[: int(n)] for s, n in zip(_to_numpy(text_out.states), lengths, strict=True)
        ]
    return arrays


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(STORED_DTYPE)


class _ShardAssembler:
    """Collects encoded samples and errors per shard, and writes each shard once it is whole."""

    def __init__(
        self,
        folder: Path,
        items: list[SourceItem],
        shard_size: int,
        source_root: Path,
        log: Callable[[str], None],
        *,
        strict: bool,
    ):
        self.folder = folder
        self.items = items
        self.shard_size = shard_size
        self.source_root = source_root
        self.log = log
        self.strict = strict
        self.samples: dict[int, list[tuple[int, dict[str, bytes]]]] = {}
        self.skipped: dict[int, list[tuple[int, dict[str, str]]]] = {}
        self.truncated: dict[int, int] = {}
        self.seen: dict[int, int] = {}
        self.reported: list[str] = []

    def expected(self, index: int) -> int:
        start, stop = index * self.shard_size, min((index + 1) * self.shard_size, len(self.items))
        return sum(isinstance(self.items[p], Record) for p in range(start, stop))

    def add_error(self, position: int, err: RecordError) -> None:
        self._skip(position, err)
        self._count(position)

    def add_encoded(
        self, positions: list[int], arrays: dict[str, list[np.ndarray]], truncated: list[bool]
    ) -> None:
        for row, position in enumerate(positions):
            record = self.items[position]
            assert isinstance(record, Record)
            sample_arrays = {name: values[row] for name, values in arrays.items()}
            if not all(np.isfinite(a).all() for a in sample_arrays.values()):
                self._skip(
                    position,
                    RecordError(record.id, "embedding is not finite (NaN or Inf)", record.image),
                )
            else:
                meta = self._meta(record, position, truncated[row])
                sample = encode_sample(sample_key(position), sample_arrays, meta)
                self.samples.setdefault(self._shard(position), []).append((position, sample))
                if truncated[row]:
                    self.truncated[self._shard(position)] = (
                        self.truncated.get(self._shard(position), 0) + 1
                    )
            self._count(position)

    def flush_if_ready(self, index: int) -> None:
        if self.seen.get(index, 0) < self.expected(index):
            return
        start, stop = index * self.shard_size, min((index + 1) * self.shard_size, len(self.items))
        for position in range(start, stop):  # errors found before decoding belong to this shard too
            item = self.items[position]
            if isinstance(item, RecordError):
                self._skip(position, item)
        samples = [s for _, s in sorted(self.samples.pop(index, []), key=lambda t: t[0])]
        skipped = [s for _, s in sorted(self.skipped.pop(index, []), key=lambda t: t[0])]
        write_shard(
            self.folder,
            index,
            samples,
            skipped=skipped,
            truncated_reports=self.truncated.pop(index, 0),
        )

    def _skip(self, position: int, err: RecordError) -> None:
        if self.strict:
            raise EmbedError(f"--strict: {err}")
        entry = {"id": err.record_id, "reason": err.reason}
        if err.path:
            entry["file"] = err.path
        self.skipped.setdefault(self._shard(position), []).append((position, entry))
        line = f"skipped {err}"
        self.reported.append(line)
        self.log(line)

    def _count(self, position: int) -> None:
        index = self._shard(position)
        self.seen[index] = self.seen.get(index, 0) + 1
        self.flush_if_ready(index)

    def _shard(self, position: int) -> int:
        return position // self.shard_size

    def _meta(self, record: Record, position: int, truncated: bool) -> dict[str, Any]:
        mask: Any = record.mask
        if is_mask_path(mask):
            mask = relative_path(Path(mask), self.source_root)
        return {
            "id": record.id,
            "position": position,
            "split": record.split,
            "patient_id": record.patient_id,
            "labels": record.labels,
            "report": record.report,
            "image": relative_path(Path(record.image), self.source_root),
            "mask": mask,
            "report_truncated": truncated,
            **({"metadata": record.metadata} if record.metadata else {}),
        }


def _shares_of(out: Path, manifest: Manifest, wanted: list[int]) -> Manifest:
    """A copy of ``manifest`` holding only the finished shards in ``wanted`` (not saved)."""
    done = {i: info for i, info in finished_shards(out).items() if i in wanted}
    return _fold(dataclasses.replace(manifest, complete=False), done)


def finish_manifest(out: Path, manifest: Manifest | None = None) -> Manifest:
    """Fold every shard's progress record into the manifest and mark the job complete."""
    manifest = manifest if manifest is not None else Manifest.load(out)
    done = finished_shards(out)
    _fold(manifest, done)
    manifest.complete = len(done) == shard_count(manifest.total_items, manifest.shard_size)
    manifest.save(out)
    remove_stale_partials(out)
    return manifest


def _fold(manifest: Manifest, done: dict[int, dict[str, Any]]) -> Manifest:
    """Set the manifest's shard list and totals from progress records; return it."""
    manifest.shards = [ShardEntry(**done[i]["shard"]) for i in sorted(done)]
    manifest.skipped = [s for i in sorted(done) for s in done[i]["skipped"]]
    manifest.truncated_reports = sum(done[i]["truncated_reports"] for i in done)
    manifest.count = sum(s.count for s in manifest.shards)
    return manifest
