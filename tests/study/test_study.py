"""``adaptor study`` end to end on a tiny study through the CLI, its resume, each encoder
running once per dataset, and the study config's bad input refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from adaptor.cli import app

IMAGE_ENCODERS = ["efficientnet-lite0"]  # a 2 × 2 grid: benchmarks/study_encoders.py
TINY = {
    "corpus": {"synth": {"n": 60, "size": 224}},
    "evaluate": {
        "corpus": {"source": "corpus", "tasks": ["zeroshot"]},  # its heads: test_cluster.py
        "shifted": {
            "synth": {"n": 40, "seed": 3, "size": 224, "acquisition": "shifted", "reports": False},
            "tasks": ["classification", "segmentation", "zeroshot"],
        },
    },
    "encoders": {"image": IMAGE_ENCODERS, "text": ["all-minilm-l6-v2"]},
    "presets": {
        "ours": {"epochs": 2, "batch_size": 16, "model": {"width": 32, "heads": 4}},
        "reference": {"epochs": 2, "batch_size": 16},
    },
    "fractions": [0.5, 1.0],
    "seeds": [0],
    "embed": {"batch_size": 20, "shard_size": 40},
    "classification": {"heads": ["linear"], "max_epochs": 5},
    "segmentation": {"methods": ["decoder", "adaptor-neck"], "image_size": 64, "steps": 4},
}


def _study(tmp_path: Path, config: dict, name: str = "study.yaml") -> list[str]:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return ["study", "--config", str(path), "--out", str(tmp_path / "out"), "--no-progress"]


@pytest.mark.slow
def test_study_end_to_end_then_resume(tmp_path: Path) -> None:
    args = _study(tmp_path, TINY)
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    out = tmp_path / "out"

    # each image encoder once per dataset, the text encoder once, on the corpus only
    runs = [line for line in first.output.splitlines() if line.startswith("[embed] ")]
    runs = [line for line in runs if " over " in line]
    expected = {f"{e} over {d}" for e in IMAGE_ENCODERS for d in ("corpus", "shifted")}
    expected.add("all-minilm-l6-v2 over corpus")
    assert sorted(r.split(" -> ")[0].removeprefix("[embed] ") for r in runs) == sorted(expected)
    shifted = json.loads(
        (out / "embeddings/shifted/image/efficientnet-lite0/manifest.json").read_text()
    )
    assert set(shifted["encoders"]) == {"image"}  # an image-only set runs no text encoder

    table = (out / "study.md").read_text()
    assert table in first.output
    for header in ("## classification (auroc_macro)", "## segmentation (dice)"):
        assert header in table
    for column in ("corpus 0 %", "shifted 0 %", "shifted 50 %", "shifted 100 %"):
        assert column in table
    rows = json.loads((out / "study.json").read_text())["rows"]
    assert not json.loads((out / "study.json").read_text())["failures"]
    kinds = {(r["image"], r["text"], r["preset"], r["method"]) for r in rows}
    for image in IMAGE_ENCODERS:
        assert (image, None, "baseline", "encoder+linear") in kinds
        assert (image, None, "baseline", "decoder") in kinds
        for preset in ("ours", "reference"):
            for method in ("adaptor+linear", "adaptor+zeroshot", "adaptor-neck"):
                assert (image, "all-minilm-l6-v2", preset, method) in kinds
    zeroshot = [r for r in rows if r["method"] == "adaptor+zeroshot"]
    assert {r["fraction"] for r in zeroshot} == {0.0}
    for name in ("study_classification_heatmap.png", "study_classification_shifted.png"):
        assert (out / name).stat().st_size > 5000

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "already finished" in again.output  # pretraining
    assert "cells already done" in again.output  # heads
    assert "zero-shot: reusing" in again.output and "records already in" in again.output
    assert json.loads((out / "study.json").read_text())["rows"] == rows


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"corpus": {"synth": {"n": 20, "reports": False}}},
            "has no reports: pretraining needs a paired",
        ),
        ({"encoders": {"image": ["resnet-9000"]}}, "unknown image encoder 'resnet-9000'"),
        (
            {"evaluate": {"corpus": {"source": "corpus", "labels": ["fracture"]}}},
            "evaluate.corpus: labels ['fracture'] are not in its records",
        ),
        ({"presets": {"reference": {"batch_sise": 3}}}, "batch_sise: unknown key"),
        ({"pretrain": {"epochs": 3}}, "pretrain.epochs: a preset's recipe key"),
        ({"evaluate": {"corpus": {"source": "csv:x.csv"}}}, "the name is kept for source"),
    ],
)
def test_bad_study_is_refused_before_any_work(tmp_path: Path, change: dict, message: str) -> None:
    config = {"corpus": {"synth": {"n": 20, "size": 224}}, **change}
    if "synth" in change.get("corpus", {}):
        config["corpus"]["synth"]["size"] = 224
    result = CliRunner().invoke(app, _study(tmp_path, config))
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert not (tmp_path / "out" / "embeddings").exists()  # no encoder ran


def test_zeroshot_labels_without_prompts_are_refused(tmp_path: Path, synthetic_dir: Path) -> None:
    rows = [json.loads(x) for x in (synthetic_dir / "records.jsonl").read_text().splitlines()]
    for row in rows:
        row["image"] = str(synthetic_dir / row["image"])
        row["labels"] = {"zebra_sign": row["labels"]["nodule"]}
        row.pop("mask")
    data = tmp_path / "zebra.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "corpus": {"synth": {"n": 20, "size": 224}},
        "evaluate": {"zebra": {"source": f"jsonl:{data}", "labels": ["zebra_sign"]}},
    }
    result = CliRunner().invoke(app, _study(tmp_path, config))
    assert result.exit_code == 2, result.output
    assert "evaluate.zebra: " in result.output and "zebra_sign" in result.output, result.output
    assert "prompt" in result.output
    assert not (tmp_path / "out" / "embeddings").exists()
