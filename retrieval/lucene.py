"""The Lucene backend ("pyserini"): a real Lucene index built and searched through Anserini.

For memories that outgrow RAM: postings live on disk in Lucene's format. Optional extra,
installed as in docs/toolchain.md (``pip install --no-deps pyserini==0.25.0`` plus pyjnius; Java 17).

How terms agree with the other backends: captions are cut by *our* tokenizer and handed to
Lucene pre-tokenized (space-joined terms, Anserini's ``-pretokenized``, i.e. Lucene's
WhitespaceAnalyzer, which only splits on whitespace; our terms never contain any); queries are
cut the same way and searched with a WhitespaceAnalyzer. Lucene therefore sees exactly our
terms, and its BM25 (k1, b from index.json) is the ``lucene`` variant of ``retrieval.bm25``.

Lucene document ids are the rows of the index's document store, zero-padded to 12 digits:
Anserini breaks score ties by ascending docid string, which is then ascending row, the same
tie order as the other backends. Scores are what Anserini's SimpleSearcher returns: Lucene's
float32 BM25 rounded to 4 decimals, tied scores then lowered by 1e-6 steps in rank order (its
``ScoreTiesAdjusterReranker``), so they match the other backends to 1e-3 relative or 1e-4
absolute.

Files: ``lucene/`` (the Lucene index). The JSON collection fed to the indexer is deleted after.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from retrieval.api import IndexRetriever, Ranked
from retrieval.index_format import IndexBuildError
from retrieval.tokenizer import Tokenizer

_ID_DIGITS = 12


class LuceneUnavailable(ImportError):
    """pyserini (with its Anserini jar) or a Java runtime is not installed."""


def _docid(row: int) -> str:
    return f"{row:0{_ID_DIGITS}d}"


def check_available() -> None:
    """Raise ``LuceneUnavailable`` with the install hint when pyserini or Java is missing."""
    try:
        import jnius_config  # noqa: F401
        import pyserini  # noqa: F401
    except ImportError as e:
        raise LuceneUnavailable(f"the pyserini backend needs pyserini and pyjnius ({e}); install with "
                                "`pip install --no-deps pyserini==0.25.0 && pip install pyjnius`") from None
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise LuceneUnavailable("the pyserini backend needs a Java runtime (Java 17 for pyserini 0.25)")


class LuceneBuilder:
    """Writes pre-tokenized JSON lines while the memory streams, runs Anserini's indexer at the end."""

    def __init__(self, tokenizer: Tokenizer, folder: Path, threads: int = 2):
        check_available()
        self.tok = tokenizer
        self.folder = Path(folder)
        self.threads = max(1, int(threads))
        self.collection = self.folder / "_collection"
        self.collection.mkdir()
        # one file per indexer thread (Anserini parallelises over files); docs dealt round-robin
        self._files = [open(self.collection / f"part-{i:03d}.jsonl", "w", encoding="utf-8")
                       for i in range(self.threads)]
        self.n_docs = 0

    def add(self, texts: list[str]) -> np.ndarray:
        toks = self.tok.tokenize_batch(texts)
        for t in toks:
            if t:
                line = json.dumps({"id": _docid(self.n_docs), "contents": " ".join(t)}, ensure_ascii=False)
                self._files[self.n_docs % self.threads].write(line + "\n")
                self.n_docs += 1
        return np.array([len(t) for t in toks], dtype=np.int64)

    def finish(self, folder: Path) -> dict:
        for f in self._files:
            f.close()
        cmd = [sys.executable, "-m", "pyserini.index.lucene", "--collection", "JsonCollection",
               "--generator", "DefaultLuceneDocumentGenerator", "--input", str(self.collection),
               "--index", str(self.folder / "lucene"), "--threads", str(self.threads), "--pretokenized"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        shutil.rmtree(self.collection, ignore_errors=True)
        log = proc.stdout + proc.stderr
        m = re.search(r"Total ([\d,]+) documents? indexed", log)
        if proc.returncode != 0 or m is None or int(m.group(1).replace(",", "")) != self.n_docs:
            tail = log[-2000:]
            raise IndexBuildError(f"Anserini indexer failed (exit {proc.returncode}):\n{tail}")
        return {"lucene": {"pyserini": _pyserini_version(), "threads": self.threads}}


def _pyserini_version() -> str:
    from importlib.metadata import version

    return version("pyserini")


class LuceneRetriever(IndexRetriever):
    """Anserini's SimpleSearcher with BM25(k1, b) and a WhitespaceAnalyzer, in this process (pyjnius).

    ``workers`` is the number of Java threads of ``batch_search``.
    """

    uses_pool = False
    thread_safe = False  # one JVM searcher driven through pyjnius: the service gives it one search thread

    def __init__(self, path: Path, meta: dict, workers: int = 1):
        super().__init__(path, meta, workers)
        check_available()
        from pyserini.pyclass import autoclass  # starts the JVM with Anserini's jar on the classpath

        analyzer = autoclass("org.apache.lucene.analysis.core.WhitespaceAnalyzer")()
        self._searcher = autoclass("io.anserini.search.SimpleSearcher")(str(self.path / "lucene"), analyzer)
        self._searcher.set_bm25(float(meta["k1"]), float(meta["b"]))
        self._list = autoclass("java.util.ArrayList")

    def rank(self, queries: list[str], k: int) -> list[Ranked]:
        texts = [" ".join(t) for t in self.tokenizer.tokenize_queries(queries)]
        todo = [i for i, t in enumerate(texts) if t]
        results: dict[int, list] = {}
        if len(todo) == 1:
            results[todo[0]] = list(self._searcher.search(texts[todo[0]], k))
        elif todo:
            jq, jid = self._list(), self._list()
            for i in todo:
                jq.add(texts[i])
                jid.add(str(i))
            got = self._searcher.batch_search(jq, jid, k, self.workers)
            for i in todo:
                results[i] = list(got.get(str(i)))
        out = []
        for i in range(len(texts)):
            docs = results.get(i, [])
            rows = np.array([int(d.docid) for d in docs], dtype=np.int64)
            scores = np.array([d.score for d in docs], dtype=np.float64)
            order = np.lexsort((rows, -scores)) if rows.size else rows
            out.append((rows[order], scores[order]))
        return out

    def close(self) -> None:
        self._searcher.close()
        super().close()
