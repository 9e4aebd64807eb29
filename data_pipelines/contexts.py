"""Retrieval join: choose a video's K in-context (image, caption) pairs from its BM25 hits.

VIMI (Fang et al. 2024, Sec. 3.1) retrieves, for every training video, the top-K memory pairs
whose captions best match the video's caption, and prepends them to the prompt. Two guards keep
the model from copying its target (docs/architecture.md, Retrieval): the query's own item (same id) and
exact duplicates of its caption (same normalised text) never enter its context. Hits whose image
is missing or undecodable are passed over, and the next hit takes their place.

Each function here is a small stage that works on plain lists, so it is tested without an index.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter, OrderedDict
from typing import Any, Callable, Sequence

import numpy as np

from data_pipelines.shards import ContextEntry, ImageDataError, to_jpeg

_WORD = re.compile(r"\w+")


def normalize_caption(text: str) -> str:
    """Case, accents' composed forms, punctuation and spacing removed: "A red  circle." == "a red circle"."""
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", text).casefold()))


def candidate_hits(video_id: str, caption: str, hits: Sequence[Any], dropped: Counter) -> list[tuple[int, Any]]:
    """(rank, hit) pairs that may serve as context: not the video's own item, not its caption.

    ``rank`` is the hit's position in the retriever's ranking (kept in the sample's json).
    ``dropped`` counts what was removed, by reason ("self", "duplicate_caption").
    """
    own = normalize_caption(caption)
    out = []
    for rank, hit in enumerate(hits):
        if str(hit.id) == str(video_id):
            dropped["self"] += 1
        elif normalize_caption(hit.caption) == own:
            dropped["duplicate_caption"] += 1
        else:
            out.append((rank, hit))
    return out


def shuffle_ties(cands: list[tuple[int, Any]], rng: np.random.Generator) -> list[tuple[int, Any]]:
    """Shuffle hits within runs of equal score; the order between different scores is kept.

    ShapeWorld's memory (and any real memory) holds many pairs with the same caption, so BM25
    ties are common; breaking them by index order would give every video of a caption the same
    few images. A per-sample seeded generator keeps the choice reproducible.
    """
    out: list[tuple[int, Any]] = []
    i = 0
    while i < len(cands):
        j = i
        while j < len(cands) and cands[j][1].score == cands[i][1].score:
            j += 1
        group = cands[i:j]
        rng.shuffle(group)
        out += group
        i = j
    return out


def pick_contexts(
    cands: list[tuple[int, Any]],
    k: int,
    image_of: Callable[[Any], bytes | None],
    dropped: Counter,
) -> list[ContextEntry]:
    """Walk candidates in order and keep the first ``k`` whose image loads (as JPEG)."""
    chosen: list[ContextEntry] = []
    for rank, hit in cands:
        if len(chosen) == k:
            break
        image = image_of(hit)
        if image is None:
            dropped["missing_image"] += 1
            continue
        chosen.append(ContextEntry(id=str(hit.id), caption=hit.caption, score=float(hit.score), rank=rank, image=image))
    return chosen


class HitImages:
    """Context images by hit, as JPEG bytes, cached (memories repeat images across many videos).

    Works with the in-process index (``retriever.image(hit)``) and with
    `retrieval.RetrieverClient`, whose ``images(hits)`` fetches a batch per request.
    A missing or undecodable image is cached as None.
    """

    def __init__(self, retriever: Any, cache_size: int = 65536):
        self._retriever = retriever
        self._batch = getattr(retriever, "images", None)
        self._cache: OrderedDict[str, bytes | None] = OrderedDict()
        self._cache_size = cache_size

    def prefetch(self, hits: Sequence[Any]) -> None:
        todo = list({_cache_key(h): h for h in hits if _cache_key(h) not in self._cache}.values())
        if not todo:
            return
        raw = self._batch(todo) if self._batch is not None else [self._one(h) for h in todo]
        for hit, data in zip(todo, raw):
            self._put(_cache_key(hit), self._jpeg(data))

    def __call__(self, hit: Any) -> bytes | None:
        key = _cache_key(hit)
        if key not in self._cache:
            self.prefetch([hit])
        self._cache.move_to_end(key)
        return self._cache[key]

    def _one(self, hit: Any) -> bytes | None:
        if hit.image is None:
            return None
        try:
            return self._retriever.image(hit)
        except OSError:  # MissingImageError is a FileNotFoundError too: file deleted since indexing
            return None

    def _jpeg(self, data: bytes | None) -> bytes | None:
        if data is None:
            return None
        try:
            return to_jpeg(data)
        except ImageDataError:  # undecodable bytes count as a missing image
            return None

    def _put(self, key: str, value: bytes | None) -> None:
        self._cache[key] = value
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def _cache_key(hit: Any) -> str:
    return str(hit.id)
