"""IU X-ray (Kaggle CSV form): report sections, views, Problems labels, splits and bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptor.data.image_io import load_image
from adaptor.data.records import Record, RecordError
from adaptor.data.sources.base import SourceError
from adaptor.data.sources.iu_xray import open_iu_xray

REPORT_HEADER = [
    "uid",
    "MeSH",
    "Problems",
    "image",
    "indication",
    "comparison",
    "findings",
    "impression",
]
FINDINGS_1 = (
    "The cardiac silhouette and mediastinum size are within normal limits. "
    "There is no pulmonary edema. There is no focal consolidation."
)
REPORTS = [
    [
        "1",
        "normal",
        "normal",
        "Xray Chest PA and Lateral",
        "Positive TB test",
        "None.",
        FINDINGS_1,
        "Normal chest x-XXXX.",
    ],
    [
        "2",
        "Cardiomegaly/borderline;Pulmonary Artery/enlarged",
        "Cardiomegaly;Pulmonary Artery",
        "Chest, 2 views, frontal and lateral",
        "Preop bariatric surgery.",
        "None.",
        "Borderline cardiomegaly. Enlarged pulmonary arteries. Clear lungs.",
        "No acute pulmonary findings.",
    ],
    [
        "3",
        "normal",
        "normal",
        "PA and lateral chest",
        "PPD positive",
        "",
        "",
        "Heart size is normal and the lungs are clear.",
    ],
    ["4", "Opacity/lung", "Opacity", "CHEST 2V", "Cough", "", "", ""],
]


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _tree(
    root: Path, images: str = "images/images_normalized", extra: list[list[str]] = ()
) -> None:
    projections = [
        [uid, f"{uid}_IM-000{uid}-{n}.dcm.png", view]
        for uid in ("1", "2", "3", "4")
        for n, view in (("1001", "Frontal"), ("2001", "Lateral"))
    ]
    projections += [list(row) for row in extra]
    _write_csv(root / "indiana_reports.csv", REPORT_HEADER, REPORTS)
    _write_csv(root / "indiana_projections.csv", ["uid", "filename", "projection"], projections)
    for _, filename, _ in projections:
        path = root / images / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16), 200, dtype=np.uint8)).save(path, format="PNG")


def _items(root: Path, **options: str) -> tuple[dict[str, Record], dict[str, RecordError]]:
    items = list(open_iu_xray(root, options).items())
    return (
        {i.id: i for i in items if isinstance(i, Record)},
        {i.record_id: i for i in items if isinstance(i, RecordError)},
    )


def test_frontal_reports_and_labels(tmp_path: Path) -> None:
    _tree(tmp_path)
    records, errors = _items(tmp_path)
    assert list(records) == ["1_IM-0001-1001", "2_IM-0002-1001", "3_IM-0003-1001"]
    assert list(errors) == ["4_IM-0004-1001"] and "empty report" in str(errors["4_IM-0004-1001"])
    r1 = records["1_IM-0001-1001"]
    assert r1.report == FINDINGS_1 + " Normal chest x-XXXX."
    assert r1.patient_id == "1"
    assert r1.image == tmp_path.resolve() / "images/images_normalized/1_IM-0001-1001.dcm.png"
    vocab = {"cardiomegaly", "no_finding", "opacity", "pulmonary_artery"}
    assert r1.labels == {t: int(t == "no_finding") for t in sorted(vocab)}
    assert {t for t, v in records["2_IM-0002-1001"].labels.items() if v} == {
        "cardiomegaly",
        "pulmonary_artery",
    }
    # findings empty: the impression alone is the report
    assert records["3_IM-0003-1001"].report == "Heart size is normal and the lungs are clear."
    assert load_image(r1.image).shape == (16, 16)


def test_sections_and_views(tmp_path: Path) -> None:
    _tree(tmp_path)
    records, errors = _items(tmp_path, sections="impression", views="lateral")
    assert set(records) == {"1_IM-0001-2001", "2_IM-0002-2001", "3_IM-0003-2001"}
    assert records["2_IM-0002-2001"].report == "No acute pulmonary findings."
    records, errors = _items(tmp_path, sections="findings", views="all")
    assert "3_IM-0003-1001" in errors and "3_IM-0003-2001" in errors
    assert records["2_IM-0002-2001"].report.startswith("Borderline cardiomegaly.")
    assert len(records) == 4
    # both views of one study share a patient, hence a split
    assert records["1_IM-0001-1001"].split == records["1_IM-0001-2001"].split
    with pytest.raises(SourceError, match="sections"):
        open_iu_xray(tmp_path, {"sections": "indication"})
    with pytest.raises(SourceError, match="views"):
        open_iu_xray(tmp_path, {"views": "pa"})


def test_split_is_patient_disjoint(tmp_path: Path) -> None:
    _tree(tmp_path)
    rows = [
        [str(u), "normal", "normal", "", "", "", "Clear lungs.", "Normal."] for u in range(10, 70)
    ]
    _write_csv(tmp_path / "indiana_reports.csv", REPORT_HEADER, REPORTS + rows)
    extra = [
        [str(u), f"{u}_IM-{u}-{n}.dcm.png", v]
        for u in range(10, 70)
        for n, v in ((1, "Frontal"), (2, "Lateral"))
    ]
    _write_csv(tmp_path / "indiana_projections.csv", ["uid", "filename", "projection"], extra)
    for _, filename, _ in extra:
        Image.new("L", (8, 8)).save(tmp_path / "images/images_normalized" / filename, format="PNG")
    records, _ = _items(tmp_path, views="all")
    splits: dict[str, set[str]] = {}
    for r in records.values():
        splits.setdefault(r.patient_id, set()).add(r.split)
    assert all(len(s) == 1 for s in splits.values())
    assert {s for v in splits.values() for s in v} == {"train", "val", "test"}


def test_images_option_and_bad_rows(tmp_path: Path) -> None:
    extra = [["2", "2_IM-0002-9.dcm.png", "Oblique"], ["99", "99_IM-1.dcm.png", "Frontal"]]
    _tree(tmp_path, images="pngs", extra=extra)
    (tmp_path / "pngs" / "2_IM-0002-1001.dcm.png").unlink()
    records, errors = _items(tmp_path, images=str(tmp_path / "pngs"))
    assert set(records) == {"1_IM-0001-1001", "3_IM-0003-1001"}
    assert str(errors["2_IM-0002-1001"]).endswith("image file not found")
    assert "unknown projection 'Oblique'" in str(errors["2_IM-0002-9"])
    assert "uid '99' has no row" in str(errors["99_IM-1"])
    records, _ = _items(tmp_path, images="pngs")
    assert "1_IM-0001-1001" in records
    records, errors = _items(tmp_path)  # default folder absent
    missing = {k for k, e in errors.items() if str(e).endswith("image file not found")}
    assert not records and missing == {"1_IM-0001-1001", "2_IM-0002-1001", "3_IM-0003-1001"}


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="indiana_reports.csv"):
        open_iu_xray(tmp_path, {})
    _tree(tmp_path)
    _write_csv(
        tmp_path / "indiana_projections.csv", ["uid", "file", "view"], [["1", "a.png", "Frontal"]]
    )
    with pytest.raises(SourceError, match=r"\['filename', 'projection'\]"):
        list(open_iu_xray(tmp_path, {}).items())
    with pytest.raises(SourceError, match="does not take"):
        open_iu_xray(tmp_path, {"xml": "1"})
