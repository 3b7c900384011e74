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

Records with no ``val`` split get one carved from ``train`` (:func:`carve_val`): about
10 % of the train patients, picked by a seeded hash of the patient id, with a warning.
Pretraining carves its val split the same way.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adaptor.atomic import atomic_write_json
from adaptor.config.downstream import GridOptions, SplitOptions
from adaptor.data.sources.base import patient_fraction
from adaptor.errors import AdaptorError

_GRID, _SPLIT = GridOptions(), SplitOptions()  # the defaults of what draws the splits
VAL_CARVE_FRACTION = 0.1  # share of the train patients carved into val where there is no val


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


def patient_of(row: dict[str, Any]) -> str:
    """The patient of a record: its ``patient_id``, else the record is its own patient."""
    return row.get("patient_id") or f"record:{row['id']}"


@dataclass(frozen=True)
class ValCarve:
    """A val split carved from ``train``: the patients whose seeded hash is at most ``cut``.

    Whether a record belongs to it depends only on its metadata, the seed and ``cut``, so
    every process reading the same shards (the driver, each Ray worker) agrees.
    """

    seed: int
    cut: float
    patients: int
    records: int
    train_patients: int

    def holds(self, row: dict[str, Any]) -> bool:
        """Whether a ``train`` record moves to val."""
        return _carve_rank(patient_of(row), self.seed) <= self.cut

    def describe(self) -> str:
        """One line for logs and warnings."""
        return (
            f"carved a val split from train: {self.patients} of {self.train_patients} "
            f"patients ({self.records} records, seed {self.seed})"
        )


def carve_val(
    train: Sequence[dict[str, Any]],
    seed: int,
    *,
    min_records: int = 1,
    fits: Callable[[ValCarve], bool] = lambda carve: True,
) -> ValCarve | None:
    """About ``VAL_CARVE_FRACTION`` of the ``train`` patients as val, chosen by a seeded hash.

    At least one patient and ``min_records`` records go to val, and at least one patient
    stays in train; ``fits(carve)`` may demand more of what stays (e.g. a full batch).
    Fewer patients are carved when that is needed to fit; None when nothing fits.
    """
    counts = Counter(patient_of(row) for row in train)
    order = sorted(counts, key=lambda p: (_carve_rank(p, seed), p))
    records = np.cumsum([0] + [counts[p] for p in order])  # records[k]: the first k patients
    k = max(1, round(VAL_CARVE_FRACTION * len(order)))
    while k < len(order) and records[k] < min_records:
        k += 1
    for n in range(min(k, len(order) - 1), 0, -1):
        if records[n] < min_records:
            break
        carve = ValCarve(
            seed=seed,
            cut=_carve_rank(order[n - 1], seed),
            patients=n,
            records=int(records[n]),
            train_patients=len(order),
        )
        if fits(carve):
            return carve
    return None


def _carve_rank(patient: str, seed: int) -> float:
    return patient_fraction(f"val-carve:{seed}:{patient}")


def label_names_of(meta: Sequence[dict[str, Any]]) -> list[str]:
    """Every label name that occurs in the records, in order of first appearance."""
    names: dict[str, None] = {}
    for row in meta:
        for name in row.get("labels") or {}:
            names.setdefault(name, None)
    return list(names)


def make_label_splits(
    meta: Sequence[dict[str, Any]],
    fractions: Sequence[float] = tuple(_GRID.fractions),
    seed: int = _SPLIT.split_seed,
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
    warnings: list[str] = []
    if not by_split["val"]:
        warnings.append(_carve_into(by_split, seed))

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
    fractions: Sequence[float] = tuple(_GRID.fractions),
    seed: int = _SPLIT.split_seed,
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


def _carve_into(by_split: dict[str, list[dict[str, Any]]], seed: int) -> str:
    """Move a carved val split out of ``train`` (for early stopping); the warning saying so."""
    train = by_split["train"]
    carve = carve_val(train, seed)
    if carve is None:
        return (
            "the records have no 'val' split and one train patient only, so none can be "
            "carved: heads train without early stopping on val"
        )
    by_split["val"] = [row for row in train if carve.holds(row)]
    by_split["train"] = [row for row in train if not carve.holds(row)]
    return f"the records have no 'val' split: {carve.describe()}, for early stopping"


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
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit  # imports sklearn: slow

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
