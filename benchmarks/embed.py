"""Embedding throughput: the whole `embed` pipeline against the bare encoders, in one run.

Baseline: the same two encoders' forward passes over images that are already
decoded, preprocessed and stacked in memory, and reports already tokenized.
Ours: `adaptor.embed.embed` from the PNG files on disk — decode, preprocess,
tokenize, encode, serialise, write atomically. Both at the same batch size.

The two are measured in interleaved rounds (baseline, ours, baseline, ours, …), each
over all `--n` records, so a change in the machine's load touches both alike; the
ratio of each round is ours ÷ that round's baseline, and `embed_ratio` is their median.

    python benchmarks/embed.py --n 512

Prints one JSON line at the end; `embed_ratio` = ours ÷ bare (goal ≥ 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from adaptor.data.image_io import load_image  # noqa: E402
from adaptor.data.sources import open_source  # noqa: E402
from adaptor.data.synthetic import generate_synthetic  # noqa: E402
from adaptor.embed import EmbedConfig, EmbedResult, embed  # noqa: E402
from adaptor.encoders import build_image_encoder, build_text_encoder  # noqa: E402
from adaptor.shards import Manifest  # noqa: E402


def bare_forward(
    records: list, image_name: str, text_name: str, batch_size: int
) -> Callable[[], float]:
    """A round of the encoders alone on preloaded, preprocessed tensors; returns samples/s."""
    image_encoder, text_encoder = build_image_encoder(image_name), build_text_encoder(text_name)
    pixels = torch.stack([image_encoder.preprocess(load_image(r.image)) for r in records])
    tokenize = text_encoder.make_tokenizer()
    batches = [
        (pixels[i : i + batch_size], tokenize([r.report for r in records[i : i + batch_size]]))
        for i in range(0, len(records), batch_size)
    ]
    with torch.inference_mode():  # warm-up, untimed
        image_encoder.encode(batches[0][0])
        text_encoder.encode(batches[0][1])

    def one_round() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for images, tokens in batches:
                image_encoder.encode(images)
                text_encoder.encode(tokens)
        return len(records) / (time.perf_counter() - start)

    return one_round


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=512, help="synthetic records to embed")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--image-encoder", default="efficientnet-lite0")
    parser.add_argument("--text-encoder", default="all-minilm-l6-v2")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    bare: list[float] = []
    runs: list[EmbedResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synthetic"
        generate_synthetic(data, n=args.n, seed=0, size=256, progress=False)
        records = list(open_source(f"synthetic:{data}").items())
        bare_round = bare_forward(records, args.image_encoder, args.text_encoder, args.batch_size)
        for i in range(args.rounds):
            bare.append(bare_round())
            out = Path(tmp) / f"shards-{i}"  # a fresh folder: nothing to resume
            config = EmbedConfig(
                source=f"synthetic:{data}",
                out=out,
                image_encoder=args.image_encoder,
                text_encoder=args.text_encoder,
                batch_size=args.batch_size,
                shard_size=256,
                loader_workers=args.loader_workers,
                progress=False,
            )
            runs.append(embed(config))
            ratio = runs[-1].samples_per_s / bare[-1]
            print(
                f"round {i + 1}/{args.rounds}: bare {bare[-1]:.2f}/s, "
                f"pipeline {runs[-1].samples_per_s:.2f}/s, ratio {ratio:.3f}",
                flush=True,
            )
        manifest = Manifest.load(Path(tmp) / "shards-0")
        shard_bytes = sum(s.bytes for s in manifest.shards)

    ratios = [run.samples_per_s / b for run, b in zip(runs, bare, strict=True)]
    figures = {
        "benchmark": "embed",
        "n": args.n,
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "loader_workers": args.loader_workers,
        "threads": torch.get_num_threads(),
        "bare_samples_per_s": round(statistics.median(bare), 2),
        "pipeline_samples_per_s": round(statistics.median(r.samples_per_s for r in runs), 2),
        "pipeline_with_startup_samples_per_s": round(
            statistics.median(r.count / r.seconds for r in runs), 2
        ),
        "embed_ratio": round(statistics.median(ratios), 3),
        "round_ratios": [round(r, 3) for r in ratios],
        "bytes_per_sample": round(shard_bytes / max(1, manifest.count), 1),
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
