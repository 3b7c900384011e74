"""The downstream grid runner: cells as Ray tasks that fail alone and resume by cell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adaptor.downstream.grid import GridCell, GridError, GridTask, plan_cells, run_grid
from adaptor.ray_env import start_ray

pytestmark = pytest.mark.slow


def _task_failing_at(key: str) -> GridTask:
    """A toy task whose cell ``key`` raises until the file ``shared["fixed"]`` exists.

    Every attempt of a cell appends a line to ``ATTEMPTS/<key>``. Closures, so Ray pickles
    them by value (a test module is not importable in the workers).
    """

    def prepare(shared: dict[str, Any]) -> dict[str, Any]:
        return {"offset": shared["offset"]}

    def train(cell: GridCell, shared: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        with (Path(shared["attempts"]) / cell.key).open("a") as fh:
            fh.write("attempt\n")
        if cell.key == key and not Path(shared["fixed"]).exists():
            raise ValueError(f"cell {cell.key} broke")
        return {"value": data["offset"] + cell.params["seed"]}

    return GridTask("toy models", prepare, train)


def test_a_failing_cell_fails_alone_and_a_rerun_retries_only_it(tmp_path: Path) -> None:
    start_ray(num_cpus=2)
    cells = plan_cells({"good": {}, "bad": {}}, fractions=[1.0], seeds=[0, 1])
    broken = "bad__1__seed0"
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    shared = {"offset": 10, "attempts": str(attempts), "fixed": str(tmp_path / "fixed")}
    run = tmp_path / "run"
    logged: list[str] = []

    def grid() -> dict[str, dict[str, Any]]:
        return run_grid(
            cells,
            _task_failing_at(broken),
            shared=shared,
            run_dir=run,
            workers=2,
            progress=False,
            log=logged.append,
        )

    def tries() -> dict[str, int]:
        return {f.name: len(f.read_text().splitlines()) for f in attempts.iterdir()}

    with pytest.raises(GridError) as failed:
        grid()
    message = str(failed.value)
    assert (
        f"toy models: 1 of 4 cells failed:\n  {broken}: ValueError: cell {broken} broke" in message
    )
    assert "rerun to retry the failed ones" in message
    # the other cells finished and were written; the failed one is recorded beside them
    finished = {p.stem: json.loads(p.read_text()) for p in (run / "cells").glob("*.json")}
    assert set(finished) == {c.key for c in cells} - {broken}
    assert finished["good__1__seed1"]["value"] == 11
    record = json.loads((run / "failed" / f"{broken}.json").read_text())
    assert record["error"] == f"ValueError: cell {broken} broke" and record["key"] == broken
    assert [line for line in logged if "failed" in line] == [
        f"toy models: cell {broken} failed: ValueError: cell {broken} broke"
    ]
    assert tries() == {c.key: 2 if c.key == broken else 1 for c in cells}  # one retry

    # the cause fixed, a rerun trains only the failed cell
    (tmp_path / "fixed").touch()
    stamps = {p: p.stat().st_mtime_ns for p in (run / "cells").glob("*.json")}
    results = grid()
    assert {k: r["value"] for k, r in results.items()} == {
        c.key: 10 + c.params["seed"] for c in cells
    }
    assert tries() == {c.key: 3 if c.key == broken else 1 for c in cells}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert not (run / "failed" / f"{broken}.json").exists()
    assert "3 of 4 toy models cells already done" in logged[-1]
