"""Shards without a val split, through `adaptor pretrain` with its defaults: a val split is
carved from train (or, where none fits, the last epoch is kept and no val numbers are
written), and rerunning a finished run is a no-op that starts no Ray and touches no file."""

from __future__ import annotations

import io
import json
import time
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import adaptor.pretrain.driver as pretrain_module
from adaptor.cli import app
from adaptor.model import Adaptor
from adaptor.pretrain import LAST_EPOCH, SELECTION_METRIC, describe
from adaptor.pretrain.loop import newest_checkpoint
from adaptor.shards import ShardReader


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def no_val_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic set whose val records were moved to train, embedded with the defaults."""
    root = tmp_path_factory.mktemp("no-val")
    _invoke("synth", "--out", str(root / "raw"), "--n", "60", "--size", "224", "--seed", "3")
    records = root / "raw" / "records.jsonl"
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    assert any(r["split"] == "val" for r in rows)
    rows = [{**r, "split": "train" if r["split"] == "val" else r["split"]} for r in rows]
    records.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _invoke("embed", "--source", f"synthetic:{root / 'raw'}", "--out", str(root / "shards"))
    return root / "shards"


@pytest.mark.slow
def test_no_val_split_is_carved_and_a_finished_rerun_is_a_no_op(
    no_val_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    args = ("pretrain", "--shards", str(no_val_shards), "--out", str(run))
    output = _invoke(*args, "--epochs", "3", "--batch-size", "16")
    assert "no val records" in output and "carved a val split from train" in output

    metrics = json.loads((run / "metrics.json").read_text())
    val = metrics["val"]
    assert val["source"] == "carved" and val["records"] >= 2 and val["patients"] >= 1
    history = _history(run)
    # the driver's carve and the worker's agree: every epoch is scored on the carved records
    assert [h["val_size"] for h in history] == [val["records"]] * 3
    assert metrics["untrained"]["val_size"] == val["records"]
    assert metrics["selected_by"] == SELECTION_METRIC
    best = max(history, key=lambda h: h[SELECTION_METRIC])  # the first of equal scores
    assert metrics["best_epoch"] == best["epoch"]
    assert metrics["best"]["chance_r@1"] == pytest.approx(1 / val["records"])
    assert 0 < metrics["best"]["val_t2i_r@10"] <= 1

    files = [
        run / "metrics.json",
        run / "metrics.jsonl",
        run / "curves.png",
        run / "adaptor" / "model.safetensors",
        run / "adaptor" / "config.json",
    ]
    before = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files}

    def no_ray(*_: object, **__: object) -> None:
        raise AssertionError("a finished run started Ray")

    monkeypatch.setattr(pretrain_module, "start_ray", no_ray)
    started = time.perf_counter()
    again = _invoke(*args, "--epochs", "3", "--batch-size", "16")
    assert time.perf_counter() - started < 10
    assert "already finished" in again and "nothing to do" in again
    assert {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files} == before
    assert json.loads((run / "metrics.json").read_text())["resumed_at_steps"] == []


@pytest.mark.slow
def test_without_a_possible_val_split_the_last_epoch_is_kept_and_no_val_numbers_written(
    no_val_shards: Path, tmp_path: Path
) -> None:
    n_train = sum(m["split"] == "train" for m in ShardReader(no_val_shards).load(members=()).meta)
    run = tmp_path / "run"
    # a batch of n_train - 1: carving even two pairs would leave less than one batch
    args = ("pretrain", "--shards", str(no_val_shards), "--out", str(run), "--epochs", "2")
    output = _invoke(*args, "--batch-size", str(n_train - 1))
    assert "training without val" in output and "last epoch is kept" in output
    assert "last epoch 2/2 kept" in output and "R@" not in output

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"] == {"source": "none", "records": 0}
    assert metrics["selected_by"] == LAST_EPOCH and metrics["best_epoch"] == 2
    assert metrics["best"] == {} and metrics["untrained"] == {}
    for numbers in [metrics["final"], *_history(run)]:
        assert not [k for k in numbers if k.startswith(("val_", "chance_"))]
    checkpoint = newest_checkpoint(run / "ray" / "pretrain", torch.device("cpu"))
    kept = Adaptor.from_pretrained(run / "adaptor").state_dict()
    assert all(torch.equal(kept[k], v) for k, v in checkpoint["model"].items())

    # outputs lost after the last checkpoint: rewritten from it, and no resume is recorded
    (run / "metrics.json").unlink()
    output = _invoke(*args, "--batch-size", str(n_train - 1))
    assert "writing their outputs" in output and "resuming" not in output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumed_at_steps"] == [] and metrics["epochs"] == 2


def test_summary_and_progress_bar_show_no_val_numbers_where_there_are_none(
    tmp_path: Path,
) -> None:
    metrics = {
        "best_epoch": 3,
        "selected_by": LAST_EPOCH,
        "best": {},
        "untrained": {},
        "epochs": 3,
        "trainable_parameters": 1000,
    }
    summary = describe(metrics)
    assert "last epoch 3/3 kept" in summary and "R@" not in summary and "nan" not in summary
    history = tmp_path / "metrics.jsonl"
    history.write_text(json.dumps({"epoch": 1, "train_loss": 2.5, "samples_per_s": 40.0}) + "\n")
    err = io.StringIO()
    with redirect_stderr(err), pretrain_module._EpochProgress(history, 3, enabled=True):
        pass
    assert "loss=2.500" in err.getvalue()
    assert "t2i_r10" not in err.getvalue() and "chance" not in err.getvalue()


@pytest.mark.slow
def test_label_splits_of_shards_without_val_carve_one_with_a_warning(
    no_val_shards: Path, tmp_path: Path
) -> None:
    out = _invoke("splits", "--shards", str(no_val_shards), "--out", str(tmp_path / "s.json"))
    assert "warning: the records have no 'val' split: carved a val split from train" in out
    splits = json.loads((tmp_path / "s.json").read_text())
    patient = {m["id"]: m["patient_id"] for m in ShardReader(no_val_shards).load(members=()).meta}
    val_patients = {patient[i] for i in splits["val"]}
    assert val_patients and not val_patients & {patient[i] for i in splits["train"]["1"]}
