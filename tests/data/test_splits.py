"""Label splits: nested, stratified, patient-disjoint, stable for a seed, saved and reused."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from adaptor.data.splits import (
    LabelSplits,
    SplitError,
    carve_val,
    load_or_make_splits,
    make_label_splits,
)

PREVALENCE = {"common": 0.4, "medium": 0.15, "rare": 0.02}


def _meta(n_patients: int = 600, seed: int = 0) -> list[dict]:
    """Patients with 1–3 studies each, correlated labels within a patient, 70/15/15 by patient."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        split = "train" if p % 20 < 14 else ("val" if p % 20 < 17 else "test")
        base = {name: rng.random() < prev for name, prev in PREVALENCE.items()}
        for s in range(int(rng.integers(1, 4))):
            labels = {n: int(v and rng.random() < 0.9) for n, v in base.items()}
            if rng.random() < 0.1:
                labels["medium"] = None  # missing label
            rows.append(
                {"id": f"r{p:04d}-{s}", "patient_id": f"p{p:04d}", "split": split, "labels": labels}
            )
    return rows


def _prevalence(rows: list[dict], ids: set[str]) -> np.ndarray:
    picked = [r for r in rows if r["id"] in ids]
    return np.array([np.mean([r["labels"][n] == 1 for r in picked]) for n in PREVALENCE])


def test_subsets_are_nested_and_patient_disjoint() -> None:
    rows = _meta()
    splits = make_label_splits(rows, (0.01, 0.1, 1.0), seed=0)
    one, ten, full = (set(splits.train_ids(f)) for f in (0.01, 0.1, 1.0))
    assert one < ten < full
    assert full == {r["id"] for r in rows if r["split"] == "train"}
    assert set(splits.val) == {r["id"] for r in rows if r["split"] == "val"}
    assert set(splits.test) == {r["id"] for r in rows if r["split"] == "test"}
    records_of = defaultdict(set)
    for r in rows:
        records_of[r["patient_id"]].add(r["id"])
    for subset in (one, ten):
        for records in records_of.values():
            assert records <= subset or not (records & subset), "a patient was split"
    n_train = len(full)
    assert abs(len(ten) - 0.1 * n_train) < 0.03 * n_train
    assert 0.5 * 0.01 * n_train <= len(one) <= 3 * 0.01 * n_train


