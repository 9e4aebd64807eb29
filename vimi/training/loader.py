"""The data stream of one rank: shards split by rank and dataloader worker, resumable exactly.

Why resume is exact: every random choice is seeded (shard order by (seed, epoch), shuffle buffer
by (seed, epoch, consumer), sample formatting by (seed, epoch, key)); each batch carries the
position of its worker's stream; the loop records the last position per worker and how many
batches it took. PyTorch's DataLoader takes batches from workers in strict round robin, so a
resumed loader rotates worker ids by ``batches % workers`` and each worker replays its stream
(bytes only, nothing decoded) up to its recorded position: the next batch is the one an
uninterrupted run would have produced.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vimi.training.data import (
    CountingHandler,
    DataError,
    SkipCounter,
    TaskFormat,
    batched,
    collate,
    consumer_split,
    decode,
    every_nth,
    format_tasks,
    raw_samples,
    shuffle,
)


@dataclass
class StreamState:
    """Where a rank's stream stands (saved per rank in every checkpoint)."""

    world_size: int = 1
    num_workers: int = 0
    batches: int = 0                                           # batches taken by the loop
    workers: dict[int, list[int]] = field(default_factory=dict)  # logical worker -> [epoch, position]
    counts: dict[str, int] = field(default_factory=dict)       # ok / skipped/<reason> before this session

    def to_dict(self) -> dict:
        return {"world_size": self.world_size, "num_workers": self.num_workers, "batches": self.batches,
                "workers": {str(k): list(v) for k, v in self.workers.items()}, "counts": dict(self.counts)}

    @classmethod
    def from_dict(cls, d: dict) -> "StreamState":
        return cls(world_size=int(d["world_size"]), num_workers=int(d["num_workers"]), batches=int(d["batches"]),
                   workers={int(k): [int(v[0]), int(v[1])] for k, v in d["workers"].items()},
                   counts={k: int(v) for k, v in d.get("counts", {}).items()})


@dataclass
class VideoSpec:
    frames: int                 # T of a training clip
    size: tuple[int, int]       # (H, W)
    fps: float | None           # clip frame rate (None = the source's)


class ShardStream(IterableDataset):
    """Endless batches (dicts from ``data.collate``) for one rank, epoch after epoch."""

    def __init__(self, urls: list[str], fmt: TaskFormat, video: VideoSpec, *, batch_size: int, shuffle_buffer: int,
                 seed: int, rank: int, world_size: int, num_workers: int, reraise: bool = False,
                 resume: StreamState | None = None):
        super().__init__()
        self.urls, self.fmt, self.video = list(urls), fmt, video
        self.batch_size, self.buffer, self.seed = batch_size, shuffle_buffer, seed
        self.rank, self.world_size, self.num_workers, self.reraise = rank, world_size, num_workers, reraise
        self.resume = resume or StreamState(world_size=world_size, num_workers=num_workers)
        if (self.resume.world_size, self.resume.num_workers) != (world_size, num_workers):
            raise DataError(
                f"the data position was saved with world_size={self.resume.world_size}, "
                f"data.workers={self.resume.num_workers}; this run has {world_size}, {num_workers}: "
                "exact resume needs the same split (set them back, or start a new run with --set run.resume=never)")

    def _raw(self, logical: int, workers: int, counter: SkipCounter) -> Iterator[dict]:
        consumer, consumers = self.rank * workers + logical, self.world_size * workers
        epoch, skip = self.resume.workers.get(logical, [0, 0])
        handler = CountingHandler(counter, self.reraise)
        while True:
            order = list(self.urls)
            np.random.default_rng([self.seed, epoch]).shuffle(order)  # same order on every consumer
            urls, stride = consumer_split(order, consumer, consumers)
            src = raw_samples(urls, handler)
            if stride > 1:
                src = every_nth(src, stride, consumer)
            src = shuffle(src, self.buffer, np.random.default_rng([self.seed, epoch, consumer, 1]))
            seen, ok_before = 0, counter.ok
            for pos, raw in enumerate(src, 1):
                seen = pos
                if pos <= skip:
                    continue  # replaying up to the resume position: bytes only, no decoding
                raw["__epoch__"], raw["__pos__"] = epoch, pos
                yield raw
            if seen == 0 and counter.skipped:  # the shards themselves are unreadable: say so, and which
                shown = ", ".join(urls[:3]) + (" ..." if len(urls) > 3 else "")
                raise DataError(f"rank {self.rank} worker {logical}: none of {len(urls)} shard(s) yielded a sample "
                                f"({shown}); errors: {dict(counter.skipped)}")
            if seen == 0:
                raise DataError(f"rank {self.rank} worker {logical}: no samples in {len(urls)} shard(s) "
                                f"(fewer samples than ranks x data.workers = {consumers}?)")
            # Only an epoch decoded from its start proves the data undecodable: a resumed epoch
            # (skip > 0) decodes just its tail, which may hold only bad samples by chance. Moving on
            # is safe: the next epoch starts at 0, so a truly undecodable dataset still errors here.
            if skip == 0 and counter.ok == ok_before:
                raise DataError(f"rank {self.rank} worker {logical}: a whole epoch of {seen} samples had nothing "
                                f"decodable; skipped: {dict(counter.skipped)}")
            epoch, skip = epoch + 1, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers = info.num_workers if info is not None else 1
        logical = ((info.id if info is not None else 0) + self.resume.batches) % workers
        counter = SkipCounter()
        v = self.video
        src = decode(self._raw(logical, workers, counter), frames=v.frames, size=v.size, fps=v.fps, seed=self.seed,
                     counter=counter, reraise=self.reraise)
        for batch in batched(format_tasks(src, self.fmt), self.batch_size):
            out = collate(batch)
            out["worker"], out["counts"] = logical, counter.as_dict()
            yield out


def _identity(x: Any) -> Any:
    return x


def _worker_init(_: int) -> None:
    # A launcher stops a run by sending SIGTERM to the whole process tree; the workers must keep
    # feeding the main process while it finishes its step and checkpoints (it then shuts them down).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class DataFeed:
    """The loop's side: an iterator over a rank's batches that keeps the resume state."""

    def __init__(self, dataset: ShardStream, prefetch: int = 2):
        self.dataset = dataset
        self.state = StreamState.from_dict(dataset.resume.to_dict())
        self._latest_counts: dict[int, dict[str, int]] = {}
        w = dataset.num_workers
        self.loader = DataLoader(dataset, batch_size=None, num_workers=w, collate_fn=_identity,
                                 prefetch_factor=prefetch if w > 0 else None, persistent_workers=False,
                                 worker_init_fn=_worker_init if w > 0 else None)
        self._it: Iterator | None = None

    def __iter__(self) -> "DataFeed":
        return self

    def __next__(self) -> dict[str, Any]:
        if self._it is None:
            self._it = iter(self.loader)
        batch = next(self._it)
        self.state.batches += 1
        self.state.workers[int(batch["worker"])] = [int(batch["pos"][0]), int(batch["pos"][1])]
        self._latest_counts[int(batch["worker"])] = batch["counts"]
        return batch

    def counts(self) -> dict[str, int]:
        """ok / skipped/<reason> over the whole run (earlier sessions included)."""
        total = dict(self.dataset.resume.counts)
        for c in self._latest_counts.values():
            for k, v in c.items():
                total[k] = total.get(k, 0) + v
        return total

    def state_dict(self) -> dict:
        d = self.state.to_dict()
        d["counts"] = self.counts()
        return d

    def close(self) -> None:
        self._it = None  # DataLoader workers exit when their iterator is collected
