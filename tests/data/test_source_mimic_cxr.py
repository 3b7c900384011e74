"""MIMIC-CXR-JPG layout: report sections, views, labels, official splits and bad input."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptor.data.image_io import load_image
from adaptor.data.records import Record, RecordError
from adaptor.data.sources.base import SourceError
from adaptor.data.sources.chexpert import CHEXPERT_LABELS
from adaptor.data.sources.mimic_cxr import extract_sections, open_mimic_cxr

META_HEADER = [
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]
# the published file lists the observations alphabetically
LABEL_HEADER = ["subject_id", "study_id", *sorted(CHEXPERT_LABELS)]

D1 = "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"  # PA, patient 10000032
D2 = "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962"  # LATERAL, same study
D3 = "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"  # AP, patient 10000764
D4 = "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714"  # AP, patient 10000898 (no labels row)

REPORT_1 = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. The
 cardiomediastinal silhouette is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""
REPORT_2 = """WET READ: ___ ___ 3:15 PM  Mild pulmonary edema.

                                 FINAL REPORT
 indication: Shortness of breath.
 Findings: Moderate cardiomegaly. Mild interstitial edema,
 possibly slightly improved.  Small left pleural effusion.
 Impression: Mild pulmonary edema.  Small left effusion.
 RECOMMENDATION(S):  Follow-up radiograph.
"""
REPORT_3 = """                                 FINAL REPORT
 HISTORY:  Fever.

 FINDINGS AND IMPRESSION:  Right lower lobe opacity concerning for pneumonia.
