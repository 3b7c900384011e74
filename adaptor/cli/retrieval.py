"""Commands of the retrieval flow: index, search, serve.

``index`` and ``serve`` take their options from :class:`~adaptor.config.IndexOptions` and
:class:`~adaptor.config.ServeOptions`; ``search`` takes a query, not a configuration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from adaptor.cli.app import PATH_OR_URI, Progress, Shards, app
from adaptor.config import IndexOptions, ServeOptions
from adaptor.config.cli import Converted, model_options
from adaptor.config.retrieval import MIB
from adaptor.errors import friendly_errors
from adaptor.remote import working_copy


@app.command()
@friendly_errors
@model_options
def index(
    shards: Shards,
    adaptor: Annotated[
        str,
        typer.Option(
            help="trained Adaptor folder (RUN/adaptor from `adaptor pretrain`)" + PATH_OR_URI
        ),
    ],
    out: Annotated[
        str, typer.Option(help="index folder to write (a rerun is a no-op)" + PATH_OR_URI)
    ],
    options: IndexOptions,
    progress: Progress = True,
) -> None:
    """Project every record through the Adaptor and build FAISS indexes (image and report side).

    The folder holds the FAISS indexes, an SQLite metadata store (id, report, labels, image
    path, split, thumbnail), a copy of the Adaptor and a manifest naming the Adaptor's sha256
    and the encoders' fingerprints, so queries with other encoders are refused.
    """
    from adaptor.retrieval import build_index

    info = build_index(
        working_copy(shards, writable=False),
        working_copy(adaptor, writable=False),
        working_copy(out),
        **options.model_dump(),
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
        f"index {'up to date' if info.reused else 'written'}: {out} ({info.factory}; {sides})"
    )


@app.command()
@friendly_errors
def search(
    index: Annotated[str, typer.Option(help="index folder made by `adaptor index`" + PATH_OR_URI)],
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
    searcher = open_searcher(working_copy(index, writable=False))
    if text is not None:
        hits, what = searcher.search_text([text], k=k)[0], f"text {text!r} -> images"
    else:
        hits = searcher.search_image([image], k=k, target=target)[0]  # type: ignore[list-item]
        what = f"image {image} -> {target}s"
    if as_json:
        typer.echo(json.dumps({"query": what, "hits": [h.to_dict() for h in hits]}, indent=2))
    else:
        typer.echo(format_hits(hits, title=what))


MAX_UPLOAD_MB = Converted(
    name="max_upload_mb",
    type=float,
    to_field=lambda mb: int(mb * MIB),
    from_field=lambda size: size / MIB,
    help="largest image upload, in MiB",
)


@app.command()
@friendly_errors
@model_options(converted={"max_upload_bytes": MAX_UPLOAD_MB})
def serve(
    index: Annotated[str, typer.Option(help="index folder made by `adaptor index`" + PATH_OR_URI)],
    options: ServeOptions,
) -> None:
    """Serve an index over HTTP (FastAPI + uvicorn) with a search page at /.

    Endpoints: POST /search/text, POST /search/image, GET /records/{id},
    GET /thumbnails/{id}, GET /health, GET /stats; the OpenAPI schema is at /openapi.json
    and interactive docs at /docs. Encoders, Adaptor and index load once at start.
    """
    from adaptor.retrieval.service import serve as run_service

    run_service(
        working_copy(index, writable=False),
        host=options.host,
        port=options.port,
        limits=options.limits,
        api_key_env=options.api_key_env,
    )
