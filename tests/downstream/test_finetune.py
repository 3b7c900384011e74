"""Classification heads on cached embeddings, trained as a grid of Ray tasks, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from adaptor.cli import app
from adaptor.data.splits import make_label_splits
from adaptor.downstream.classification import ClassificationConfig, finetune_classification
from adaptor.downstream.results import load_results
from adaptor.model import Adaptor, AdaptorConfig, AdaptorMismatchError
from adaptor.ray_env import start_ray
from adaptor.shards import Manifest, ShardEntry, ShardReader
from adaptor.shards.writer import encode_sample, finished_shards, sample_key, write_shard

pytestmark = pytest.mark.slow

ENCODERS = {
    "image": {"name": "toy-img", "fingerprint": "i1", "dim": 16, "dtype": "float16"},
    "text": {"name": "toy-txt", "fingerprint": "t1", "dim": 8, "dtype": "float16"},
}
LABELS = ("a", "b")


def write_toy_shards(folder: Path, n: int = 300, seed: int = 0) -> None:
    """Image embeddings whose first two dimensions carry labels a and b (separable)."""
    rng = np.random.default_rng(seed)
    manifest = Manifest(
        source="toy:x", encoders=ENCODERS, shard_size=n, total_items=n, members=["image", "text"]
    )
    manifest.save(folder)
    samples = []
    for i in range(n):
        labels = {name: int(rng.random() < 0.3) for name in LABELS}
        if i % 10 == 0:
            labels["b"] = None  # missing labels are masked out
        image = rng.normal(size=16).astype(np.float32)
        image[0] = 4 * labels["a"] - 2 + 0.3 * image[0]
        image[1] = 4 * (labels["b"] or 0) - 2 + 0.3 * image[1]
        split = "train" if i % 10 < 7 else ("val" if i % 10 < 8 else "test")
        meta = {"id": f"r{i:04d}", "patient_id": f"p{i:04d}", "split": split, "labels": labels}
        arrays = {"image": image.astype(np.float16), "text": rng.normal(size=8).astype(np.float16)}
        samples.append(encode_sample(sample_key(i), arrays, meta))
    write_shard(folder, 0, samples, skipped=[], truncated_reports=0)
    manifest.shards = [ShardEntry(**d["shard"]) for _, d in sorted(finished_shards(folder).items())]
    manifest.count = n
    manifest.complete = True
    manifest.save(folder)


def save_toy_adaptor(folder: Path, image_name: str = "toy-img") -> Path:
    encoders = {role: dict(spec) for role, spec in ENCODERS.items()}
    encoders["image"]["name"] = image_name
    config = AdaptorConfig(
        image_dim=16, text_dim=8, width=16, heads=2, ffn_hidden=32, encoders=encoders
    )
    Adaptor(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune")
    write_toy_shards(root / "shards")
    start_ray(num_cpus=2)
    return {"shards": root / "shards", "adaptor": save_toy_adaptor(root / "adaptor")}


def test_grid_trains_every_cell_reaches_high_auroc_and_resumes(
    toy: dict[str, Path], tmp_path: Path
) -> None:
    meta = ShardReader(toy["shards"]).load().meta
    splits = make_label_splits(meta, (0.1, 1.0), seed=0)
    splits.save(tmp_path / "splits.json")
    cfg = ClassificationConfig(
        shards=str(toy["shards"]),
        out=str(tmp_path),
        adaptor=str(toy["adaptor"]),
        fractions=[0.1, 1.0],
        seeds=[0, 1],
        heads=["linear", "mlp"],
        max_epochs=150,
        workers=2,
    )
    cells = finetune_classification(
        cfg, splits, splits_path=tmp_path / "splits.json", progress=False
    )
    keys = {(c.method, c.fraction, c.seed) for c in cells}
    assert keys == {
        (f"{f}+{h}", fr, s)
        for f in ("encoder", "adaptor")
        for h in ("linear", "mlp")
        for fr in (0.1, 1.0)
        for s in (0, 1)
    }
    best = [c for c in cells if c.method == "encoder+linear" and c.fraction == 1.0]
    assert all(c.metrics["auroc_macro"] > 0.98 for c in best)
    linear = next(c for c in cells if c.method == "encoder+linear")
    assert linear.trainable_parameters == 16 * 2 + 2
    assert set(linear.per_class["auroc"]) == set(LABELS)

    cell_files = sorted((tmp_path / "runs").glob("*/cells/*.json"))
    stamps = [p.stat().st_mtime_ns for p in cell_files]
    again = finetune_classification(
        cfg, splits, splits_path=tmp_path / "splits.json", progress=False
    )
    assert [c.to_dict() for c in again] == [c.to_dict() for c in cells]
    assert [p.stat().st_mtime_ns for p in cell_files] == stamps  # nothing retrained


def test_adaptor_for_other_encoders_is_refused(toy: dict[str, Path], tmp_path: Path) -> None:
    other = save_toy_adaptor(tmp_path / "other", image_name="another-encoder")
    meta = ShardReader(toy["shards"]).load().meta
    splits = make_label_splits(meta, (1.0,), seed=0)
    cfg = ClassificationConfig(shards=str(toy["shards"]), out=str(tmp_path), adaptor=str(other))
    with pytest.raises(AdaptorMismatchError, match="another-encoder"):
        finetune_classification(cfg, splits, splits_path=tmp_path / "s.json", progress=False)


def test_cli_writes_tables_and_plots(toy: dict[str, Path], tmp_path: Path) -> None:
    res = tmp_path / "res"
    args = [
        "finetune", "heads", "--shards", str(toy["shards"]), "--adaptor", str(toy["adaptor"]),
        "--out", str(res), "--fractions", "0.05,1", "--seeds", "0,1", "--heads", "linear",
        "--max-epochs", "30", "--no-progress",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| adaptor+linear | 5 % |" in result.output
    summary = json.loads((res / "results.json").read_text())["summary"]
    assert {(r["method"], r["fraction"]) for r in summary} == {
        (m, f) for m in ("encoder+linear", "adaptor+linear") for f in (0.05, 1.0)
    }
    for png in ("classification_roc.png", "classification_vs_fraction.png"):
        assert (res / png).stat().st_size > 5000
    assert json.loads((res / "splits.json").read_text())["seed"] == 0
    assert len(load_results(res)) == 8
