"""Benchmark: BM25 retrieval over a 1M-caption memory, side by side (docs/architecture.md, Benchmarks).

    python benchmarks/retrieval.py [--corpus shapeworld|zipf|both] [--n-docs 1000000]
        [--n-queries 10000] [--backends ours,bm25s,pyserini,rank_bm25] [--out outputs/benchmarks/retrieval.json]

Corpora (``data_pipelines.caption_corpora``): ShapeWorld memory captions queried with ShapeWorld video
captions (480 distinct captions: heavy ties), and a Zipfian 200k-word vocabulary (5-20 words per
caption, queries drawn from the same law; nearly every caption distinct).

Backends, each in its own process (so its peak RSS is its own):
- ``ours``: ``data_pipelines.build_index`` default backend, ``open_index(...).search`` in one process,
  and the same index with ``open_index(..., workers=2)`` (two worker processes);
- ``bm25s``: the bm25s package as shipped (method="lucene", k1=0.9, b=0.4) on our tokens,
  ``retrieve(..., n_threads=2)``;
- ``pyserini``: our pyserini backend (Anserini's indexer with 2 threads, ``batch_search`` with 2 threads);
- ``rank_bm25``: rank-bm25 on a subsample (``--rank-bm25-docs``, few queries): its time per
  query grows linearly with the corpus, so its q/s and build docs/s are extrapolated to the full
  corpus (q/s x sub/N) and labelled so.

Measured per backend: build wall time (tokenising + indexing + writing), index size on disk
(ours and pyserini include the document store with ids, captions and image refs), peak RSS
(process + its children), batch throughput over all queries at top-10 (wall and CPU-seconds based:
on a shared machine CPU time says what idle cores would do), p50 latency of single queries.
Rankings: ours against rank-bm25 on the subsample (exact, ties included), and against pyserini and
bm25s on the full corpus for ``--check-queries`` queries (tie-aware, ``retrieval.compare``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

K = 10
LATENCY_QUERIES = 200   # single queries timed for the p50 latency
CHUNK = 500             # queries per batch call


# ---------------------------------------------------------------------------------- data
def make_corpus(corpus: str, n_docs: int, n_queries: int, folder: Path) -> tuple[Path, Path]:
    from data_pipelines.caption_corpora import shapeworld_captions, zipf_captions

    folder.mkdir(parents=True, exist_ok=True)
    mem, qfile = folder / "memory.parquet", folder / "queries.json"
    if corpus == "shapeworld":
        docs, queries = shapeworld_captions(n_docs, seed=0), shapeworld_captions(n_queries, seed=1, kind="video")
    else:
        docs, queries = zipf_captions(n_docs, seed=0), zipf_captions(n_queries, seed=1)
    schema = pa.schema([("id", pa.string()), ("caption", pa.string()), ("image", pa.string())])
    ids = [f"m{i:08d}" for i in range(n_docs)]
    pq.write_table(pa.table({"id": ids, "caption": docs, "image": pa.nulls(n_docs, pa.string())}, schema=schema), mem)
    qfile.write_text(json.dumps(queries))
    return mem, qfile


def subsample(mem: Path, n: int, out: Path) -> Path:
    pq.write_table(pq.read_table(mem).slice(0, n), out)
    return out


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------- workers
def _peak_rss_mb() -> float:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(self_kb, child_kb) / 1024


def _cpu() -> float:
    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def _timed_search(search, queries: list[str], check: int, budget_s: float):
    """Batch throughput, single-query p50 and the top-k of the first ``check`` queries.

    Batches of ``CHUNK`` queries are searched until all are done or ``budget_s`` has passed
    (slow backends on a busy machine would otherwise take many minutes); throughput is over the
    queries actually searched, which the table reports.
    """
    ranked, done, wall, cpu = [], 0, 0.0, 0.0
    while done < len(queries) and (done == 0 or wall < budget_s):
        batch = queries[done:done + max(CHUNK, check)]
        c0, t0 = _cpu(), time.perf_counter()
        got = search(batch)
        wall, cpu = wall + time.perf_counter() - t0, cpu + _cpu() - c0
        ranked += got[: max(0, check - len(ranked))]
        done += len(batch)
    lat, t_lat = [], time.perf_counter()
    for q in queries[:LATENCY_QUERIES]:
        t = time.perf_counter()
        search([q])
        lat.append(time.perf_counter() - t)
        if time.perf_counter() - t_lat > budget_s / 4:
            break
    return done, wall, cpu, 1000 * float(np.median(lat)), ranked


def worker(backend: str, mem: Path, qfile: Path, work: Path, check: int, budget_s: float) -> dict:
    queries = json.loads(qfile.read_text())
    n_docs = pq.ParquetFile(mem).metadata.num_rows
    from data_pipelines.build_index import index_memory
    from retrieval import BuildConfig, open_index

    if backend == "ours2":  # the index "ours" built, searched by 2 worker processes
        index = open_index(work / "index-ours", workers=2)
        done, wall, cpu_parent, p50, ranked = _timed_search(_hits_search(index), queries, check, budget_s)
        c0 = _cpu()
        index.close()  # reaps the workers, so their CPU time is counted
        cpu = cpu_parent + _cpu() - c0
        return {"backend": backend, "label": "ours, 2 processes", "docs": n_docs, "queries": done,
                "index_mb": dir_size(work / "index-ours") / 2**20, "peak_rss_mb": _peak_rss_mb(),
                "qps": done / wall, "qps_cpu": done / cpu, "p50_ms": p50, "ranked": ranked}
    out = work / f"index-{backend}"
    shutil.rmtree(out, ignore_errors=True)
    c0, t0 = _cpu(), time.perf_counter()
    if backend == "bm25s":
        search, size = _bm25s_shipped(mem, out)
    else:
        be = {"ours": "bm25s", "pyserini": "pyserini", "rank_bm25": "rank_bm25"}[backend]
        index_memory(BuildConfig(memory=str(mem), out=str(out), backend=be, progress=False, threads=2))
        index = open_index(out, workers=2 if backend == "pyserini" else 1)  # pyserini: 2 search threads
        search, size = _hits_search(index), dir_size(out)
    build_wall, build_cpu = time.perf_counter() - t0, _cpu() - c0
    done, wall, cpu, p50, ranked = _timed_search(search, queries, check, budget_s)
    return {"backend": backend, "docs": n_docs, "queries": done, "build_s": build_wall,
            "docs_per_s": n_docs / build_wall, "build_cpu_s": build_cpu, "index_mb": size / 2**20,
            "peak_rss_mb": _peak_rss_mb(), "qps": done / wall, "qps_cpu": done / cpu, "p50_ms": p50,
            "ranked": ranked}


def _hits_search(index):
    def search(qs):
        return [([h.row for h in x], [h.score for h in x]) for x in index.search(qs, K)]

    return search


def _bm25s_shipped(mem: Path, out: Path):
    """bm25s as shipped (its numpy backend), fed our tokenizer's terms so all agree on terms."""
    import bm25s

    from retrieval.tokenizer import Tokenizer

    tok = Tokenizer()
    corpus = [t for batch in pq.ParquetFile(mem).iter_batches(65536, columns=["caption"])
              for t in tok.tokenize_batch(batch.column(0).to_pylist())]
    model = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    model.index(corpus, show_progress=False)
    del corpus
    model.save(str(out), show_progress=False)

    def search(qs):
        q_tok = tok.tokenize_queries(qs)
        live = [i for i, t in enumerate(q_tok) if any(w in model.vocab_dict for w in t)]
        res = [([], [])] * len(qs)
        if live:
            docs, scores = model.retrieve([q_tok[i] for i in live], k=K, n_threads=2 if len(live) > 1 else 0,
                                          show_progress=False)
            for i, d, s in zip(live, docs, scores):
                keep = s > 0
                res[i] = (d[keep].tolist(), s[keep].tolist())
        return res

    return search, dir_size(out)


