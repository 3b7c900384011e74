"""Classification with tuned encoders running online, end to end as a grid of Ray tasks.

Shards come from a small randomly initialised timm ViT (``test_vit``, image, tuned at
64 px) and a tiny BERT saved as a local Hugging Face folder (text: the default MiniLM's
architecture at a test's price; MiniLM itself is covered in test_peft.py); every method
trains both towers (``encoder="both"``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptor.config import TuningOptions
from adaptor.data.image_io import load_image
from adaptor.data.sources import open_source
from adaptor.data.splits import LabelSplits, make_label_splits
from adaptor.downstream.results import (
    CellResult,
    merge_results,
    tuning_markdown,
    write_tuning_table,
)
from adaptor.downstream.tuning import (
    TuneConfig,
    TuneError,
    finetune_tuned,
)
from adaptor.embed import EmbedConfig, embed
from adaptor.embed.feature_maps import resized_preprocess
from adaptor.encoders import build_image_encoder, build_text_encoder
from adaptor.heads.classification import build_head, label_matrix
from adaptor.metrics.classification import classification_metrics
from adaptor.peft import METHODS
from adaptor.peft.deltas import load_deltas
from adaptor.ray_env import start_ray
from adaptor.shards import ShardReader

IMAGE_ENCODER = "timm:test_vit@random"
IMAGE_SIZE = 64
SIDES = ("image", "text")
WORDS = "no acute pleural effusion pneumothorax small large left right lung heart normal"


def _tiny_bert(folder: Path) -> str:
    """A 2-layer, 32-wide random BERT with a word-level vocabulary, as an ``hf:`` encoder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS.split()]))
    BertTokenizerFast(vocab_file=str(vocab), model_max_length=32).save_pretrained(folder)
    config = BertConfig(
        vocab_size=5 + len(WORDS.split()), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return f"hf:{folder}"


@pytest.fixture(scope="module")
def text_encoder_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def shards(
    synthetic_dir: Path, text_encoder_name: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("tune") / "shards"
    embed(
        EmbedConfig(
            source=f"synthetic:{synthetic_dir}",
            out=out,
            image_encoder=IMAGE_ENCODER,
            text_encoder=text_encoder_name,
            shard_size=20,
            loader_workers=0,
            progress=False,
        )
    )
    start_ray(num_cpus=2)  # one local Ray for the module
    return out


def _splits(shards: Path) -> LabelSplits:
    return make_label_splits(ShardReader(shards).load().meta, fractions=[0.5, 1.0], seed=0)


def _cfg(shards: Path, out: Path, **kw: object) -> TuneConfig:
    base = dict(
        shards=str(shards), out=str(out), methods=list(METHODS), encoder="both",
        fractions=[1.0], seeds=[0], epochs=2, batch_size=8, options={"rank": 4},
        image_size=IMAGE_SIZE, heads=["linear"],
    )  # fmt: skip
    return TuneConfig(**{**base, **kw})


@pytest.mark.slow
def test_every_method_trains_both_towers_and_saves_reloadable_deltas(
    shards: Path, text_encoder_name: str, tmp_path: Path
) -> None:
    splits = _splits(shards)
    cfg = _cfg(shards, tmp_path / "res")
    # what `adaptor finetune tune --methods … --encoder both --options rank=4` runs
    cli_cfg = _cfg(shards, tmp_path / "res", options="rank=4")
    cells = finetune_tuned(cli_cfg, splits, progress=False, log=lambda _: None)
    by_method = {c.method.split("(")[0].split("[")[0]: c for c in cells}
    assert set(by_method) == set(METHODS)
    assert by_method["lora"].method == "lora[rank=4](both)+linear"  # options off the default
    assert by_method["apla"].method == "apla(both)+linear"
    for method, cell in by_method.items():
        assert set(cell.metrics) == {"auroc_macro", "auprc_macro", "accuracy", "f1_macro"}
        assert cell.extra["samples_per_s"] > 0 and cell.extra["peak_memory_mb"] > 0
        tuning = cell.extra["tuning"]
        assert set(tuning) == {"image", "text"}
        trainable = sum(t["trainable_parameters"] for t in tuning.values())
        assert cell.extra["encoder_trainable_parameters"] == trainable
        assert cell.trainable_parameters == trainable + cell.extra["head_parameters"]
        if method == "frozen":
            assert trainable == 0
        elif method == "full":
            assert cell.extra["trainable_percent"] == pytest.approx(100.0)
        else:
            assert 0 < cell.extra["trainable_percent"] < 20, method
    # full fine-tuning holds weights, gradients and two AdamW moments of every parameter
    peak = {m: c.extra["peak_memory_mb"] for m, c in by_method.items()}
    weights_mb = 4 * by_method["full"].extra["encoder_parameters"] / 2**20
    assert peak["full"] >= 4 * weights_mb
    assert weights_mb < peak["frozen"] < peak["lora"] < peak["full"]

    # the saved deltas and head reproduce the reported test metrics
    cell = by_method["lora"]
    saved = cell.extra["saved"]
    image_encoder = build_image_encoder(IMAGE_ENCODER)
    text_encoder = build_text_encoder(text_encoder_name)
    reader = ShardReader(shards)
    fingerprints = {side: reader.manifest.encoders[side]["fingerprint"] for side in SIDES}
    # the text encoder is the one that made the shards: standardised with the shards' stats;
    # the random ViT (the same weights: @random is a fixed init) reads 64 px, not its own
    # input size: standardised with its own frozen features of the train split
    assert text_encoder.info.fingerprint == fingerprints["text"]
    assert image_encoder.info.fingerprint == fingerprints["image"]
    assert any("image encoder's weights" in w for w in cell.extra["warnings"])
    table = reader.load()
    train_rows = [m for m in table.meta if m["split"] == "train"]
    test_rows = [m for m in table.meta if m["id"] in set(splits.test)]
    root = open_source(reader.manifest.source).root

    preprocess = resized_preprocess(image_encoder.preprocess, IMAGE_SIZE)

    def pixels(rows: list[dict]) -> torch.Tensor:
        return torch.stack([preprocess(load_image(root / m["image"])) for m in rows])

    frozen_image = image_encoder.encode(pixels(train_rows)).global_
    text_train = table.arrays["text"][[m["split"] == "train" for m in table.meta]]
    stats = {"image": frozen_image, "text": text_train}
    tokens = text_encoder.make_tokenizer()([m["report"] for m in test_rows])
    feats = []
    for side, encoder in (("image", image_encoder), ("text", text_encoder)):
        load_deltas(encoder.module, saved[side], base={"fingerprint": encoder.info.fingerprint})
        encoder.module.eval()
        with torch.no_grad():
            raw = (
                encoder._encode(pixels(test_rows), False).global_
                if side == "image"
                else encoder._encode(tokens.tensors, False).global_
            )
        x = stats[side]
        feats.append((raw - x.mean(0)) / x.std(0).clamp(min=1e-6))
    head = build_head(
        "linear", image_encoder.info.dim + text_encoder.info.dim, len(splits.label_names)
    )
    head.load_state_dict(load_file(saved["head"]))
    with torch.no_grad():
        probs = head(torch.cat(feats, dim=1)).sigmoid()
    targets, valid = label_matrix(test_rows, splits.label_names)
    scalars, _ = classification_metrics(probs, targets, valid, splits.label_names)
    for name, value in cell.metrics.items():
        if value is not None and scalars[name] is not None:
            assert scalars[name] == pytest.approx(value, abs=1e-5), name

    # a rerun resumes: every cell is already done, nothing is trained again (the same
    # configuration, here built directly)
    cell_files = sorted((tmp_path / "res" / "runs").glob("tune-*/cells/*.json"))
    stamps = [f.stat().st_mtime_ns for f in cell_files]
    again = finetune_tuned(cfg, splits, progress=False, log=lambda _: None)
    assert [c.to_dict() for c in again] == [c.to_dict() for c in cells]
    assert [f.stat().st_mtime_ns for f in cell_files] == stamps
    # ... also with fewer methods (cells are keyed by method, fraction and seed)
    only = _cfg(shards, tmp_path / "res", methods=["lora"])
    (only_lora,) = finetune_tuned(only, splits, progress=False)
    assert only_lora.to_dict() == by_method["lora"].to_dict()
    assert [f.stat().st_mtime_ns for f in cell_files] == stamps
    assert json.loads((Path(saved["image"]).parent / "tuning.json").read_text())["image"]

    # the comparison table: one row per method, beside the frozen path's results.md
    merge_results(tmp_path / "res", cells)
    table = write_tuning_table(tmp_path / "res").read_text()
    for cell in cells:
        assert f"| {cell.method} | {cell.extra['encoder_trainable_parameters']:,} |" in table


@pytest.mark.slow
def test_bad_configurations_fail_before_training(shards: Path, tmp_path: Path) -> None:
    splits = _splits(shards)
    with pytest.raises(TuneError, match="image encoder timm:test_vit@random: fusion adapters"):
        finetune_tuned(
            _cfg(shards, tmp_path, methods=["adapter"], options={"fusion": True}), splits
        )
    with pytest.raises(TuneError, match=r"option\(s\) rank apply to none of apla"):
        finetune_tuned(_cfg(shards, tmp_path, methods=["apla"]), splits)
    with pytest.raises(ValueError, match="methods.0\n.*Input should be 'frozen', 'lora'"):
        _cfg(shards, tmp_path, methods=["prompt"])
    with pytest.raises(ValueError, match="encoder\n.*Input should be 'image', 'text' or 'both'"):
        _cfg(shards, tmp_path, encoder="audio")


def test_tune_options_parse_to_typed_values() -> None:
    assert TuningOptions(options="rank=8, alpha=16.5,ffn=true,bottleneck=null,x=abc").options == {
        "rank": 8, "alpha": 16.5, "ffn": True, "bottleneck": None, "x": "abc",
    }  # fmt: skip
    assert TuningOptions(options=None).options == TuningOptions(options="").options == {}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        TuningOptions(options="rank")


def _cell(
    method: str, fraction: float, seed: int, auroc: float | None, **extra: object
) -> CellResult:
    return CellResult(
        task="classification", method=method, fraction=fraction, seed=seed,
        metrics={"auroc_macro": auroc}, trainable_parameters=0,
        extra={"tuning": {}, "device": "cpu", "trainable_percent": 1.5,
               "encoder_trainable_parameters": 1234, **extra},
    )  # fmt: skip


def test_tuning_table_summarises_cost_and_auroc_per_fraction() -> None:
    cells = [
        _cell("lora(image)+linear", 0.1, 0, 0.6, peak_memory_mb=100.0, samples_per_s=4.0),
        _cell("lora(image)+linear", 0.1, 1, 0.8, peak_memory_mb=300.0, samples_per_s=6.0),
        _cell("lora(image)+linear", 1.0, 0, None, peak_memory_mb=200.0, samples_per_s=None),
        CellResult("classification", "encoder+linear", 1.0, 0, {"auroc_macro": 0.9}, 10),
    ]
    table = tuning_markdown(cells)
    assert "AUROC 10 % | AUROC 100 % |" in table
    assert "| lora(image)+linear | 1,234 | 1.500 | 200 | 5.0 | 0.700 ± 0.100 | n/a | cpu |" in table
    assert "encoder+linear" not in table  # the frozen path's cached-feature heads are not tuned


@pytest.mark.slow
def test_finetune_cli_with_tune(shards: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from adaptor.cli import app

    res = tmp_path / "res"
    args = ["--shards", str(shards), "--out", str(res), "--fractions", "1", "--seeds", "0"]
    args += ["--no-progress"]
    tuned = ["--methods", "lora", "--encoder", "text", "--options", "rank=2", "--heads", "linear"]
    tuned += ["--epochs", "1", "--batch-size", "8"]
    result = CliRunner().invoke(app, ["finetune", "tune", *args, *tuned])
    assert result.exit_code == 0, result.output
    assert "| lora[rank=2](text)+linear | 100 % |" in result.output  # results.md
    assert "# Tuned encoders" in result.output and (res / "tuning.md").is_file()

    # each sub-command takes only its own options
    refused = CliRunner().invoke(app, ["finetune", "segment", *args, "--encoder", "text"])
    assert refused.exit_code == 2 and "No such option: --encoder" in refused.output
