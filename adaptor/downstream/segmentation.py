"""Segmentation decoders on the frozen image encoder's feature maps, with and without the Adaptor.

Methods (:mod:`adaptor.heads.segmentation`): ``decoder`` (a U-Net-style decoder over the
encoder's multi-scale maps), ``decoder+adaptor`` (the same decoder with the frozen
Adaptor's image embedding of each record tiled beside the bottleneck), and the reference's
two heads: ``adaptor-neck`` (the embedding through a transposed-convolution neck that
replaces the bottleneck, the shallower maps as skips) and ``adaptor-patches`` (the frozen
Adaptor's image path over every token of the deepest map, decoded without skips). Every
method × label fraction × seed is one cell of a :func:`~adaptor.downstream.grid.run_grid`
run, so a rerun resumes finished cells.

Inputs. Each record's image goes through the image encoder's own preprocessing (resize,
centre crop), at ``image_size`` when set; its mask (PNG, RLE or boxes, see
:func:`~adaptor.data.masks.load_mask`) goes through the same resize and crop, nearest
neighbour. A record without a mask is a negative (nothing to segment) for layouts where
every positive carries one (synthetic, SIIM-ACR, RSNA boxes) and is left out of
segmentation elsewhere (``unannotated="auto"``; ``negative``/``skip`` force either).

Feature maps. ``feature_maps="cache"`` (the default) extracts the deepest ``levels`` maps
once into a float16 cache beside the shards (:mod:`adaptor.embed.feature_maps`);
``"online"`` runs the encoder on every training batch instead. When the cache already holds
every record, the map shapes and preprocessing come from it and no encoder is built (unless
``image_size`` is None: the encoder's own size is known once it is built). Caching wins by
far on CPU (``benchmarks/segmentation.py``): the encoder's forward costs more than a
decoder step, and the grid trains many decoders on the same images.

Training. Every cell takes the same number of optimisation steps (``steps``; a small
fraction is cycled through many epochs, the full one through few), AdamW on ``loss``
(BCE + soft Dice, or the reference's 10·focal − log Dice), on every training record or
(``balance``) on its positives and as many drawn negatives, validation Dice every
``eval_every`` steps, early stopping after ``patience``
evaluations without improvement, and the best weights scored on the test split:
aggregate Dice and IoU plus per-image values (:mod:`adaptor.metrics.segmentation`).
A training subset without any foreground pixel cannot teach a decoder anything: its cell
is not trained, its metrics are undefined (``None``) and a warning says why.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from adaptor.atomic import atomic_open, atomic_write_json
from adaptor.config import GridOptions, SegmentationOptions
from adaptor.data.sources import open_source
from adaptor.data.splits import LabelSplits, fraction_key
from adaptor.downstream.grid import (
    GridCell,
    GridTask,
    cell_path,
    plan_cells,
    run_grid,
    setup_key,
)
from adaptor.downstream.plots import plot_overlay_grid
from adaptor.downstream.results import CellResult
from adaptor.embed.feature_maps import (
    CACHE_FILE,
    FeatureMapCache,
    SegmentationInputs,
    build_feature_cache,
    cache_folder,
    grey_view,
    load_record,
    probe_feature_shapes,
    resized_preprocess,
    resolve_unannotated,
)
from adaptor.encoders import ImageEncoder, ImagePreprocess, build_image_encoder
from adaptor.encoders.base import flatten_map
from adaptor.errors import AdaptorError
from adaptor.heads.segmentation import PatchGridDecoder, SegmentationDecoder, segmentation_loss
from adaptor.metrics.segmentation import SegmentationScores
from adaptor.model import Adaptor, load_adaptor_for
from adaptor.shards import ShardReader

OVERLAYS_NAME = "segmentation_overlays.png"
PLOTTED_NAME = "plotted.json"  # RUN/overlays/: which overlay grid file this setup last drew
UNANNOTATED_SKIPPED = "no mask (unannotated records are skipped)"  # as the feature cache says
ADAPTOR_METHODS = ("decoder+adaptor", "adaptor-neck", "adaptor-patches")  # need --adaptor


class SegmentationError(AdaptorError, ValueError):
    """A segmentation setup that cannot run on the given shards."""


class SegmentationConfig(SegmentationOptions, GridOptions):
    """What ``adaptor finetune segment`` trains: the options, the shards, the Adaptor (needed
    by the ``ADAPTOR_METHODS``) and the results folder; ``cache_dir`` holds the feature-map cache
    (default: beside the shards).

    ``image_size`` None keeps the encoder's own input size; the default 128 px makes the
    embedded default fit its time budget (≈3x fewer encoder FLOPs than 224 px for
    EfficientNet-Lite0). ``levels`` keeps the deepest maps (4: strides 4–32 for
    EfficientNet-Lite0; its stride-2 map alone would double the cache).
    """

    shards: str
    out: str
    adaptor: str | None = None
    cache_dir: str | None = None


@dataclass
class SegmentationPlan:
    """Everything the grid needs: the cells, the data they share, where results go."""

    cells: list[GridCell]
    shared: dict[str, Any]
    run_dir: Path
    skipped: list[dict[str, str]]


def finetune_segmentation(
    cfg: SegmentationConfig,
    splits: LabelSplits,
    *,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
) -> list[CellResult]:
    """Train and test every method × fraction × seed; write the overlay grid; return the cells.

    The overlay grid is drawn again only when a cell trained in this call or its file is
    not the one this setup drew last.
    """
    plan = plan_segmentation(cfg, splits, progress=progress, log=log)
    trained = any(not cell_path(plan.run_dir, c.key).is_file() for c in plan.cells)
    results = run_grid(
        plan.cells,
        TASK,
        shared=plan.shared,
        run_dir=plan.run_dir,
        workers=cfg.workers,
        address=cfg.address,
        progress=progress,
        log=log,
    )
    out = [CellResult.from_dict(results[c.key]) for c in plan.cells]
    for cell in out:
        cell.extra["skipped_records"] = len(plan.skipped)
        for w in cell.extra.get("warnings", []):
            log(f"warning: {cell.method} {cell.fraction:g} seed {cell.seed}: {w}")
    path = Path(cfg.out).resolve() / OVERLAYS_NAME
    if trained or not _drew(plan.run_dir, path):
        shown = [c for c in plan.cells if c.params["seed"] == cfg.seeds[0]]
        if plot_overlays(plan.run_dir, plan.shared, cells=shown, path=path):
            atomic_write_json(plan.run_dir / "overlays" / PLOTTED_NAME, _plot_stamp(path))
    return out


def _plot_stamp(path: Path) -> dict[str, Any]:
    """Which file an overlay grid went to, and its modification time."""
    return {"path": str(path), "mtime_ns": path.stat().st_mtime_ns}


def _drew(run_dir: Path, path: Path) -> bool:
    """Whether ``path`` is still the overlay grid this setup drew (no other setup's since)."""
    stamp = run_dir / "overlays" / PLOTTED_NAME
    return path.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == _plot_stamp(path)


def plan_segmentation(
    cfg: SegmentationConfig,
    splits: LabelSplits,
    *,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
) -> SegmentationPlan:
    """Check the inputs, fill the feature-map cache (``feature_maps="cache"``), list the cells."""
    shards = Path(cfg.shards).resolve()
    reader = ShardReader(shards)
    adaptor = _check_adaptor(cfg, reader, shards)
    source = reader.manifest.source
    unannotated = resolve_unannotated(cfg.unannotated, source)
    if unannotated == "skip":
        log("segmentation: records without a mask are left out (their source may omit masks)")
    meta = {row["id"]: row for row in reader.load(members=()).meta}
    needed = _needed_ids(cfg, splits)
    unknown = [i for i in needed if i not in meta]
    if unknown:
        raise SegmentationError(
            f"the label splits name {len(unknown)} record(s) not in {shards} (e.g. "
            f"{unknown[0]!r}); they were made for other data"
        )
    encoder_info = reader.manifest.encoders["image"]
    root = open_source(source).root
    cache_parent = Path(cfg.cache_dir) if cfg.cache_dir else shards / "feature_maps"
    rows = [meta[i] for i in needed]
    skipped: list[dict[str, str]] = []
    reused = _finished_cache(cfg, cache_parent, encoder_info, source, unannotated, rows)
    if reused:
        cache, skipped = reused
        preprocess = ImagePreprocess.from_dict(cache.info["preprocess"])
        inputs = SegmentationInputs(root=root, preprocess=preprocess, unannotated=unannotated)
        shapes = cache.map_shapes
        log(f"segmentation: feature maps of {len(needed)} records already in {cache.folder}")
    else:
        encoder = _checked_encoder(encoder_info, shards)
        inputs = SegmentationInputs(
            root=root,
            preprocess=resized_preprocess(encoder.preprocess, cfg.image_size),
            unannotated=unannotated,
        )
        shapes = probe_feature_shapes(encoder, inputs.preprocess.size)[-cfg.levels :]
    if "adaptor-patches" in cfg.methods:
        _check_patch_tokens(adaptor, shapes[-1][0], encoder_info["name"])
    cache_path = cache_folder(
        cache_parent, encoder_info, inputs.preprocess.size, cfg.levels, unannotated
    )
    if cfg.feature_maps == "cache" and not reused:
        log(f"segmentation: feature maps of {len(needed)} records -> {cache_path}")
        cache, skipped = build_feature_cache(
            cache_path,
            encoder,
            rows,
            inputs,
            source=source,
            levels=cfg.levels,
            batch_size=cfg.extract_batch_size,
            loader_workers=cfg.loader_workers,
            progress=progress,
            log=log,
        )
    if cfg.feature_maps == "cache":
        log(f"segmentation: cache holds {len(cache.ids)} records, {cache.nbytes() / 1e6:.0f} MB")

    shared = {
        "shards": str(shards),
        "adaptor": str(Path(cfg.adaptor).resolve()) if cfg.adaptor else None,
        "cache": str(cache_path),
        "encoder": encoder_info["name"],
        "fingerprint": encoder_info["fingerprint"],
        "inputs": inputs.to_dict(),
        "map_shapes": [list(s) for s in shapes],
        "records": {i: meta[i] for i in needed} if cfg.feature_maps == "online" else {},
        "train": {fraction_key(f): splits.train_ids(f) for f in cfg.fractions},
        "val": list(splits.val),
        "test": list(splits.test),
        "overlay_ids": _overlay_ids(splits.test, meta, skipped, cfg.overlay_images),
        "config": {
            k: v
            for k, v in cfg.model_dump().items()
            if k not in ("workers", "address", "loader_workers", "cache_dir")
        },
    }
    run_dir = Path(cfg.out).resolve() / "runs" / f"segmentation-{_config_hash(shared)}"
    shared["run_dir"] = str(run_dir)
    cells = plan_cells({m: {"method": m} for m in cfg.methods}, cfg.fractions, cfg.seeds)
    return SegmentationPlan(cells=cells, shared=shared, run_dir=run_dir, skipped=skipped)


def _finished_cache(
    cfg: SegmentationConfig,
    parent: Path,
    encoder_info: dict[str, Any],
    source: str,
    unannotated: str,
    rows: Sequence[dict[str, Any]],
) -> tuple[FeatureMapCache, list[dict[str, str]]] | None:
    """The feature-map cache of this setup and the records it leaves out, when it already
    holds every other record of ``rows``: then no encoder is built or probed. None when
    :func:`build_feature_cache` has work (or a check) to do, or the input size is the
    encoder's own (known only once it is built)."""
    if cfg.feature_maps != "cache" or cfg.image_size is None:
        return None
    size = (cfg.image_size, cfg.image_size)
    folder = cache_folder(parent, encoder_info, size, cfg.levels, unannotated)
    if not (folder / CACHE_FILE).is_file():
        return None
    cache = FeatureMapCache(folder)
    expected = {
        "source": source,
        "input_size": list(size),
        "levels": cfg.levels,
        "unannotated": unannotated,
    }
    if cache.info["encoder"].get("fingerprint") != encoder_info["fingerprint"] or any(
        cache.info.get(k) != v for k, v in expected.items()
    ):
        return None  # another job's folder: build_feature_cache says so
    left_out = [r for r in rows if r["id"] not in cache]
    if any(r.get("mask") is not None or unannotated != "skip" for r in left_out):
        return None  # records to extract, or unreadable ones to try again
    return cache, [{"id": r["id"], "reason": UNANNOTATED_SKIPPED} for r in left_out]


def _checked_encoder(encoder_info: dict[str, Any], shards: Path) -> ImageEncoder:
    """The image encoder that made ``shards``, refused when it builds with other weights."""
    encoder = build_image_encoder(encoder_info["name"])
    if encoder.info.fingerprint != encoder_info.get("fingerprint"):
        raise SegmentationError(
            f"image encoder {encoder_info['name']!r} builds with other weights than the ones "
            f"that made {shards}; feature maps would not match the embeddings"
        )
    return encoder


def _check_adaptor(cfg: SegmentationConfig, reader: ShardReader, shards: Path) -> Adaptor | None:
    """The Adaptor the methods need, loaded and checked against the shards (None if none)."""
    needing = [m for m in cfg.methods if m in ADAPTOR_METHODS]
    if not needing:
        return None
    if not cfg.adaptor:
        raise SegmentationError(
            f"method {needing[0]!r} needs --adaptor (a folder from `adaptor pretrain`)"
        )
    return load_adaptor_for(Path(cfg.adaptor), reader.manifest, shards)


def _check_patch_tokens(adaptor: Adaptor, channels: int, encoder: str) -> None:
    """``adaptor-patches`` feeds the deepest map's tokens to the Adaptor: their width must fit."""
    try:
        adaptor.encode_image_tokens(torch.zeros(1, 1, channels))
    except ValueError as err:
        raise SegmentationError(
            f"method 'adaptor-patches' cannot run on {encoder!r}: its deepest feature map's "
            f"tokens do not fit the Adaptor ({err}); it needs an encoder whose patch tokens "
            "have the global embedding's width (ViTs, EfficientNet) or an Adaptor pretrained "
            "on shards embedded with patch tokens"
        ) from None


def _needed_ids(cfg: SegmentationConfig, splits: LabelSplits) -> list[str]:
    """Every record some cell trains, validates or tests on, in a stable order."""
    ids: dict[str, None] = {}
    for f in sorted(cfg.fractions, reverse=True):
        ids.update(dict.fromkeys(splits.train_ids(f)))
    ids.update(dict.fromkeys(splits.val))
    ids.update(dict.fromkeys(splits.test))
    return list(ids)


def _overlay_ids(
    test: Sequence[str], meta: dict[str, dict[str, Any]], skipped: list[dict[str, str]], k: int
) -> list[str]:
    """The first ``k`` test records that carry a mask (and were not skipped)."""
    bad = {s["id"] for s in skipped}
    return [i for i in test if meta[i].get("mask") is not None and i not in bad][:k]


def _config_hash(shared: dict[str, Any]) -> str:
    """Identifies a setup (config, splits, encoder, Adaptor weights) so a rerun reuses its cells."""
    return setup_key(shared, [Path(shared["adaptor"] or "") / "model.safetensors"])


# ---------------------------------------------------------------- worker side


class _WorkerData:
    """What every cell of a setup shares in a worker process (the grid's ``prepare``):
    the feature-map source, masks, Adaptor embeddings."""

    def __init__(self, shared: dict[str, Any]):
        self.shared = shared
        self.levels = len(shared["map_shapes"])
        self.online = shared["config"]["feature_maps"] == "online"
        if self.online:
            self._load_online(shared)
        else:
            self.cache = FeatureMapCache(Path(shared["cache"]))
            self.available = set(self.cache.ids)
        self.adaptor: Adaptor | None = None
        self.embeddings: dict[str, Tensor] = {}
        if shared["adaptor"]:
            reader = ShardReader(shared["shards"])
            self.adaptor = load_adaptor_for(
                Path(shared["adaptor"]), reader.manifest, Path(shared["shards"])
            )
            self.embeddings = _adaptor_embeddings(reader, self.adaptor)
        self._subsets: dict[tuple[str, ...], dict[str, Any]] = {}

    def _load_online(self, shared: dict[str, Any]) -> None:
        inputs = SegmentationInputs.from_dict(shared["inputs"])
        self.encoder = build_image_encoder(shared["encoder"])
        self.pixels: dict[str, Tensor] = {}
        self.masks: dict[str, Tensor] = {}
        for record_id, row in shared["records"].items():
            try:
                loaded = load_record(row, inputs, log=lambda _: None)
            except AdaptorError:
                continue
            if loaded is not None:
                self.pixels[record_id] = loaded[0].to(torch.float16)
                self.masks[record_id] = torch.from_numpy(loaded[1])
        self.available = set(self.pixels)

    def subset(self, ids: Sequence[str]) -> dict[str, Any]:
        """Masks, embeddings and (cache mode) feature maps of ``ids``, held in memory."""
        key = tuple(ids)
        if key in self._subsets:
            return self._subsets[key]
        ids = [i for i in ids if i in self.available]
        if self.online:
            data = {
                "pixels": torch.stack([self.pixels[i] for i in ids]) if ids else None,
                "mask": torch.stack([self.masks[i] for i in ids]) if ids else None,
            }
        else:
            got = self.cache.gather(ids, [f"map{k}" for k in range(self.levels)] + ["mask"])
            data = {"maps": [got[f"map{k}"] for k in range(self.levels)], "mask": got["mask"]}
        data["ids"] = ids
        if self.embeddings:
            data["embedding"] = torch.stack([self.embeddings[i] for i in ids]) if ids else None
        if len(self._subsets) > 8:  # training subsets change per fraction; keep memory bounded
            self._subsets.pop(next(iter(self._subsets)))
        self._subsets[key] = data
        return data

    def maps(self, data: dict[str, Any], index: Tensor) -> list[Tensor]:
        """The feature maps of rows ``index`` of a subset (run through the encoder when online)."""
        if self.online:
            return self.encoder.feature_maps(data["pixels"][index].float())[-self.levels :]
        return [m[index] for m in data["maps"]]

    def inputs(
        self, data: dict[str, Any], index: Tensor, method: str
    ) -> tuple[list[Tensor], Tensor | None]:
        """What ``method``'s decoder reads for rows ``index`` of a subset: maps, embedding."""
        maps = self.maps(data, index)
        if method == "decoder":
            return maps, None
        if method == "adaptor-patches":
            return [self._patch_grid(maps[-1])], None
        return maps, data["embedding"][index]

    def _patch_grid(self, deepest: Tensor) -> Tensor:
        """The frozen Adaptor's output over every token of the deepest map, as a grid."""
        b, _, h, w = deepest.shape
        with torch.inference_mode():
            tokens = self.adaptor.encode_image_tokens(flatten_map(deepest.float()))
        return tokens.transpose(1, 2).reshape(b, -1, h, w)


def _adaptor_embeddings(reader: ShardReader, adaptor: Adaptor) -> dict[str, Tensor]:
    """The frozen Adaptor's image-path embedding of every record in the shards, by id."""
    table = reader.load(members=("image",))
    with torch.inference_mode():
        fused = torch.cat([adaptor.encode_image(b) for b in table.arrays["image"].split(1024)])
    return dict(zip(table.ids, fused.clone(), strict=True))


def train_segmentation_cell(
    cell: GridCell, shared: dict[str, Any], data: _WorkerData
) -> dict[str, Any]:
    """Train one decoder (one method × fraction × seed) and score it on the test split."""
    cfg = shared["config"]
    method, fraction, seed = cell.params["method"], cell.params["fraction"], cell.params["seed"]
    train = data.subset(shared["train"][fraction_key(fraction)])
    if cfg["balance"]:
        train = data.subset(_balanced_ids(train, seed))
    val, test = data.subset(shared["val"]), data.subset(shared["test"])
    torch.manual_seed(seed)
    decoder = _build_decoder(method, shared["map_shapes"], data.adaptor)
    result = CellResult(
        task="segmentation",
        method=method,
        fraction=fraction,
        seed=seed,
        metrics={},
        trainable_parameters=decoder.num_trainable_parameters(),
    )
    n_train = len(train["ids"])
    positives = int((train["mask"].flatten(1).any(1)).sum()) if n_train else 0
    result.extra = {"train_records": n_train, "train_positives": positives, "warnings": []}
    if positives == 0:
        result.metrics = SegmentationScores().compute()  # every score undefined
        result.extra["warnings"].append(
            f"the {fraction:g} training subset has no record with a non-empty mask; "
            "nothing to learn, so its metrics are undefined"
        )
        return result.to_dict()
    if not val["ids"] or not test["ids"]:
        raise SegmentationError("segmentation needs records in the val and test splits")

    started = time.perf_counter()
    best = _fit(decoder, data, train, val, cfg, seed, method)
    seconds = time.perf_counter() - started
    decoder.load_state_dict(best["state"])
    scores, per_image = _score(decoder, data, test, cfg["batch_size"], method)
    result.metrics = scores
    result.extra.update(
        {
            "best_step": best["step"],
            "val_dice": best["score"],
            "steps": best["steps_run"],
            "train_samples_per_s": best["seen"] / seconds if seconds > 0 else 0.0,
            "image_size": list(shared["inputs"]["preprocess"]["size"]),
            "feature_maps": "online" if data.online else "cache",
            "per_image": per_image,
        }
    )
    _save_overlay_predictions(decoder, data, shared, cell.key, method)
    return result.to_dict()


Decoder = SegmentationDecoder | PatchGridDecoder


def _build_decoder(method: str, map_shapes: list[list[int]], adaptor: Adaptor | None) -> Decoder:
    """The head of ``method`` for maps of ``map_shapes`` ([C, H, W], shallow → deep)."""
    channels = [s[0] for s in map_shapes]
    if method == "decoder":
        return SegmentationDecoder(channels)
    if method == "adaptor-patches":
        return PatchGridDecoder(adaptor.config.width)
    bottleneck = "neck" if method == "adaptor-neck" else "map+embedding"
    return SegmentationDecoder(
        channels,
        bottleneck=bottleneck,
        embedding_dim=adaptor.config.width,
        bottleneck_size=map_shapes[-1][1:],
    )


def _balanced_ids(train: dict[str, Any], seed: int) -> list[str]:
    """Every positive of a training subset and as many negatives drawn at random (seeded)."""
    positive = train["mask"].flatten(1).any(1).tolist()
    negatives = [i for i, p in zip(train["ids"], positive, strict=True) if not p]
    rng = np.random.default_rng(seed)
    keep = set(rng.permutation(negatives)[: sum(positive)].tolist()) if negatives else set()
    return [i for i, p in zip(train["ids"], positive, strict=True) if p or i in keep]


TASK = GridTask("segmentation decoders", _WorkerData, train_segmentation_cell)


def _fit(
    decoder: Decoder,
    data: _WorkerData,
    train: dict[str, Any],
    val: dict[str, Any],
    cfg: dict[str, Any],
    seed: int,
    method: str,
) -> dict[str, Any]:
    """Fixed-step AdamW training with early stopping on the validation Dice."""
    optimizer = torch.optim.AdamW(
        decoder.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"]
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg["steps"])
    generator = torch.Generator().manual_seed(seed)
    n, batch = len(train["ids"]), min(cfg["batch_size"], len(train["ids"]))
    out_size = train["mask"].shape[-2:]
    best = {"score": -1.0, "step": 0, "state": None, "seen": 0, "steps_run": 0}
    order, cursor, stale = torch.randperm(n, generator=generator), 0, 0
    for step in range(1, cfg["steps"] + 1):
        if cursor + batch > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        index = order[cursor : cursor + batch]
        cursor += batch
        decoder.train()
        logits = decoder(*data.inputs(train, index, method), out_size=out_size)
        loss = segmentation_loss(logits, train["mask"][index], kind=cfg["loss"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        best["seen"] += len(index)
        best["steps_run"] = step
        if step % cfg["eval_every"] == 0 or step == cfg["steps"]:
            score = _score(decoder, data, val, cfg["batch_size"], method)[0]["dice"]
            score = -1.0 if score is None else score
            if best["state"] is None or score > best["score"]:
                state = {k: v.detach().clone() for k, v in decoder.state_dict().items()}
                best.update(score=score, step=step, state=state)
                stale = 0
            else:
                stale += 1
                if stale >= cfg["patience"]:
                    break
    return best


@torch.no_grad()
def _predict(
    decoder: Decoder,
    data: _WorkerData,
    subset: dict[str, Any],
    batch_size: int,
    method: str,
) -> Tensor:
    """Binary masks ``[N, H, W]`` predicted for every row of a subset."""
    decoder.eval()
    out_size = subset["mask"].shape[-2:]
    preds = []
    for index in torch.arange(len(subset["ids"])).split(max(batch_size, 32)):
        logits = decoder(*data.inputs(subset, index, method), out_size=out_size)
        preds.append(logits[:, 0] > 0)
    return torch.cat(preds)


def _score(
    decoder: Decoder,
    data: _WorkerData,
    subset: dict[str, Any],
    batch_size: int,
    method: str,
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Dice and IoU (aggregate and per image) of a subset's predictions."""
    scores = SegmentationScores()
    scores.update(_predict(decoder, data, subset, batch_size, method), subset["mask"])
    per_image = {
        "ids": subset["ids"],
        "dice": [None if v is None else round(v, 4) for v in scores.image_dice],
        "iou": [None if v is None else round(v, 4) for v in scores.image_iou],
    }
    return scores.compute(), per_image


def _save_overlay_predictions(
    decoder: Decoder,
    data: _WorkerData,
    shared: dict[str, Any],
    key: str,
    method: str,
) -> None:
    """Predicted masks of the overlay records, for :func:`plot_overlays`."""
    subset = data.subset(shared["overlay_ids"])
    if not subset["ids"]:
        return
    pred = _predict(decoder, data, subset, len(subset["ids"]), method)
    with atomic_open(_overlay_file(Path(shared["run_dir"]), key), "wb") as fh:
        np.savez_compressed(fh, ids=np.array(subset["ids"]), pred=pred.numpy().astype(np.uint8))


def _overlay_file(run_dir: Path, key: str) -> Path:
    return run_dir / "overlays" / f"{key}.npz"


# ---------------------------------------------------------------- outputs


def plot_overlays(
    run_dir: Path, shared: dict[str, Any], cells: Sequence[GridCell], path: Path
) -> Path | None:
    """The overlay grid of the test records ``shared["overlay_ids"]``: image, true mask, then
    each cell's saved prediction (:func:`~adaptor.downstream.plots.plot_overlay_grid`).

    Columns are ``cells`` (one seed, every method × fraction) in order; a cell whose
    predictions are missing shows an empty panel. Returns ``path``, or None without images.
    """
    if not shared["overlay_ids"]:
        return None
    inputs = SegmentationInputs.from_dict(shared["inputs"])
    meta = {r["id"]: r for r in ShardReader(shared["shards"]).load(members=()).meta}
    shown = []
    for record_id in shared["overlay_ids"]:
        try:
            pixels, mask = load_record(meta[record_id], inputs, log=lambda _: None)
        except AdaptorError:  # reported when the cells were trained
            continue
        shown.append((record_id, grey_view(pixels, inputs.preprocess), mask))
    if not shown:
        return None
    columns = []
    for cell in cells:
        file, preds = _overlay_file(run_dir, cell.key), {}
        if file.is_file():
            with np.load(file) as saved:
                preds = dict(zip(saved["ids"].tolist(), saved["pred"], strict=True))
        title = f"{cell.params['method']}\n{cell.params['fraction'] * 100:g} % labels"
        columns.append((title, preds))
    plot_overlay_grid(shown, columns, path)
    return path