# ---------------------------------------------------------------------------------- driver
def run_worker(backend: str, mem: Path, qfile: Path, work: Path, check: int, args) -> dict:
    res_file = work / f"result-{backend}.json"
    cmd = [sys.executable, __file__, "--worker", backend, "--memory", str(mem), "--queries", str(qfile),
           "--work", str(work), "--check-queries", str(check), "--result", str(res_file),
           "--budget-s", str(args.budget_s)]
    print(f"  {backend} ...", flush=True, file=sys.stderr)
    proc = subprocess.run(cmd, cwd=ROOT, timeout=args.timeout, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"backend": backend, "error": (proc.stderr or proc.stdout)[-1500:]}
    return json.loads(res_file.read_text())


def compare(a: dict, b: dict, n: int, rtol: float, atol: float = 0.0) -> str:
    from retrieval.compare import top_k_mismatch

    if "ranked" not in a or "ranked" not in b:
        return "n/a"
    pairs = zip(a["ranked"][:n], b["ranked"][:n])
    bad = sum(top_k_mismatch(*x, *y, rtol=rtol, atol=atol) is not None for x, y in pairs)
    return f"{n - bad}/{n} same"


def bench_corpus(corpus: str, args) -> list[dict]:
    work = Path(args.work) / corpus
    shutil.rmtree(work, ignore_errors=True)
    t = time.perf_counter()
    mem, qfile = make_corpus(corpus, args.n_docs, args.n_queries, work)
    print(f"{corpus}: {args.n_docs:,} captions, {args.n_queries:,} queries generated in {time.perf_counter() - t:.1f}s",
          file=sys.stderr)
    rows, by = [], {}
    for backend in args.backends:
        if backend == "rank_bm25":
            continue
        r = run_worker(backend, mem, qfile, work, args.check_queries, args)
        by[backend] = r
        rows.append(r)
        if backend == "ours" and "error" not in r:
            by["ours2"] = run_worker("ours2", mem, qfile, work, args.check_queries, args)
            rows.append(by["ours2"])
        shutil.rmtree(work / f"index-{backend}", ignore_errors=True)
    if "rank_bm25" in args.backends:
        # reference on a subsample (time per query is linear in the corpus size): rank-bm25 and
        # ours on the same subsample and queries, for speed extrapolation and an exact ranking check
        n_sub = min(args.rank_bm25_docs, args.n_docs)
        sub = work / "sub"
        sub.mkdir(exist_ok=True)
        smem = subsample(mem, n_sub, sub / "memory.parquet")
        sq = sub / "queries.json"
        sq.write_text(json.dumps(json.loads(qfile.read_text())[: args.rank_bm25_queries]))
        ref = run_worker("rank_bm25", smem, sq, sub, args.rank_bm25_queries, args)
        ours_sub = run_worker("ours", smem, sq, sub, args.rank_bm25_queries, args)
        f = n_sub / args.n_docs
        if "error" not in ref:
            ref.update(label=f"rank-bm25 ({n_sub // 1000}k-doc subsample, {ref['queries']} q; speeds x{f:g})",
                       qps=ref["qps"] * f, qps_cpu=ref["qps_cpu"] * f, p50_ms=ref["p50_ms"] / f,
                       build_s=ref["build_s"] / f, extrapolated=True)
            ref["check"] = "reference"
        rows.append(ref)
        if "ours" in by and "error" not in ours_sub:
            by["ours"]["check_rank_bm25"] = compare(ours_sub, ref, args.rank_bm25_queries, rtol=1e-6)
            by["ours"]["ours_sub_qps"] = ours_sub["qps"]
    if "ours" in by:
        ours = by["ours"]
        for other in ("ours2", "pyserini", "bm25s"):
            if other in by and "error" not in by[other]:
                by[other]["check"] = compare(ours, by[other], args.check_queries, rtol=1e-3, atol=1e-4)
        ours["check"] = "vs rank-bm25: " + ours.get("check_rank_bm25", "n/a")
    for r in rows:
        r["corpus"] = corpus
    return rows


