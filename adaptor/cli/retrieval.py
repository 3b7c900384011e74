"""Commands of the retrieval flow: index, search, serve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from adaptor.cli.app import app, friendly_errors


@app.command()
@friendly_errors
def index(
    shards: Annotated[Path, typer.Option(help="embedding shard folder made by `adaptor embed`")],
    adaptor: Annotated[
        Path, typer.Option(help="trained Adaptor folder (RUN/adaptor from `adaptor pretrain`)")
    ],
    out: Annotated[Path, typer.Option(help="index folder to write (a rerun is a no-op)")],
    factory: Annotated[
        str | None,
        typer.Option(
            help="FAISS factory string, e.g. Flat, HNSW32,Flat, IVF1024,Flat, IVF4096,PQ64; "
            "default: exact Flat up to 100k records, HNSW32,Flat above"
        ),
    ] = None,
    target_recall: Annotated[
        float,
        typer.Option(
            min=0.01, max=1.0, help="approximate indexes: tune efSearch/nprobe to this recall@10"
        ),
    ] = 0.95,
    split: Annotated[
        str | None, typer.Option(help="index only this split (train, val, test)")
    ] = None,
    thumbnails: Annotated[
        bool, typer.Option(help="store a small JPEG of every indexed image for the search page")
    ] = True,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Project every record through the Adaptor and build FAISS indexes (image and report side).

    The folder holds the FAISS indexes, an SQLite metadata store (id, report, labels, image
    path, split, thumbnail), a copy of the Adaptor and a manifest naming the Adaptor's sha256
    and the encoders' fingerprints, so queries with other encoders are refused.
    """
    from adaptor.retrieval import build_index

    info = build_index(
        shards,
        adaptor,
        out,
        factory=factory,
        target_recall=target_recall,
        split=split,
        thumbnails=thumbnails,
        progress=progress,
        log=typer.echo,
    )
    sides = ", ".join(
        f"{side}: {s.count}"
        + (
            f" ({', '.join(f'{k}={v}' for k, v in s.params.items())}, recall@10 {s.recall_at_10:.3f})"
            if s.params
            else ""
        )
        for side, s in info.sides.items()
    )
    typer.echo(
        f"index {'up to date' if info.reused else 'written'}: {info.out} ({info.factory}; {sides})"
    )


@app.command()
@friendly_errors
def search(
    index: Annotated[Path, typer.Option(help="index folder made by `adaptor index`")],
    text: Annotated[
        str | None, typer.Option(help="report-like text; finds matching images")
    ] = None,
    image: Annotated[Path | None, typer.Option(help="PNG, JPEG or DICOM query image")] = None,
    target: Annotated[
        str, typer.Option(help="for --image: image (similar images) or report (matching reports)")
    ] = "image",
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=1000, help="number of results")] = 10,
    as_json: Annotated[
        bool, typer.Option("--json", help="print JSON (ids, scores, metadata) instead of a table")
    ] = False,
) -> None:
    """Search an index by text (→ images) or by image (→ images or reports)."""
    from adaptor.retrieval import RetrievalError, format_hits, open_searcher

    if (text is None) == (image is None):
        raise RetrievalError("give exactly one of --text or --image")
    if target not in ("image", "report"):
        raise RetrievalError(f"--target must be image or report, got {target!r}")
    if text is not None and not text.strip():
        raise RetrievalError("--text is empty")
    searcher = open_searcher(index)
    if text is not None:
        hits, what = searcher.search_text([text], k=k)[0], f"text {text!r} -> images"
    else:
        hits = searcher.search_image([image], k=k, target=target)[0]  # type: ignore[list-item]
        what = f"image {image} -> {target}s"
    if as_json:
        typer.echo(json.dumps({"query": what, "hits": [h.to_dict() for h in hits]}, indent=2))
    else:
        typer.echo(format_hits(hits, title=what))


@app.command()
@friendly_errors
def serve(
    index: Annotated[Path, typer.Option(help="index folder made by `adaptor index`")],
    host: Annotated[
        str, typer.Option(help="address to bind; the default only answers this machine")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    max_k: Annotated[int, typer.Option(min=1, help="largest k a request may ask for")] = 100,
    max_text_chars: Annotated[
        int, typer.Option(min=1, help="longest query text, in characters")
    ] = 2000,
    max_upload_mb: Annotated[
        float, typer.Option(min=0.001, help="largest image upload, in MiB")
    ] = 20.0,
    max_image_side: Annotated[
        int, typer.Option(min=1, help="largest uploaded image side, in pixels")
    ] = 8192,
    max_batch: Annotated[
        int, typer.Option(min=1, help="most concurrent queries run through the encoders at once")
    ] = 32,
    api_key_env: Annotated[
        str,
        typer.Option(
            help="environment variable holding the API key; when it is set, requests must send "
            "the key in the X-API-Key header"
        ),
    ] = "ADAPTOR_API_KEY",
) -> None:
    """Serve an index over HTTP (FastAPI + uvicorn) with a search page at /.

    Endpoints: POST /search/text, POST /search/image, GET /records/{id},
    GET /thumbnails/{id}, GET /health, GET /stats; the OpenAPI schema is at /openapi.json
    and interactive docs at /docs. Encoders, Adaptor and index load once at start.
    """
    from adaptor.retrieval.service import ServiceLimits
    from adaptor.retrieval.service import serve as run_service

    limits = ServiceLimits(
        max_k=max_k,
        max_text_chars=max_text_chars,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_image_side=max_image_side,
        max_batch=max_batch,
    )
    run_service(index, host=host, port=port, limits=limits, api_key_env=api_key_env)
