"""Segmentation: decoder shapes per encoder, Dice/IoU by hand, masks into the cache, bad input,
and a tiny end-to-end ``finetune_segmentation`` under Ray Train."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adaptor.atomic import atomic_write_json
from adaptor.data.masks import rle_encode
from adaptor.data.splits import LabelSplits, make_label_splits
from adaptor.downstream import segmentation
from adaptor.downstream.grid import cell_path
from adaptor.downstream.results import CellResult, merge_results
from adaptor.downstream.segmentation import (
    OVERLAYS_NAME,
    TASK,
    SegmentationConfig,
    SegmentationError,
    _balanced_ids,
    _check_patch_tokens,
    finetune_segmentation,
    plan_segmentation,
    train_segmentation_cell,
)
from adaptor.embed import EmbedConfig, embed
from adaptor.embed.feature_maps import (
    SegmentationInputs,
    build_feature_cache,
    load_record,
    probe_feature_shapes,
    resized_preprocess,
    resolve_unannotated,
    transform_mask,
)
from adaptor.encoders import ImagePreprocess, build_image_encoder
from adaptor.errors import AdaptorError
from adaptor.heads.segmentation import PatchGridDecoder, SegmentationDecoder, segmentation_loss
from adaptor.metrics.segmentation import SegmentationScores
from adaptor.model import Adaptor, AdaptorConfig, AdaptorMismatchError
from adaptor.shards import ShardReader

# A preprocessing with no crop and no normalisation: geometry is a plain resize.
PLAIN = ImagePreprocess(size=(16, 16), mean=(0.0,) * 3, std=(1.0,) * 3, interpolation="bilinear")


# ---------------------------------------------------------------- decoder and metrics


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("efficientnet-lite0", None),
        ("efficientnet-lite0", 128),
        ("timm:resnet18@random", 96),
        ("timm:vit_tiny_patch16_224@random", None),
    ],
)
def test_decoder_output_matches_the_mask_for_each_encoder(
    name: str, size: int | None, synthetic_dir: Path
) -> None:
    encoder = build_image_encoder(name)
    inputs = SegmentationInputs(
        synthetic_dir, resized_preprocess(encoder.preprocess, size), "negative"
    )
    rows = [json.loads(x) for x in (synthetic_dir / "records.jsonl").read_text().splitlines()]
    pixels, mask = load_record(next(r for r in rows if r["mask"]), inputs)
    assert mask.shape == pixels.shape[1:] == inputs.preprocess.size and mask.any()
    maps = encoder.feature_maps(pixels[None])
    assert [tuple(m.shape[1:]) for m in maps] == probe_feature_shapes(
        encoder, inputs.preprocess.size
    )
    for bottleneck in ("map", "map+embedding", "neck"):
        decoder = SegmentationDecoder(
            [m.shape[1] for m in maps],
            bottleneck=bottleneck,
            embedding_dim=None if bottleneck == "map" else 32,
            bottleneck_size=maps[-1].shape[-2:],
        )
        embedding = None if bottleneck == "map" else torch.randn(1, 32)
        logits = decoder(maps, embedding, out_size=mask.shape)
        assert logits.shape == (1, 1, *mask.shape)
        segmentation_loss(logits, torch.from_numpy(mask)[None]).backward()
        assert all(p.grad is not None for p in decoder.parameters())


def test_decoder_refuses_maps_or_embedding_it_was_not_built_for() -> None:
    decoder = SegmentationDecoder([8, 16])
    maps = [torch.zeros(1, 8, 8, 8), torch.zeros(1, 16, 4, 4)]
    with pytest.raises(ValueError, match="channels"):
        decoder(maps[::-1], out_size=(32, 32))
    with pytest.raises(ValueError, match="without an embedding"):
        decoder(maps, torch.zeros(1, 4), out_size=(32, 32))
    with_embedding = SegmentationDecoder([8, 16], bottleneck="map+embedding", embedding_dim=4)
    assert with_embedding.num_trainable_parameters() > decoder.num_trainable_parameters()
    with pytest.raises(ValueError, match="takes an embedding"):
        with_embedding(maps, out_size=(32, 32))


def test_dice_and_iou_against_hand_computed_values() -> None:
    truth = torch.zeros(4, 4, 4, dtype=torch.uint8)
    pred = torch.zeros_like(truth)
    truth[0, :2, :2] = 1  # 4 true pixels
    pred[0, :2, :3] = 1  # 6 predicted: TP 4, FP 2
    pred[1, 0, 0] = 1  # a negative image with one false positive
    truth[3, 3, 3] = 1  # a missed positive: FN 1
    scores = SegmentationScores()
    scores.update(pred[:2], truth[:2])  # two batches, as in evaluation
    scores.update(pred[2:], truth[2:])
    got = scores.compute()
    # pooled: TP 4, FP 3, FN 1 -> Dice 8 / 12, IoU 4 / 8
    assert got["dice"] == pytest.approx(8 / 12)
    assert got["iou"] == pytest.approx(4 / 8)
    # per image: image 0 Dice 8/10, IoU 4/6; image 1 Dice 0; image 2 empty/empty; image 3 Dice 0
    assert scores.image_dice == pytest.approx([0.8, 0.0, None, 0.0])
    assert scores.image_iou == pytest.approx([4 / 6, 0.0, None, 0.0])
    assert got["dice_per_image"] == pytest.approx(0.4)  # images with a true mask: 0 and 3
    assert got["iou_per_image"] == pytest.approx(1 / 3)
    assert got["empty_accuracy"] == pytest.approx(0.5)  # negatives 1 (wrong) and 2 (right)


def test_scores_with_nothing_to_measure_are_undefined() -> None:
    scores = SegmentationScores()
    scores.update(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3))
    got = scores.compute()
    assert got["dice"] is None and got["iou"] is None and got["dice_per_image"] is None
    assert got["empty_accuracy"] == 1.0
    with pytest.raises(ValueError, match="one shape"):
        scores.update(torch.zeros(1, 3, 3), torch.zeros(1, 4, 4))


# ---------------------------------------------------------------- masks into the cache


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_masks_from_png_rle_and_boxes_reach_the_cache(tmp_path: Path) -> None:
    """A 32x32 image whose left half is foreground, given as PNG, RLE and boxes, and a
    mask PNG at half the image size (resized with a warning)."""
    image = (np.arange(32 * 32).reshape(32, 32) % 251).astype(np.uint8)
    _write_png(tmp_path / "images" / "a.png", image)
    left = np.zeros((32, 32), np.uint8)
    left[:, :16] = 1
    _write_png(tmp_path / "masks" / "a.png", left * 255)
    small = np.zeros((16, 16), np.uint8)
    small[:, :8] = 255
    _write_png(tmp_path / "masks" / "small.png", small)
    base = {"image": "images/a.png", "split": "train"}
    rows = [
        {**base, "id": "png", "mask": "masks/a.png"},
        {**base, "id": "rle", "mask": rle_encode(left)},
        {**base, "id": "boxes", "mask": [[0, 0, 16, 32]]},
        {**base, "id": "small", "mask": "masks/small.png"},
        {**base, "id": "none", "mask": None},
        {**base, "id": "bad-rle", "mask": "5 4 3"},
        {"id": "no-image", "image": "images/missing.png", "mask": None, "split": "train"},
    ]
    encoder = build_image_encoder("timm:resnet18@random")
    inputs = SegmentationInputs(tmp_path, resized_preprocess(encoder.preprocess, 64), "negative")
    logged: list[str] = []
    cache, skipped = build_feature_cache(
        tmp_path / "cache",
        encoder,
        rows,
        inputs,
        source="jsonl:x",
        levels=3,
        progress=False,
        log=logged.append,
        chunk_size=4,
    )
    assert sorted(cache.ids) == sorted(["png", "rle", "boxes", "small", "none"])
    assert {s["id"] for s in skipped} == {"bad-rle", "no-image"}
    assert any("odd number" in s["reason"] for s in skipped if s["id"] == "bad-rle")
    assert any("small.png" in line and "resizing" in line for line in logged)
    got = cache.gather(["png", "rle", "boxes", "small", "none"], ["mask", "image", "map0"])
    expected = transform_mask(left, inputs.preprocess)
    assert expected.shape == (64, 64) and 0 < expected.mean() < 1
    for i in range(4):
        assert np.array_equal(got["mask"][i].numpy(), expected)
    assert not got["mask"][4].any()  # no mask = negative under this policy
    assert got["map0"].dtype == torch.float16 and got["map0"].shape[0] == 5
    assert [m.shape[1:] for m in cache.maps(["png"])] == [torch.Size(s) for s in cache.map_shapes]
    # a rerun extracts nothing new and keeps the same chunks
    chunks = sorted(p.name for p in (tmp_path / "cache").glob("chunk-*"))
    again, _ = build_feature_cache(
        tmp_path / "cache", encoder, rows[:5], inputs, source="jsonl:x", levels=3, progress=False
    )
    assert sorted(p.name for p in (tmp_path / "cache").glob("chunk-*")) == chunks
    assert torch.equal(
        again.gather(["rle"], ["map1"])["map1"], cache.gather(["rle"], ["map1"])["map1"]
    )
    # the same folder for another job is refused
    with pytest.raises(AdaptorError, match="another job"):
        build_feature_cache(
            tmp_path / "cache",
            encoder,
            rows[:1],
            inputs,
            source="jsonl:x",
            levels=2,
            progress=False,
        )


def test_mask_geometry_follows_the_image_resize_and_crop() -> None:
    """Left-half mask on a 20x40 (h x w) image; shortest side to 16/0.5 = 32, crop 16 centre."""
    mask = np.zeros((20, 40), np.uint8)
    mask[:, :20] = 1
    pre = ImagePreprocess(size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.5)
    out = transform_mask(mask, pre)
    # resized to 32x64: foreground columns 0..31; the crop keeps columns 24..39 -> 8 left
    assert out.shape == (16, 16)
    assert out[:, :8].all() and not out[:, 8:].any()
    assert np.array_equal(transform_mask(mask, PLAIN)[:, :8], np.ones((16, 8), np.uint8))


def test_unannotated_records_follow_the_source_policy(tmp_path: Path) -> None:
    assert resolve_unannotated("auto", "synthetic:/data") == "negative"
    assert resolve_unannotated("auto", "siim-acr:/data") == "negative"
    assert resolve_unannotated("auto", "csv:/data/studies.csv") == "skip"
    assert resolve_unannotated("negative", "csv:/x.csv") == "negative"
    with pytest.raises(AdaptorError, match="unknown unannotated"):
        resolve_unannotated("maybe", "csv:/x.csv")
    _write_png(tmp_path / "images" / "a.png", np.zeros((8, 8), np.uint8))
    row = {"id": "a", "image": "images/a.png", "mask": None}
    assert load_record(row, SegmentationInputs(tmp_path, PLAIN, "skip")) is None
    _, mask = load_record(row, SegmentationInputs(tmp_path, PLAIN, "negative"))
    assert mask.shape == (16, 16) and not mask.any()


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def seg_setup(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("segmentation")
    shards = root / "shards"
    embed(
        EmbedConfig(
            source=f"synthetic:{synthetic_dir}",
            out=shards,
            shard_size=20,
            batch_size=20,
            loader_workers=0,
            progress=False,
            device="cpu",
        )
    )
    reader = ShardReader(shards)
    encoders = {
        k: {f: v[f] for f in ("name", "fingerprint", "dim")}
        for k, v in reader.manifest.encoders.items()
    }
    config = dict(image_dim=1280, text_dim=384, width=32, heads=2, ffn_hidden=64)
    Adaptor(AdaptorConfig(**config, encoders=encoders)).save_pretrained(root / "adaptor")
    other = json.loads(json.dumps(encoders))
    other["image"]["fingerprint"] = "0" * 64
    Adaptor(AdaptorConfig(**config, encoders=other)).save_pretrained(root / "other")
    meta = reader.load(members=()).meta
    splits = make_label_splits(meta, (0.5, 1.0), seed=0)
    # a 0.1 subset of train records without masks: nothing to segment
    negatives = [r["id"] for r in meta if r["split"] == "train" and r["mask"] is None][:3]
    splits = LabelSplits(
        seed=0,
        fractions=[0.1, 0.5, 1.0],
        label_names=splits.label_names,
        train={"0.1": negatives, **splits.train},
        val=splits.val,
        test=splits.test,
    )
    return {"root": root, "shards": shards, "splits": splits, "meta": meta}


def _cfg(setup: dict, out: Path, **kw: object) -> SegmentationConfig:
    defaults = dict(
        shards=str(setup["shards"]),
        out=str(out),
        adaptor=str(setup["root"] / "adaptor"),
        methods=["decoder", "decoder+adaptor"],
        fractions=[0.1, 0.5, 1.0],
        seeds=[0, 1],
        image_size=64,
        steps=4,
        eval_every=2,
        batch_size=4,
        overlay_images=2,
        cache_dir=str(setup["root"] / "cache"),
    )
    defaults.update(kw)
    return SegmentationConfig(**defaults)  # type: ignore[arg-type]


def test_an_adaptor_for_other_encoders_is_refused(seg_setup: dict, tmp_path: Path) -> None:
    cfg = _cfg(seg_setup, tmp_path, adaptor=str(seg_setup["root"] / "other"))
    with pytest.raises(AdaptorMismatchError, match="image encoder fingerprint"):
        plan_segmentation(cfg, seg_setup["splits"], progress=False)
    assert not (seg_setup["root"] / "cache").exists()  # refused before any extraction
    with pytest.raises(SegmentationError, match="needs --adaptor"):
        plan_segmentation(_cfg(seg_setup, tmp_path, adaptor=None), seg_setup["splits"])


def test_cached_and_online_feature_maps_train_the_same_decoder(
    seg_setup: dict, tmp_path: Path
) -> None:
    """One cell trained in-process from the cache and from the encoder run online."""
    results = {}
    for mode in ("cache", "online"):
        cfg = _cfg(seg_setup, tmp_path / mode, feature_maps=mode, fractions=[1.0], seeds=[0])
        plan = plan_segmentation(cfg, seg_setup["splits"], progress=False, log=lambda _: None)
        cell = next(c for c in plan.cells if c.params["method"] == "decoder+adaptor")
        results[mode] = train_segmentation_cell(cell, plan.shared, TASK.prepare(plan.shared))
    cached, online = results["cache"], results["online"]
    assert (
        cached["extra"]["feature_maps"] == "cache" and online["extra"]["feature_maps"] == "online"
    )
    assert cached["extra"]["train_records"] == online["extra"]["train_records"] > 0
    assert cached["trainable_parameters"] == online["trainable_parameters"]
    # float16 storage of the maps is the only difference
    for name in ("dice", "iou"):
        assert cached["metrics"][name] == pytest.approx(online["metrics"][name], abs=0.05)


def test_finished_segmentation_rerun_builds_no_encoder_and_draws_nothing(
    seg_setup: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rerun whose feature maps and cells are all done: no encoder, probe, cache check or
    plot; the same setup (and run folder) as one that builds them."""
    cfg, splits = _cfg(seg_setup, tmp_path / "res", fractions=[1.0], seeds=[0]), seg_setup["splits"]
    plan_segmentation(cfg, splits, progress=False, log=lambda _: None)  # fills the cache
    with monkeypatch.context() as m:
        m.setattr(segmentation, "_finished_cache", lambda *a: None)
        built = plan_segmentation(cfg, splits, progress=False, log=lambda _: None)
    for cell in built.cells:
        result = CellResult("segmentation", cell.params["method"], 1.0, 0, {"dice": 0.5}, 1)
        atomic_write_json(cell_path(built.run_dir, cell.key), result.to_dict())
    finetune_segmentation(cfg, splits, progress=False, log=lambda _: None)  # draws once
    overlay = tmp_path / "res" / OVERLAYS_NAME
    assert overlay.is_file()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("model work or plotting on a finished rerun")

    for name in ("build_image_encoder", "probe_feature_shapes", "build_feature_cache"):
        monkeypatch.setattr(segmentation, name, refuse)
    drawn: list[Path] = []
    monkeypatch.setattr(segmentation, "plot_overlays", lambda *a, path, **k: drawn.append(path))
    logged: list[str] = []
    again = finetune_segmentation(cfg, splits, progress=False, log=logged.append)
    assert [c.metrics for c in again] == [{"dice": 0.5}] * 2 and not drawn
    assert any("already in" in line for line in logged)
    reused = plan_segmentation(cfg, splits, progress=False, log=lambda _: None)
    assert reused.shared == built.shared and reused.run_dir == built.run_dir
    os.utime(overlay, ns=(0, 0))  # another setup's grid drawn there since: drawn again
    finetune_segmentation(cfg, splits, progress=False, log=lambda _: None)
    assert drawn == [overlay]
    # a record the cache lacks is extracted (its encoder built) again
    manifest = ShardReader(seg_setup["shards"]).manifest
    rows = [*seg_setup["meta"], {"id": "new", "mask": None}]
    found = segmentation._finished_cache(
        cfg, Path(cfg.cache_dir), manifest.encoders["image"], manifest.source, "negative", rows
    )
    assert found is None


