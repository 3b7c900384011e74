"""One-sided embeds (an encoder ``none``) and joining them: the same arrays as a paired embed,
no image read without an image encoder, refusals, and image-only shards downstream."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from adaptor.cli import app
from adaptor.config.embed import NO_ENCODER
from adaptor.embed import EmbedConfig, EmbedError, embed
from adaptor.model import Adaptor, AdaptorConfig, load_adaptor_for
from adaptor.shards import Manifest, ShardMismatchError, ShardReader, join_shards

MEMBERS = ("image", "image_patches", "text", "text_states")


def _cfg(source: str, out: Path, **kw: object) -> EmbedConfig:
    defaults = dict(
        batch_size=8,
        shard_size=16,
        loader_workers=0,
        progress=False,
        device="cpu",
        patch_tokens=True,
        text_states=True,
    )
    return EmbedConfig(source=source, out=out, **{**defaults, **kw})  # type: ignore[arg-type]


def _samples(folder: Path) -> dict[str, dict]:
    return {s["id"]: s for s in ShardReader(folder).samples(rank=0, world_size=1)}


@pytest.fixture(scope="module")
def folders(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A paired, an image-only and a text-only embed of one 40-record source, and the join of
    the last two; the text-only embed runs with the source's images moved away."""
    root = tmp_path_factory.mktemp("one-sided")
    source = root / "source"
    others = lambda _, names: [n for n in names if n.endswith(".jsonl") and n != "records.jsonl"]  # noqa: E731
    shutil.copytree(synthetic_dir, source, ignore=others)
    spec = f"synthetic:{source}"
    out = {name: root / name for name in ("pair", "image", "text", "joined")}
    embed(_cfg(spec, out["pair"]))
    embed(_cfg(spec, out["image"], text_encoder=NO_ENCODER))
    (source / "images").rename(root / "hidden")
    try:
        embed(_cfg(spec, out["text"], image_encoder=NO_ENCODER))
    finally:
        (root / "hidden").rename(source / "images")
    join_shards(out["image"], out["text"], out["joined"], progress=False, log=lambda _: None)
    return out


def test_one_sided_embeds_equal_the_paired_members(folders: dict[str, Path]) -> None:
    pair = _samples(folders["pair"])
    for side, members in (("image", MEMBERS[:2]), ("text", MEMBERS[2:])):
        manifest = Manifest.load(folders[side])
        assert manifest.complete and manifest.count == 40 and manifest.skipped == []
        assert list(manifest.encoders) == [side] and manifest.members == list(members)
        assert manifest.encoders[side] == Manifest.load(folders["pair"]).encoders[side]
        one = _samples(folders[side])
        assert list(one) == list(pair)
        for record_id, sample in one.items():
            assert {m for m in MEMBERS if m in sample} == set(members)
            assert (
                sample["meta"] == pair[record_id]["meta"]
                and sample["key"] == pair[record_id]["key"]
            )
            for member in members:
                assert sample[member].dtype == np.float16
                assert np.array_equal(sample[member], pair[record_id][member]), member
    # the text-only embed ran with no image file in place: nothing was read, nothing skipped
    assert ShardReader(folders["text"]).load().arrays["text"].shape == (40, 384)


def test_join_equals_the_paired_embed(folders: dict[str, Path]) -> None:
    joined, pair = Manifest.load(folders["joined"]), Manifest.load(folders["pair"])
    fields = ("source", "encoders", "members", "shard_size", "total_items", "count", "skipped")
    assert {f: getattr(joined, f) for f in fields} == {f: getattr(pair, f) for f in fields}
    assert joined.complete and pair.joined_from is None
    assert set(joined.joined_from or {}) == {"image", "text"}
    # same keys, same member bytes, same metadata: byte-identical shards
    assert [(s.name, s.count, s.sha256) for s in joined.shards] == [
        (s.name, s.count, s.sha256) for s in pair.shards
    ]
    a, b = _samples(folders["joined"]), _samples(folders["pair"])
    assert list(a) == list(b)
    for record_id in a:
        for member in MEMBERS:
            assert np.array_equal(a[record_id][member], b[record_id][member])


