"""Retrieval over the image-text memory (docs/architecture.md, Retrieval): BM25 indexes behind one interface.

    from retrieval import open_index
    index = open_index("indexes/shapeworld")
    hits = index.search(["a small red circle moves left on sand"], k=4)   # list[list[Hit]]
    data = index.image(hits[0][0])                                        # image bytes

Build with ``python -m data_pipelines.build_index --memory PATH --out INDEX`` (or ``build_index(cfg,
batches)`` on rows you read yourself); serve over HTTP with
``python -m retrieval.serve --index INDEX``. ``Hit.image`` is an absolute image path,
``<index>/images.bin#j`` for image bytes copied into the index, or None; ``read_image(ref)``
turns a reference into bytes (see retrieval/docstore.py).
"""
from __future__ import annotations

from pathlib import Path

from retrieval.api import Hit, IndexRetriever, SearchError
from retrieval.bm25 import VARIANTS
from retrieval.build_index import BACKENDS, BuildConfig, build_index
from retrieval.client import RetrieverClient, RetrieverError, RetrieverRequestError, RetrieverUnavailableError
from retrieval.docstore import MissingImageError, read_image
from retrieval.index_format import IndexBuildError, IndexFormatError, read_meta
from retrieval.tokenizer import ENGLISH_STOPWORDS, TokenizerConfig

__all__ = ["Hit", "IndexRetriever", "open_index", "read_image", "SearchError", "MissingImageError",
           "IndexFormatError", "IndexBuildError", "BuildConfig", "build_index", "BACKENDS", "VARIANTS",
           "TokenizerConfig", "ENGLISH_STOPWORDS", "RetrieverClient", "RetrieverError", "RetrieverRequestError",
           "RetrieverUnavailableError"]


def open_index(path: str | Path, workers: int = 1) -> IndexRetriever:
    """Open a complete index folder with the backend named in its ``index.json``.

    ``workers``: processes (threads, for pyserini) that share large search batches.
    """
    meta = read_meta(path)
    backend = meta.get("backend")
    if backend == "bm25s":
        from retrieval.sparse import SparseRetriever

        return SparseRetriever(Path(path), meta, workers)
    if backend == "pyserini":
        from retrieval.lucene import LuceneRetriever

        return LuceneRetriever(Path(path), meta, workers)
    if backend == "rank_bm25":
        from retrieval.reference import ReferenceRetriever

        return ReferenceRetriever(Path(path), meta, workers)
    raise IndexFormatError(f"{path}: unknown backend {backend!r} in index.json")
