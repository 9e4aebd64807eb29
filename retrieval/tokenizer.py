"""The one tokenizer of the retrieval index: the same code turns memory captions and queries into terms.

Lowercase, split on anything that is not a Unicode letter or digit, drop stopwords. Its settings
are stored in ``index.json`` so that a query is always cut the way the index was built; a
mismatch here would silently change rankings. The default stopword list is Lucene's English
stop set (``EnglishAnalyzer.ENGLISH_STOP_WORDS_SET``), so the pyserini backend, which indexes
our pre-tokenized text with Lucene's whitespace analyzer, sees exactly the same terms.

Work is done per batch: the batch is joined with NUL separators, lowercased once and cut by one
regex call, which is several times faster than a Python loop over captions.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import numpy as np

# Lucene's EnglishAnalyzer default stop set (33 words).
ENGLISH_STOPWORDS: tuple[str, ...] = (
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
    "they", "this", "to", "was", "will", "with",
)

# Terms are maximal runs of Unicode letters/digits ([^\W_] = \w without the underscore).
_TOKEN = re.compile(r"[^\W_]+|\x00")
_SEP = "\x00"


@dataclass
class TokenizerConfig:
    lowercase: bool = True                                   # fold case before cutting
    stopwords: list[str] = field(default_factory=lambda: list(ENGLISH_STOPWORDS))  # dropped terms
    max_query_tokens: int = 256                              # longer queries keep their first N terms
    max_query_chars: int = 65536                             # bound on the text a query may make us scan


def to_text(value: object) -> str:
    """Any caption/query value -> valid Unicode text (bytes decoded as UTF-8 with replacement).

    Lone surrogates (from ``surrogateescape`` decoding) are replaced too: they cannot be written
    to Arrow or JSON, and a caption must round-trip through the index unchanged otherwise.
    """
    if type(value) is str:
        if value.isascii():  # the common case, checked at C speed
            return value
        text = value
    elif value is None:
        return ""
    elif isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    else:
        text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", errors="replace").decode("utf-8")
    return text


class Tokenizer:
    """Text -> terms, identically for indexing and querying.

    ``tokenize_*`` return term strings (for the Lucene and reference backends); ``encode_*`` map
    the same terms to integer ids through a lookup table ``lut`` (term -> id), as the in-RAM index
    does. Both paths share ``_raw`` and the stopword set, so they cannot drift apart.
    """

    def __init__(self, cfg: TokenizerConfig | None = None):
        self.cfg = cfg or TokenizerConfig()
        self.stopwords = frozenset(self.cfg.stopwords)

    def _raw(self, texts: list[str]) -> list[str]:
        # One regex pass over the whole batch; NUL (never part of a term) ends each text.
        joined = _SEP.join(to_text(t).replace(_SEP, " ") for t in texts) + _SEP
        if self.cfg.lowercase:
            joined = joined.lower()
        return _TOKEN.findall(joined)

    def _split(self, raw: list[str], limit: int | None) -> list[list[str]]:
        out: list[list[str]] = []
        cur: list[str] = []
        stop = self.stopwords
        for tok in raw:
            if tok == _SEP:
                out.append(cur if limit is None else cur[:limit])
                cur = []
            elif tok not in stop:
                cur.append(tok)
        return out

    def _bound(self, queries: list[str]) -> list[str]:
        return [to_text(q)[: self.cfg.max_query_chars] for q in queries]

    def tokenize_batch(self, texts: list[str]) -> list[list[str]]:
        """Index side: every term of every text."""
        return self._split(self._raw(texts), None)

    def tokenize_queries(self, queries: list[str]) -> list[list[str]]:
        """Query side: the same terms, bounded (``max_query_chars`` of text, ``max_query_tokens`` terms)."""
        return self._split(self._raw(self._bound(queries)), self.cfg.max_query_tokens)

    def tokenize(self, text: str) -> list[str]:
        return self.tokenize_batch([text])[0]

    # -- integer ids (the in-RAM index) ------------------------------------------------------
    def lookup_table(self, terms: list[str] | None = None) -> dict[str, int]:
        """term -> id for ``terms``; stopwords -> -1 and the text separator -> -2 ride along."""
        lut = {t: -1 for t in self.stopwords}
        lut[_SEP] = -2
        for i, t in enumerate(terms or []):
            lut[t] = i
        return lut

    def encode_batch(self, texts: list[str], lut: dict[str, int], terms: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Index side: (term ids of all texts, concatenated int32; terms per text int64).

        New terms are appended to ``terms`` and ``lut`` (the growing vocabulary).
        """
        raw = self._raw(texts)
        ids = np.fromiter(map(lut.get, raw, itertools.repeat(-3)), dtype=np.int64, count=len(raw))
        new = np.flatnonzero(ids == -3)
        for pos in new.tolist():  # only first sightings of a term take the slow path
            t = raw[pos]
            i = lut.get(t)
            if i is None:
                i = lut[t] = len(terms)
                terms.append(t)
            ids[pos] = i
        sep = ids == -2
        # text index of every raw token: number of separators strictly before it
        text_of = np.cumsum(sep) - sep
        keep = ids >= 0
        lengths = np.bincount(text_of[keep], minlength=len(texts)).astype(np.int64)
        return ids[keep].astype(np.int32), lengths

    def encode_queries(self, queries: list[str], lut: dict[str, int]) -> list[np.ndarray]:
        """Query side: bounded terms -> ids; terms the index never saw are dropped (they match nothing)."""
        out = []
        for toks in self.tokenize_queries(queries):
            ids = [lut.get(t, -1) for t in toks]
            out.append(np.array([i for i in ids if i >= 0], dtype=np.int32))
        return out
