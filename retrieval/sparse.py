"""The default backend ("bm25s"): an in-RAM BM25 index stored as plain numpy arrays.

Build: captions stream in; each batch becomes (document, term, tf) triples. At the end,
documents with identical token bags are collapsed into *groups* (exactly: same terms, same
frequencies, hence same length and same score), and BM25 weights (``retrieval.bm25``, Lucene
variant by default) are precomputed per (group, term) into two CSR matrices:

- inverted, term -> groups (``post_groups``, ``post_weights``), plus each term's largest weight;
- forward, group -> terms (``group_terms``, ``group_tf``, with ``group_len`` and ``idf``), to
  rescore the final candidates in float64.

Search is term-at-a-time MaxScore (Turtle & Flood, IP&M 1995) with exact final scoring; see
``SparseRetriever.rank_ids``. Rankings are exact: the same as scoring every document, ties
broken by row.

Files (``np.load(..., allow_pickle=False)``, memory-mapped): ``vocab.txt`` (one term per line,
line i = term id i), ``term_indptr.npy``, ``post_groups.npy``, ``post_weights.npy``,
``term_max.npy``, ``doc_freq.npy``, ``idf.npy``, ``group_indptr.npy``, ``group_terms.npy``,
``group_tf.npy``, ``group_len.npy`` (effective lengths), ``member_indptr.npy``,
``member_rows.npy`` (rows of each group, ascending).
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from retrieval import bm25
from retrieval.api import IndexRetriever, Ranked
from retrieval.tokenizer import Tokenizer
from retrieval.topk import expand, group_threshold

_ARRAYS = ("term_indptr", "post_groups", "post_weights", "term_max", "doc_freq", "idf",
           "group_indptr", "group_terms", "group_tf", "group_len", "member_indptr", "member_rows")


def _unique(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values (np.unique's default hash path is far slower on these arrays)."""
    x = np.sort(x)
    keep = np.ones(x.size, dtype=bool)
    np.not_equal(x[1:], x[:-1], out=keep[1:])
    return x[keep]


