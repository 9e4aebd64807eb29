"""Per-sample random generators (EDM's one generator per seed, applied to data).

A sample's random choices (which tied hits become its contexts, where its clip starts, which task
it trains) come from a generator seeded by the run seed and the sample's own key, never from a
shared stream: they do not change with batch size, worker count, rank or the order samples
arrive in. Keys are hashed with crc32, stable across processes (``hash()`` is salted per process).
"""
from __future__ import annotations

import zlib

import numpy as np


def sample_rng(seed: int, *key: int | str) -> np.random.Generator:
    """The generator of the sample identified by ``key`` parts (e.g. epoch, sample key) in run ``seed``."""
    entropy = [int(seed)] + [zlib.crc32(k.encode("utf-8")) if isinstance(k, str) else int(k) for k in key]
    return np.random.default_rng(entropy)
