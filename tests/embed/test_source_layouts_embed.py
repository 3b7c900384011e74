"""A published dataset layout goes through `adaptor embed` like any other source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from adaptor.cli import app
from adaptor.shards import Manifest, ShardReader

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)


def test_chestxray14_tree_embeds_end_to_end(tmp_path: Path) -> None:
    root = tmp_path / "nih"
    rows = [
        ("00000001_000.png", "Cardiomegaly", 1),
        ("00000001_001.png", "Cardiomegaly|Effusion", 1),
        ("00000002_000.png", "No Finding", 2),
        ("00000003_000.png", "Nodule", 3),
        ("00000004_000.png", "Mass|Bogus", 4),  # unknown label: skipped and counted
    ]
    lines = [HEADER]
    rng = np.random.default_rng(0)
    for i, (name, labels, patient) in enumerate(rows):
        lines.append(f"{name},{labels},{i},{patient},58,M,PA,2682,2749,0.143,0.143,")
        image = root / "images_001" / "images" / name
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(image)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (root / "test_list.txt").write_text("00000003_000.png\n")
    (root / "train_val_list.txt").write_text(
        "\n".join(r[0] for r in rows if r[0] != "00000003_000.png") + "\n"
    )

    out = tmp_path / "shards"
    result = CliRunner().invoke(
        app,
        [
            "embed",
            "--source",
            f"chestxray14:{root}",
            "--out",
            str(out),
            "--allow-empty-reports",
            "--loader-workers",
            "0",
            "--no-progress",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(out)
    assert manifest.count == 4
    assert [s["id"] for s in manifest.skipped] == ["00000004_000"]
    assert "bogus" in manifest.skipped[0]["reason"].lower()
    table = ShardReader(out).load()
    meta = {m["id"]: m for m in table.meta}
    assert meta["00000001_001"]["labels"]["effusion"] == 1
    assert meta["00000003_000"]["split"] == "test"
    assert meta["00000001_000"]["patient_id"] == meta["00000001_001"]["patient_id"]
