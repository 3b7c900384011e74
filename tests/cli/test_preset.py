"""``preset: reference``: the reference Adaptor's values fill every option not given, from
the YAML and from the command line alike; given ones win, and the default stays ours."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import adaptor.pretrain
from adaptor.cli import app
from adaptor.config import ConfigError, ModelOptions, PretrainOptions, load_config
from adaptor.config.pretrain import REFERENCE

runner = CliRunner()


def _reference(**given: Any) -> dict[str, Any]:
    """The reference values with ``given`` (top-level keys, ``model`` merged) over them."""
    model = {**REFERENCE["model"], **given.pop("model", {})}
    return {**REFERENCE, **given, "model": model}


def _fields(options: PretrainOptions) -> dict[str, Any]:
    dumped = options.model_dump()
    return {k: dumped[k] for k in REFERENCE} | {"model": dumped["model"]}


def test_reference_fills_every_value_and_ours_is_the_default() -> None:
    reference = PretrainOptions(preset="reference")
    assert _fields(reference) == REFERENCE
    assert reference.select_by == "val_loss" and reference.model.wiring == "reference"
    assert PretrainOptions() == PretrainOptions(preset="ours")
    assert PretrainOptions().model_dump()["epochs"] != REFERENCE["epochs"]


def test_explicit_values_win() -> None:
    given = {"epochs": 2, "select_by": "val_recall", "model": {"width": 384}}
    options = PretrainOptions.model_validate({"preset": "reference", **given})
    assert _fields(options) == _reference(**given)
    shape = PretrainOptions(preset="reference", model=ModelOptions(layers=3))
    assert shape.model.layers == 3 and shape.model.width == 768  # the instance's unset fields
    with pytest.raises(ValueError, match="post-norm"):
        PretrainOptions.model_validate({"preset": "reference", "model": {"norm": "pre"}})


def test_resolved_options_validate_to_themselves() -> None:
    """The driver rebuilds a run's options from their dump (PretrainConfig, metrics.json)."""
    options = PretrainOptions.model_validate({"preset": "reference", "lr": 1e-4})
    assert PretrainOptions.model_validate(options.model_dump()) == options


def test_yaml(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"pretrain": {"preset": "reference", "batch_size": 64}}))
    assert _fields(load_config(path).pretrain) == _reference(batch_size=64)
    path.write_text(yaml.safe_dump({"pretrain": {"preset": "reference", "model": {"heads": 5}}}))
    with pytest.raises(ConfigError, match="not divisible by heads 5"):
        load_config(path)


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The configs `adaptor pretrain` hands the pretraining (which does not run)."""
    calls: list[Any] = []

    def fake(cfg: Any) -> Any:
        calls.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(adaptor.pretrain, "pretrain", fake)
    return calls


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--preset", "reference", "--epochs", "2"], _reference(epochs=2)),
        (["--preset", "reference", "--epochs", "30"], _reference(epochs=30)),  # = ours
        (["--preset", "reference", "--width", "384"], _reference(model={"width": 384})),
        (["--epochs", "2"], _fields(PretrainOptions(epochs=2))),
    ],
)
def test_command_line(tmp_path: Path, ran: list[Any], args: list[str], expected: Any) -> None:
    result = runner.invoke(app, ["pretrain", "--shards", str(tmp_path), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert PretrainOptions.model_validate(ran.pop().model_dump(exclude={"shards", "out"})) == (
        PretrainOptions()
    )
    command = ["pretrain", "--shards", str(tmp_path), "--out", str(tmp_path), *args]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert _fields(ran.pop()) == expected


def test_help_shows_ours() -> None:
    shown = runner.invoke(app, ["pretrain", "--help"], terminal_width=200).output
    assert "--preset" in shown and "--select-by" in shown
    assert f"[default: {PretrainOptions().epochs}]" in shown
