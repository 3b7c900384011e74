"""Zero-shot classification in the Adaptor's shared space: no labels, no head.

Each label's positive and negative prompts (:mod:`adaptor.downstream.prompts`) run through
the frozen text encoder and the Adaptor's text path; each side's unit vectors are averaged
and renormalised. An image (its cached embedding through the Adaptor's image path) gets
``P(label) = softmax(s·[cos(image, positive), cos(image, negative)])[0]`` with ``s`` the
Adaptor's contrastive scale ``exp(logit_scale)``.

:func:`run_zeroshot` scores a split of cached shards with the heads' metrics (AUROC per
label and macro; uncertain and missing labels masked as the heads do) and writes
``zeroshot.json`` and ``zeroshot.md``; a rerun with the same shards, Adaptor weights,
options and prompts returns that result without running a model. There is no
frozen-encoder baseline: the image and text encoders embed into unrelated spaces (of
different widths in general), so only the Adaptor's shared space can compare an image with
a sentence.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from adaptor.atomic import atomic_open, atomic_write_json
from adaptor.config.downstream import UncertainPolicy, ZeroShotOptions
from adaptor.downstream.grid import setup_key
from adaptor.downstream.prompts import (
    BUILTIN_PROMPTS,
    LabelPrompts,
    PromptError,
    find_prompts,
    load_prompts,
    prompts_for,
)
from adaptor.downstream.results import CellResult
from adaptor.encoders import TextEncoder, build_text_encoder
from adaptor.errors import AdaptorError
from adaptor.heads.classification import label_matrix
from adaptor.metrics.classification import classification_metrics
from adaptor.model import Adaptor, AdaptorMismatchError, load_adaptor_for
from adaptor.model.adaptor import WEIGHTS_NAME
from adaptor.shards import ShardReader
from adaptor.shards.manifest import MANIFEST_NAME, Manifest, encoder_differences

METHOD = "adaptor+zeroshot"
NO_BASELINE = (
    "no frozen-encoder baseline: the image and text encoders embed into unrelated spaces "
    "(of different widths in general); only the Adaptor's shared space compares them"
)
TextVectors = Callable[[list[str]], Tensor]  # texts → [N, width] unit vectors of the shared space


class ZeroShotError(AdaptorError, ValueError):
    """Zero-shot evaluation that cannot run on the given shards (no records, unknown labels)."""


class ZeroShotClassifier:
    """Per-label positive and negative prompt vectors, and the scale that turns them into
    probabilities."""

    def __init__(
        self, prompts: Mapping[str, LabelPrompts], text_vectors: TextVectors, logit_scale: Tensor
    ):
        if not prompts:
            raise PromptError("no labels to classify")
        self.labels = list(prompts)
        self.scale = float(logit_scale.detach().exp())
        texts = list(dict.fromkeys(t for p in prompts.values() for t in p.positive + p.negative))
        row = {text: i for i, text in enumerate(texts)}
        vectors = text_vectors(texts).float().cpu()

        def side(choose: Callable[[LabelPrompts], tuple[str, ...]]) -> Tensor:
            means = [vectors[[row[t] for t in choose(p)]].mean(0) for p in prompts.values()]
            return F.normalize(torch.stack(means), dim=-1)

        self.positive = side(lambda p: p.positive)
        self.negative = side(lambda p: p.negative)

    def probabilities(self, images: Tensor) -> Tensor:
        """``P(label)`` [N, L] for unit image vectors [N, width] of the shared space."""
        images = images.float().cpu()
        margin = images @ self.positive.T - images @ self.negative.T
        return torch.sigmoid(self.scale * margin)  # = the softmax over (positive, negative)


def adaptor_text_vectors(adaptor: Adaptor, manifest: Manifest, device: str = "cpu") -> TextVectors:
    """Texts → the text encoder the Adaptor was trained on (else the one ``manifest``
    names), checked by fingerprint → the Adaptor's text path, as one function."""
    spec = (adaptor.config.encoders or {}).get("text") or manifest.encoders.get("text")
    if not spec:
        raise ZeroShotError("neither the Adaptor nor the shards record a text encoder")
    encoder = _text_encoder(spec["name"], device)
    diffs = encoder_differences(encoder.info.to_dict(), spec, "text")
    if diffs:
        raise AdaptorMismatchError(
            "the text encoder built here is not the one the Adaptor's text path was trained "
            "on:\n  " + "\n  ".join(diffs)
        )
    tokenizer = encoder.make_tokenizer()

    def vectors(texts: list[str]) -> Tensor:
        with torch.inference_mode():
            return adaptor.encode_text(encoder.encode(tokenizer(texts)).global_.float())

    return vectors


