"""The stage models are the one source of every default: each command's options take theirs,
the YAML of `adaptor run` is made of them, and a bad value is one line naming the key or
option (through the CLI)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, get_args

import pytest
import typer
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from adaptor.cli import app
from adaptor.config import IndexOptions, RunConfig, ServeOptions, ZeroShotOptions, load_config
from adaptor.config.cli import OptionSpec, fields_of, is_model, option_specs
from adaptor.config.downstream import ENCODER_LR, HeadName, TuningMethod
from adaptor.downstream.classification import ClassificationConfig
from adaptor.downstream.segmentation import SegmentationConfig
from adaptor.downstream.tuning import TuneConfig
from adaptor.embed import EmbedConfig
from adaptor.heads.classification import HEADS
from adaptor.peft import DEFAULT_OPTIONS, METHODS
from adaptor.pretrain import PretrainConfig
from adaptor.pretrain.driver import _effective, _options

runner = CliRunner()
README = Path(__file__).resolve().parents[2] / "README.md"

# what a command reads and writes, not how it runs: paths and --progress, never YAML keys
IO = {"source", "out", "shards", "adaptor", "splits", "index", "progress"}
# stage-config fields no option sets, and why
NO_OPTION = {
    "only_shards": "one cluster actor's share of the shards, set by embed_on_ray",
    "cache_dir": "where segmentation caches feature maps: a path, beside the shards by default",
}
# each stage command, its stage config, and its options that are not that config's (why)
COMMANDS: dict[str, tuple[type[BaseModel], set[str]]] = {
    # where the encoders run (a Ray cluster's actors); the shards are the same
    "embed": (EmbedConfig, {"address", "actors", "cpus_per_actor"}),
    "pretrain": (PretrainConfig, set()),
    # the seed of the label splits, made before the stage runs
    "finetune heads": (ClassificationConfig, {"split_seed"}),
    "finetune segment": (SegmentationConfig, {"split_seed"}),
    "finetune tune": (TuneConfig, {"split_seed"}),
    "index": (IndexOptions, set()),
    "serve": (ServeOptions, set()),
    "zeroshot": (ZeroShotOptions, set()),
}
# the commands whose options a RunConfig section holds
SECTIONS = {
    "synth": ["synth"],
    "embed": ["embed"],
    "pretrain": ["pretrain"],
    "finetune": ["finetune heads", "finetune segment"],
    "finetune.classification": ["finetune heads"],
    "finetune.segmentation": ["finetune segment"],
    "index": ["index"],
}
FLOW_ONLY = {"dataset", "source", "compare", "finetune.tasks"}  # the flow's own keys
NOT_IN_YAML = {"embed": {"actors", "cpus_per_actor"}}  # where the encoders run: job options
RUN_DIFFERS = {"finetune.segmentation.steps": (80, 150)}  # adaptor run's time budget


def _command(name: str) -> tuple[Any, Callable[..., Any]]:
    """The click command of ``adaptor NAME`` and the function behind it."""
    *groups, last = name.split()
    command: Any = typer.main.get_command(app)
    typer_app = app
    for group in groups:
        command = command.commands[group]
        typer_app = next(g.typer_instance for g in typer_app.registered_groups if g.name == group)
    info = next(c for c in typer_app.registered_commands if (c.name or c.callback.__name__) == last)
    return command.commands[last], info.callback


def _leaves(model: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every leaf field of a model with its default, nested models flattened."""
    out = {}
    for name, info in fields_of(model).items():
        if is_model(info.annotation):
            out |= _leaves(info.annotation, (*prefix, name))
        else:
            out[(*prefix, name)] = info.get_default(call_default_factory=True)
    return out


def _specs(name: str) -> list[OptionSpec]:
    return option_specs(_command(name)[1])


