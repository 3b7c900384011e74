"""Nested, stratified, patient-level label splits: 1 % ⊂ 10 % ⊂ 100 % of the training split.

Every downstream run (heads on frozen features, heads on the Adaptor, tuned encoders)
reads the same saved split file, so all methods see the same patients.

Subsets are drawn over *patients*, not records: a patient's studies are all in or all
out, and train/val/test come from the records' own (patient-disjoint) ``split``. Each
smaller subset is drawn from the next larger one with iterative multi-label
stratification (``iterstrat``), so subsets are nested by construction. Where the
stratifier leaves a class without positives in a small subset, a patient with that
class is added from the parent subset; where the parent has none either, a warning says
so and metrics for that class come out undefined.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

from adaptor.atomic import atomic_write_json
from adaptor.errors import AdaptorError

DEFAULT_FRACTIONS = (0.01, 0.1, 1.0)


class SplitError(AdaptorError, ValueError):
    """Splits that cannot be made, or a split file that does not fit the data."""


def fraction_key(fraction: float) -> str:
    """The key a fraction is stored under: ``0.01`` → ``"0.01"``, ``1.0`` → ``"1"``."""
    return f"{fraction:g}"


@dataclass
class LabelSplits:
    """Record ids per nested training fraction, plus the val and test ids, and the seed."""

    seed: int
    fractions: list[float]
    label_names: list[str]
    train: dict[str, list[str]]
    val: list[str]
    test: list[str]
    warnings: list[str] = field(default_factory=list)

    def train_ids(self, fraction: float) -> list[str]:
        """The training record ids of one fraction."""
        key = fraction_key(fraction)
        if key not in self.train:
            raise SplitError(
                f"fraction {fraction:g} is not in this split file (it has "
                f"{', '.join(self.train)}); make new splits with `adaptor splits --fractions …`"
            )
        return self.train[key]

    def save(self, path: Path) -> None:
        """Write the splits as JSON (atomically)."""
        atomic_write_json(Path(path), asdict(self))

    @classmethod
    def load(cls, path: Path) -> LabelSplits:
        """Read a split file written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(**data)
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise SplitError(f"cannot read label splits from {path}: {err}") from err


def label_names_of(meta: Sequence[dict[str, Any]]) -> list[str]:
    """Every label name that occurs in the records, in order of first appearance."""
    names: dict[str, None] = {}
    for row in meta:
        for name in row.get("labels") or {}:
            names.setdefault(name, None)
    return list(names)


def make_label_splits(
    meta: Sequence[dict[str, Any]],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    label_names: Sequence[str] | None = None,
) -> LabelSplits:
    """Draw nested stratified patient-level subsets of the ``train`` records.

    ``meta`` rows need ``id``, ``split``, ``labels`` and (optionally) ``patient_id``;
    a record without a patient id is its own patient.
    """
    fracs = sorted({float(f) for f in fractions})
    if not fracs or fracs[0] <= 0 or fracs[-1] > 1:
        raise SplitError(f"fractions must lie in (0, 1]; got {list(fractions)}")
    names = list(label_names) if label_names else label_names_of(meta)
    if not names:
        raise SplitError("the records carry no labels, so there is nothing to split on")

    by_split: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in meta:
        by_split[row.get("split") or "train"].append(row)
    if not by_split["train"]:
        raise SplitError("no records in the 'train' split")
    _check_patient_disjoint(by_split)

    patients: dict[str, list[str]] = defaultdict(list)  # patient -> record ids
    positives: dict[str, np.ndarray] = {}
    for row in by_split["train"]:
        pid = row.get("patient_id") or f"record:{row['id']}"
        patients[pid].append(row["id"])
        hits = np.array([(row.get("labels") or {}).get(n) == 1 for n in names], dtype=bool)
        positives[pid] = positives.get(pid, np.zeros(len(names), bool)) | hits
    order = sorted(patients)  # deterministic before any random draw
    n_records = sum(len(patients[p]) for p in order)

    rng = np.random.default_rng(seed)
    warnings: list[str] = []
    chosen = order
    subsets: dict[str, list[str]] = {}
    for fraction in reversed(fracs):
        if fraction < 1.0:
            chosen = _stratified_subset(chosen, positives, patients, fraction * n_records, rng)
            chosen, warn = _cover_classes(chosen, positives, names, fraction, rng, parent=order)
            warnings += warn
        subsets[fraction_key(fraction)] = sorted(r for p in chosen for r in patients[p])
        order = chosen
    return LabelSplits(
        seed=seed,
        fractions=fracs,
        label_names=names,
        train={fraction_key(f): subsets[fraction_key(f)] for f in fracs},
        val=sorted(r["id"] for r in by_split["val"]),
        test=sorted(r["id"] for r in by_split["test"]),
        warnings=warnings,
    )