@functools.lru_cache(maxsize=1)
def _text_encoder(name: str, device: str) -> TextEncoder:
    """The frozen text encoder ``name``, kept while it is the one asked for: a study scores
    every Adaptor of a text encoder with it."""
    return build_text_encoder(name, device)


@dataclass
class ZeroShotResult:
    """Metrics of one zero-shot evaluation, with what it ran on."""

    split: str | None
    records: int
    labels: list[str]
    metrics: dict[str, float | None]
    per_class: dict[str, dict[str, float | None]]
    counts: dict[str, dict[str, int]]
    prompts: dict[str, dict[str, list[str]]]
    logit_scale: float
    encoders: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    def to_cell(self) -> CellResult:
        """This evaluation as the 0 % row of a classification results table."""
        return CellResult(
            task="classification",
            method=METHOD,
            fraction=0.0,
            seed=0,
            metrics=self.metrics,
            trainable_parameters=0,
            per_class=self.per_class,
            extra={"split": self.split, "records": self.records, "notes": self.notes},
        )

    def markdown(self) -> str:
        """A table: AUROC and AUPRC per label (chance: 0.5 and the prevalence) and macro."""
        lines = [
            "# Zero-shot classification",
            "",
            f"Split `{self.split or 'all'}`, {self.records} records; `n/a`: undefined "
            "(no positive or no negative). Chance: AUROC 0.5, AUPRC the prevalence.",
            "",
            "| label | AUROC | AUPRC | positives | negatives | prevalence |",
            "|---|---|---|---|---|---|",
        ]
        for label in self.labels:
            n = self.counts[label]
            total = n["positives"] + n["negatives"]
            prevalence = f"{n['positives'] / total:.3f}" if total else "n/a"
            lines.append(
                f"| {label} | {_fmt(self.per_class['auroc'][label])} | "
                f"{_fmt(self.per_class['auprc'][label])} | {n['positives']} | "
                f"{n['negatives']} | {prevalence} |"
            )
        lines.append(
            f"| **macro** | {_fmt(self.metrics['auroc_macro'])} | "
            f"{_fmt(self.metrics['auprc_macro'])} | | | |"
        )
        lines += ["", *[f"- {note}" for note in self.notes]]
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


_DEFAULTS = ZeroShotOptions()


