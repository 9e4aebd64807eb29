"""Batch search over several processes (``open_index(path, workers=n)``).

The in-RAM backend is numpy code that holds the GIL between calls, so threads barely help;
processes do. Worker processes are forked from the process that opened the index, right when
it is opened: they inherit the open index (its arrays are memory-mapped, so the pages are
shared, not copied) and only ever run the numpy ranking code, never Arrow or Java. Each ranks a
slice of a batch; the parent turns rows into hits. Queries and (rows, scores) arrays travel
between our own processes through multiprocessing's pipes.
"""
from __future__ import annotations

import multiprocessing as mp
import weakref
from concurrent.futures import ProcessPoolExecutor

_INDEX = None  # the worker process's index (inherited from the parent at fork)


def _init(index) -> None:
    global _INDEX
    _INDEX = index


def _rank(queries: list[str], k: int):
    return _INDEX.rank(queries, k)


def _ping() -> bool:
    return _INDEX is not None


class RankPool:
    """``workers`` forked processes holding the index; ``rank`` splits a batch between them."""

    def __init__(self, index, workers: int):
        self.workers = workers
        # fork: the initializer's argument (the open index) is inherited, not pickled
        self._ex = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_init,
                                       initargs=(index,))
        weakref.finalize(self, self._ex.shutdown, wait=False, cancel_futures=True)
        for f in [self._ex.submit(_ping) for _ in range(workers)]:  # fork them all now
            f.result()

    def rank(self, queries: list[str], k: int) -> list:
        n = -(-len(queries) // (4 * self.workers))  # a few slices per worker even out the load
        slices = [queries[i:i + n] for i in range(0, len(queries), n)]
        return [r for part in self._ex.map(_rank, slices, [k] * len(slices)) for r in part]

    def close(self) -> None:
        self._ex.shutdown(wait=True, cancel_futures=True)