@pytest.mark.slow
def test_finetune_segmentation_end_to_end(seg_setup: dict, tmp_path: Path) -> None:
    from adaptor.ray_env import start_ray

    start_ray(num_cpus=2)
    cfg = _cfg(seg_setup, tmp_path / "res", workers=2)
    logged: list[str] = []
    cells = finetune_segmentation(cfg, seg_setup["splits"], progress=False, log=logged.append)
    keys = {(c.method, c.fraction, c.seed) for c in cells}
    assert keys == {
        (m, f, s) for m in ("decoder", "decoder+adaptor") for f in (0.1, 0.5, 1.0) for s in (0, 1)
    }
    test_ids = seg_setup["splits"].test
    for c in cells:
        assert c.task == "segmentation" and c.trainable_parameters > 0
        if c.fraction == 0.1:  # only negatives: nothing to learn, metrics undefined
            assert c.metrics["dice"] is None and "no record with a non-empty mask" in " ".join(
                c.extra["warnings"]
            )
            continue
        assert 0.0 <= c.metrics["dice"] <= 1.0 and 0.0 <= c.metrics["iou"] <= c.metrics["dice"]
        assert c.extra["per_image"]["ids"] == test_ids
        assert len(c.extra["per_image"]["dice"]) == len(test_ids)
        assert c.extra["train_records"] == len(seg_setup["splits"].train_ids(c.fraction))
    by = {(c.method, c.fraction, c.seed): c for c in cells}
    assert (
        by[("decoder+adaptor", 1.0, 0)].trainable_parameters
        > by[("decoder", 1.0, 0)].trainable_parameters
    )
    assert any("no record with a non-empty mask" in line for line in logged)
    overlay = tmp_path / "res" / OVERLAYS_NAME
    assert overlay.stat().st_size > 5000
    with Image.open(overlay) as png:
        assert png.width > png.height  # 2 rows of images, 2 + 6 columns
    # results files hold every method x fraction row
    md = merge_results(tmp_path / "res", cells)
    table = md.read_text()
    for method in ("decoder", "decoder+adaptor"):
        for pct in ("10", "50", "100"):
            assert f"| {method} | {pct} % |" in table, (method, pct)
    saved = json.loads((tmp_path / "res" / "results.json").read_text())
    assert len([c for c in saved["cells"] if c["task"] == "segmentation"]) == 12
    # a rerun reuses every finished cell
    again = finetune_segmentation(cfg, seg_setup["splits"], progress=False, log=logged.append)
    assert [c.metrics for c in again] == [c.metrics for c in cells]
    assert any("12 of 12" in line and "already done" in line for line in logged)


