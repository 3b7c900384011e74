"""The embed stage's input: records decoded and preprocessed in loader workers, in batches
that never cross a shard boundary."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from adaptor.data.records import Record, RecordError
from adaptor.data.sources import SourceItem
from adaptor.embed.job import EmbedConfig
from adaptor.embed.pixels import load_pixels
from adaptor.encoders import ImagePreprocess, TextEncoder, TokenBatch


def make_loader(
    items: list[SourceItem],
    pending: list[int],
    cfg: EmbedConfig,
    preprocess: ImagePreprocess | None,
    text_encoder: TextEncoder | None,
) -> DataLoader:
    """Batches never cross a shard boundary, so each shard's content is independent of the others.

    ``preprocess`` None (no image encoder): no image is opened, and no worker is started.
    ``text_encoder`` None: no report is tokenized (``tokens`` is None).
    """
    batches = []
    for index in pending:
        start, stop = index * cfg.shard_size, min((index + 1) * cfg.shard_size, len(items))
        good = [p for p in range(start, stop) if isinstance(items[p], Record)]
        batches += [good[i : i + cfg.batch_size] for i in range(0, len(good), cfg.batch_size)]
    return DataLoader(
        _RecordImages(items, preprocess),
        batch_sampler=batches,
        num_workers=cfg.loader_workers if preprocess is not None else 0,
        collate_fn=_Collate(items, text_encoder.make_tokenizer() if text_encoder else None),
        persistent_workers=False,
    )


class _RecordImages(Dataset):
    """Decodes and preprocesses one record's image; a bad record comes back as its error.

    Without ``preprocess`` it reads nothing: every record comes back as ``None`` pixels.
    """

    def __init__(self, items: list[SourceItem], preprocess: ImagePreprocess | None):
        self.items = items
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | RecordError | None]:
        record = self.items[position]
        assert isinstance(record, Record)
        if self.preprocess is None:
            return position, None
        try:
            pixels = load_pixels(record.id, record.image)
        except RecordError as err:  # any decoding failure skips this record, never the job
            return position, err
        return position, self.preprocess(pixels)


class _Collate:
    """Stacks good images, tokenizes their reports (with a tokenizer), passes errors through."""

    def __init__(self, items: list[SourceItem], tokenize: Callable[[list[str]], TokenBatch] | None):
        self.items = items
        self.tokenize = tokenize

    def __call__(
        self, batch: list[tuple[int, torch.Tensor | RecordError | None]]
    ) -> dict[str, Any]:
        good = [(p, x) for p, x in batch if not isinstance(x, RecordError)]
        errors = [(p, x) for p, x in batch if isinstance(x, RecordError)]
        positions = [p for p, _ in good]
        pixels = [x for _, x in good if x is not None]
        reports = [self.items[p].report for p in positions]  # type: ignore[union-attr]
        return {
            "positions": positions,
            "pixels": torch.stack(pixels) if pixels else None,
            "tokens": self.tokenize(reports) if good and self.tokenize else None,
            "errors": errors,
        }