@pytest.mark.parametrize("name", [*COMMANDS, "synth", "splits"])
def test_every_option_default_is_the_model_default(name: str) -> None:
    command, callback = _command(name)
    shown = {p.name: p.default for p in command.params}
    specs = option_specs(callback)
    assert specs
    for param in {s.param for s in specs}:
        own = [s for s in specs if s.param == param]
        if any(info.is_required() for info in fields_of(own[0].model).values()):
            continue  # the paths a command reads and writes
        values: dict[str, Any] = {}
        for spec in own:
            assert shown[spec.name] == spec.default, spec.option  # what --help shows
            node = values
            for part in spec.path[:-1]:
                node = node.setdefault(part, {})
            node[spec.path[-1]] = spec.to_field(shown[spec.name])
        model = own[0].model
        if own[0].single:
            field = own[0].path[0]
            assert getattr(model.model_validate(values), field) == getattr(model(), field)
        else:
            assert model.model_validate(values) == model()


@pytest.mark.parametrize("name", COMMANDS)
def test_every_stage_setting_is_an_option_and_every_option_a_setting(name: str) -> None:
    stage, extra = COMMANDS[name]
    command, callback = _command(name)
    settings = {path[-1] for path in _leaves(stage)} - IO - set(NO_OPTION)
    by_field = {spec.path[-1] for spec in option_specs(callback)}
    assert settings <= by_field, f"no option for {sorted(settings - by_field)}"
    options = {p.name for p in command.params} - {"help"}
    others = options - {spec.name for spec in option_specs(callback)} - IO
    assert (by_field - settings - IO) | others == extra


def test_every_yaml_key_is_an_option_with_the_same_default() -> None:
    seen: dict[str, set[str]] = {name: set() for names in SECTIONS.values() for name in names}
    leaves = {".".join(path) for path in _leaves(RunConfig)}
    for key, default in _flat(RunConfig().model_dump(), leaves).items():
        path = tuple(key.split("."))
        if key in FLOW_ONLY:
            continue
        section = max((s for s in SECTIONS if key.startswith(f"{s}.")), key=len)
        for name in SECTIONS[section]:
            spec = next((s for s in _specs(name) if s.path[-1] == path[-1]), None)
            assert spec is not None, f"{key}: no option of `adaptor {name}`"
            seen[name].add(path[-1])
            option_default = _leaves(spec.model)[spec.path]
            expected = RUN_DIFFERS.get(key, (option_default, option_default))
            assert (default, option_default) == expected, key
    for name, fields in seen.items():  # and back: every option is a key, but the listed
        options = {s.path[-1] for s in _specs(name)} - IO
        assert options - fields == NOT_IN_YAML.get(name, set()), name


def test_choices_match_their_implementations() -> None:
    assert set(HEADS) == set(get_args(HeadName))
    assert set(DEFAULT_OPTIONS) == set(METHODS) == set(ENCODER_LR) == set(get_args(TuningMethod))


def test_bad_yaml_is_one_error_naming_the_file_and_each_key(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "pretrain": {"model": {"width": 4}, "schedule": "step"},
                "embed": {"colour": "red", "batch_size": "many"},
                "finetune": {"heads": ["linear"], "fractions": [0.1, 2]},
            }
        )
    )
    for command in ("config", "run"):
        result = runner.invoke(app, [command, "--config", str(config)])
        assert result.exit_code == 2
        (line,) = result.output.strip().splitlines()
        assert line.startswith(f"error: {config}: ")
        for part in (
            "pretrain.model.width: must be ≥ 8, got 4",
            "pretrain.schedule: must be 'cosine' or 'linear', got 'step'",
            "embed.colour: unknown key; known: image_encoder, text_encoder",
            "embed.batch_size: must be a valid integer",
            "finetune.heads: moved to finetune.classification.heads",
            "finetune.fractions[1]: must be ≤ 1, got 2",
        ):
            assert part in line, part


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pretrain", "--width", "4"], "--width: must be ≥ 8, got 4"),
        (["pretrain", "--width", "100"], "width 100 is not divisible by heads 8"),
        (
            ["pretrain", "--schedule", "step"],
            "--schedule: must be 'cosine' or 'linear', got 'step'",
        ),
        (["finetune", "heads", "--fractions", "0.1,2"], "--fractions: must be ≤ 1, got '2'"),
        (["finetune", "tune", "--methods", "lora,prompt"], "--methods: must be 'frozen', 'lora'"),
        (["finetune", "segment", "--seeds", ""], "--seeds: must hold at least 1 item(s)"),
        (["splits", "--fractions", "0"], "--fractions: must be > 0, got '0'"),
        (["synth", "--size", "100"], "--size: must be ≥ 224, got 100"),
        (["serve", "--port", "0"], "--port: must be ≥ 1, got 0"),
    ],
)
def test_a_bad_option_value_is_one_line_naming_the_option(
    tmp_path: Path, args: list[str], message: str
) -> None:
    paths = {"pretrain": ["--shards", "s", "--out", "o"], "synth": ["--out", "o"]}
    paths |= {"finetune": ["--shards", "s", "--out", "o"], "splits": ["--shards", "s"]}
    paths |= {"serve": ["--index", "i"]}
    path_args = [str(tmp_path / a) if len(a) == 1 else a for a in paths[args[0]]]
    if args[0] == "splits":
        path_args += ["--out", str(tmp_path / "splits.json")]
    result = runner.invoke(app, [*args, *path_args])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {message}"), line
    assert not list(tmp_path.iterdir())  # refused before any work


