"""Bad input through `adaptor embed` with the defaults users run (loader workers > 0).

Every kind of unreadable image is reported, counted in ``skipped`` with its reason and
skipped, and never costs the good records; every AdaptorError survives the pickling that
carries it out of a DataLoader worker or a Ray actor; an embed that keeps nothing fails.
"""

from __future__ import annotations

import csv
import errno
import importlib
import inspect
import io
import pickle
import pkgutil
from collections.abc import Callable, Iterator
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
from dicom_files import write_dicom
from PIL import Image
from typer.testing import CliRunner, Result

import adaptor
from adaptor.cli import app
from adaptor.data.records import RecordError
from adaptor.data.sources.chexpert import COLUMNS
from adaptor.embed import EmbedError
from adaptor.embed.actors import _get
from adaptor.errors import AdaptorError
from adaptor.shards import Manifest

N_GOOD = 20


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (48, 48), dtype=np.uint8)


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_pixels(99)).save(buffer, format=fmt)
    return buffer.getvalue()


BROKEN: dict[str, tuple[Callable[[Path], object], str]] = {
    "missing.png": (lambda p: None, "file not found"),
    "folder.png": (lambda p: p.mkdir(), "not a regular file"),
    "empty.png": (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    "text.png": (lambda p: p.write_text("not an image\n"), "cannot identify image file"),
    "truncated.png": (lambda p: p.write_bytes(_encoded("PNG")[:900]), "truncated"),
    "cut.jpg": (lambda p: p.write_bytes(_encoded("JPEG")[:400]), "truncated"),
    "no-pixels.dcm": (
        lambda p: write_dicom(p, None, Rows=48, Columns=48, PatientID="anon"),
        "DICOM has no pixel data",
    ),
    "garbage.dcm": (lambda p: p.write_bytes(b"\x00garbage" * 40), "invalid DICOM"),
}


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "image", "report"])
        writer.writeheader()
        writer.writerows(rows)


def _embed(source: str, out: Path) -> Result:
    """`adaptor embed` with every default option."""
    return CliRunner().invoke(app, ["embed", "--source", source, "--out", str(out)])


def test_every_broken_image_is_one_skip_and_the_good_ones_are_embedded(tmp_path: Path) -> None:
    rows = []
    for i in range(N_GOOD):
        Image.fromarray(_pixels(i)).save(tmp_path / f"good{i}.png")
        rows.append({"id": f"good{i}", "image": f"good{i}.png", "report": f"finding {i}"})
    for name, (make, _) in BROKEN.items():
        make(tmp_path / name)
        rows.append({"id": name, "image": name, "report": "a report"})
    rows.insert(5, {"id": "no-report", "image": "good0.png", "report": " "})
    _write_csv(tmp_path / "data.csv", rows)

    out = tmp_path / "shards"
    result = _embed(f"csv:{tmp_path / 'data.csv'}", out)

    assert result.exit_code == 0, result.output
    manifest = Manifest.load(out)
    assert manifest.complete and manifest.count == N_GOOD
    skipped = {s["id"]: s for s in manifest.skipped}
    assert set(skipped) == {*BROKEN, "no-report"}
    assert "empty report" in skipped["no-report"]["reason"]
    for name, (_, words) in BROKEN.items():
        assert words in skipped[name]["reason"], skipped[name]
        assert skipped[name]["file"] == str(tmp_path / name)
        assert f"skipped record {name!r}" in result.output
    assert f"{N_GOOD} samples" in result.output and f"{len(BROKEN) + 1} skipped" in result.output


class _MissingThing(AdaptorError, FileNotFoundError):
    """Its own ``__init__`` on an OSError layout: the hardest case for the rebuild."""

    def __init__(self, what: str, path: str):
        self.what = what
        super().__init__(errno.ENOENT, f"{what} not found", path)


def _import_all_modules() -> None:
    for info in pkgutil.walk_packages(adaptor.__path__, "adaptor."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _instance(cls: type[AdaptorError]) -> AdaptorError:
    """An instance built through the class's own ``__init__``, each required argument named."""
    params = inspect.signature(cls.__init__).parameters.values()
    required = [
        p
        for p in list(params)[1:]
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    args = [f"{p.name}-of-{cls.__name__}" for p in required] or [f"message of {cls.__name__}"]
    err = cls(*args)
    err.add_note("a note")
    return err


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_every_adaptor_error_survives_pickling(dumps: Callable[[object], bytes]) -> None:
    _import_all_modules()
    ours = [c for c in _subclasses(AdaptorError) if c.__module__.startswith("adaptor.")]
    classes = sorted({AdaptorError, _MissingThing, *ours}, key=lambda c: c.__qualname__)
    assert len(ours) >= 27, [c.__name__ for c in ours]  # ray's RayTaskError(...) wrappers left out
    for cls in classes:
        err = _instance(cls)
        copy = pickle.loads(dumps(err))
        assert type(copy) is cls
        assert str(copy) == str(err) and copy.args == err.args
        assert vars(copy) == vars(err) and vars(err), cls  # the fields (and the note) came along
        if isinstance(err, OSError):
            assert (copy.errno, copy.filename) == (err.errno, err.filename)
    copy = pickle.loads(dumps(RecordError("r1", "bad", "x.png")))
    assert (copy.record_id, copy.reason, copy.path) == ("r1", "bad", "x.png")


def test_an_embed_that_keeps_nothing_fails_and_keeps_its_skip_report(tmp_path: Path) -> None:
    names = ["text.png", "missing.png"]
    for name in names:
        BROKEN[name][0](tmp_path / name)
    source = tmp_path / "bad.csv"
    _write_csv(source, [{"id": n, "image": n, "report": "a report"} for n in names])

    out = tmp_path / "shards"
    result = _embed(f"csv:{source}", out)

    assert result.exit_code == 2, result.output
    message = result.output.split("error: ", 1)[1]
    assert "0 samples" in message and str(source) in message
    assert "cannot identify image file" in message and "file not found" in message
    manifest = Manifest.load(out)
    assert manifest.count == 0 and {s["id"] for s in manifest.skipped} == set(names)


CHEXPERT = "CheXpert-v1.0-small"


def test_an_image_only_layout_embeds_without_allow_empty_reports(tmp_path: Path) -> None:
    root = tmp_path / CHEXPERT
    root.mkdir()
    for name, split, patients in (("train.csv", "train", [1, 2, 3]), ("valid.csv", "valid", [9])):
        with open(root / name, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            for patient in patients:
                path = f"{CHEXPERT}/{split}/patient{patient:05d}/study1/view1_frontal.jpg"
                writer.writerow([path, "Female", "60", "Frontal", "AP", "1.0"] + [""] * 13)
                (tmp_path / path).parent.mkdir(parents=True)
                Image.fromarray(_pixels(patient)).save(tmp_path / path)

    out = tmp_path / "shards"
    result = _embed(f"chexpert:{root}", out)  # no --allow-empty-reports: the layout has none

    assert result.exit_code == 0, result.output
    manifest = Manifest.load(out)
    assert manifest.count == 4 and manifest.skipped == []


def test_an_actor_error_that_cannot_be_unpickled_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import ray
    from ray.exceptions import UnserializableException

    def get(ref: object) -> None:
        raise UnserializableException("Traceback (most recent call last):\nlib.OddError: odd\n")

    monkeypatch.setattr(ray, "get", get)
    with pytest.raises(EmbedError, match="an embed actor failed: lib.OddError: odd; finished"):
        _get(object(), tmp_path)
