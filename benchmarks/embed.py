"""Embedding throughput: the whole `embed` pipeline against the bare encoders, in one run.

Baseline: the same two encoders' forward passes over images that are already
decoded, preprocessed and stacked in memory, and reports already tokenized.
Ours: `adaptor.embed.embed` from the PNG files on disk — decode, preprocess,
tokenize, encode, serialise, write atomically. Both at the same batch size.

    python benchmarks/embed.py --n 512

Prints one JSON line at the end; `embed_ratio` = ours ÷ bare (goal ≥ 0.9).
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

from adaptor.data.image_io import load_image  # noqa: E402
from adaptor.data.sources import open_source  # noqa: E402
from adaptor.data.synthetic import generate_synthetic  # noqa: E402
from adaptor.embed import EmbedConfig, embed  # noqa: E402
from adaptor.encoders import build_image_encoder, build_text_encoder  # noqa: E402
from adaptor.shards import Manifest  # noqa: E402


def bare_forward(records: list, image_name: str, text_name: str, batch_size: int) -> float:
    """Samples/s of the encoders alone on preloaded, preprocessed tensors."""
    image_encoder, text_encoder = build_image_encoder(image_name), build_text_encoder(text_name)
    pixels = torch.stack([image_encoder.preprocess(load_image(r.image)) for r in records])
    tokenize = text_encoder.make_tokenizer()
    batches = [
        (pixels[i : i + batch_size], tokenize([r.report for r in records[i : i + batch_size]]))
        for i in range(0, len(records), batch_size)
    ]
    image_encoder.encode(batches[0][0])  # warm-up
    text_encoder.encode(batches[0][1])
    start = time.perf_counter()
    with torch.inference_mode():
        for images, tokens in batches:
            image_encoder.encode(images)
            text_encoder.encode(tokens)
    return len(records) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=512, help="synthetic records to embed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--image-encoder", default="efficientnet-lite0")
    parser.add_argument("--text-encoder", default="all-minilm-l6-v2")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synthetic"
        generate_synthetic(data, n=args.n, seed=0, size=256, progress=False)
        records = list(open_source(f"synthetic:{data}").items())

        bare = bare_forward(records, args.image_encoder, args.text_encoder, args.batch_size)
        result = embed(
            EmbedConfig(
                source=f"synthetic:{data}",
                out=Path(tmp) / "shards",
                image_encoder=args.image_encoder,
                text_encoder=args.text_encoder,
                batch_size=args.batch_size,
                shard_size=256,
                loader_workers=args.loader_workers,
                progress=False,
            )
        )
        manifest = Manifest.load(Path(tmp) / "shards")
        shard_bytes = sum(s.bytes for s in manifest.shards)

    figures = {
        "benchmark": "embed",
        "n": args.n,
        "batch_size": args.batch_size,
        "loader_workers": args.loader_workers,
        "threads": torch.get_num_threads(),
        "bare_samples_per_s": round(bare, 2),
        "pipeline_samples_per_s": round(result.samples_per_s, 2),
        "pipeline_with_startup_samples_per_s": round(result.count / result.seconds, 2),
        "embed_ratio": round(result.samples_per_s / bare, 3),
        "bytes_per_sample": round(shard_bytes / max(1, result.count), 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