"""


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _meta_row(dicom: str, subject: str, study: str, view: str) -> list[str]:
    desc = "CHEST (PA AND LAT)"
    return [dicom, subject, study, desc, view, "32", "24", "21800506", "213014.531", "", "", ""]


def _labels_row(subject: str, study: str, **values: str) -> list[str]:
    return [subject, study] + [values.get(n.replace(" ", "_"), "") for n in sorted(CHEXPERT_LABELS)]


STUDIES = {  # study_id -> (subject_id, report text)
    "50414267": ("10000032", REPORT_1),
    "51678950": ("10000764", REPORT_2),
    "57415417": ("10000898", REPORT_3),
}


def _make_tree(root: Path, *, reports_root: Path | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    meta = [
        _meta_row(D1, "10000032", "50414267", "PA"),
        _meta_row(D2, "10000032", "50414267", "LATERAL"),
        _meta_row(D3, "10000764", "51678950", "AP"),
        _meta_row(D4, "10000898", "57415417", "AP"),
    ]
    _write_csv(root / "mimic-cxr-2.0.0-metadata.csv", META_HEADER, meta)
    split = [
        [D1, "50414267", "10000032", "train"],
        [D2, "50414267", "10000032", "train"],
        [D3, "51678950", "10000764", "validate"],
        [D4, "57415417", "10000898", "test"],
    ]
    _write_csv(
        root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], split
    )
    labels = [
        _labels_row("10000032", "50414267", No_Finding="1.0"),
        _labels_row(
            "10000764",
            "51678950",
            Cardiomegaly="1.0",
            Edema="-1.0",
            Pleural_Effusion="1.0",
            Pneumothorax="0.0",
        ),
    ]
    _write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", LABEL_HEADER, labels)
    for row in meta:
        dicom, subject, study = row[:3]
        study_dir = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        study_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 24), 200, np.uint8)).save(study_dir / f"{dicom}.jpg")
        report_dir = (reports_root or root) / "files" / f"p{subject[:2]}" / f"p{subject}"
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / f"s{study}.txt").write_text(STUDIES[study][1], encoding="utf-8")
    return root


def _records(root: Path, **options: str) -> list[Record]:
    items = list(open_mimic_cxr(root, options).items())
    assert all(isinstance(item, Record) for item in items), items
    return items  # type: ignore[return-value]


def test_frontal_records_ids_reports_labels_splits(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "mimic")
    a, b, c = _records(root)
    assert [a.id, b.id, c.id] == [D1, D3, D4]
    assert a.image == root.resolve() / "files/p10/p10000032/s50414267" / f"{D1}.jpg"
    assert a.report == (
        "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral "
        "nodular opacities that most likely represent nipple shadows. The "
        "cardiomediastinal silhouette is normal. No acute cardiopulmonary process."
    )
    assert b.report == (
        "Moderate cardiomegaly. Mild interstitial edema, possibly slightly improved. "
        "Small left pleural effusion. Mild pulmonary edema. Small left effusion."
    )
    assert c.report == "Right lower lobe opacity concerning for pneumonia."
    assert (a.patient_id, b.patient_id, c.patient_id) == ("10000032", "10000764", "10000898")
    assert (a.split, b.split, c.split) == ("train", "val", "test")
    assert list(a.labels) == list(CHEXPERT_LABELS)
    assert a.labels["No Finding"] == 1 and a.labels["Edema"] is None
    assert b.labels["Cardiomegaly"] == 1 and b.labels["Edema"] == -1
    assert b.labels["Pneumothorax"] == 0
    assert c.labels == dict.fromkeys(CHEXPERT_LABELS)


def test_load_image_reads_a_record(tmp_path: Path) -> None:
    record = _records(_make_tree(tmp_path / "mimic"))[0]
    image = load_image(record.image)
    assert image.shape == (32, 24)
    assert np.allclose(image, 200 / 255, atol=0.01)


@pytest.mark.parametrize(
    ("policy", "expected"), [("keep", -1), ("ones", 1), ("zeros", 0), ("ignore", None)]
)
def test_uncertain_policies(tmp_path: Path, policy: str, expected: int | None) -> None:
    record = _records(_make_tree(tmp_path / "mimic"), uncertain=policy)[1]
    assert record.labels["Edema"] == expected
    assert record.labels["Cardiomegaly"] == 1 and record.labels["Pneumothorax"] == 0


def test_views_option(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "mimic")
    assert [r.id for r in _records(root, views="lateral")] == [D2]
    everything = _records(root, views="all")
    assert [r.id for r in everything] == [D1, D2, D3, D4]
    assert everything[1].report == everything[0].report  # same study, same report


def test_sections_option(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "mimic")
    impression = _records(root, sections="impression")
    assert [r.report for r in impression] == [
        "No acute cardiopulmonary process.",
        "Mild pulmonary edema. Small left effusion.",
        "Right lower lobe opacity concerning for pneumonia.",
    ]
    findings = _records(root, sections="findings")
    assert findings[0].report.startswith("There is no focal consolidation")
    assert findings[0].report.endswith("silhouette is normal.")
    full = _records(root, sections="full")
    assert full[0].report.startswith("FINAL REPORT EXAMINATION: CHEST (PA AND LAT) INDICATION:")


def test_extract_sections_excludes_other_sections() -> None:
    wanted = frozenset({"findings", "impression"})
    text = (
        "EXAMINATION: CHEST PORT\nCLINICAL HISTORY: ___ with chest pain\n"
        "findings:\n  Lungs are clear.\nNo effusion.\nCOMPARISON: ___\n"
        "CONCLUSION:\nNormal chest.\nNOTIFICATION: Discussed with Dr. ___.\n"
    )
    assert extract_sections(text, wanted) == "Lungs are clear. No effusion. Normal chest."
    assert extract_sections("Heart size normal. Lungs clear.", wanted) == ""


def test_reports_option_separate_tree(tmp_path: Path) -> None:
    reports = tmp_path / "mimic-cxr-reports"
    root = _make_tree(tmp_path / "jpg", reports_root=reports)
    assert [r.report for r in _records(root, reports=str(reports))][2] == (
        "Right lower lobe opacity concerning for pneumonia."
    )
    assert _records(root, reports=str(reports / "files"))[0].report.endswith("process.")
    with pytest.raises(SourceError, match="reports folder not found"):
        open_mimic_cxr(root, {"reports": str(tmp_path / "nowhere")})


def test_gzipped_tables(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "mimic")
    for name in ("metadata", "split", "chexpert"):
        plain = root / f"mimic-cxr-2.0.0-{name}.csv"
        with gzip.open(f"{plain}.gz", "wb") as fh:
            fh.write(plain.read_bytes())
        plain.unlink()
    assert [r.id for r in _records(root)] == [D1, D3, D4]


def test_bad_records(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "mimic")
    (root / "files/p10/p10000032/s50414267" / f"{D1}.jpg").unlink()
    (root / "files/p10/p10000764/s51678950.txt").write_text(
        "FINAL REPORT\nINDICATION: cough\nHeart size is normal.\n", encoding="utf-8"
    )
    (root / "files/p10/p10000898/s57415417.txt").unlink()
    items = list(open_mimic_cxr(root, {}).items())
    assert all(isinstance(i, RecordError) for i in items)
    assert [(i.record_id, i.reason) for i in items] == [
        (D1, "image file not found"),
        (D3, "report has no FINDINGS/IMPRESSION section (use sections=full to keep it)"),
        (D4, "report file not found"),
    ]
    assert items[2].path == str(root.resolve() / "files/p10/p10000898/s57415417.txt")


def test_bad_label_split_and_duplicate(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "mimic")
    labels = root / "mimic-cxr-2.0.0-chexpert.csv"
    labels.write_text(labels.read_text().replace("-1.0", "2.0"), encoding="utf-8")
    split = root / "mimic-cxr-2.0.0-split.csv"
    split.write_text(split.read_text().replace("test", "holdout"), encoding="utf-8")
    meta = root / "mimic-cxr-2.0.0-metadata.csv"
    lines = meta.read_text().splitlines()
    meta.write_text("\n".join([*lines, lines[1]]) + "\n", encoding="utf-8")
    items = list(open_mimic_cxr(root, {}).items())
    assert isinstance(items[0], Record)
    errors = items[1:]
    assert all(isinstance(e, RecordError) for e in errors)
    assert "line 3" in errors[0].reason and "'2.0'" in errors[0].reason
    assert errors[0].path == str(labels.resolve())
    assert "unknown split 'holdout'" in errors[1].reason
    assert "duplicate dicom_id on line 6" in errors[2].reason


def test_missing_files_and_columns_are_source_errors(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "mimic")
    (root / "mimic-cxr-2.0.0-split.csv").unlink()
    with pytest.raises(SourceError, match=r"mimic-cxr-2\.0\.0-split\.csv"):
        open_mimic_cxr(root, {})
    _write_csv(root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id"], [])
    with pytest.raises(SourceError, match=r"missing column\(s\) \['split'\]"):
        open_mimic_cxr(root, {})


def test_bad_options(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "mimic")
    with pytest.raises(SourceError, match="does not take"):
        open_mimic_cxr(root, {"split": "official"})
    with pytest.raises(SourceError, match="sections"):
        open_mimic_cxr(root, {"sections": "findings,history"})
    with pytest.raises(SourceError, match="views"):
        open_mimic_cxr(root, {"views": "frontal,lateral"})
    with pytest.raises(SourceError, match="uncertain"):
        open_mimic_cxr(root, {"uncertain": "maybe"})