def evaluate_zeroshot(
    shards: str | Path,
    adaptor_dir: str | Path,
    *,
    labels: Sequence[str] | None = None,
    prompts: Mapping[str, LabelPrompts] | None = None,
    split: str | None = _DEFAULTS.split,
    uncertain: UncertainPolicy = _DEFAULTS.uncertain,
    device: str = _DEFAULTS.device,
) -> ZeroShotResult:
    """Score the records of ``split`` (``None``: all) of ``shards`` zero-shot.

    ``labels`` default to the records' labels that have prompts (``prompts``, else
    built-in); labels asked for must be in the records and have prompts.
    """
    if labels is not None:
        prompts_for(labels, prompts)  # fail before loading anything
    shards = Path(shards).resolve()
    reader = ShardReader(shards)
    adaptor = load_adaptor_for(Path(adaptor_dir), reader.manifest, shards).to(device)
    table = reader.load(split, members=("image",))
    if not len(table):
        raise ZeroShotError(f"no records in split {split!r} of {shards}")
    have = list(dict.fromkeys(name for m in table.meta for name in (m.get("labels") or {})))
    notes = [NO_BASELINE]
    if labels is None:
        usable = [name for name in have if find_prompts(name, prompts)]
        if not usable:
            prompts_for(have, prompts)  # raises, naming the labels without prompts
        skipped = [name for name in have if name not in usable]
        if skipped:
            notes.append(f"labels without prompts left out: {', '.join(skipped)}")
        labels = usable
    missing = [name for name in labels if name not in have]
    if missing:
        raise ZeroShotError(
            f"labels {missing} are not in the records of {shards} (they have {have})"
        )
    chosen = prompts_for(labels, prompts)

    text = adaptor_text_vectors(adaptor, reader.manifest, device)
    classifier = ZeroShotClassifier(chosen, text, adaptor.logit_scale)
    with torch.inference_mode():
        images = torch.cat(
            [adaptor.encode_image(b.to(device)) for b in table.arrays["image"].split(1024)]
        )
    probs = classifier.probabilities(images)
    targets, valid = label_matrix(table.meta, labels, uncertain)
    metrics, per_class = classification_metrics(probs, targets, valid, labels)
    positives = (targets * valid).sum(0).long().tolist()
    present = valid.sum(0).long().tolist()
    return ZeroShotResult(
        split=split,
        records=len(table),
        labels=list(labels),
        metrics=metrics,
        per_class=per_class,
        counts={
            name: {"positives": p, "negatives": n - p}
            for name, p, n in zip(labels, positives, present, strict=True)
        },
        prompts={name: p.to_dict() for name, p in chosen.items()},
        logit_scale=float(adaptor.logit_scale.detach()),
        encoders=reader.manifest.encoders,
        notes=notes,
    )


def run_zeroshot(
    shards: str | Path,
    adaptor_dir: str | Path,
    out: str | Path,
    options: ZeroShotOptions | None = None,
    *,
    prompts: Mapping[str, LabelPrompts] | None = None,
    log: Callable[[str], None] = tqdm.write,
) -> ZeroShotResult:
    """:func:`evaluate_zeroshot`, then ``OUT/zeroshot.json`` and ``OUT/zeroshot.md``.

    ``options`` (defaults: :class:`~adaptor.config.ZeroShotOptions`) may name a prompts YAML;
    ``prompts`` gives already parsed prompts instead. A ``zeroshot.json`` written for the
    same shards, Adaptor weights, labels, split, uncertainty policy and prompts is returned
    as it is (the device is not part of that setup).
    """
    options = options or ZeroShotOptions()
    labels, split, uncertain, device = (
        options.labels,
        None if options.split == "all" else options.split,
        options.uncertain,
        options.device,
    )
    if prompts is None and options.prompts is not None:
        prompts = options.prompts
    if isinstance(prompts, (str, Path)):
        prompts = load_prompts(prompts)
    out = Path(out)
    setup = {"labels": labels, "split": split, "uncertain": uncertain}
    setup["prompts"] = {name: p.to_dict() for name, p in (prompts or {}).items()}
    setup["builtin"] = {name: p.to_dict() for name, p in BUILTIN_PROMPTS.items()}
    key = setup_key(setup, [Path(shards) / MANIFEST_NAME, Path(adaptor_dir) / WEIGHTS_NAME])
    result = done = _finished(out / "zeroshot.json", key)
    if done is not None:
        log(f"zero-shot: reusing {out / 'zeroshot.json'} (same shards, Adaptor and options)")
    else:
        result = evaluate_zeroshot(
            shards,
            adaptor_dir,
            labels=labels,
            prompts=prompts,
            split=split,
            uncertain=uncertain,
            device=device,
        )
        atomic_write_json(out / "zeroshot.json", {**result.to_dict(), "setup": key})
    if done is None or not (out / "zeroshot.md").is_file():
        with atomic_open(out / "zeroshot.md", "w", encoding="utf-8") as fh:
            fh.write(result.markdown())
    return result


def _finished(path: Path, key: str) -> ZeroShotResult | None:
    """The result ``path`` holds when it was written for setup ``key``."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    return ZeroShotResult(**saved) if saved.pop("setup", None) == key else None
