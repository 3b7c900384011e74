"""Shared test setup: no network, quiet libraries; a small synthetic set and its index."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
# torch and FAISS each bring an OpenMP runtime; spinning threads starve each other on 2 cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import AbstractContextManager, contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import httpx  # noqa: E402
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


# ------------------------------------------------------------------ a real `adaptor serve`

ServeIndex = Callable[..., AbstractContextManager[str]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _running_server(
    index_dir: Path, log: Path, *args: str, api_key: str | None = None
) -> Iterator[str]:
    """A real ``adaptor serve`` process on 127.0.0.1 (its URL), stopped on exit."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("ADAPTOR_API_KEY", None)
    if api_key:
        env["ADAPTOR_API_KEY"] = api_key
    command = [sys.executable, "-m", "adaptor.cli", "serve", "--index", str(index_dir)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*command, "--port", str(port), *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"adaptor serve exited early:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"adaptor serve did not start:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def serve_index() -> ServeIndex:
    """Start a real ``adaptor serve`` on an index folder: ``with serve_index(dir, log) as url``."""
    return _running_server