def print_table(rows: list[dict]) -> None:
    ref = {r["corpus"]: r for r in rows if r.get("backend") == "rank_bm25" and "error" not in r}
    head = ["corpus", "backend", "build s", "docs/s", "index MB", "peak RSS MB", "q/s (wall)", "q/s (cpu)",
            "p50 ms", "x rank-bm25", "queries", "top-10 vs ours"]
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append([r.get("corpus", ""), r["backend"], "failed: " + r["error"].strip().splitlines()[-1][:80]])
            continue
        base = ref.get(r["corpus"])
        speed = f"{r['qps'] / base['qps']:,.0f}x" if base else "n/a"
        build = (f"{r['build_s']:.1f}", f"{r['docs_per_s']:,.0f}") if "build_s" in r else ("(same)", "")
        lines.append([r["corpus"], r.get("label", r["backend"]), *build,
                      f"{r['index_mb']:.0f}", f"{r['peak_rss_mb']:.0f}", f"{r['qps']:,.1f}", f"{r['qps_cpu']:,.1f}",
                      f"{r['p50_ms']:.2f}", speed, f"{r['queries']:,}", r.get("check", "")])
    widths = [max(len(str(x[i])) for x in lines if len(x) > i) for i in range(len(head))]
    for x in lines:
        print(" | ".join(str(v).ljust(w) for v, w in zip(x, widths)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", choices=("shapeworld", "zipf", "both"), default="shapeworld")
    ap.add_argument("--n-docs", type=int, default=1_000_000)
    ap.add_argument("--n-queries", type=int, default=10_000)
    ap.add_argument("--backends", default="ours,bm25s,pyserini,rank_bm25")
    ap.add_argument("--rank-bm25-docs", type=int, default=100_000)
    ap.add_argument("--rank-bm25-queries", type=int, default=50)
    ap.add_argument("--check-queries", type=int, default=200)
    ap.add_argument("--work", default=str(ROOT / "outputs" / "bench_retrieval"))
    ap.add_argument("--out", default=str(ROOT / "outputs" / "benchmarks" / "retrieval.json"))
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--budget-s", type=float, default=60, help="per backend: stop batch searching after this long")
    # internal: one backend in its own process
    ap.add_argument("--worker")
    ap.add_argument("--memory")
    ap.add_argument("--queries")
    ap.add_argument("--result")
    args = ap.parse_args(argv)
    if args.worker:
        r = worker(args.worker, Path(args.memory), Path(args.queries), Path(args.work), args.check_queries,
                   args.budget_s)
        Path(args.result).write_text(json.dumps(r))
        return 0
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    t0 = time.perf_counter()
    rows = []
    for corpus in (("shapeworld", "zipf") if args.corpus == "both" else (args.corpus,)):
        rows += bench_corpus(corpus, args)
    load = os.getloadavg()
    print(f"\nretrieval benchmark: {args.n_docs:,} docs, {args.n_queries:,} queries, top-{K}; "
          f"{os.cpu_count()} cores, load average {load[0]:.1f} (shared machine); total {time.perf_counter() - t0:.0f}s")
    print_table(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([{k: v for k, v in r.items() if k != "ranked"} for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
