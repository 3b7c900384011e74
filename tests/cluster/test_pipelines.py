"""Batch jobs in pipelines/: their configs stay valid, and bad input stops them before any work.

The jobs on a real Ray head (submission, resume, bit-identical weights) are in test_cluster.py.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from adaptor.config import RunConfig, load_config
from adaptor.data.sources import source_kinds
from adaptor.data.sources.base import SourceSpec
from pipelines.common import CONFIGS, job_app

# run configs; study-*.yaml are study configs (tests/study/test_study_configs.py)
CONFIG_FILES = sorted(p for p in CONFIGS.glob("*.yaml") if not p.stem.startswith("study-"))
# layouts without reports: their configs must keep the empty reports to embed anything
IMAGE_ONLY = {"chexpert", "rsna-pneumonia", "siim-acr", "covidx", "chestxray14"}
LAYOUT_MODULES = {
    "mimic-cxr": "mimic_cxr",
    "chexpert": "chexpert",
    "rsna-pneumonia": "rsna",
    "siim-acr": "siim",
    "covidx": "covidx",
    "chestxray14": "chestxray14",
    "iu-xray": "iu_xray",
}


def _invoke(job: str, *args: str) -> tuple[int, str]:
    module = importlib.import_module(f"pipelines.{job}")
    result = CliRunner().invoke(job_app(module.main), [str(a) for a in args])
    return result.exit_code, result.output


def test_every_config_loads_and_the_default_is_the_embedded_default() -> None:
    names = {path.stem for path in CONFIG_FILES}
    assert {"default", *LAYOUT_MODULES} <= names
    configs = {path.stem: load_config(path) for path in CONFIG_FILES}
    assert configs["default"] == RunConfig()


@pytest.mark.parametrize("path", [p for p in CONFIG_FILES if p.stem != "default"], ids=str)
def test_each_dataset_config_names_its_layout_with_accepted_options(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.source is not None
    spec = SourceSpec.parse(cfg.source)
    assert spec.kind in source_kinds() and spec.kind == cfg.dataset == path.stem
    layout = importlib.import_module(f"adaptor.data.sources.{LAYOUT_MODULES[spec.kind]}")
    assert set(spec.options) <= set(getattr(layout, "OPTIONS", {})), spec.options
    assert cfg.embed.allow_empty_reports == (spec.kind in IMAGE_ONLY)
    assert "placeholder" in path.read_text().lower()  # the path to replace is pointed out


@pytest.mark.parametrize("job", ["embed", "pretrain", "finetune", "index", "flow", "study"])
def test_every_job_explains_its_options(job: str) -> None:
    code, output = _invoke(job, "--help")
    assert code == 0
    assert "--config" in output and "--out" in output


def _config(tmp_path: Path, **sections: object) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(sections))
    return path


def test_a_missing_config_or_source_is_one_clear_error(tmp_path: Path) -> None:
    code, output = _invoke("embed", "--config", tmp_path / "nope.yaml", "--out", tmp_path)
    assert code == 2 and f"error: config file not found: {tmp_path / 'nope.yaml'}" in output

    config = _config(tmp_path, dataset="mine", source=f"jsonl:{tmp_path / 'missing.jsonl'}")
    out = tmp_path / "out"
    code, output = _invoke("flow", "--config", config, "--out", out)
    assert code == 2 and "error:" in output and "missing.jsonl" in output
    assert list(out.iterdir()) == []  # nothing made before the check


def test_an_unknown_encoder_fails_before_the_source_is_made(tmp_path: Path) -> None:
    config = _config(tmp_path, embed={"image_encoder": "no-such-encoder"})
    out = tmp_path / "out"
    code, output = _invoke("embed", "--config", config, "--out", out)
    assert code == 2 and "unknown image encoder 'no-such-encoder'" in output
    assert not (out / "raw").exists()  # the synthetic set was not written


def test_unwritable_storage_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, output = _invoke("pretrain", "--config", _config(tmp_path), "--out", blocker)
    assert code == 2 and "is not a folder" in output
    code, output = _invoke("pretrain", "--config", _config(tmp_path), "--out", blocker / "sub")
    assert code == 2 and "cannot write to" in output


def test_a_bad_cluster_address_fails_before_any_work(synthetic_dir: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, source=f"synthetic:{synthetic_dir}")
    out = tmp_path / "out"
    for address, message in (
        ("127.0.0.1:1", "cannot reach a Ray head at 127.0.0.1:1"),
        ("no-port", "bad --address 'no-port'"),
    ):
        code, output = _invoke("embed", "--config", config, "--out", out, "--address", address)
        assert code == 2 and message in output, output
    assert list(out.iterdir()) == []


def test_a_relative_out_inside_a_ray_job_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray sets for a job's driver
    monkeypatch.chdir(tmp_path)
    code, output = _invoke("pretrain", "--config", _config(tmp_path), "--out", "data_shards")
    assert code == 2 and "--out data_shards is relative" in output
    assert not (tmp_path / "data_shards").exists()


def test_later_stages_name_the_job_to_run_first(tmp_path: Path) -> None:
    code, output = _invoke("pretrain", "--config", _config(tmp_path), "--out", tmp_path)
    assert code == 2 and "no finished embedding shards" in output
    assert "python -m pipelines.embed" in output
