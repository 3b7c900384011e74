"""Segmentation feature maps: cached once on disk against computed online every step.

Same records, same decoder, same batches, one run:

(a) extraction: the frozen encoder's feature maps of every record into the float16
    cache (:mod:`adaptor.embed.feature_maps`), images/s and bytes per record on disk;
(b) one training epoch of the decoder (with the Adaptor embedding input) on cached maps
    against the same epoch with the encoder run on every batch (the online baseline);
    memory held for the epoch's inputs in each case;
(c) what that means for a whole grid (methods × fractions × seeds × steps of the default
    ``SegmentationConfig``): cached = extraction once + decoder steps, online = encoder +
    decoder on every step.

    python benchmarks/segmentation.py --n 400

Timings are wall-clock on however many threads torch uses (2 on the reference machine);
the CPU seconds of the process are printed beside them, since they are less affected by
other load on a shared machine. Prints one JSON line at the end; ratios are ours (cached)
÷ baseline (online) in speed, higher is better.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from adaptor.data.synthetic import generate_synthetic  # noqa: E402
from adaptor.downstream.segmentation import SegmentationConfig  # noqa: E402
from adaptor.embed.feature_maps import (  # noqa: E402
    SegmentationInputs,
    build_feature_cache,
    load_record,
    resized_preprocess,
)
from adaptor.encoders import build_image_encoder  # noqa: E402
from adaptor.heads.segmentation import SegmentationDecoder, segmentation_loss  # noqa: E402

EMBEDDING_DIM = 512  # the default Adaptor width


class _Clock:
    """Wall and process CPU seconds of a block."""

    def __enter__(self) -> _Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def _epoch(decoder, maps_of, masks, embeddings, batch: int) -> None:  # noqa: ANN001
    """One pass over every record in fixed batches; ``maps_of(index)`` gives the maps."""
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-3)
    decoder.train()
    for index in torch.arange(len(masks)).split(batch):
        logits = decoder(maps_of(index), embeddings[index], out_size=masks.shape[-2:])
        loss = segmentation_loss(logits, masks[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=400, help="synthetic records")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--online-batches", type=int, default=5, help="batches timed for the online epoch"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    defaults = SegmentationConfig(shards="", out="")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_synthetic(root / "raw", n=args.n, seed=0, size=256, progress=False)
        rows = [
            json.loads(line) for line in (root / "raw" / "records.jsonl").read_text().splitlines()
        ]
        encoder = build_image_encoder("efficientnet-lite0")
        inputs = SegmentationInputs(
            root / "raw", resized_preprocess(encoder.preprocess, args.image_size), "negative"
        )
        print(
            f"{args.n} synthetic records, efficientnet-lite0 at {args.image_size} px, "
            f"deepest {args.levels} maps, batch {args.batch_size}, "
            f"{torch.get_num_threads()} torch threads"
        )

        # (a) extraction into the cache
        with _Clock() as extract:
            cache, skipped = build_feature_cache(
                root / "cache",
                encoder,
                rows,
                inputs,
                source=f"synthetic:{root / 'raw'}",
                levels=args.levels,
                progress=False,
                log=lambda _: None,
            )
        assert not skipped, skipped
        disk = sum(f.stat().st_size for f in (root / "cache").rglob("*.npy"))
        print(
            f"(a) extraction: {args.n / extract.wall:.1f} images/s "
            f"({extract.wall:.1f} s wall, {extract.cpu:.1f} s CPU), "
            f"{disk / args.n / 1e3:.0f} kB per record on disk (maps + mask + image)"
        )

        # (b) one epoch: cached maps against the encoder run online
        ids = [r["id"] for r in rows]  # the order of `pixels` below
        embeddings = torch.randn(len(ids), EMBEDDING_DIM)
        channels = [s[0] for s in cache.map_shapes]
        with _Clock() as load_cached:
            got = cache.gather(ids, [f"map{k}" for k in range(args.levels)] + ["mask"])
        maps = [got[f"map{k}"] for k in range(args.levels)]
        masks = got["mask"]
        cached_bytes = sum(m.numel() * m.element_size() for m in maps)
        decoder = SegmentationDecoder(
            channels, bottleneck="map+embedding", embedding_dim=EMBEDDING_DIM
        )
        with _Clock() as cached:
            _epoch(decoder, lambda i: [m[i] for m in maps], masks, embeddings, args.batch_size)
        cached_epoch = cached.wall + load_cached.wall

        with _Clock() as load_online:
            pixels = torch.stack([load_record(r, inputs)[0] for r in rows]).to(torch.float16)
        online_bytes = pixels.numel() * pixels.element_size()
        n_online = min(len(ids), args.online_batches * args.batch_size)
        decoder = SegmentationDecoder(
            channels, bottleneck="map+embedding", embedding_dim=EMBEDDING_DIM
        )
        with _Clock() as online:
            _epoch(
                decoder,
                lambda i: encoder.feature_maps(pixels[i].float())[-args.levels :],
                masks[:n_online],
                embeddings[:n_online],
                args.batch_size,
            )
        online_epoch = online.wall * len(ids) / n_online
        print(
            f"(b) epoch of {len(ids)} records: cached {cached_epoch:.2f} s "
            f"({cached.cpu:.1f} s CPU; {load_cached.wall:.2f} s of it reading the cache), "
            f"online {online_epoch:.1f} s (timed on {n_online} records, "
            f"{online.cpu * len(ids) / n_online:.1f} s CPU) -> {online_epoch / cached_epoch:.1f}x"
        )
        print(
            f"    memory for the epoch's inputs: cached maps {cached_bytes / args.n / 1e3:.0f} kB "
            f"per record, online pixels {online_bytes / args.n / 1e3:.0f} kB per record "
            f"(+ the encoder); loading the pixels took {load_online.wall:.1f} s"
        )

        # (c) the default grid
        cells = len(defaults.methods) * len(defaults.fractions) * len(defaults.seeds)
        samples = cells * defaults.steps * defaults.batch_size
        per_sample_cached = cached.wall / len(ids)
        per_sample_online = online.wall / n_online
        grid_cached = extract.wall + samples * per_sample_cached
        grid_online = samples * per_sample_online
        print(
            f"(c) default grid ({cells} decoders x {defaults.steps} steps x batch "
            f"{defaults.batch_size} = {samples} samples, excluding validation): cached "
            f"{grid_cached:.0f} s including extraction, online {grid_online:.0f} s "
            f"-> {grid_online / grid_cached:.1f}x"
        )

    print(
        json.dumps(
            {
                "benchmark": "segmentation",
                "n": args.n,
                "image_size": args.image_size,
                "levels": args.levels,
                "batch_size": args.batch_size,
                "threads": torch.get_num_threads(),
                "extract_images_per_s": round(args.n / extract.wall, 1),
                "cache_bytes_per_record": round(disk / args.n),
                "cached_epoch_s": round(cached_epoch, 2),
                "online_epoch_s": round(online_epoch, 2),
                "cached_vs_online_epoch_ratio": round(online_epoch / cached_epoch, 1),
                "cached_epoch_cpu_s": round(cached.cpu, 2),
                "online_epoch_cpu_s": round(online.cpu * len(ids) / n_online, 2),
                "cached_input_bytes_per_record": round(cached_bytes / args.n),
                "online_input_bytes_per_record": round(online_bytes / args.n),
                "grid_cached_s": round(grid_cached, 1),
                "grid_online_s": round(grid_online, 1),
                "grid_cached_vs_online_ratio": round(grid_online / grid_cached, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