def test_config_show_prints_every_key_and_loads_back(tmp_path: Path) -> None:
    custom = tmp_path / "custom.yaml"
    custom.write_text(
        yaml.safe_dump(
            {
                "pretrain": {"model": {"width": 64, "wiring": "reference"}},
                "finetune": {"seeds": [0], "classification": {"heads": ["mlp"]}},
                "index": {"factory": "HNSW32,Flat"},
            }
        )
    )
    for args, expected in (([], RunConfig()), (["--config", str(custom)], load_config(custom))):
        result = runner.invoke(app, ["config", "--show", *args])
        assert result.exit_code == 0, result.output
        shown = tmp_path / "shown.yaml"
        shown.write_text(result.output)
        assert load_config(shown) == expected
        leaves = {".".join(path) for path in _leaves(RunConfig)}
        assert set(_flat(yaml.safe_load(result.output), leaves)) == leaves
    assert runner.invoke(app, ["config", "--config", str(custom)]).output.endswith(": valid\n")


def test_readme_shows_the_default_configuration() -> None:
    shown = runner.invoke(app, ["config", "--show"]).output
    assert f"```yaml\n{shown}```" in README.read_text(encoding="utf-8")


def _flat(tree: dict[str, Any], leaves: set[str], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; a mapping that is a ``leaves`` key stays whole."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and f"{prefix}{key}" not in leaves:
            flat |= _flat(value, leaves, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_a_run_folder_from_before_the_model_section_is_the_same_run() -> None:
    """metrics.json of a finished run written before ``pretrain.model`` and ``t2i_weight``
    (the tiny end-to-end config) still matches today's options, so a rerun is a no-op."""
    manifest = SimpleNamespace(encoders={"image": {"name": "x"}}, shards=[])
    cfg = PretrainConfig(shards="s", out="o", epochs=2, batch_size=16, model={"width": 32})
    digest = _options(cfg, manifest)["shards_sha256"]
    old = {
        "epochs": 2, "batch_size": 16, "lr": 0.0005, "weight_decay": 0.05,
        "warmup_fraction": 0.1, "schedule": "cosine", "grad_clip": 1.0, "workers": 1,
        "seed": 0, "width": 32, "layers": 1, "heads": 8, "ffn_hidden": 2048, "norm": "post",
        "dropout": 0.0, "image_weight": 0.75, "objective": "unpaired", "shards_sha256": digest,
    }  # fmt: skip
    assert _effective(old) == _options(cfg, manifest)
    assert _effective({**old, "width": 64}) != _options(cfg, manifest)
    assert _effective({**old, "image_weight": 0.5}) != _options(cfg, manifest)
    assert _effective(_options(cfg, manifest)) == _options(cfg, manifest)
    assert _effective({"colour": "red"}) is None