@pytest.mark.slow
def test_finetune_cli_segmentation(seg_setup: dict, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from adaptor.cli import app

    splits = tmp_path / "splits.json"
    seg_setup["splits"].save(splits)
    res = tmp_path / "res"
    args = ["finetune", "segment", "--shards", str(seg_setup["shards"])]
    args += ["--adaptor", str(seg_setup["root"] / "adaptor")]
    args += ["--splits", str(splits), "--fractions", "1", "--seeds", "0", "--steps", "3"]
    args += ["--image-size", "64", "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--out", str(res)])
    assert result.exit_code == 0, result.output
    for method in ("decoder", "decoder+adaptor", "adaptor-neck"):  # the default methods
        assert f"| {method} | 100 % |" in result.output
    assert (res / OVERLAYS_NAME).is_file() and (res / "segmentation_vs_fraction.png").is_file()

    # the reference's heads, loss and balanced training set, by name
    reference = ["--methods", "adaptor-patches", "--loss", "focal+logdice"]
    result = CliRunner().invoke(
        app, [*args, "--out", str(tmp_path / "ref"), *reference, "--balance"]
    )
    assert result.exit_code == 0, result.output
    assert "| adaptor-patches | 100 % |" in result.output

    bad = CliRunner().invoke(app, ["finetune", "detection", *args[2:], "--out", str(res)])
    assert bad.exit_code == 2 and "No such command 'detection'" in bad.output, bad.output


