"""Top-k over groups of identical documents, ties broken by lower row.

The in-RAM index and the dense index score *groups* (identical token bags, identical captions)
rather than rows: every member of a group has the same score, so a memory with many repeated
captions (ShapeWorld's 1M captions have 480 distinct ones; web memories repeat too) is scored
once per distinct document. These helpers turn group scores back into the row ranking that a
row-by-row scorer would give: score descending, then row ascending.
"""
from __future__ import annotations

import numpy as np

Ranked = tuple[np.ndarray, np.ndarray]  # a query's (rows int64, scores float64), best first


def group_threshold(scores: np.ndarray, sizes: np.ndarray, k: int) -> float:
    """Score of the k-th best row when group i holds ``sizes[i]`` rows scoring ``scores[i]``.

    -inf when the groups hold fewer than k rows in all.
    """
    n = scores.size
    if n == 0:
        return -np.inf
    if n > k:  # the k best rows lie in the k best groups (each group has >= 1 row)
        top = np.argpartition(-scores, k - 1)[:k]
    else:
        top = np.arange(n)
    top = top[np.argsort(-scores[top], kind="stable")]
    cum = np.cumsum(sizes[top])
    j = int(np.searchsorted(cum, k))  # first position whose cumulative rows reach k
    if j >= top.size:
        return -np.inf
    return float(scores[top[j]])


def expand(groups: np.ndarray, scores: np.ndarray, indptr: np.ndarray, members: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` (row, score) pairs from scored groups; ``members[indptr[g]:indptr[g+1]]`` are g's rows, ascending.

    ``groups`` must contain every group that can reach the top k (callers keep all groups
    scoring at least the k-th row score, ties included).
    """
    if groups.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    starts = indptr[groups]
    take = np.minimum(indptr[groups + 1] - starts, k)  # a group never contributes more than k rows
    total = int(take.sum())
    pos = np.repeat(starts - np.cumsum(take) + take, take) + np.arange(total)
    rows = np.asarray(members[pos], dtype=np.int64)
    row_scores = np.repeat(scores, take)
    order = np.lexsort((rows, -row_scores))[:k]
    return rows[order], row_scores[order]
