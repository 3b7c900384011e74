"""Pretraining throughput, all in one run on the same records.

(a) shard-fed: read the shards (WebDataset tars) into memory, then train —
    against the same loop over tensors already in memory. Goal ≥ 0.9×.
(b) cached embeddings against running the frozen encoders online every step
    (decode, preprocess, both encoders, then the same Adaptor step), per epoch.
    Goal ≥ 100× faster. The online epoch is timed on a sample of batches and
    scaled to the epoch.
(c) samples/s of `adaptor pretrain` under Ray Train with 1 and 2 workers.
(d) the cost of an epoch of the reference preset's Adaptor (width 768, 2 shared layers,
    12 heads) against ours (width 512, 1 layer), same loop, same batch, in memory.

    python benchmarks/pretrain.py --n 1000

Prints one JSON line at the end; ratios are ours ÷ baseline (higher is better).
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

from adaptor.config import PretrainOptions  # noqa: E402
from adaptor.data.image_io import load_image  # noqa: E402
from adaptor.data.sources import open_source  # noqa: E402
from adaptor.data.synthetic import generate_synthetic  # noqa: E402
from adaptor.embed import EmbedConfig, embed  # noqa: E402
from adaptor.encoders import build_image_encoder, build_text_encoder  # noqa: E402
from adaptor.model import Adaptor, AdaptorConfig, ClipLoss  # noqa: E402
from adaptor.pretrain import PretrainConfig, pretrain  # noqa: E402
from adaptor.shards import ShardReader  # noqa: E402

BATCH = 64


def _model(preset: str = "ours") -> tuple[Adaptor, torch.optim.Optimizer, ClipLoss]:
    """The Adaptor, optimiser and loss of a pretraining run with ``preset``'s defaults."""
    torch.manual_seed(0)
    options = PretrainOptions(preset=preset)
    model = Adaptor(AdaptorConfig(image_dim=1280, text_dim=384, **options.model.model_dump()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr)
    return model, optimizer, ClipLoss(t2i_weight=options.t2i_weight)


def _step(
    model: Adaptor,
    opt: torch.optim.Optimizer,
    loss_fn: ClipLoss,
    image: torch.Tensor,
    text: torch.Tensor,
) -> None:
    out = model(image, text, cross=False)
    loss = loss_fn(out.image, out.text, out.logit_scale)
    opt.zero_grad()
    loss.backward()
    opt.step()


def _epochs(image: torch.Tensor, text: torch.Tensor, epochs: int, preset: str = "ours") -> int:
    """Train ``epochs`` epochs; returns the model's trainable parameters."""
    model, opt, loss_fn = _model(preset)
    for epoch in range(epochs):
        order = torch.randperm(len(image), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(image) - BATCH + 1, BATCH):
            idx = order[i : i + BATCH]
            _step(model, opt, loss_fn, image[idx], text[idx])
    return model.num_trainable_parameters()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--online-batches", type=int, default=3, help="batches timed for the online baseline"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        raw, shards = Path(tmp) / "raw", Path(tmp) / "shards"
        generate_synthetic(raw, n=args.n, seed=0, size=256, progress=False)
        embed(EmbedConfig(source=f"synthetic:{raw}", out=shards, shard_size=250, progress=False))

        # (a) shard-fed vs in-memory, same loop, same epochs
        memory = ShardReader(shards).load("train")
        n_train = len(memory)
        start = time.perf_counter()
        _epochs(memory.arrays["image"], memory.arrays["text"], args.epochs)
        in_memory_s = time.perf_counter() - start
        start = time.perf_counter()
        table = ShardReader(shards).load("train")
        _epochs(table.arrays["image"], table.arrays["text"], args.epochs)
        shard_fed_s = time.perf_counter() - start
        steps = args.epochs * (n_train // BATCH)
        cached_epoch_s = shard_fed_s / args.epochs

        # (b) the frozen encoders online every step
        records = [r for r in open_source(f"synthetic:{raw}").items() if r.split == "train"]
        image_encoder, text_encoder = (
            build_image_encoder("efficientnet-lite0"),
            build_text_encoder("all-minilm-l6-v2"),
        )
        tokenize = text_encoder.make_tokenizer()
        model, opt, loss_fn = _model()
        start = time.perf_counter()
        timed = 0
        for b in range(args.online_batches):
            batch = records[b * BATCH : (b + 1) * BATCH]
            pixels = torch.stack([image_encoder.preprocess(load_image(r.image)) for r in batch])
            image = image_encoder.encode(pixels).global_.clone()
            text = text_encoder.encode(tokenize([r.report for r in batch])).global_.clone()
            _step(model, opt, loss_fn, image, text)
            timed += len(batch)
        online_epoch_s = (time.perf_counter() - start) / timed * n_train

        # (d) an epoch of the reference preset's Adaptor against ours
        start = time.perf_counter()
        reference_params = _epochs(
            table.arrays["image"], table.arrays["text"], args.epochs, "reference"
        )
        reference_epoch_s = (time.perf_counter() - start) / args.epochs

        # (c) under Ray Train, 1 and 2 workers
        ray_sps = {}
        for workers in (1, 2):
            result = pretrain(
                PretrainConfig(
                    shards=str(shards),
                    out=str(Path(tmp) / f"ray{workers}"),
                    epochs=3,
                    batch_size=BATCH,
                    workers=workers,
                ),
                progress=False,
            )
            ray_sps[workers] = result.metrics["samples_per_s"]

    figures = {
        "benchmark": "pretrain",
        "n_train": n_train,
        "batch_size": BATCH,
        "epochs": args.epochs,
        "in_memory_samples_per_s": round(steps * BATCH / in_memory_s, 1),
        "shard_fed_samples_per_s": round(steps * BATCH / shard_fed_s, 1),
        "shard_fed_ratio": round(in_memory_s / shard_fed_s, 3),
        "cached_epoch_s": round(cached_epoch_s, 3),
        "online_encoders_epoch_s": round(online_epoch_s, 1),
        "cached_vs_online_ratio": round(online_epoch_s / cached_epoch_s, 1),
        "ray_1_worker_samples_per_s": round(ray_sps[1], 1),
        "ray_2_workers_samples_per_s": round(ray_sps[2], 1),
        "ray_2_vs_1_workers_ratio": round(ray_sps[2] / ray_sps[1], 3),
        "reference_epoch_s": round(reference_epoch_s, 3),
        "reference_trainable_parameters": reference_params,
        "ours_epoch_s": round(in_memory_s / args.epochs, 3),
        "ours_vs_reference_epoch_ratio": round(reference_epoch_s * args.epochs / in_memory_s, 3),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
