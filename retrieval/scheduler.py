"""Fair work scheduling for the retrieval service: small slices, round robin across requests.

A search request's queries are cut into slices of bounded cost (``slices``); a fixed pool of
worker threads takes the next slice of the *next* request in turn, not the rest of the current
one. A client looping the largest legal request (1,024 queries of 2,048 characters, k = 100)
therefore holds a worker for one slice at a time, and a one-query search that arrives behind it
waits for at most one slice per worker instead of the whole request (docs/architecture.md, Retrieval:
a single global lock let such a client raise everyone's p99 tenfold).

Bounded everywhere: ``workers`` threads, at most ``max_pending`` requests queued (more get a
503 from the service), and a per-request deadline after which the request's remaining slices
are dropped (a 503 too). The index must tolerate concurrent searches (``IndexRetriever`` backends
are read-only apart from per-thread scratch); one that does not is given ``workers=1``.
"""
from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any, Callable, Sequence


class Busy(Exception):
    """The queue is full or the request ran past its deadline (the service answers 503)."""


class _Job:
    __slots__ = ("work", "results", "next", "done", "error", "cancelled", "loop", "future")

    def __init__(self, work: Sequence[Callable[[], Any]], loop: asyncio.AbstractEventLoop, future: asyncio.Future):
        self.work, self.results = list(work), [None] * len(work)
        self.next = self.done = 0
        self.error: BaseException | None = None
        self.cancelled = False
        self.loop, self.future = loop, future

    def finish(self) -> None:
        def settle() -> None:
            if not self.future.done():
                if self.error is not None:
                    self.future.set_exception(self.error)
                else:
                    self.future.set_result(self.results)

        self.loop.call_soon_threadsafe(settle)


class FairScheduler:
    """``await scheduler.run([slice_fn, ...], timeout)`` -> the slices' results, in order."""

    def __init__(self, workers: int = 2, max_pending: int = 256):
        self.max_pending = max_pending
        self._jobs: deque[_Job] = deque()   # jobs with slices not yet started, in turn order
        self._active = 0                    # jobs submitted and not finished
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._worker, name=f"search-{i}", daemon=True)
                         for i in range(max(1, workers))]
        for t in self._threads:
            t.start()

    async def run(self, work: Sequence[Callable[[], Any]], timeout: float) -> list[Any]:
        loop = asyncio.get_running_loop()
        job = _Job(work, loop, loop.create_future())
        if not job.work:
            return []
        with self._cond:
            if self._active >= self.max_pending:
                raise Busy(f"{self._active} requests already queued; retry later")
            self._active += 1
            self._jobs.append(job)
            self._cond.notify()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except asyncio.TimeoutError:
            raise Busy(f"request not finished within {timeout:g} s; send fewer or shorter queries") from None
        finally:
            job.cancelled = True   # a finished job is unaffected; a timed-out or abandoned one stops here

    def _take(self) -> tuple[_Job, int] | None:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            job = self._jobs.popleft()
            i = job.next
            job.next += 1
            if job.next < len(job.work) and not job.cancelled:
                self._jobs.append(job)   # its next slice waits for every other request's turn
            return job, i

    def _worker(self) -> None:
        while (taken := self._take()) is not None:
            job, i = taken
            if not job.cancelled and job.error is None:
                try:
                    job.results[i] = job.work[i]()
                except BaseException as e:  # noqa: BLE001 - handed to the awaiting request
                    job.error = e
            with self._cond:
                job.done += 1
                last = job.done == job.next and (job.next == len(job.work) or job.cancelled or job.error is not None)
                if job.error is not None or job.cancelled:
                    try:
                        self._jobs.remove(job)   # drop its unstarted slices
                    except ValueError:
                        pass
                if last:
                    self._active -= 1
            if last and not job.cancelled:  # a cancelled job's request is gone: nobody to tell
                job.finish()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def slices(items: Sequence[Any], cost: Callable[[Any], int], budget: int) -> list[list[int]]:
    """Consecutive index groups of ``items`` whose summed cost stays within ``budget`` (each at least one item)."""
    out: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, item in enumerate(items):
        c = cost(item)
        if current and total + c > budget:
            out.append(current)
            current, total = [], 0
        current.append(i)
        total += c
    if current:
        out.append(current)
    return out
