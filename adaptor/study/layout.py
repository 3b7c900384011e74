"""Where a study writes each of its units under ``OUT``::

OUT/raw/<dataset>/                         synthetic sets made for the study
OUT/embeddings/<dataset>/image/<encoder>/  one image encoder over one dataset (once)
OUT/embeddings/corpus/text/<encoder>/      one text encoder over the corpus (once)
OUT/embeddings/corpus/pairs/<pair>/        the two joined for pretraining (no model runs)
OUT/pretrain/<pair>/<preset>/              one Adaptor per encoder pair × preset
OUT/eval/<dataset>/splits.json             the dataset's nested label splits
OUT/eval/<dataset>/<image>/baseline/       frozen-encoder heads (once per image encoder)
OUT/eval/<dataset>/<pair>/<preset>/        heads and zero-shot on that Adaptor
OUT/study.json, OUT/study.md, OUT/*.png    the study table and its plots
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CORPUS_DIR = "corpus"


def safe_name(name: str) -> str:
    """A folder-safe form of an encoder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


def pair_id(image: str, text: str) -> str:
    """A folder-safe name for an (image, text) encoder pair."""
    return f"{safe_name(image)}__{safe_name(text)}"


@dataclass(frozen=True)
class StudyLayout:
    """The study's folders under ``root``."""

    root: Path

    def raw(self, dataset: str) -> Path:
        return self.root / "raw" / dataset

    def image_shards(self, dataset: str, image: str) -> Path:
        return self.root / "embeddings" / dataset / "image" / safe_name(image)

    def text_shards(self, text: str) -> Path:
        return self.root / "embeddings" / CORPUS_DIR / "text" / safe_name(text)

    def pair_shards(self, image: str, text: str) -> Path:
        return self.root / "embeddings" / CORPUS_DIR / "pairs" / pair_id(image, text)

    def pretrain(self, image: str, text: str, preset: str) -> Path:
        return self.root / "pretrain" / pair_id(image, text) / preset

    def splits(self, dataset: str) -> Path:
        return self.root / "eval" / dataset / "splits.json"

    def baseline(self, dataset: str, image: str) -> Path:
        return self.root / "eval" / dataset / safe_name(image) / "baseline"

    def evaluation(self, dataset: str, image: str, text: str, preset: str) -> Path:
        return self.root / "eval" / dataset / pair_id(image, text) / preset
