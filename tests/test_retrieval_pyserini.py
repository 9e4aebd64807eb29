"""The default backend ranks like Lucene: it agrees with pyserini (Anserini's Lucene BM25).

Needs pyserini 0.25 (installed with --no-deps), pyjnius and a Java 17 runtime; skipped with the
reason when they are missing.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipelines.build_index import index_memory
from data_pipelines.caption_corpora import shapeworld_captions, stdlib_docstrings
from retrieval import BuildConfig, open_index
from retrieval.compare import hits_mismatch

try:
    from retrieval.lucene import LuceneUnavailable, check_available

    check_available()
except LuceneUnavailable as e:  # pragma: no cover - depends on the machine
    pytest.skip(f"pyserini backend unavailable: {e}", allow_module_level=True)

SCHEMA = pa.schema([("id", pa.string()), ("caption", pa.string()), ("image", pa.string())])


def both(tmp_path, ids, captions):
    mem = tmp_path / "memory.parquet"
    pq.write_table(pa.table({"id": ids, "caption": captions, "image": [None] * len(ids)}, schema=SCHEMA), mem)
    out = {}
    for backend in ("bm25s", "pyserini"):
        cfg = BuildConfig(memory=str(mem), out=str(tmp_path / backend), backend=backend, progress=False)
        out[backend] = open_index(index_memory(cfg))
    return out["bm25s"], out["pyserini"]


def assert_agree(ours, lucene, queries, k=10):
    # Anserini's SimpleSearcher returns scores rounded to 4 decimals (its ScoreTiesAdjusterReranker),
    # hence the absolute tolerance, which only matters for scores below 0.1
    a, b = ours.search(queries, k), lucene.search(queries, k)
    bad = [(q, why) for q, x, y in zip(queries, a, b) if (why := hits_mismatch(x, y, rtol=1e-3, atol=1e-4))]
    assert not bad, bad[:3]
    assert sum(len(x) for x in a) > 0


def test_agrees_with_lucene_on_shapeworld_memory_captions(tmp_path):
    captions = shapeworld_captions(2000, seed=0)
    ours, lucene = both(tmp_path, [f"m{i}" for i in range(len(captions))], captions)
    queries = shapeworld_captions(100, seed=1, kind="video") + ["Fifi moves up on sand", "a photo", "red red circle"]
    assert_agree(ours, lucene, queries)
    # Anserini breaks ties by docid, which is our row: even the tie order is the same
    a, b = ours.search(queries[:20], 10), lucene.search(queries[:20], 10)
    assert [[h.row for h in x] for x in a] == [[h.row for h in y] for y in b]


def test_agrees_with_lucene_on_real_text(tmp_path):
    ids, docs = stdlib_docstrings()
    ours, lucene = both(tmp_path, ids, docs)
    rng = np.random.default_rng(0)
    words = " ".join(docs).split()
    queries = [" ".join(docs[i].split()[:8]) for i in rng.integers(0, len(docs), 60)]
    queries += [" ".join(rng.choice(words, 3)) for _ in range(60)]
    assert_agree(ours, lucene, queries)
    # long documents (Lucene stores their length in one byte) are among the hits
    assert max(len(h.caption.split()) for hits in ours.search(queries, 10) for h in hits) > 100


def test_lucene_backend_contract(tmp_path):
    _, lucene = both(tmp_path, ["a", "b", "c"], ["red circle", "blue square", "red ring"])
    assert lucene.search(["", "zebra"], 5) == [[], []]
    hits = lucene.search(["red"], 5)[0]
    assert [h.id for h in hits] == ["a", "c"] and hits[0].score == pytest.approx(hits[1].score, abs=1e-4)
    assert lucene.meta["backend"] == "pyserini" and (tmp_path / "pyserini" / "lucene").is_dir()
    assert not (tmp_path / "pyserini" / "_collection").exists()  # the JSON collection is removed
