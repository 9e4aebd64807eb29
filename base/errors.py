"""Error types that more than one layer raises or catches.

Each package keeps its own errors for its own inputs (``ConfigError``, ``TableError``,
``IndexFormatError``, ...); an error lives here only when two layers must agree on it.
"""
from __future__ import annotations


class MissingImageError(FileNotFoundError, ValueError):
    """An image reference is absent, not a local file, or not a decodable image.

    Raised by the memory readers (``data_pipelines.ingest``) and by the retrieval index
    (``retrieval.docstore``, a hit without an image). It is a FileNotFoundError for callers that
    treat it as a missing file (``except OSError``) and a ValueError for those that treat it as bad
    input, so both kinds of handler keep working.
    """
