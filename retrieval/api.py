"""What every backend returns and how it is asked: ``Hit``, and the shell every backend shares.

A backend only ranks documents (rows of the index's ``docs.arrow``); turning rows into hits,
dense and hybrid modes, and image access are the same for all and live here.

Ranking contract (all backends): per query, documents with a positive score, best first, ties
broken by lower row (memory order); at most ``k``. An empty query, or one whose terms the memory
never uses, returns ``[]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from retrieval.docstore import DocStore, read_image
from retrieval.tokenizer import Tokenizer, TokenizerConfig
from retrieval.topk import Ranked

Mode = Literal["bm25", "dense", "hybrid"]
MODES = ("bm25", "dense", "hybrid")
RRF_K = 60          # reciprocal-rank fusion constant (Cormack et al., SIGIR 2009)
FUSION_DEPTH = 100  # each list fused in hybrid mode is this deep (or k, if larger)


@dataclass
class Hit:
    id: str                 # the memory row's id
    caption: str            # its caption
    score: float            # BM25 score (dense: cosine similarity; hybrid: fused RRF score)
    image: str | None       # absolute image path, "<index>/images.bin#j", or None (no image)
    rank: int = 0           # 0-based position in its query's list
    row: int = -1           # row of the index's docs.arrow (stable document number)


class SearchError(ValueError):
    """A search request the index cannot answer (bad k, unknown mode, no dense index)."""



class IndexRetriever:
    """Shared shell of every backend: ``search`` -> hits, dense/hybrid modes, ``image(hit)``.

    ``workers > 1``: large batches are ranked by that many processes (``retrieval.parallel``),
    except by backends that parallelise themselves (``uses_pool = False``).
    """

    uses_pool = True
    thread_safe = True   # concurrent searches allowed (read-only arrays, per-thread scratch); see retrieval.serve
    MIN_PARALLEL_BATCH = 64  # smaller batches are not worth the round trip to worker processes

    def __init__(self, path: Path, meta: dict, workers: int = 1):
        self.path = Path(path).resolve()
        self.meta = meta
        self.workers = max(1, int(workers))
        self._pool = None
        self.tokenizer = Tokenizer(TokenizerConfig(**meta["tokenizer"]))
        self.docs = DocStore(self.path)
        self.docs.rows(np.zeros(1, np.int64))  # pyarrow's lazy imports now, not in the first query
        self.dense = None
        if meta.get("dense"):
            from retrieval.dense import DenseIndex  # torch/faiss only when the index has one

            self.dense = DenseIndex.load(self.path, meta["dense"])

    def _start_pool(self) -> None:
        """Backends call this at the end of their __init__: workers fork the opened index."""
        if self.workers > 1 and self.uses_pool:
            from retrieval.parallel import RankPool

            self._pool = RankPool(self, self.workers)

    def __len__(self) -> int:
        return len(self.docs)

    # backends implement this: BM25 top-k rows per query
    def rank(self, queries: list[str], k: int) -> list[Ranked]:
        raise NotImplementedError

    def _rank(self, queries: list[str], k: int) -> list[Ranked]:
        if self._pool is not None and len(queries) >= self.MIN_PARALLEL_BATCH:
            return self._pool.rank(queries, k)
        return self.rank(queries, k)

    def search(self, queries: list[str], k: int, mode: Mode = "bm25") -> list[list[Hit]]:
        """Top-``k`` hits per query (batched)."""
        if isinstance(queries, (str, bytes)):
            raise SearchError("queries must be a list of strings, not one string")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise SearchError(f"k must be a positive integer, got {k!r}")
        queries = list(queries)
        if not queries:
            return []
        if mode == "bm25":
            ranked = self._rank(queries, int(k))
        elif mode in ("dense", "hybrid"):
            if self.dense is None:
                raise SearchError(f"mode={mode!r} needs an index built with --dense")
            if mode == "dense":
                ranked = self.dense.rank(queries, int(k))
            else:
                depth = max(int(k), FUSION_DEPTH)
                pairs = zip(self._rank(queries, depth), self.dense.rank(queries, depth))
                ranked = [fuse([a, b], int(k)) for a, b in pairs]
        else:
            raise SearchError(f"unknown mode {mode!r}; expected one of {MODES}")
        return self._hits(ranked)

    def _hits(self, ranked: list[Ranked]) -> list[list[Hit]]:
        all_rows = np.concatenate([r for r, _ in ranked]) if ranked else np.zeros(0, np.int64)
        ids, caps, imgs = self.docs.rows(all_rows)
        out, i = [], 0
        for rows, scores in ranked:
            hits = []
            for rank, (row, score) in enumerate(zip(rows.tolist(), scores.tolist())):
                hits.append(Hit(id=ids[i], caption=caps[i], score=float(score), image=imgs[i], rank=rank, row=row))
                i += 1
            out.append(hits)
        return out

    def image(self, hit: Hit) -> bytes:
        """The hit's image bytes (``MissingImageError`` when the memory row had none)."""
        return read_image(hit.image)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def fuse(lists: list[Ranked], k: int) -> Ranked:
    """Reciprocal-rank fusion of ranked row lists: score = sum 1 / (RRF_K + rank), rank from 1."""
    rows = np.concatenate([r for r, _ in lists])
    rr = np.concatenate([1.0 / (RRF_K + 1 + np.arange(len(r))) for r, _ in lists])
    if rows.size == 0:
        return rows.astype(np.int64), rr
    uniq, inv = np.unique(rows, return_inverse=True)
    fused = np.bincount(inv, weights=rr)
    order = np.lexsort((uniq, -fused))[:k]
    return uniq[order].astype(np.int64), fused[order]