def test_rejoin_is_a_no_op_changed_inputs_rebuild_a_killed_join_resumes(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    out = folders["joined"]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    lines: list[str] = []
    again = join_shards(folders["image"], folders["text"], out, progress=False, log=lines.append)
    assert lines == [f"{out} is already joined from these inputs; nothing to do"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == stamps
    assert again == Manifest.load(out)

    text, rejoined = tmp_path / "text", tmp_path / "joined"
    shutil.copytree(folders["text"], text)
    shutil.copytree(out, rejoined)
    raw = json.loads((text / "manifest.json").read_text())
    raw["skipped"] = [{"id": "elsewhere", "reason": "changed input"}]
    (text / "manifest.json").write_text(json.dumps(raw))
    lines.clear()
    rebuilt = join_shards(folders["image"], text, rejoined, progress=False, log=lines.append)
    assert "changed since it was joined; rebuilding" in lines[0]
    assert rebuilt.joined_from != again.joined_from and rebuilt.shards == again.shards

    # a join killed before its last shard: the rerun writes just that one
    (rejoined / "shard-000002.tar").unlink()
    dataclasses.replace(rebuilt, complete=False).save(rejoined)
    stamps = {p.name: p.stat().st_mtime_ns for p in rejoined.glob("*.tar")}
    finished = join_shards(folders["image"], text, rejoined, progress=False, log=lines.append)
    assert finished == rebuilt and len(list(rejoined.glob("*.tar"))) == 3
    assert {n: (rejoined / n).stat().st_mtime_ns for n in stamps} == stamps


def test_records_one_side_lacks_are_skipped_naming_the_side(
    synthetic_dir: Path, tmp_path: Path
) -> None:
    """Without a text encoder a record with an empty report is kept; without an image
    encoder one whose image is missing is kept (no image is opened); the join skips both."""
    good = json.loads((synthetic_dir / "records.jsonl").read_text().splitlines()[0])
    good["image"] = str(synthetic_dir / good["image"])
    rows = [
        good,
        {**good, "id": "no-image", "image": str(tmp_path / "nope.png")},
        {**good, "id": "no-report", "report": " "},
    ]
    source = tmp_path / "three.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    embed(_cfg(f"jsonl:{source}", tmp_path / "image", text_encoder=NO_ENCODER))
    result = CliRunner().invoke(
        app,
        ["embed", "--source", f"jsonl:{source}", "--out", str(tmp_path / "text")]
        + ["--image-encoder", "none", "--text-states", "--patch-tokens", "--shard-size", "16"]
        + ["--batch-size", "8", "--loader-workers", "0", "--device", "cpu", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    assert "2 samples" in result.output
    assert ShardReader(tmp_path / "image").load().ids == [good["id"], "no-report"]
    assert ShardReader(tmp_path / "text").load().ids == [good["id"], "no-image"]

    joined = join_shards(tmp_path / "image", tmp_path / "text", tmp_path / "out", progress=False)
    assert joined.count == 1 and ShardReader(tmp_path / "out").load().ids == [good["id"]]
    reasons = {s["id"]: s["reason"] for s in joined.skipped}
    assert reasons["no-image"].startswith("image side: cannot read image")
    assert reasons["no-report"].startswith("text side: empty report")
    assert len(joined.skipped) == 2


def test_refusals(folders: dict[str, Path], synthetic_dir: Path, tmp_path: Path) -> None:
    spec = f"synthetic:{synthetic_dir}"
    with pytest.raises(ValidationError, match="both 'none'"):
        _cfg(spec, tmp_path / "x", image_encoder=NO_ENCODER, text_encoder=NO_ENCODER)
    result = CliRunner().invoke(
        app,
        ["embed", "--source", spec, "--out", str(tmp_path / "x")]
        + ["--image-encoder", "none", "--text-encoder", "none"],
    )
    assert result.exit_code != 0 and "nothing to embed" in result.output
    # a one-sided run into a paired folder is another job
    with pytest.raises(EmbedError, match="text encoder: folder has 'all-minilm-l6-v2'"):
        embed(_cfg(f"synthetic:{folders['pair'].parent / 'source'}", folders["pair"],
                   text_encoder=NO_ENCODER))  # fmt: skip

    other = tmp_path / "other"  # the same records from another source
    shutil.copytree(folders["text"], other)
    raw = json.loads((other / "manifest.json").read_text())
    raw["source"] = spec
    (other / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ShardMismatchError, match="source: image side"):
        join_shards(folders["image"], other, tmp_path / "j1", progress=False)
    raw.update(source=Manifest.load(folders["text"]).source, complete=False)
    (other / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ShardMismatchError, match="incomplete"):
        join_shards(folders["image"], other, tmp_path / "j2", progress=False)
    with pytest.raises(ShardMismatchError, match="no manifest.json"):
        join_shards(folders["image"], tmp_path / "missing", tmp_path / "j3", progress=False)
    with pytest.raises(ShardMismatchError, match="holds no image embeddings"):
        join_shards(folders["text"], folders["text"], tmp_path / "j4", progress=False)
    with pytest.raises(ShardMismatchError, match="not of a join"):
        join_shards(folders["image"], folders["text"], folders["pair"], progress=False)
    assert not (tmp_path / "j1").exists() and not (tmp_path / "j2").exists()


@pytest.fixture(scope="module")
def pretrained(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained Adaptor for the joined (paired) shards' encoders; pretraining on
    joined shards runs in tests/study/test_study.py."""
    joined = Manifest.load(folders["joined"]).encoders
    encoders = {r: {k: joined[r][k] for k in ("name", "fingerprint", "dim")} for r in joined}
    shape = {"width": 32, "heads": 4, "ffn_hidden": 64}
    config = AdaptorConfig(image_dim=1280, text_dim=384, encoders=encoders, **shape)
    out = tmp_path_factory.mktemp("adaptor") / "adaptor"
    Adaptor(config).save_pretrained(out)
    return out


@pytest.mark.slow
def test_image_only_shards_through_finetune_heads(
    folders: dict[str, Path], pretrained: Path, tmp_path: Path
) -> None:
    """An Adaptor pretrained on paired shards reads image-only shards of its image encoder;
    ``adaptor finetune heads`` runs on them with its default options."""
    image = folders["image"]
    load_adaptor_for(pretrained, Manifest.load(image), image)
    args = ["finetune", "heads", "--shards", str(image), "--adaptor", str(pretrained)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "res"), "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "res" / "results.json").read_text())["summary"]
    assert {r["method"] for r in summary} == {
        f"{f}+{h}" for f in ("encoder", "adaptor") for h in ("linear", "mlp")
    }


def test_pretraining_refuses_one_sided_shards(folders: dict[str, Path], tmp_path: Path) -> None:
    from adaptor.pretrain import PretrainConfig, PretrainError, pretrain

    cfg = PretrainConfig(shards=str(folders["image"]), out=str(tmp_path / "run"), batch_size=4)
    with pytest.raises(PretrainError, match="holds no text embeddings .*--text-encoder none"):
        pretrain(cfg, progress=False)
    assert not (tmp_path / "run").exists()
