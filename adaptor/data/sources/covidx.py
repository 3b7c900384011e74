"""COVIDx CXR (``covidx:ROOT``): COVID-19 chest X-ray classification, image only.

Data: COVIDx CXR-2/3/4 from the COVID-Net project (Wang, Lin & Wong, Sci Rep 2020;
Wu et al., arXiv:2311.17677), https://github.com/lindawangg/COVID-Net/blob/master/docs/COVIDx.md
and Kaggle ``andyczhao/covidx-cxr2``. COVIDx is assembled from public collections
(covid-chestxray-dataset, Figure1, Actualmed, COVID-19 Radiography Database, RSNA
Pneumonia / NIH ChestX-ray, RICORD, BIMCV, ...); each keeps its own licence and terms,
which bind the user — check them before use.

Expected layout::

    ROOT/train.txt  ROOT/test.txt  [ROOT/val.txt — COVIDx CXR-4 only]
    ROOT/train/<file>  ROOT/test/<file>  [ROOT/val/<file>]

Each list line holds four space-separated fields: patient id, file name, class, data
source. Classes are either ``positive``/``negative`` (CXR-2 and later) → labels
``{"covid": 1|0}``, or ``normal``/``pneumonia``/``COVID-19`` (older 3-class versions) →
one-hot ``{"normal", "pneumonia", "covid_19"}``. The scheme follows the classes found;
a dataset mixing both schemes is refused.

Splits: ``test.txt`` → test; ``val.txt`` (when present) → val and all of ``train.txt``
→ train; otherwise ``train.txt`` → train/val by a sha256 hash of the patient id
(85/15). A patient listed in a more held-out list (test > val > train) yields a
RecordError for its rows in the less held-out list, so the official test set stays
whole and no patient crosses splits. Record id = file name stem (duplicates are
errors). Reports are empty and ``has_reports`` is False, so
``adaptor embed`` keeps the records without ``--allow-empty-reports``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from adaptor.data.records import Record, RecordError
from adaptor.data.sources.base import (
    SourceError,
    SourceItem,
    patient_fraction,
    reject_unknown_options,
)

KIND = "covidx"
BINARY = {"positive": 1, "negative": 0}
THREE_CLASS = {"normal": "normal", "pneumonia": "pneumonia", "covid-19": "covid_19"}
# list file -> split; a patient belongs to the first list (in this order) naming it
LISTS = ("test", "val", "train")


@dataclass(frozen=True)
class _Line:
    list_name: str
    line_no: int
    patient: str
    filename: str
    cls: str


class CovidxSource:
    """Records from a COVIDx CXR folder."""

    has_reports = False

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.spec = f"{KIND}:{self.root}"
        for name in ("train.txt", "test.txt"):
            if not (self.root / name).is_file():
                raise SourceError(f"covidx source {self.root}: missing {name}")
        self.has_val = (self.root / "val.txt").is_file()

    def items(self) -> Iterator[SourceItem]:
        lines: list[_Line | RecordError] = []
        for name in ("train", "val", "test"):
            if name != "val" or self.has_val:
                lines.extend(self._read_list(name))
        good = [x for x in lines if isinstance(x, _Line)]
        scheme = self._scheme(good)
        home: dict[str, str] = {}
        for name in LISTS:
            for line in good:
                if line.list_name == name:
                    home.setdefault(line.patient, name)
        seen: set[str] = set()
        for line in lines:
            if isinstance(line, RecordError):
                yield line
                continue
            try:
                yield self._record(line, scheme, home[line.patient], seen)
            except RecordError as err:
                yield err

    def _read_list(self, name: str) -> Iterator[_Line | RecordError]:
        path = self.root / f"{name}.txt"
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line_no, text in enumerate(fh, start=1):
                fields = text.split()
                if not fields:
                    continue
                if len(fields) != 4:
                    yield RecordError(
                        f"{path.name}:{line_no}",
                        f"{path.name} line {line_no} has {len(fields)} fields, expected 4 "
                        "(patient id, file name, class, data source)",
                        path,
                    )
                    continue
                patient, filename, cls, _ = fields
                yield _Line(name, line_no, patient, filename, cls.lower())

    def _scheme(self, lines: list[_Line]) -> dict[str, int] | dict[str, str]:
        classes = {line.cls for line in lines}
        if classes & set(BINARY) and classes & set(THREE_CLASS):
            raise SourceError(
                f"covidx source {self.root}: lists mix positive/negative with "
                f"normal/pneumonia/COVID-19 classes ({sorted(classes)})"
            )
        return THREE_CLASS if classes & set(THREE_CLASS) else BINARY

    def _record(
        self, line: _Line, scheme: dict[str, int] | dict[str, str], home: str, seen: set[str]
    ) -> Record:
        path = self.root / f"{line.list_name}.txt"
        rid = Path(line.filename).stem
        if line.cls not in scheme:
            raise RecordError(
                rid,
                f"{path.name} line {line.line_no}: unknown class {line.cls!r} "
                f"(expected one of {sorted(scheme)})",
                path,
            )
        if home != line.list_name:
            raise RecordError(
                rid,
                f"{path.name} line {line.line_no}: patient {line.patient!r} is also in "
                f"{home}.txt; dropped so no patient crosses splits",
                path,
            )
        if rid in seen:
            raise RecordError(rid, f"{path.name} line {line.line_no}: duplicate record id", path)
        seen.add(rid)
        image = self.root / line.list_name / line.filename
        if not image.is_file():
            raise RecordError(rid, "image file not found", image)
        if scheme is BINARY:
            labels = {"covid": BINARY[line.cls]}
        else:
            labels = {name: int(THREE_CLASS[line.cls] == name) for name in THREE_CLASS.values()}
        if line.list_name == "train" and not self.has_val:
            split = "val" if patient_fraction(line.patient) >= 0.85 else "train"
        else:
            split = line.list_name
        return Record(
            id=rid, image=image, report="", labels=labels, split=split, patient_id=line.patient
        )


def open_covidx(root: Path, options: dict[str, str]) -> CovidxSource:
    """Open a COVIDx CXR folder (no options)."""
    reject_unknown_options(KIND, options, {})
    return CovidxSource(root)