def test_stratified_closer_to_the_full_prevalence_than_random_patient_draws() -> None:
    rows = _meta()
    splits = make_label_splits(rows, (0.1, 1.0), seed=0)
    full = _prevalence(rows, set(splits.train_ids(1.0)))
    stratified_error = np.abs(_prevalence(rows, set(splits.train_ids(0.1))) - full).mean()
    patients = sorted({r["patient_id"] for r in rows if r["split"] == "train"})
    rng = np.random.default_rng(1)
    random_errors = []
    for _ in range(30):
        chosen = set(rng.choice(patients, size=len(patients) // 10, replace=False))
        ids = {r["id"] for r in rows if r["patient_id"] in chosen}
        random_errors.append(np.abs(_prevalence(rows, ids) - full).mean())
    assert stratified_error < np.mean(random_errors) / 2


def test_smallest_subset_has_a_positive_of_every_class() -> None:
    rows = _meta()
    splits = make_label_splits(rows, (0.01, 1.0), seed=3)
    picked = [r for r in rows if r["id"] in set(splits.train_ids(0.01))]
    for name in PREVALENCE:
        assert any(r["labels"][name] == 1 for r in picked), name
    assert splits.warnings == []


def test_class_without_positives_warns() -> None:
    rows = _meta(200)
    for r in rows:
        r["labels"]["never"] = 0
    splits = make_label_splits(rows, (0.05, 1.0), seed=0)
    assert any("'never'" in w for w in splits.warnings)


def test_stable_for_a_seed_and_different_across_seeds() -> None:
    rows = _meta()
    a = make_label_splits(rows, seed=7)
    b = make_label_splits(list(reversed(rows)), seed=7)
    c = make_label_splits(rows, seed=8)
    assert a.train == b.train
    assert a.train["0.1"] != c.train["0.1"]


def test_saved_file_is_reused_and_checked(tmp_path: Path) -> None:
    rows = _meta(200)
    path = tmp_path / "splits.json"
    made, fresh = load_or_make_splits(path, rows, (0.1, 1.0), seed=0)
    assert fresh and path.is_file()
    again, fresh = load_or_make_splits(path, rows, (0.1, 1.0), seed=5)
    assert not fresh and again == made == LabelSplits.load(path)
    with pytest.raises(SplitError, match="fraction"):
        load_or_make_splits(path, rows, (0.01, 1.0), seed=0)
    with pytest.raises(SplitError, match="not in these shards"):
        load_or_make_splits(path, rows[:50], (0.1, 1.0), seed=0)


def test_patient_in_two_splits_is_refused() -> None:
    rows = _meta(100)
    rows[0]["split"] = "test" if rows[0]["split"] == "train" else "train"
    rows[1]["patient_id"] = rows[0]["patient_id"]
    rows[1]["split"] = "val" if rows[0]["split"] != "val" else "train"
    with pytest.raises(SplitError, match="patient"):
        make_label_splits(rows, seed=0)


def test_bad_fractions_and_unlabelled_records_are_refused() -> None:
    with pytest.raises(SplitError, match="fractions"):
        make_label_splits(_meta(50), (0.0, 1.0))
    with pytest.raises(SplitError, match="no labels"):
        make_label_splits([{"id": "a", "split": "train", "labels": {}}])


def _without_val(rows: list[dict]) -> list[dict]:
    return [{**r, "split": "train" if r["split"] == "val" else r["split"]} for r in rows]


def test_carve_is_patient_level_seeded_and_about_a_tenth() -> None:
    train = [r for r in _without_val(_meta(300)) if r["split"] == "train"]
    carve = carve_val(train, seed=0)
    assert carve is not None
    val = {r["id"] for r in train if carve.holds(r)}
    n_patients = len({r["patient_id"] for r in train})
    assert carve.train_patients == n_patients
    assert carve.patients == round(0.1 * n_patients) and carve.records == len(val)
    val_patients = {r["patient_id"] for r in train if r["id"] in val}
    assert len(val_patients) == carve.patients
    assert all((r["id"] in val) == (r["patient_id"] in val_patients) for r in train)
    assert carve_val(list(reversed(train)), seed=0) == carve  # the rows' order does not matter
    assert carve_val(train, seed=1) != carve


def test_carve_keeps_what_training_needs_or_gives_up() -> None:
    train = [{"id": f"r{i}", "split": "train"} for i in range(20)]  # no patient ids
    assert carve_val(train, seed=0).patients == 2  # each record is its own patient
    assert carve_val(train, seed=0, min_records=5).records == 5
    fits = lambda c: 20 - c.records >= 19  # noqa: E731 - one batch of 19 must stay in train
    assert carve_val(train, seed=0, fits=fits).records == 1
    assert carve_val(train, seed=0, min_records=2, fits=fits) is None
    one_patient = [{**r, "patient_id": "p0"} for r in train]
    assert carve_val(one_patient, seed=0) is None


def test_no_val_split_carves_one_from_train_with_a_warning() -> None:
    rows = _without_val(_meta())
    splits = make_label_splits(rows, (0.01, 0.1, 1.0), seed=0)
    train_ids = {r["id"] for r in rows if r["split"] == "train"}
    full, val = set(splits.train_ids(1.0)), set(splits.val)
    assert val and full | val == train_ids and not full & val
    assert set(splits.train_ids(0.01)) < set(splits.train_ids(0.1)) < full
    patient = {r["id"]: r["patient_id"] for r in rows}
    assert not {patient[i] for i in val} & {patient[i] for i in full}
    assert any("no 'val' split" in w and "carved" in w for w in splits.warnings)
    assert make_label_splits(rows, (0.01, 0.1, 1.0), seed=0) == splits


def test_no_val_and_one_train_patient_warns_that_none_can_be_carved() -> None:
    rows = [
        {"id": f"r{i}", "patient_id": "p0", "split": "train", "labels": {"a": i % 2}}
        for i in range(6)
    ]
    splits = make_label_splits(rows, (0.5, 1.0), seed=0)
    assert splits.val == [] and len(splits.train_ids(1.0)) == 6
    assert any("none can be carved" in w for w in splits.warnings)


@pytest.mark.parametrize(
    ("n_patients", "seed", "fractions", "sha256"),
    [
        (200, 3, (0.05, 1.0), "da67384670a1fccf8f320752769fa768ef1fb7f6f9a483123502d31a39de359c"),
        (
            600,
            0,
            (0.01, 0.1, 1.0),
            "2c16940ecc25dfd4fef3de919eb939033111636eb1ea648f4301a09733b63124",
        ),
    ],
    ids=["200-patients", "600-patients"],
)
def test_split_files_of_data_with_val_are_byte_identical_to_earlier_versions(
    tmp_path: Path, n_patients: int, seed: int, fractions: tuple[float, ...], sha256: str
) -> None:
    path = tmp_path / "splits.json"
    make_label_splits(_meta(n_patients), fractions, seed).save(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
