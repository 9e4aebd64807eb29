"""Training samples from prompt shards, as small generator stages (webdataset's ``stage(src, ...)`` style).

The recipe (``loader.ShardStream`` composes it per dataloader worker)::

    raw_samples(urls)            WebDataset tar streaming: {"__key__", "mp4", "json", "ctx0.jpg", ...}
      -> every_nth(n, i)         sample-level split when there are fewer shards than consumers
      -> shuffle(buffer, rng)    seeded shuffle buffer
      -> decode(...)             json/images/captions + the sampled clip (uint8 T,H,W,3); bad samples
                                 are skipped and counted by reason (docs/architecture.md, Training)
      -> format_tasks(...)       stage 1: retrieved pairs + caption (no instruction);
                                 stage 2: t2v / prediction / subject mixed by weight (VIMI sec. 3.2)
      -> batched(n) -> collate   tensors for the loss

Every random choice about a sample (clip start, task, crop) comes from a generator seeded by
(run seed, epoch, sample key), never from worker or global state: a sample is formatted the same
whichever rank, worker or resume reads it (EDM's one-generator-per-sample idea).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from base import tar
from base.pixels import to_model_video
from base.rng import sample_rng
from base.tasks import TASK_NAMES, TASKS


class DataError(RuntimeError):
    """The data settings cannot produce samples (no shards, nothing decodable, bad split)."""


# ---------------------------------------------------------------------------- shard lists


def shard_urls(specs: Sequence[str]) -> list[str]:
    """``data.shards`` -> the sorted shard list (``base.tar.expand_shards``: files, folders, globs,
    and remote ``pipe:``/``http(s)://`` URLs with brace ranges), or one DataError saying what is wrong."""
    if not specs:
        raise DataError(
            "data.shards is empty: give shard files, folders or globs (python -m data_pipelines.build_shards)"
        )
    try:
        return tar.expand_shards(specs)
    except tar.TarError as e:
        raise DataError(f"data.shards: {e}") from None


def consumer_split(urls: Sequence[str], consumer: int, consumers: int) -> tuple[list[str], int]:
    """Work of consumer ``consumer`` of ``consumers`` (= ranks × dataloader workers).

    Returns (shards to read, sample stride): with at least as many shards as consumers each one
    reads its own shards whole (stride 1); otherwise every consumer reads every shard and keeps
    one sample in ``consumers`` (stride > 1), so two ranks on one tiny shard still see disjoint data.
    """
    if not 0 <= consumer < consumers:
        raise DataError(f"consumer {consumer} out of range for {consumers} consumers")
    if len(urls) >= consumers:
        return list(urls[consumer::consumers]), 1
    return list(urls), consumers


# ---------------------------------------------------------------------------- error policy


@dataclass
class SkipCounter:
    """Samples kept and skipped (by reason) by one stream; merged across workers and ranks."""

    ok: int = 0
    skipped: Counter = field(default_factory=Counter)

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def as_dict(self) -> dict[str, int]:
        return {"ok": self.ok, **{f"skipped/{k}": v for k, v in sorted(self.skipped.items())}}


def error_reason(exc: BaseException) -> str:
    """Short, stable reason name for a skipped sample (manifest-style counting)."""
    kind = getattr(exc, "kind", None)  # video_io.VideoDecodeError: corrupt / truncated / too_short ...
    if kind:
        return f"video_{kind}"
    name = type(exc).__name__
    return {"ShardFormatError": "format", "ImageDataError": "image", "JSONDecodeError": "format",
            "UnicodeDecodeError": "format", "KeyError": "format", "ReadError": "tar",
            "TarError": "tar", "HeaderError": "tar", "FileNotFoundError": "missing_shard",
            "PermissionError": "missing_shard"}.get(name, name)


class CountingHandler:
    """webdataset exception handler: count the error, keep going (or re-raise when asked)."""

    def __init__(self, counter: SkipCounter, reraise: bool = False):
        self.counter, self.reraise = counter, reraise

    def __call__(self, exc: BaseException) -> bool:
        if self.reraise:
            raise exc
        self.counter.skip(error_reason(exc))
        return True


# ---------------------------------------------------------------------------- stages


def raw_samples(urls: Sequence[str], handler: Callable[[BaseException], bool]) -> Iterator[dict]:
    """Shard URLs (local paths, or ``pipe:``/http that webdataset's opener streams) -> raw samples
    ``{"__key__", "__url__", ext: bytes}``, grouped by the one tar layer (``base.tar``). Only bytes
    here: nothing is decoded, so no member (a ``.pyd``, say) can ever be unpickled. A damaged shard
    goes to ``handler`` after the samples before the damage; the stream moves on to the next."""
    from webdataset.tariterators import url_opener

    for src in url_opener(({"url": u} for u in urls), handler=handler):
        try:
            yield from tar.stream_samples(src["stream"], src["url"])
        except tar.TarError as e:
            if not handler(e):
                break
        finally:
            src["stream"].close()


def every_nth(src: Iterable[Any], n: int, offset: int) -> Iterator[Any]:
    """Keep items offset, offset + n, ... (a sample-level split between consumers)."""
    for i, item in enumerate(src):
        if i % n == offset:
            yield item


def shuffle(src: Iterable[Any], buffer: int, rng: np.random.Generator, initial: int | None = None) -> Iterator[Any]:
    """Seeded shuffle buffer: fill to ``initial`` (default ``buffer``), then emit a random held
    item per new one; drain in random order at the end. Same rng + same input = same order."""
    initial = buffer if initial is None else min(initial, buffer)
    held: list[Any] = []
    for item in src:
        held.append(item)
        if len(held) < max(initial, 1):
            continue
        j = int(rng.integers(len(held)))
        held[j], held[-1] = held[-1], held[j]
        yield held.pop()
        initial = buffer
    while held:
        j = int(rng.integers(len(held)))
        held[j], held[-1] = held[-1], held[j]
        yield held.pop()


@dataclass
class Example:
    """A decoded sample: the clip and everything prompts are built from."""

    key: str
    caption: str
    meta: dict                            # the sample's json (id, fps, frames, context, attributes)
    frames: np.ndarray                    # uint8 (T, H, W, 3), the sampled clip
    contexts: list[tuple[str, Any]]       # retrieved (caption, PIL image) pairs, best first
    references: list[Any]                 # subject reference PIL images (may be empty)
    rng: np.random.Generator              # this sample's generator (see module doc)
    pos: tuple[int, int] = (0, 0)         # (epoch, position in the shuffled stream), for resume


def clip_start(meta: dict, frames: int, fps: float | None, rng: np.random.Generator) -> float:
    """Frame sampling: a random start time (s) such that ``frames`` frames at ``fps`` fit in the
    source clip; starts fall on source frames. A source too short starts at 0 (the decoder then
    reports it as ``too_short``)."""
    src_fps = float(meta.get("fps") or 0) or (fps or 8.0)
    src_frames = int(meta.get("frames") or 0)
    if src_frames <= 0:
        return 0.0
    need_s = frames / float(fps or src_fps)
    last = int(np.floor((src_frames / src_fps - need_s) * src_fps + 1e-6))
    return 0.0 if last <= 0 else int(rng.integers(last + 1)) / src_fps


def decode(src: Iterable[dict], *, frames: int, size: tuple[int, int], fps: float | None, seed: int,
           counter: SkipCounter, reraise: bool = False,
           read_clip: Callable[..., np.ndarray] | None = None) -> Iterator[Example]:
    """Raw samples -> Examples: safe decoders only (data_pipelines.shards), the clip sampled at a
    seeded start, resized/cropped to ``size``. Corrupt, truncated or incomplete samples are
    skipped and counted by reason (or re-raised with ``reraise``)."""
    from data_pipelines.shards import decode_mp4, decode_sample

    read_clip = read_clip or decode_mp4  # PyAV, in memory (data_pipelines.video_io.read_video)
    for raw in src:
        epoch, pos = raw.get("__epoch__", 0), raw.get("__pos__", 0)
        key = str(raw.get("__key__", ""))
        try:
            s = decode_sample(raw, decode_video=False)
            rng = sample_rng(seed, epoch, key)
            start = clip_start(s.meta, frames, fps, rng)
            clip = read_clip(s.video, num_frames=frames, fps=fps, size=size, start=start)  # (T, H, W, 3)
            if clip.shape[0] != frames:
                raise ValueError(f"clip has {clip.shape[0]} frames, {frames} asked")
        except Exception as e:  # noqa: BLE001 - the policy is: any bad sample is skipped and counted
            if reraise:
                raise
            counter.skip(error_reason(e))
            continue
        counter.ok += 1
        yield Example(key=key, caption=s.caption, meta=s.meta, frames=clip,
                      contexts=[(c.caption, c.image) for c in s.contexts], references=list(s.references),
                      rng=rng, pos=(epoch, pos))


@dataclass
class TrainExample:
    """One formatted training example."""

    key: str
    task: str                 # "pretrain" or a registered task name (base.tasks)
    prompt: list              # vimi.mllm.prompt.Prompt (list of Segments)
    frames: np.ndarray        # uint8 (T, H, W, 3) target clip
    given_frames: int         # clean leading frames given to the model (tasks given frames), else 0
    pos: tuple[int, int] = (0, 0)


@dataclass
class TaskFormat:
    """How Examples become prompts (the fields of DataConfig that matter here)."""

    stage: str = "pretrain"
    tasks: dict[str, float] = field(default_factory=lambda: {t: 1.0 for t in TASK_NAMES})
    max_contexts: int | None = None
    given_frames: int = 1     # k first frames shown to tasks given frames (the model's max_cond_frames)
    subject_field: str = "subject"
    subject_phrase: str = "A <image>"
    subject_fallback: str = "{caption}, with <image>"
    subject_crop: tuple[float, float] = (0.5, 0.9)


def choose_task(rng: np.random.Generator, tasks: dict[str, float]) -> str:
    names = [t for t in TASK_NAMES if tasks.get(t, 0) > 0]
    w = np.array([tasks[t] for t in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def subject_caption(caption: str, meta: dict, fmt: TaskFormat) -> str:
    """Caption with ``<image>`` where the subject stands: ShapeWorld "Kiki moves up on grass" ->
    "A <image> moves up on grass" (its eval form); without a known name, ``subject_fallback``."""
    name = (meta.get("attributes") or {}).get(fmt.subject_field) or meta.get(fmt.subject_field)
    if isinstance(name, str) and name and name in caption:
        return caption.replace(name, fmt.subject_phrase, 1)
    return fmt.subject_fallback.format(caption=caption)


def frame_crop(frames: np.ndarray, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """A reference for sources without one: a random square crop of a frame other than the first
    (docs/architecture.md, Training), so the model cannot copy the reference into frame 0. (h, w, 3) uint8."""
    T, H, W, _ = frames.shape
    t = int(rng.integers(1, T)) if T > 1 else 0
    side = max(1, int(round(min(H, W) * rng.uniform(lo, hi))))
    y, x = int(rng.integers(H - side + 1)), int(rng.integers(W - side + 1))
    return np.ascontiguousarray(frames[t, y:y + side, x:x + side])


def format_tasks(src: Iterable[Example], fmt: TaskFormat) -> Iterator[TrainExample]:
    """Examples -> prompts: stage 1 = retrieved pairs then caption (no instruction); stage 2 = one
    registered task per sample (``base.tasks``), drawn with the configured weights from the
    sample's own generator; what the task is shown follows its entry. Templates: vimi.mllm.prompt."""
    from vimi.mllm.prompt import pretrain_prompt, task_prompt

    for ex in src:
        ctx = ex.contexts if fmt.max_contexts is None else ex.contexts[: fmt.max_contexts]
        k = 0
        if fmt.stage == "pretrain":
            task, prompt = "pretrain", pretrain_prompt(ex.caption, ctx)
        else:
            task = choose_task(ex.rng, fmt.tasks)
            spec = TASKS[task]
            context = ctx if spec.retrieves else ()
            if spec.images == "first_frames":
                k = min(fmt.given_frames, ex.frames.shape[0] - 1)
                prompt = task_prompt(task, ex.caption, images=list(ex.frames[:k]), context=context)
            elif spec.images == "references":
                if ex.references:
                    ref = ex.references[int(ex.rng.integers(len(ex.references)))]
                else:
                    ref = frame_crop(ex.frames, ex.rng, *fmt.subject_crop)
                prompt = task_prompt(task, subject_caption(ex.caption, ex.meta, fmt), images=[ref], context=context)
            else:
                prompt = task_prompt(task, ex.caption, context=context)
        yield TrainExample(key=ex.key, task=task, prompt=prompt, frames=ex.frames, given_frames=k, pos=ex.pos)


def batched(src: Iterable[Any], n: int) -> Iterator[list[Any]]:
    """Full batches of ``n`` items (a trailing partial batch is dropped: streams are endless)."""
    batch: list[Any] = []
    for item in src:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []


def collate(batch: Sequence[TrainExample]) -> dict[str, Any]:
    """TrainExamples -> the loop's batch dict (video float (B, 3, T, H, W) in [-1, 1])."""
    return {
        "video": to_model_video(np.stack([b.frames for b in batch])),   # (B, 3, T, H, W)
        "prompts": [b.prompt for b in batch],
        "tasks": [b.task for b in batch],
        "given_frames": torch.tensor([b.given_frames for b in batch], dtype=torch.long),  # (B,)
        "keys": [b.key for b in batch],
        "pos": batch[-1].pos,                                             # stream position after it
    }
