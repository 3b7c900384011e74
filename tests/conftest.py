"""Shared test setup: no network, quiet libraries; a small synthetic set and its index."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
# torch and FAISS each bring an OpenMP runtime; spinning threads starve each other on 2 cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import pytest  # noqa: E402

if TYPE_CHECKING:
    from adaptor.retrieval import Searcher


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-record synthetic set at 224 px, shared by tests that only read it."""
    from adaptor.data.synthetic import generate_synthetic

    out = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(out, n=40, seed=7, size=224, progress=False)
    return out


@pytest.fixture(scope="session")
def retrieval_index(
    tmp_path_factory: pytest.TempPathFactory, synthetic_dir: Path
) -> tuple[Path, Path, Path]:
    """Shards of the synthetic set, an untrained small Adaptor for them, and an exact index.

    (shards, adaptor folder, index folder), built once per session; tests only read them.
    """
    import torch

    from adaptor.embed import EmbedConfig, embed
    from adaptor.model import Adaptor, AdaptorConfig
    from adaptor.retrieval import build_index
    from adaptor.shards import ShardReader

    root = tmp_path_factory.getbasetemp() / "retrieval-shared"
    shards, adaptor_dir, out = root / "shards", root / "adaptor", root / "index"
    if (out / "manifest.json").is_file():
        return shards, adaptor_dir, out
    embed(
        EmbedConfig(
            source=f"synthetic:{synthetic_dir}",
            out=shards,
            batch_size=16,
            shard_size=16,
            loader_workers=0,
            progress=False,
        )
    )
    encoders = ShardReader(shards).manifest.encoders
    torch.manual_seed(0)
    config = AdaptorConfig(
        image_dim=encoders["image"]["dim"],
        text_dim=encoders["text"]["dim"],
        width=64,
        heads=4,
        ffn_hidden=128,
        encoders={
            r: {k: e[k] for k in ("name", "fingerprint", "dim")} for r, e in encoders.items()
        },
    )
    Adaptor(config).save_pretrained(adaptor_dir)
    build_index(shards, adaptor_dir, out, progress=False, log=lambda _: None)
    return shards, adaptor_dir, out


@pytest.fixture(scope="session")
def service_searcher(retrieval_index: tuple[Path, Path, Path]) -> Searcher:
    """The shared index opened once with both encoders built, as ``adaptor serve`` does."""
    from adaptor.retrieval import open_searcher

    searcher = open_searcher(retrieval_index[2])
    searcher.encoder.warm()
    return searcher
