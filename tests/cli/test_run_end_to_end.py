"""`adaptor run` end to end on a tiny synthetic config: every stage's outputs, then a rerun
that finds everything finished."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from adaptor.cli import app

TINY = {
    "synth": {"n": 80, "size": 224},
    "embed": {"batch_size": 16, "shard_size": 40},  # default loader workers (2), as users run
    "pretrain": {"epochs": 2, "batch_size": 16, "model": {"width": 32}},
    "compare": {"reference": {"epochs": 2, "batch_size": 16}},  # its 1024 exceeds 80 records
    "finetune": {
        "fractions": [0.25, 1.0],
        "seeds": [0, 1],
        "classification": {"heads": ["linear"], "max_epochs": 5},
        "segmentation": {"methods": ["decoder", "adaptor-neck"], "image_size": 64, "steps": 4},
    },
}


@pytest.mark.slow
def test_adaptor_run_end_to_end_then_resume(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "out"
    args = ["run", "--config", str(config), "--out", str(out), "--no-progress"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output

    downstream = out / "runs" / "synthetic" / "downstream"
    table = (downstream / "results.md").read_text()
    for row in ("| encoder+linear | 25 % |", "| adaptor+linear | 100 % |"):
        assert row in table
    for row in ("| decoder | 25 % |", "| adaptor-neck | 100 % |"):
        assert row in table
    # the reference preset's Adaptor, pretrained with its own recipe, in the same table
    for row in ("| adaptor+linear (reference) | 25 % |", "| adaptor-neck (reference) | 100 % |"):
        assert row in table
    assert "| encoder+linear (reference)" not in table and "| decoder (reference)" not in table
    for plot in ("classification_roc.png", "segmentation_overlays.png"):
        assert (downstream / plot).stat().st_size > 1000
    cells = json.loads((downstream / "results.json").read_text())["cells"]
    # (methods x fractions x seeds) per task: ours, then the reference's Adaptor methods
    assert len(cells) == 2 * 2 * 2 + 2 * 2 * 2 + 1 * 2 * 2 + 1 * 2 * 2
    for name in ("pretrain", "pretrain-reference"):
        assert (out / "runs" / "synthetic" / name / "adaptor" / "model.safetensors").is_file()
    reference = json.loads(
        (out / "runs/synthetic/pretrain-reference/adaptor/config.json").read_text()
    )
    assert (reference["wiring"], reference["width"], reference["layers"]) == ("reference", 768, 2)
    assert (out / "runs" / "synthetic" / "index" / "manifest.json").is_file()
    assert "example searches" in first.output and "-> images" in first.output

    pretrain = out / "runs" / "synthetic" / "pretrain"
    outputs = [pretrain / "metrics.json", pretrain / "adaptor" / "model.safetensors"]
    before = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in outputs}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "already finished" in again.output
    assert "from its newest checkpoint" not in again.output
    assert {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in outputs} == before
    assert json.loads((pretrain / "metrics.json").read_text())["resumed_at_steps"] == []
    assert json.loads((downstream / "results.json").read_text())["cells"] == cells
