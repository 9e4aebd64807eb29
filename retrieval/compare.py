"""Tie-aware comparison of top-k lists from two BM25 implementations (tests and benchmarks).

Two top-k lists agree when they have the same scores position by position (to ``rtol``) and
the same documents except among those tied with the k-th score: with ties at the cut-off, any
choice among the tied documents is a correct top k (ShapeWorld memories repeat each caption
thousands of times, so this is the common case, not a corner).
"""
from __future__ import annotations

import numpy as np


def top_k_mismatch(a_rows, a_scores, b_rows, b_scores, rtol: float = 1e-3, atol: float = 0.0) -> str | None:
    """None when the two lists agree as above, else a short reason.

    ``atol`` is for Anserini, which rounds the scores it returns to 4 decimals.
    """
    a_rows, b_rows = np.asarray(a_rows), np.asarray(b_rows)
    a_scores, b_scores = np.asarray(a_scores, dtype=np.float64), np.asarray(b_scores, dtype=np.float64)
    if a_rows.size != b_rows.size:
        return f"lengths differ: {a_rows.size} vs {b_rows.size}"
    if a_rows.size == 0:
        return None
    if not np.allclose(a_scores, b_scores, rtol=rtol, atol=atol):
        i = int(np.argmax(~np.isclose(a_scores, b_scores, rtol=rtol, atol=atol)))
        return f"score {i} differs: {a_scores[i]!r} vs {b_scores[i]!r}"
    kth = min(a_scores[-1], b_scores[-1])
    cut = kth + max(rtol * kth, atol)
    above_a = set(a_rows[a_scores > cut].tolist())
    above_b = set(b_rows[b_scores > cut].tolist())
    if above_a != above_b:
        return f"documents above the k-th score differ: {sorted(above_a ^ above_b)[:5]}"
    return None


def hits_mismatch(a_hits, b_hits, rtol: float = 1e-3, atol: float = 0.0) -> str | None:
    """``top_k_mismatch`` for two lists of ``retrieval.Hit``."""
    return top_k_mismatch([h.row for h in a_hits], [h.score for h in a_hits],
                          [h.row for h in b_hits], [h.score for h in b_hits], rtol, atol)