def _csr_positions(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Flat positions of the CSR slices [starts[i], starts[i] + lens[i]), concatenated."""
    total = int(lens.sum())
    return np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(total)


# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------
class SparseBuilder:
    """Accumulates term ids batch by batch; ``finish`` writes the arrays."""

    def __init__(self, tokenizer: Tokenizer, k1: float, b: float, variant: str,
                 quantize_lengths: bool, collapse: bool = True):
        if variant not in bm25.VARIANTS:
            raise ValueError(f"unknown BM25 variant {variant!r}; expected one of {bm25.VARIANTS}")
        self.tok, self.k1, self.b, self.variant = tokenizer, k1, b, variant
        self.quantize_lengths, self.collapse = quantize_lengths, collapse
        self.terms: list[str] = []
        self.lut = tokenizer.lookup_table()
        self._doc: list[np.ndarray] = []
        self._term: list[np.ndarray] = []
        self._tf: list[np.ndarray] = []
        self._len: list[np.ndarray] = []
        self.n_docs = 0

    def add(self, texts: list[str]) -> np.ndarray:
        """Index the texts that have terms (in order); return every text's term count."""
        ids, lengths = self.tok.encode_batch(texts, self.lut, self.terms)
        nonempty = lengths > 0
        # document number of each token: texts without terms get no number
        local = np.repeat(np.cumsum(nonempty)[nonempty] - 1, lengths[nonempty])
        key = (local.astype(np.int64) << 32) | ids.astype(np.int64)
        uniq, tf = np.unique(key, return_counts=True)  # sorted by (doc, term)
        self._doc.append((uniq >> 32).astype(np.int32) + np.int32(self.n_docs))
        self._term.append((uniq & 0xFFFFFFFF).astype(np.int32))
        self._tf.append(tf.astype(np.int32))
        self._len.append(lengths[nonempty].astype(np.int32))
        self.n_docs += int(nonempty.sum())
        return lengths

    def _groups(self, doc_indptr: np.ndarray, term: np.ndarray, tf: np.ndarray) -> np.ndarray:
        """Group id per document: identical (term, tf) bags share one (verified, not just hashed)."""
        n = self.n_docs
        if not self.collapse:
            return np.arange(n, dtype=np.int64)
        rng = np.random.default_rng(0x5EED)
        v = len(self.terms)
        r1 = rng.integers(0, 2**63, v, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        r2 = rng.integers(0, 2**63, v, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        tfu = tf.astype(np.uint64)
        starts = doc_indptr[:-1]
        with np.errstate(over="ignore"):  # wrap-around is the point of the hash
            h1 = np.add.reduceat(r1[term] * tfu, starts)
            h2 = np.add.reduceat(r2[term] * (tfu * tfu + np.uint64(7)), starts)
        order = np.lexsort((np.arange(n), h2, h1))  # rows ascending inside a group
        new = np.ones(n, dtype=bool)
        new[1:] = (h1[order][1:] != h1[order][:-1]) | (h2[order][1:] != h2[order][:-1])
        gid_sorted = np.cumsum(new) - 1
        rep_sorted = order[np.flatnonzero(new)][gid_sorted]
        rep = np.empty(n, dtype=np.int64)
        rep[order] = rep_sorted
        # Verify that each document's bag equals its representative's; a hash collision
        # (never seen, but possible) makes the document its own group.
        nnz = np.diff(doc_indptr)
        cand = np.flatnonzero(rep != np.arange(n))
        bad = cand[nnz[cand] != nnz[rep[cand]]]
        same = cand[nnz[cand] == nnz[rep[cand]]]
        if same.size:
            pd = _csr_positions(doc_indptr[same], nnz[same])
            pr = _csr_positions(doc_indptr[rep[same]], nnz[same])
            eq = (term[pd] == term[pr]) & (tf[pd] == tf[pr])
            ok = np.logical_and.reduceat(eq, np.cumsum(nnz[same]) - nnz[same])
            bad = np.concatenate([bad, same[~ok]])
        rep[bad] = bad
        # group ids in order of each group's first row
        uniq_rep, gid = np.unique(rep, return_inverse=True)
        return gid.astype(np.int64)

    def finish(self, folder: Path) -> dict:
        """Compute weights, write the arrays into ``folder``; return metadata for index.json."""
        if self.n_docs == 0:
            return {}
        doc = np.concatenate(self._doc)
        term = np.concatenate(self._term)
        tf = np.concatenate(self._tf)
        dl = np.concatenate(self._len).astype(np.int64)
        del self._doc, self._term, self._tf, self._len
        n, v = self.n_docs, len(self.terms)
        doc_indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(doc, minlength=n), out=doc_indptr[1:])
        del doc

        df = np.bincount(term, minlength=v).astype(np.int64)
        avgdl = float(dl.sum()) / n  # Lucene: sumTotalTermFreq / docCount
        term_idf = bm25.idf(df, n, self.variant)

        gid = self._groups(doc_indptr, term, tf)
        g = int(gid.max()) + 1
        member_rows = np.argsort(gid, kind="stable")  # rows ascending inside each group
        sizes = np.bincount(gid, minlength=g)
        member_indptr = np.zeros(g + 1, dtype=np.int64)
        np.cumsum(sizes, out=member_indptr[1:])
        rep = member_rows[member_indptr[:-1]]  # first row of each group

        # forward matrix over groups: the representative's (term, tf) pairs
        nnz = np.diff(doc_indptr)[rep]
        pos = _csr_positions(doc_indptr[rep], nnz)
        g_terms = term[pos]
        g_tf = tf[pos]
        group_len = bm25.effective_length(dl[rep], self.quantize_lengths)
        del term, tf
        g_w = bm25.term_weights(g_tf, np.repeat(group_len, nnz), term_idf[g_terms], avgdl, self.k1, self.b)
        group_indptr = np.zeros(g + 1, dtype=np.int64)
        np.cumsum(nnz, out=group_indptr[1:])

        # inverted matrix: stable sort by term keeps groups ascending inside each posting list
        order = np.argsort(g_terms, kind="stable")
        term_indptr = np.zeros(v + 1, dtype=np.int64)
        np.cumsum(np.bincount(g_terms, minlength=v), out=term_indptr[1:])
        post_groups = np.repeat(np.arange(g, dtype=np.int32), nnz)[order]
        post_weights = g_w[order]
        term_max = np.zeros(v, dtype=np.float32)
        has = np.diff(term_indptr) > 0
        term_max[has] = np.maximum.reduceat(post_weights, term_indptr[:-1][has])

        folder = Path(folder)
        arrays = dict(term_indptr=term_indptr, post_groups=post_groups, post_weights=post_weights,
                      term_max=term_max, doc_freq=df, group_indptr=group_indptr,
                      idf=term_idf, group_terms=g_terms.astype(np.int32), group_tf=g_tf.astype(np.int32),
                      group_len=group_len.astype(np.int64),
                      member_indptr=member_indptr, member_rows=member_rows.astype(np.int32 if n < 2**31 else np.int64))
        for name, arr in arrays.items():
            np.save(folder / f"{name}.npy", arr, allow_pickle=False)
        (folder / "vocab.txt").write_text("\n".join(self.terms), encoding="utf-8")
        return {"num_groups": g, "vocab_size": v, "avgdl": avgdl, "collapse_duplicates": self.collapse}


# ---------------------------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------------------------
class SparseRetriever(IndexRetriever):
    """MaxScore search over the group matrices (see module doc)."""

    def __init__(self, path: Path, meta: dict, workers: int = 1):
        super().__init__(path, meta, workers)
        # memory-mapped (processes serving one index share the pages); np.asarray drops the
        # np.memmap subclass, whose Python-level indexing is slow
        a = {name: np.asarray(np.load(self.path / f"{name}.npy", mmap_mode="r", allow_pickle=False))
             for name in _ARRAYS}
        self.term_indptr = np.asarray(a["term_indptr"])
        self.term_max = np.asarray(a["term_max"], dtype=np.float64)
        self.group_indptr = np.asarray(a["group_indptr"])
        self.member_indptr = np.asarray(a["member_indptr"])
        self.post_groups, self.post_weights = a["post_groups"], a["post_weights"]
        self.group_terms, self.group_tf, self.group_len = a["group_terms"], a["group_tf"], a["group_len"]
        self.idf = a["idf"]
        self.k1, self.b, self.avgdl = float(meta["k1"]), float(meta["b"]), float(meta["avgdl"])
        self.member_rows = a["member_rows"]
        self.group_sizes = np.diff(self.member_indptr)
        terms = (self.path / "vocab.txt").read_text(encoding="utf-8").split("\n") if meta.get("vocab_size") else []
        self.lut = self.tokenizer.lookup_table(terms)
        self._local = threading.local()
        self._start_pool()

    def _scratch(self) -> np.ndarray:
        acc = getattr(self._local, "acc", None)
        if acc is None:  # per thread partial scores by group, all zero between queries
            acc = self._local.acc = np.zeros(len(self.group_sizes), np.float32)
        return acc

    def _postings(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.term_indptr[t], self.term_indptr[t + 1]
        return self.post_groups[a:b], self.post_weights[a:b]

    def _exact(self, groups: np.ndarray, qt: np.ndarray, qc: np.ndarray) -> np.ndarray:
        """Precise (float64) scores of groups through the forward matrix, for the query with
        sorted term ids ``qt`` and counts ``qc``. Terms are summed in id order, so equal bags
        give bit-identical scores whichever path found them."""
        starts = self.group_indptr[groups]
        lens = self.group_indptr[groups + 1] - starts
        if groups.size == 0:
            return np.zeros(0)
        pos = _csr_positions(starts, lens)
        t = self.group_terms[pos]
        j = np.minimum(np.searchsorted(qt, t), qt.size - 1)
        q = np.where(qt[j] == t, qc[j], 0.0)
        w = bm25.term_weights(self.group_tf[pos], np.repeat(self.group_len[groups], lens), self.idf[t],
                              self.avgdl, self.k1, self.b, dtype=np.float64)
        return np.add.reduceat(q * w, np.cumsum(lens) - lens)

    def rank_ids(self, term_ids: np.ndarray, k: int) -> Ranked:
        """Top-k rows for one query given as term ids (repeats count, as in Lucene and rank-bm25).

        Term-at-a-time MaxScore. Terms are visited in decreasing upper bound ``ub``; ``acc``
        holds partial scores (float32); ``rest[i]`` bounds what the terms from the i-th on can
        add; ``theta`` is a lower bound on the k-th best row score, the k-th best exact score
        of the groups that have had the best partial scores so far (``_Best``).
        1. Essential terms: while ``rest[i] >= theta``, a document not met yet could still reach
           the top k, so the term's whole posting list is added to ``acc``.
        2. Then no new document can: candidates are the documents met so far whose partial
           score plus ``rest`` reaches theta; the remaining (frequent, low-weight) terms are only
           looked up for them, and after each term the bound is applied again.
        3. The few candidates left are rescored exactly (float64) and ranked.
        Comparisons carry a relative slack far above float32 rounding, so the top k is exact:
        the same as scoring every document.
        """
        empty = (np.zeros(0, np.int64), np.zeros(0))
        if term_ids.size == 0:
            return empty
        acc = self._scratch()
        qt, qc = np.unique(term_ids, return_counts=True)
        ub = qc * self.term_max[qt]
        order = np.argsort(-ub, kind="stable")
        terms, counts, m = qt[order].tolist(), qc[order].tolist(), len(order)
        rest = np.zeros(m + 1)
        rest[:-1] = np.cumsum(ub[order][::-1])[::-1]    # rest[i]: bound of terms i, i+1, ...
        hi = 1.0 + 1e-5                                  # slack for float32 partial sums
        best = _Best(self, acc, k, qt, qc.astype(np.float64))
        touched: list[np.ndarray] = []                   # posting lists added to acc
        pending: list[np.ndarray] = []                   # ... of which best has not seen yet
        i = n_essential = 0
        cands = np.zeros(0, np.int32)
        try:
            # 1. essential terms: whole posting lists
            while i < m and rest[i] * hi >= best.theta:
                post, w = self._postings(terms[i])
                if pending and post.size > 2048:  # worth a tighter theta before a long list?
                    best.update(np.concatenate(pending))
                    pending = []
                    if rest[i] * hi < best.theta:
                        break
                np.add.at(acc, post, w if counts[i] == 1 else w * np.float32(counts[i]))
                touched.append(post)
                pending.append(post)
                i += 1
            if pending:
                best.update(np.concatenate(pending))
            # 2. candidates that can still make it; the other terms are looked up for them only
            n_essential = i
            # candidates: groups met whose partial score plus what is left can reach theta;
            # sorted and distinct (a group is met once per essential term it has)
            thr = best.theta / hi - rest[i]
            met = [p[acc[p] >= thr] for p in touched]
            cands = _unique(np.concatenate(met)) if met else cands
            while cands.size:
                if i > n_essential:
                    cands = cands[acc[cands] >= best.theta / hi - rest[i]]
                if i >= m:
                    break
                post, w = self._postings(terms[i])
                c = np.float32(counts[i])
                if cands.size * 16 < post.size:  # binary-search the candidates in the list
                    at = np.minimum(np.searchsorted(post, cands), post.size - 1)
                    found = at[post[at] == cands]
                    acc[post[found]] += w[found] * c
                else:  # cheaper to add the whole list (non-candidates are reset after)
                    np.add.at(acc, post, w if c == 1 else w * c)
                    touched.append(post)
                if cands.size > 1024:  # a tighter theta pays for itself on many candidates
                    best.update(cands)
                i += 1
            part = acc[cands]
        finally:  # leave acc all zero (every candidate lies in some touched list)
            if sum(p.size for p in touched) * 8 > acc.size:
                acc.fill(0.0)
            else:
                for p in touched:
                    acc[p] = 0.0
        if cands.size == 0:
            return empty
        # 3. exact scores of the survivors
        cands = cands[part >= best.theta / hi]
        scores = self._exact(cands, qt, qc.astype(np.float64))
        th = group_threshold(scores, self.group_sizes[cands], k)
        keep = (scores >= th) & (scores > 0)
        return expand(cands[keep].astype(np.int64), scores[keep], self.member_indptr, self.member_rows, k)

    def rank(self, queries: list[str], k: int) -> list[Ranked]:
        return [self.rank_ids(ids, k) for ids in self.tokenizer.encode_queries(queries, self.lut)]


class _Best:
    """Per-query lower bound ``theta`` on the k-th best row score (see SparseRetriever.rank_ids).

    ``buf`` holds the k groups with the best partial scores among the previous ``buf`` and the
    groups whose partial score changed since; they are scored exactly (k forward rows, cheap),
    and ``ex_g``/``ex_s`` keep the k best exact scores met. Exact scores of real documents
    make a valid bound, much tighter than partial scores would.
    """

    def __init__(self, index: "SparseRetriever", acc: np.ndarray, k: int, qt: np.ndarray, qc: np.ndarray):
        self.index, self.acc, self.k, self.qt, self.qc = index, acc, k, qt, qc
        self.buf = np.zeros(0, np.int64)
        self.ex_g = np.zeros(0, np.int64)
        self.ex_s = np.zeros(0)
        self.floor = -np.inf
        self.theta = -np.inf

    def update(self, changed: np.ndarray) -> None:
        acc, k = self.acc, self.k
        part = acc[changed]
        if self.buf.size >= k:  # only groups above the weakest of the current k best can enter
            keep = part > self.floor
            changed, part = changed[keep], part[keep]
        if changed.size > k:
            changed = changed[np.argpartition(part, changed.size - k)[-k:]]
        if changed.size == 0:
            return
        cand = _unique(np.concatenate([self.buf, changed]))  # at most 2k groups
        part = acc[cand]
        if cand.size > k:
            top = np.argpartition(part, cand.size - k)[-k:]
            cand, part = cand[top], part[top]
        self.buf = cand
        self.floor = part.min()  # partial scores only grow: a valid floor from now on
        new = cand[~(cand[:, None] == self.ex_g[None, :]).any(1)] if self.ex_g.size else cand  # (2k x k)
        if new.size == 0:
            return
        ex_g = np.concatenate([self.ex_g, new])
        ex_s = np.concatenate([self.ex_s, self.index._exact(new, self.qt, self.qc)])
        if ex_g.size > k:
            top = np.argpartition(ex_s, ex_s.size - k)[-k:]
            ex_g, ex_s = ex_g[top], ex_s[top]
        self.ex_g, self.ex_s = ex_g, ex_s
        self.theta = max(self.theta, group_threshold(ex_s, self.index.group_sizes[ex_g], k))