def load_or_make_splits(
    path: Path,
    meta: Sequence[dict[str, Any]],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> tuple[LabelSplits, bool]:
    """Reuse the split file at ``path`` when it covers ``fractions``; else make and save one.

    Returns the splits and whether they were made now. A reused file must only name
    records that exist in ``meta``.
    """
    path = Path(path)
    if path.is_file():
        splits = LabelSplits.load(path)
        missing = [f for f in fractions if fraction_key(f) not in splits.train]
        if missing:
            raise SplitError(
                f"{path} has no subset for fraction(s) {', '.join(f'{f:g}' for f in missing)}; "
                "delete it or pass another --splits file"
            )
        known = {row["id"] for row in meta}
        unknown = [i for i in splits.train[fraction_key(max(splits.fractions))] if i not in known]
        if unknown:
            raise SplitError(
                f"{path} names {len(unknown)} record(s) not in these shards (e.g. {unknown[0]!r}); "
                "it was made for other data"
            )
        return splits, False
    splits = make_label_splits(meta, fractions, seed)
    splits.save(path)
    return splits, True


def _check_patient_disjoint(by_split: dict[str, list[dict[str, Any]]]) -> None:
    owner: dict[str, str] = {}
    for split, rows in by_split.items():
        for row in rows:
            pid = row.get("patient_id")
            if pid is None:
                continue
            if owner.setdefault(pid, split) != split:
                raise SplitError(
                    f"patient {pid!r} has records in both {owner[pid]!r} and {split!r} "
                    f"(e.g. record {row['id']!r}); train/val/test must be patient-disjoint"
                )


def _stratified_subset(
    parent: list[str],
    positives: dict[str, np.ndarray],
    patients: dict[str, list[str]],
    target_records: float,
    rng: np.random.Generator,
) -> list[str]:
    """About ``target_records`` records' worth of patients from ``parent``, stratified."""
    mean_per_patient = sum(len(patients[p]) for p in parent) / len(parent)
    n_pick = int(round(target_records / mean_per_patient))
    n_pick = min(max(n_pick, 1), len(parent))
    if n_pick == len(parent):
        return list(parent)
    if n_pick == 1:
        return sorted(rng.choice(parent, size=n_pick, replace=False).tolist())
    y = np.stack([positives[p] for p in parent]).astype(int)
    splitter = MultilabelStratifiedShuffleSplit(
        n_splits=1, test_size=n_pick, random_state=int(rng.integers(2**31 - 1))
    )
    _, picked = next(splitter.split(np.zeros(len(parent)), y))
    return sorted(parent[i] for i in picked)


def _cover_classes(
    chosen: list[str],
    positives: dict[str, np.ndarray],
    names: list[str],
    fraction: float,
    rng: np.random.Generator,
    parent: list[str],
) -> tuple[list[str], list[str]]:
    """Add a parent patient for each class with no positive in ``chosen``; warn where none exists."""
    chosen = list(chosen)
    warnings: list[str] = []
    for c, name in enumerate(names):
        if any(positives[p][c] for p in chosen):
            continue
        candidates = [p for p in parent if positives[p][c] and p not in chosen]
        if candidates:
            chosen.append(str(rng.choice(candidates)))
        else:
            warnings.append(
                f"the {fraction:g} split has no positive for {name!r} (none in its parent "
                "subset either); its per-class metrics will be undefined"
            )
    return sorted(chosen), warnings