# ---------------------------------------------------------------- the reference's heads


def _reference_mixed_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A port of the reference's MixedLoss(alpha=10, gamma=2, modified_dice_loss=False)
    (github holajoa/Adaptor-VL-SSL, MGCA/mgca/utils/segmentation_loss.py)."""
    max_val = (-logits).clamp(min=0)
    loss = logits - logits * target + max_val + ((-max_val).exp() + (-logits - max_val).exp()).log()
    invprobs = torch.nn.functional.logsigmoid(-logits * (target * 2.0 - 1.0))
    focal = ((invprobs * 2.0).exp() * loss).mean()
    p_flat, t_flat = logits.sigmoid().view(-1), target.view(-1)
    dice = (2.0 * (p_flat * t_flat).sum() + 1.0) / (p_flat.sum() + t_flat.sum() + 1.0)
    return 10.0 * focal - torch.log(dice)


def test_focal_logdice_loss_matches_the_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, generator=gen) * 3
    masks = torch.rand(3, 8, 8, generator=gen) > 0.7
    ours = segmentation_loss(logits, masks, kind="focal+logdice")
    assert ours.item() == pytest.approx(
        _reference_mixed_loss(logits, masks.float()[:, None]).item(), rel=1e-6
    )
    assert ours.item() != pytest.approx(segmentation_loss(logits, masks).item(), rel=1e-3)


def test_the_neck_replaces_the_bottleneck() -> None:
    """adaptor-neck: the embedding decides the bottleneck; the deepest map is not read."""
    torch.manual_seed(0)
    decoder = SegmentationDecoder(
        [8, 16], bottleneck="neck", embedding_dim=12, bottleneck_size=(4, 4)
    ).eval()
    maps = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    embedding = torch.randn(2, 12)
    out = decoder(maps, embedding, out_size=(32, 32))
    assert out.shape == (2, 1, 32, 32)
    other_deepest = [maps[0], torch.randn(2, 16, 4, 4)]
    assert torch.equal(decoder(other_deepest, embedding, out_size=(32, 32)), out)
    assert not torch.allclose(decoder(maps, torch.randn(2, 12), out_size=(32, 32)), out)
    # the reference's two transposed convolutions make its 7×7 map from one vector
    assert decoder.neck(embedding[:, :, None, None]).shape[-2:] == (7, 7)
    with pytest.raises(ValueError, match="needs bottleneck_size"):
        SegmentationDecoder([8, 16], bottleneck="neck", embedding_dim=12)
    with pytest.raises(ValueError, match="needs embedding_dim"):
        SegmentationDecoder([8, 16], bottleneck="map+embedding")


def test_the_patch_grid_decoder() -> None:
    decoder = PatchGridDecoder(24, widths=(16, 8))
    grid = torch.randn(2, 24, 4, 4)
    logits = decoder([grid], out_size=(20, 20))
    assert logits.shape == (2, 1, 20, 20)
    segmentation_loss(logits, torch.zeros(2, 20, 20)).backward()
    assert all(p.grad is not None for p in decoder.parameters())
    with pytest.raises(ValueError, match="one \\[B, 24, h, w\\] grid"):
        decoder([grid, grid], out_size=(20, 20))


def test_balanced_training_ids_keep_every_positive() -> None:
    masks = torch.zeros(10, 4, 4, dtype=torch.uint8)
    masks[[1, 4, 7], 0, 0] = 1
    train = {"ids": [f"r{i}" for i in range(10)], "mask": masks}
    kept = _balanced_ids(train, seed=0)
    assert {"r1", "r4", "r7"} <= set(kept) and len(kept) == 6
    assert kept == [i for i in train["ids"] if i in kept]  # order kept
    assert _balanced_ids(train, seed=0) == kept and _balanced_ids(train, seed=1) != kept


def test_patch_tokens_that_do_not_fit_the_adaptor_are_refused() -> None:
    adaptor = Adaptor(AdaptorConfig(image_dim=32, text_dim=8, width=16, heads=2, ffn_hidden=32))
    _check_patch_tokens(adaptor, 32, "timm:vit")  # the reference's case: tokens as wide as CLS
    with pytest.raises(SegmentationError, match="'adaptor-patches' cannot run on 'cnn'.*112"):
        _check_patch_tokens(adaptor, 112, "cnn")


@pytest.mark.parametrize("method", ["adaptor-neck", "adaptor-patches"])
def test_reference_heads_train_a_cell(seg_setup: dict, tmp_path: Path, method: str) -> None:
    cfg = _cfg(
        seg_setup,
        tmp_path,
        methods=[method],
        fractions=[1.0],
        seeds=[0],
        loss="focal+logdice",
        balance=True,
    )
    plan = plan_segmentation(cfg, seg_setup["splits"], progress=False, log=lambda _: None)
    (cell,) = plan.cells
    result = train_segmentation_cell(cell, plan.shared, TASK.prepare(plan.shared))
    train = seg_setup["splits"].train_ids(1.0)
    positives = sum(1 for r in seg_setup["meta"] if r["id"] in set(train) and r["mask"])
    assert result["extra"]["train_positives"] == positives
    assert result["extra"]["train_records"] == min(2 * positives, len(train))
    assert 0.0 <= result["metrics"]["dice"] <= 1.0
    assert result["extra"]["per_image"]["ids"] == seg_setup["splits"].test
