"""Retrieval: the index (``adaptor index``; the flow's ``index:`` section) and the HTTP
service (``adaptor serve``)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from adaptor.config.base import Options

MIB = 1024 * 1024


class IndexOptions(Options):
    """The FAISS indexes over every record in the Adaptor's space."""

    factory: str | None = Field(
        None,
        description="FAISS factory string, e.g. Flat, HNSW32,Flat, IVF1024,Flat, IVF4096,PQ64; "
        "default: exact Flat up to 100k records, HNSW32,Flat above",
    )
    target_recall: float = Field(
        0.95, gt=0, le=1, description="approximate indexes: tune efSearch/nprobe to this recall@10"
    )
    split: Literal["train", "val", "test"] | None = Field(
        None, description="index only this split (default: every record)"
    )
    thumbnails: bool = Field(
        True, description="store a small JPEG of every indexed image for the search page"
    )


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class ServiceLimits:
    """Bounds on every input of the HTTP service (a dataclass: the service reports them as one)."""

    max_k: int = Field(100, ge=1, description="largest k a request may ask for")
    max_text_chars: int = Field(2000, ge=1, description="longest query text, in characters")
    max_upload_bytes: int = Field(20 * MIB, ge=1, description="largest image upload, in bytes")
    max_image_side: int = Field(8192, ge=1, description="largest uploaded image side, in pixels")
    max_batch: int = Field(
        32, ge=1, description="most concurrent queries run through the encoders at once"
    )
    max_pending: int = Field(
        256, ge=1, description="most queries waiting for the encoders before a 503"
    )


class ServeOptions(Options):
    """The HTTP retrieval service: where it listens, its key and its limits."""

    host: str = Field(
        "127.0.0.1", description="address to bind; the default only answers this machine"
    )
    port: int = Field(8000, ge=1, le=65535, description="port to listen on")
    api_key_env: str = Field(
        "ADAPTOR_API_KEY",
        description="environment variable holding the API key; when it is set, requests must "
        "send the key in the X-API-Key header",
    )
    limits: ServiceLimits = Field(default_factory=ServiceLimits, description="input bounds")
