"""Tests for the seeded synthetic chest-radiograph generator."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptor.data import synthetic
from adaptor.data.synthetic import FINDINGS, REGION_FINDINGS, generate_synthetic

# Words that state a finding; a sentence holding one must not negate it when it is present.
KEYWORDS = {
    "opacity": r"opacit|consolidation|infiltrate|airspace",
    "cardiomegaly": r"cardiomegaly|heart|cardiac|cardiomediastinal",
    "pleural_effusion": r"effusion|pleural space|pleural fluid|costophrenic",
    "pneumothorax": r"pneumothora",
    "nodule": r"nodul",
    "support_device": r"\btubes?\b|catheter|\bleads?\b|\blines?\b|devices?",
}
NEGATION = re.compile(r"\b(no|not|without|negative|free of|normal|clear|resolved|unremarkable)\b")


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("synth")
    return out, generate_synthetic(out, 200, seed=7, size=224, progress=False)


def _sentences(report: str) -> list[str]:
    return [s.strip().lower() for s in re.split(r"[.:]", report) if s.strip()]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.png")}


def test_same_seed_same_bytes_and_different_seed_differs(tmp_path: Path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_synthetic(a, 8, seed=3, size=224, progress=False)
    generate_synthetic(b, 8, seed=3, size=224, progress=False)
    generate_synthetic(c, 8, seed=4, size=224, progress=False)
    assert (a / "records.jsonl").read_bytes() == (b / "records.jsonl").read_bytes()
    assert _files(a) == _files(b)
    assert (a / "records.jsonl").read_bytes() != (c / "records.jsonl").read_bytes()
    images_a, images_c = _files(a), _files(c)
    assert all(images_a[k] != images_c[k] for k in images_a if k in images_c)


def test_record_does_not_depend_on_n(tmp_path: Path):
    short = generate_synthetic(tmp_path / "short", 4, seed=5, size=224, progress=False)
    long = generate_synthetic(tmp_path / "long", 9, seed=5, size=224, progress=False)
    for r_short, r_long in zip(short, long[:4], strict=True):
        assert r_short.report == r_long.report and r_short.labels == r_long.labels
        assert r_short.image.read_bytes() == r_long.image.read_bytes()


def test_records_are_complete_and_consistent(synth_set):
    out, records = synth_set
    lines = (out / "records.jsonl").read_text().splitlines()
    assert len(lines) == len(records) == 200
    assert not Path(json.loads(lines[0])["image"]).is_absolute()
    for r in records:
        assert re.fullmatch(r"synth-\d{6}", r.id) and re.fullmatch(r"pt-\d{5}", r.patient_id)
        with Image.open(r.image) as im:
            assert im.mode == "L" and im.size == (224, 224)
        assert set(r.labels) == set(FINDINGS)
        assert set(r.labels.values()) <= {1, 0, -1}
        others = [r.labels[f] for f in FINDINGS if f != "no_finding"]
        assert r.labels["no_finding"] == int(all(v == 0 for v in others))
        regional = any(r.labels[f] != 0 for f in REGION_FINDINGS)
        assert (r.mask is not None) == regional, r.id
        if r.mask is not None:
            mask = np.asarray(Image.open(r.mask))
            assert mask.shape == (224, 224)
            assert set(np.unique(mask)) <= {0, 255} and mask.any()


def test_label_mix_is_reasonable(synth_set):
    _, records = synth_set
    values = {f: np.array([r.labels[f] for r in records]) for f in FINDINGS}
    for name in FINDINGS[:-1]:
        assert 0.05 <= np.mean(values[name] != 0) <= 0.35, name
    assert 0.2 <= np.mean(values["no_finding"] == 1) <= 0.5
    assert any((v == -1).any() for v in values.values())
    counts = sum((values[f] != 0).astype(int) for f in FINDINGS[:-1])
    assert counts.max() <= 3


def test_reports_state_and_never_negate_present_findings(synth_set):
    _, records = synth_set
    for r in records:
        words = len(r.report.split())
        assert 10 <= words <= 90, (words, r.report)
        sentences = _sentences(r.report)
        for name, pattern in KEYWORDS.items():
            if r.labels[name] == 0:
                continue
            stating = [s for s in sentences if re.search(pattern, s)]
            assert stating, (name, r.report)
            assert not any(NEGATION.search(s) for s in stating), (name, r.report)
        lung_findings = ("opacity", "pleural_effusion", "pneumothorax", "nodule")
        if any(r.labels[f] != 0 for f in lung_findings):
            assert "lungs are clear" not in r.report.lower()
        if r.labels["no_finding"] == 1:
            assert not any(
                re.search(p, s) and not NEGATION.search(s)
                for p in KEYWORDS.values()
                for s in sentences
            ), r.report


def test_patients_never_cross_splits(synth_set):
    _, records = synth_set
    splits = defaultdict(set)
    for r in records:
        splits[r.patient_id].add(r.split)
    assert all(len(s) == 1 for s in splits.values())
    assert {r.split for r in records} == {"train", "val", "test"}
    assert 0.5 <= np.mean([r.split == "train" for r in records]) <= 0.9
    assert max(sum(r.patient_id == p for r in records) for p in splits) <= 3


@pytest.mark.parametrize(
    ("finding", "direction"),
    [
        (synthetic._Finding("opacity", side="right", zone="lower", size=0.09), 1),
        (synthetic._Finding("pleural_effusion", side="left", size=0.1), 1),
        (synthetic._Finding("pneumothorax", side="left", size=0.22), -1),
        (synthetic._Finding("nodule", side="right", zone="upper", size=14), 1),
    ],
)
def test_regional_findings_are_visible_in_their_mask(finding, direction):
    """The finding changes the pixels inside its mask and leaves the rest alone."""
    anatomy = synthetic._place_study(
        synthetic._sample_habitus(np.random.default_rng(0)), np.random.default_rng(1)
    )
    with_it, mask = synthetic._render(anatomy, [finding], np.random.default_rng(2), 256)
    without, empty = synthetic._render(anatomy, [], np.random.default_rng(2), 256)
    assert mask.sum() > 30 and not empty.any()
    diff = with_it.astype(float) - without.astype(float)
    assert direction * diff[mask].mean() > 15
    assert np.abs(diff[~mask]).mean() < 2


def test_heart_and_devices_are_visible():
    anatomy = synthetic._place_study(
        synthetic._sample_habitus(np.random.default_rng(0)), np.random.default_rng(1)
    )
    base, _ = synthetic._render(anatomy, [], np.random.default_rng(2), 256)
    big = synthetic._Finding("cardiomegaly", size=0.62)
    devices = synthetic._Finding("support_device", devices=("ett", "ng", "cvc", "ecg"))
    heart, heart_mask = synthetic._render(anatomy, [big], np.random.default_rng(2), 256)
    tubes, _ = synthetic._render(anatomy, [devices], np.random.default_rng(2), 256)
    assert not heart_mask.any()
    assert ((heart.astype(int) - base) > 25).sum() > 1000  # a wider heart shadow
    assert ((tubes.astype(int) - base) > 50).sum() > 300  # bright tubes and leads


@pytest.mark.parametrize("size", [223, 513, 0])
def test_size_out_of_range_raises(tmp_path: Path, size: int):
    with pytest.raises(ValueError, match="size"):
        generate_synthetic(tmp_path, 2, size=size, progress=False)


def test_largest_size(tmp_path: Path):
    (record,) = generate_synthetic(tmp_path, 1, seed=2, size=512, progress=False)
    assert Image.open(record.image).size == (512, 512)
