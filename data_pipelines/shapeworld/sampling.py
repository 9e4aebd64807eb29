"""Random ShapeWorld parameters: which clip, where it starts (docs/shapeworld.md, Motions and Splits).

Every sampler takes its own `numpy.random.Generator`; the dataset writer derives one per item from
(seed, stream, index), so an item never depends on how many workers render it.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np

from . import spec
from .render import ClipParams, ShapeWorldError

MARGIN = 1.0  # the trajectory keeps the shape's radius this far (32-px scale) inside the canvas

STREAMS = (
    "videos",
    "memory",
    "references",
    "t2v-seen",
    "t2v-novel-composition",
    "t2v-novel-subject",
    "prediction",
    "subject",
    "looks",  # appended: the streams before it keep their indices, so older worlds are unchanged
)


def item_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """The generator of one item: a function of (seed, stream, index) only."""
    return np.random.default_rng([seed, STREAMS.index(stream), index])


def start_range(
    motion: str, radius0: float, frames: int, size_px: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Allowed frame-0 centres ((x_lo, x_hi), (y_lo, y_hi)) in canvas pixels for a whole trajectory
    that keeps a disc of the current radius at least MARGIN inside the canvas. Raises if none."""
    s = size_px / spec.BASE_SIZE
    m = spec.MOTIONS[motion]
    t = np.arange(frames, dtype=np.float64)
    r = (radius0 + m.dr * t) * s                                  # (T,)
    ranges = []
    for step in (m.dx, m.dy):
        shift = step * s * t                                      # (T,)
        lo = float(np.max(MARGIN * s + r - shift))
        hi = float(np.min(size_px - MARGIN * s - r - shift))
        if lo > hi:
            raise ShapeWorldError(f"{motion!r} at radius {radius0} does not fit {frames} frames of {size_px} px")
        ranges.append((lo, hi))
    return ranges[0], ranges[1]


def feasible(motion: str, radius0: float, frames: int, size_px: int) -> bool:
    try:
        start_range(motion, radius0, frames, size_px)
        return radius0 + spec.MOTIONS[motion].dr * (frames - 1) > 0
    except ShapeWorldError:
        return False


def _uniform_3dp(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Uniform in [lo, hi], rounded to 1/1000 px (readable tables) and kept inside the range."""
    a, b = math.ceil(lo * 1000), math.floor(hi * 1000)
    if a > b:  # a range narrower than the rounding step
        return lo
    return int(rng.integers(a, b + 1)) / 1000


def _start(rng: np.random.Generator, motion: str, radius0: float, frames: int, size_px: int) -> tuple[float, float]:
    (xlo, xhi), (ylo, yhi) = start_range(motion, radius0, frames, size_px)
    return _uniform_3dp(rng, xlo, xhi), _uniform_3dp(rng, ylo, yhi)


@functools.lru_cache(maxsize=None)
def object_choices(frames: int, size_px: int) -> tuple[tuple[str, str], ...]:
    """(motion, size) pairs an object clip can take at this T and canvas."""
    pairs = tuple(
        (motion, size)
        for motion, m in spec.MOTIONS.items()
        for size in spec.SIZES
        if (m.only_size in (None, size)) and feasible(motion, spec.SIZES[size], frames, size_px)
    )
    if not pairs:
        raise ShapeWorldError(f"no object motion fits {frames} frames of {size_px} px")
    return pairs


@functools.lru_cache(maxsize=None)
def subject_motions(frames: int, size_px: int) -> tuple[str, ...]:
    return tuple(m for m in spec.TRANSLATIONS if feasible(m, spec.SUBJECT_RADIUS, frames, size_px))


def sample_object_clip(
    rng: np.random.Generator, compositions: Sequence[tuple[str, str]], frames: int, size_px: int
) -> ClipParams:
    """An object clip: (colour, shape) uniform over `compositions`; motion uniform, then a size it allows."""
    color, shape = compositions[rng.integers(len(compositions))]
    pairs = object_choices(frames, size_px)
    motions = sorted({m for m, _ in pairs}, key=list(spec.MOTIONS).index)
    motion = motions[rng.integers(len(motions))]
    sizes = [s for m, s in pairs if m == motion]
    size = sizes[rng.integers(len(sizes))]
    cx0, cy0 = _start(rng, motion, spec.SIZES[size], frames, size_px)
    scene = list(spec.SCENES)[rng.integers(len(spec.SCENES))]
    return ClipParams(scene, motion, cx0, cy0, frames, size_px, color=color, shape=shape, size=size)


def sample_subject_clip(
    rng: np.random.Generator, names: Sequence[str], frames: int, size_px: int, look: str | None = None
) -> ClipParams:
    """A subject clip: name uniform over `names`, a translation (or staying still) that fits; `look` for a
    made-up subject."""
    name = names[rng.integers(len(names))]
    motions = subject_motions(frames, size_px)
    if not motions:
        raise ShapeWorldError(f"no subject motion fits {frames} frames of {size_px} px")
    motion = motions[rng.integers(len(motions))]
    cx0, cy0 = _start(rng, motion, spec.SUBJECT_RADIUS, frames, size_px)
    scene = list(spec.SCENES)[rng.integers(len(spec.SCENES))]
    return ClipParams(scene, motion, cx0, cy0, frames, size_px, subject=name, look=look)


def sample_object_image(rng: np.random.Generator, color: str, shape: str, size_px: int) -> ClipParams:
    """A still object of a given composition at a random size, position and scene."""
    size = list(spec.SIZES)[rng.integers(len(spec.SIZES))]
    cx0, cy0 = _start(rng, "stays still", spec.SIZES[size], 1, size_px)
    scene = list(spec.SCENES)[rng.integers(len(spec.SCENES))]
    return ClipParams(scene, "stays still", cx0, cy0, 1, size_px, color=color, shape=shape, size=size)


def sample_subject_image(rng: np.random.Generator, name: str, size_px: int, look: str | None = None) -> ClipParams:
    """A still subject at a random position and scene (memory items and subject references)."""
    cx0, cy0 = _start(rng, "stays still", spec.SUBJECT_RADIUS, 1, size_px)
    scene = list(spec.SCENES)[rng.integers(len(spec.SCENES))]
    return ClipParams(scene, "stays still", cx0, cy0, 1, size_px, subject=name, look=look)
