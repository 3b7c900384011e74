"""Retrieval over Adaptor-space embeddings: FAISS index folders, search, and the HTTP service.

``build_index`` projects a shard folder through a trained Adaptor and writes an index
folder (layout and loading: :mod:`adaptor.retrieval.folder`; ``read_manifest`` reads its
manifest); ``open_searcher`` answers text → image, image → report and image → image queries
from it; ``format_hits`` renders results as the table ``adaptor search`` prints; the
FastAPI app lives in :mod:`adaptor.retrieval.service` (its routes in
:mod:`adaptor.retrieval.routes`); ``example_searches`` is what
``adaptor run`` prints after indexing.
"""

from adaptor.retrieval.errors import IndexMismatchError, IndexNotFoundError, RetrievalError
from adaptor.retrieval.examples import example_searches
from adaptor.retrieval.folder import read_manifest
from adaptor.retrieval.index import IndexInfo, SideInfo, build_index
from adaptor.retrieval.searcher import Hit, Searcher, open_searcher
from adaptor.retrieval.table import format_hits

__all__ = [
    "Hit",
    "IndexInfo",
    "IndexMismatchError",
    "IndexNotFoundError",
    "RetrievalError",
    "Searcher",
    "SideInfo",
    "build_index",
    "example_searches",
    "format_hits",
    "open_searcher",
    "read_manifest",
]
