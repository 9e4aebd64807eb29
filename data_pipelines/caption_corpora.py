"""Caption corpora for retrieval tests and benchmarks (captions only, no images).

- ShapeWorld: memory captions ("a photo of a big blue ring on grass", "a photo of Fifi in a
  dark room") and video captions used as queries ("a small red circle moves left on sand"),
  built by the canonical caption functions of ``data_pipelines.shapeworld`` over every
  combination, then sampled. 480 distinct memory captions: heavy ties, as in the real world.
- Zipfian: words ``w{rank}`` drawn from a Zipf(1) law over a vocabulary (200k by default),
  5-20 words per caption; nearly every caption is distinct, so no duplicate collapsing helps.
- Real text: docstrings of the Python standard library (long documents, where Lucene's
  one-byte document lengths matter).
"""
from __future__ import annotations

import itertools

import numpy as np


def _shapeworld_distinct() -> tuple[list[str], list[str]]:
    from data_pipelines.shapeworld import spec
    from data_pipelines.shapeworld.captions import memory_caption, video_caption
    from data_pipelines.shapeworld.render import ClipParams

    memory, videos = [], []
    for scene in spec.SCENES:
        for size, color, shape in itertools.product(spec.SIZES, spec.COLORS, spec.SHAPES):
            memory.append(memory_caption(ClipParams(scene=scene, motion="stays still", cx0=16, cy0=16,
                                                    size=size, color=color, shape=shape)))
            for motion, mo in spec.MOTIONS.items():
                if mo.only_size in (None, size):
                    videos.append(video_caption(ClipParams(scene=scene, motion=motion, cx0=16, cy0=16,
                                                           size=size, color=color, shape=shape)))
        for name in spec.SUBJECTS:
            memory.append(memory_caption(ClipParams(scene=scene, motion="stays still", cx0=16, cy0=16, subject=name)))
            for motion in spec.TRANSLATIONS:
                videos.append(video_caption(ClipParams(scene=scene, motion=motion, cx0=16, cy0=16, subject=name)))
    return memory, videos


def shapeworld_captions(n: int, seed: int = 0, kind: str = "memory") -> list[str]:
    """``n`` ShapeWorld captions sampled uniformly from the distinct ones (``kind``: memory | video)."""
    memory, videos = _shapeworld_distinct()
    pool = np.array(memory if kind == "memory" else videos, dtype=object)
    return pool[np.random.default_rng(seed).integers(0, len(pool), n)].tolist()


def zipf_captions(n: int, seed: int = 0, vocab: int = 200_000, min_words: int = 5, max_words: int = 20) -> list[str]:
    """``n`` captions of Zipf(1)-distributed words ``w{rank}``, ``min_words..max_words`` long."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1)
    cdf = np.cumsum(p / p.sum())
    lengths = rng.integers(min_words, max_words + 1, n)
    words = np.minimum(np.searchsorted(cdf, rng.random(int(lengths.sum()))), vocab - 1)
    names = np.char.add("w", np.arange(vocab).astype(str)).astype(object)
    tokens = names[words]
    ends = np.cumsum(lengths)
    return [" ".join(tokens[e - n:e]) for e, n in zip(ends.tolist(), lengths.tolist())]


# Standard-library modules whose docstrings make a small real-text corpus available offline.
_STDLIB = ("argparse", "ast", "bisect", "calendar", "codecs", "collections", "configparser", "contextlib",
           "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "dis", "email.message", "enum",
           "fnmatch", "fractions", "functools", "glob", "gzip", "hashlib", "heapq", "hmac", "html.parser",
           "http.client", "inspect", "io", "ipaddress", "itertools", "json", "locale", "logging", "mimetypes",
           "numbers", "operator", "os", "pathlib", "pprint", "queue", "random", "re", "sched", "secrets",
           "selectors", "shlex", "shutil", "socket", "statistics", "string", "struct", "subprocess", "tarfile",
           "tempfile", "textwrap", "threading", "timeit", "tokenize", "traceback", "typing", "unittest",
           "urllib.parse", "uuid", "warnings", "weakref", "zipfile")


def stdlib_docstrings() -> tuple[list[str], list[str]]:
    """(ids, docstrings) of the public classes and functions of some standard-library modules:
    real English prose and code words, ~1,500 documents of 1 to ~1,000 words."""
    import importlib
    import inspect
    import warnings

    docs: dict[str, str] = {}
    with warnings.catch_warnings():  # e.g. typing.io's deprecation notice when its doc is read
        warnings.simplefilter("ignore")
        for name in _STDLIB:
            module = importlib.import_module(name)
            doc = inspect.getdoc(module)
            if doc:
                docs[name] = doc
            for attr, obj in sorted(vars(module).items()):
                if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
                    continue
                doc = inspect.getdoc(obj)
                if doc and f"{name}.{attr}" not in docs:
                    docs[f"{name}.{attr}"] = doc
    return list(docs), list(docs.values())
