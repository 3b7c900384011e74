"""Results files: every method × fraction row, mean ± std over seeds, merging, plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptor.downstream.results import CellResult, load_results, merge_results, summarise


def _cell(method: str, fraction: float, seed: int, auroc: float | None) -> CellResult:
    return CellResult(
        task="classification",
        method=method,
        fraction=fraction,
        seed=seed,
        metrics={"auroc_macro": auroc, "accuracy": 0.5},
        trainable_parameters=1000,
        extra={"roc": {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.8, 1.0]}},
    )


def test_every_row_with_mean_and_std(tmp_path: Path) -> None:
    cells = [
        _cell(m, f, s, a)
        for m, base in (("encoder+linear", 0.6), ("adaptor+linear", 0.7))
        for f in (0.01, 1.0)
        for s, a in ((0, base + 0.1), (1, base - 0.1))
    ]
    md = merge_results(tmp_path, cells, notes=["a note"]).read_text()
    for method in ("encoder+linear", "adaptor+linear"):
        for label in ("1 %", "100 %"):
            assert any(method in line and label in line for line in md.splitlines())
    assert "0.700 ± 0.100" in md and "0.600 ± 0.100" in md
    assert "a note" in md
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["cells"]) == 8 and len(data["summary"]) == 4
    row = next(r for r in data["summary"] if r["method"] == "adaptor+linear" and r["fraction"] == 1)
    assert row["metrics"]["auroc_macro"]["mean"] == pytest.approx(0.7)
    assert row["seeds"] == [0, 1]
    assert (tmp_path / "classification_vs_fraction.png").stat().st_size > 1000
    assert (tmp_path / "classification_roc.png").stat().st_size > 1000


def test_merge_keeps_other_rows_and_replaces_the_same_cell(tmp_path: Path) -> None:
    merge_results(tmp_path, [_cell("a", 0.1, 0, 0.5), _cell("b", 0.1, 0, 0.5)])
    merge_results(tmp_path, [_cell("a", 0.1, 0, 0.9)])
    cells = {c.method: c for c in load_results(tmp_path)}
    assert set(cells) == {"a", "b"}
    assert cells["a"].metrics["auroc_macro"] == 0.9


def test_undefined_values_are_marked_not_averaged_as_zero(tmp_path: Path) -> None:
    cells = [_cell("a", 0.01, 0, None), _cell("a", 0.01, 1, 0.8)]
    row = summarise(cells)[0]
    assert row["metrics"]["auroc_macro"] == {"mean": 0.8, "std": 0.0, "n": 1, "undefined": 1}
    md = merge_results(tmp_path, cells).read_text()
    assert "(1 n/a)" in md
    md = merge_results(tmp_path, [_cell("a", 0.01, 1, None)]).read_text()
    assert "| n/a |" in md
