"""BM25 term weights, in one place for every backend that computes them itself.

Two variants (names as in Kamphuis et al., "Which BM25 Do You Mean?", ECIR 2020):

- ``lucene`` (default): what Lucene >= 8 (and so pyserini/Anserini) computes,
  ``idf = ln(1 + (N - df + 0.5) / (df + 0.5))`` and
  ``w(t, d) = idf * tf / (tf + k1 * (1 - b + b * |d| / avgdl))`` (no ``(k1 + 1)`` factor).
  Lucene stores each document length in one byte (``SmallFloat.intToByte4``: exact up to 23
  terms, then 4 significant bits), so long documents are scored with a rounded-down length;
  ``quantize_lengths=True`` reproduces that, which is what makes scores agree with pyserini to
  float precision on real text rather than only on short captions.
- ``robertson``: ``idf = ln((N - df + 0.5) / (df + 0.5))`` clipped at 0 (as bm25s does), exact
  lengths. rank-bm25's ``BM25Okapi`` computes this times ``(k1 + 1)`` (for terms in at most half
  of the documents, where its epsilon floor never applies).

N is the number of documents with at least one term and avgdl the mean term count over them
(Lucene's ``docCount`` and ``sumTotalTermFreq / docCount``).
"""
from __future__ import annotations

import numpy as np

VARIANTS = ("lucene", "robertson")

# Lucene SmallFloat: lengths below 24 are stored exactly, then 3 mantissa bits + implicit one.
_NUM_FREE_VALUES = 24


def _int4(i: np.ndarray) -> np.ndarray:
    """SmallFloat.longToInt4 for non-negative int64 arrays."""
    i = i.astype(np.int64)
    # bit length of i; frexp is exact here because lengths fit in float64's 53-bit mantissa
    nbits = np.frexp(i.astype(np.float64))[1].astype(np.int64)
    shift = nbits - 4
    normal = nbits >= 4
    enc = np.where(normal, ((i >> np.maximum(shift, 0)) & 0x07) | ((shift + 1) << 3), i)
    return enc


def _int4_to_long(e: np.ndarray) -> np.ndarray:
    bits = e & 0x07
    shift = (e >> 3) - 1
    return np.where(shift == -1, bits, (bits | 0x08) << np.maximum(shift, 0))


def lucene_length(length: np.ndarray) -> np.ndarray:
    """Document lengths as Lucene decodes them after its one-byte norm encoding (int64)."""
    length = np.asarray(length, dtype=np.int64)
    small = length < _NUM_FREE_VALUES
    big = _NUM_FREE_VALUES + _int4_to_long(_int4(np.maximum(length - _NUM_FREE_VALUES, 0)))
    return np.where(small, length, big)


def idf(df: np.ndarray, n_docs: int, variant: str) -> np.ndarray:
    """Inverse document frequency per term (float64)."""
    df = np.asarray(df, dtype=np.float64)
    if variant == "lucene":
        return np.log1p((n_docs - df + 0.5) / (df + 0.5))
    if variant == "robertson":
        return np.log(np.maximum((n_docs - df + 0.5) / (df + 0.5), 1.0))
    raise ValueError(f"unknown BM25 variant {variant!r}; expected one of {VARIANTS}")


def effective_length(doc_len: np.ndarray, quantize_lengths: bool) -> np.ndarray:
    """Document lengths as the scorer sees them (Lucene's one-byte lengths, or exact)."""
    return lucene_length(doc_len) if quantize_lengths else np.asarray(doc_len, dtype=np.int64)


def term_weights(
    tf: np.ndarray,            # term frequency in the document, per (doc, term) pair
    doc_len: np.ndarray,       # the pair's document length, from effective_length()
    term_idf: np.ndarray,      # idf of the pair's term
    avgdl: float,
    k1: float,
    b: float,
    dtype=np.float32,
) -> np.ndarray:
    """BM25 weight of each (doc, term) pair.

    float32 follows Lucene's float arithmetic order (what pyserini computes); float64 is the
    precise value, used to rank the final candidates.
    """
    f = np.dtype(dtype).type
    # Lucene: normInverse = 1 / (k1 * ((1 - b) + b * dl / avgdl)); w = idf - idf / (1 + tf * normInverse)
    norm_inv = f(1.0) / (f(k1) * ((f(1.0) - f(b)) + f(b) * doc_len.astype(dtype) / f(avgdl)))
    w = term_idf.astype(dtype)
    return (w - w / (f(1.0) + tf.astype(dtype) * norm_inv)).astype(dtype)
