"""The `adaptor` command: help, and one-line errors with exit code 2."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from adaptor.cli import app

runner = CliRunner()


def test_help_lists_every_stage() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in ("synth", "embed", "pretrain", "run", "encoders"):
        assert verb in result.output


def test_finetune_sub_commands_each_list_their_own_options() -> None:
    listing = runner.invoke(app, ["finetune", "--help"])
    assert listing.exit_code == 0
    own = {"heads": "--features", "segment": "--feature-maps", "tune": "--encoder-lr"}
    for command, option in own.items():
        assert command in listing.output
        result = runner.invoke(app, ["finetune", command, "--help"])
        assert result.exit_code == 0, result.output
        for shared in ("--shards", "--out", "--fractions", "--seeds", "--splits", "--workers"):
            assert shared in result.output, (command, shared)
        assert option in result.output
        assert not [o for o in own.values() if o != option and o in result.output], command


def test_bad_source_is_one_clear_line(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["embed", "--source", f"csv:{tmp_path / 'nope.csv'}", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "error: csv source file not found" in result.output


def test_unknown_encoder_and_bad_config(tmp_path: Path, synthetic_dir: Path) -> None:
    result = runner.invoke(
        app,
        [
            "embed",
            "--source",
            f"synthetic:{synthetic_dir}",
            "--out",
            str(tmp_path / "o"),
            "--image-encoder",
            "resnet",
        ],
    )
    assert result.exit_code == 2 and "error:" in result.output and "resnet" in result.output
    config = tmp_path / "c.yaml"
    config.write_text("embed:\n  batch_size: 0\n  colour: red\n")
    result = runner.invoke(app, ["run", "--config", str(config), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "batch_size" in result.output and "colour" in result.output


def test_synth_writes_records(tmp_path: Path) -> None:
    result = runner.invoke(app, ["synth", "--out", str(tmp_path), "--n", "12", "--size", "224"])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == 12
    result = runner.invoke(app, ["synth", "--out", str(tmp_path), "--n", "12", "--size", "100"])
    assert result.exit_code == 2 and "error:" in result.output
