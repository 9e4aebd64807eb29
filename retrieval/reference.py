"""The reference backend ("rank_bm25"): rank-bm25's ``BM25Okapi``, for tests and benchmarks only.

The index stores only the document store; the scorer is rebuilt from its captions when opened
(rank-bm25 keeps Python dicts per document and has no safe on-disk format). Scores are
rank-bm25's divided by ``(k1 + 1)``, the factor Lucene dropped, so they are comparable with the
other backends. For the ``lucene`` variant its idf is replaced by Lucene's, and with
``quantize_lengths`` its document lengths by Lucene's one-byte lengths (``retrieval.bm25``);
avgdl stays the exact mean, as in Lucene.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval import bm25
from retrieval.api import IndexRetriever, Ranked
from retrieval.tokenizer import Tokenizer


class ReferenceBuilder:
    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer

    def add(self, texts: list[str]) -> np.ndarray:
        return np.array([len(t) for t in self.tok.tokenize_batch(texts)], dtype=np.int64)

    def finish(self, folder: Path) -> dict:
        return {}


def make_okapi(corpus: list[list[str]], k1: float, b: float, variant: str, quantize_lengths: bool):
    """A rank_bm25.BM25Okapi over ``corpus`` with the given BM25 variant."""
    from rank_bm25 import BM25Okapi

    class _Okapi(BM25Okapi):
        def _calc_idf(self, nd):
            if variant == "lucene":
                self.idf = {w: float(bm25.idf(np.array([f]), self.corpus_size, "lucene")[0]) for w, f in nd.items()}
            else:
                super()._calc_idf(nd)

    okapi = _Okapi(corpus, k1=k1, b=b)
    if quantize_lengths:
        okapi.doc_len = bm25.effective_length(np.array(okapi.doc_len), True).tolist()
    return okapi


class ReferenceRetriever(IndexRetriever):
    def __init__(self, path: Path, meta: dict, workers: int = 1):
        super().__init__(path, meta, workers)
        corpus = [toks for caps in self.docs.iter_captions() for toks in self.tokenizer.tokenize_batch(caps)]
        self.k1 = float(meta["k1"])
        self.okapi = make_okapi(corpus, self.k1, float(meta["b"]), meta["variant"], bool(meta["quantize_lengths"]))
        self._start_pool()

    def rank(self, queries: list[str], k: int) -> list[Ranked]:
        out = []
        for toks in self.tokenizer.tokenize_queries(queries):
            if not toks:
                out.append((np.zeros(0, np.int64), np.zeros(0, np.float64)))
                continue
            scores = np.asarray(self.okapi.get_scores(toks), dtype=np.float64) / (self.k1 + 1.0)
            rows = np.flatnonzero(scores > 0)
            order = np.lexsort((rows, -scores[rows]))[:k]
            out.append((rows[order].astype(np.int64), scores[rows][order]))
        return out
