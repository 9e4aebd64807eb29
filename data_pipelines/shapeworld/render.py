"""Pixel-exact ShapeWorld rendering (docs/shapeworld.md: Canvas, Shapes, Motions, Named subjects).

A clip is fully described by `ClipParams`; rendering is a pure function of it, vectorised over
frames with numpy broadcasting (no per-pixel Python). Single images (memory items, subject
references) are one-frame clips that stay still.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import spec


class ShapeWorldError(ValueError):
    """Parameters that do not name a ShapeWorld clip (unknown word, bad canvas size, ...)."""


@dataclass(frozen=True)
class ClipParams:
    """Everything that determines a clip's pixels. An object clip sets color/shape/size; a subject clip sets subject."""

    scene: str                   # scene phrase, a key of spec.SCENES
    motion: str                  # motion phrase, a key of spec.MOTIONS
    cx0: float                   # centre x at frame 0, canvas pixels (column j spans [j, j+1))
    cy0: float                   # centre y at frame 0, canvas pixels
    frames: int = 8              # T
    size_px: int = 32            # H = W, a multiple of 32
    color: str | None = None     # object clips: palette name
    shape: str | None = None     # object clips: shape name
    size: str | None = None      # object clips: "small" | "big"
    subject: str | None = None   # subject clips: a key of spec.SUBJECTS, or a made-up name given with `look`
    look: str | None = None      # a made-up subject's look, one of spec.UNNAMED_LOOKS (docs/shapeworld.md)

    def __post_init__(self) -> None:
        def check(value: Any, allowed: Any, what: str) -> None:
            if value not in allowed:
                raise ShapeWorldError(f"unknown {what} {value!r}; expected one of {sorted(allowed)}")

        check(self.scene, spec.SCENES, "scene")
        check(self.motion, spec.MOTIONS, "motion")
        if self.size_px <= 0 or self.size_px % spec.BASE_SIZE:
            raise ShapeWorldError(f"size_px must be a positive multiple of {spec.BASE_SIZE}, got {self.size_px}")
        if self.frames < 1:
            raise ShapeWorldError(f"frames must be >= 1, got {self.frames}")
        if self.subject is not None:
            if self.look is None:
                check(self.subject, spec.SUBJECTS, "subject")
            elif self.subject in spec.SUBJECTS or spec.subject_look(self.look) is None:
                raise ShapeWorldError(f"a made-up subject needs a new name and an unnamed look 'shape/pattern/"
                                      f"color_a/color_b' (spec.UNNAMED_LOOKS), not {self.subject!r} / {self.look!r}")
            if self.motion not in spec.TRANSLATIONS:
                raise ShapeWorldError(f"subjects only translate or stay still, not {self.motion!r}")
        else:
            check(self.color, spec.COLORS, "color")
            check(self.shape, spec.SHAPES, "shape")
            check(self.size, spec.SIZES, "size")
            only = spec.MOTIONS[self.motion].only_size
            if only is not None and self.size != only:
                raise ShapeWorldError(f"{self.motion!r} only starts {only}, not {self.size}")
        final_r = self.radius0 + spec.MOTIONS[self.motion].dr * (self.frames - 1)
        if final_r <= 0:
            raise ShapeWorldError(f"{self.motion!r} over {self.frames} frames shrinks the radius to {final_r} <= 0")

    @property
    def kind(self) -> str:
        return "object" if self.subject is None else "subject"

    @property
    def scale(self) -> float:
        return self.size_px / spec.BASE_SIZE

    @property
    def radius0(self) -> float:
        """Radius at frame 0 at the 32-pixel scale."""
        return spec.SUBJECT_RADIUS if self.subject is not None else spec.SIZES[self.size]

    @classmethod
    def from_record(cls, record: dict) -> "ClipParams":
        """Build from a table/eval/golden row, ignoring fields that are not parameters (id, caption, ...)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names and v is not None})

    def to_record(self) -> dict:
        return dataclasses.asdict(self)


def trajectory(p: ClipParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre and radius per frame in canvas pixels: (cx, cy, r), each (T,) float64."""
    m, s = spec.MOTIONS[p.motion], p.scale
    t = np.arange(p.frames, dtype=np.float64)
    cx = p.cx0 + m.dx * s * t
    cy = p.cy0 + m.dy * s * t
    r = (p.radius0 + m.dr * t) * s
    return cx, cy, r


def pixel_centres(size_px: int) -> np.ndarray:
    """Pixel centre coordinates along one axis: j + 0.5, (size_px,) float64."""
    return np.arange(size_px, dtype=np.float64) + 0.5


def shape_mask(shape: str, x: np.ndarray, y: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Hard mask of `shape` (docs/shapeworld.md, Shapes); all arguments broadcast together.

    The formulas are written literally as the spec states them (e.g. the triangle's `top`/`base`)
    so that floating-point rounding matches any independent implementation of the page.
    """
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "cross":
        adx, ady = np.abs(dx), np.abs(dy)
        return ((adx <= r / 3) & (ady <= r)) | ((ady <= r / 3) & (adx <= r))
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return ((0.55 * r) ** 2 <= d2) & (d2 <= r * r)
    if shape == "triangle":
        top = cy - r
        base = cy + 0.8 * r
        return (top <= y) & (y <= base) & (np.abs(dx) <= r * (y - top) / (base - top))
    raise ShapeWorldError(f"unknown shape {shape!r}; expected one of {spec.SHAPES}")


def pattern_mask(pattern: str, dx: np.ndarray, dy: np.ndarray, scale: float) -> np.ndarray:
    """Where a subject shows color_a, in the subject's own coordinates u, v (docs/shapeworld.md, Named subjects)."""
    u = np.floor(dx / scale + 16).astype(np.int64)
    v = np.floor(dy / scale + 16).astype(np.int64)
    if pattern == "stripes-h":
        return (v // 2) % 2 == 0
    if pattern == "stripes-v":
        return (u // 2) % 2 == 0
    if pattern == "checker":
        return (u // 2 + v // 2) % 2 == 0
    if pattern == "dots":
        return ~((u % 4 < 2) & (v % 4 < 2))
    raise ShapeWorldError(f"unknown pattern {pattern!r}; expected one of {spec.PATTERNS}")


def render_clip(p: ClipParams) -> np.ndarray:
    """Render a clip: uint8 (T, H, W, 3)."""
    n = p.size_px
    cx, cy, r = (a[:, None, None] for a in trajectory(p))  # each (T, 1, 1)
    x = pixel_centres(n)[None, None, :]                    # (1, 1, W)
    y = pixel_centres(n)[None, :, None]                    # (1, H, 1)
    video = np.empty((p.frames, n, n, 3), dtype=np.uint8)
    video[:] = spec.SCENES[p.scene]
    if p.subject is None:
        mask = shape_mask(p.shape, x, y, cx, cy, r)        # (T, H, W)
        video[mask] = spec.COLORS[p.color]
        return video
    subj = spec.subject_look(p.look or p.subject)
    mask = shape_mask(subj.shape, x, y, cx, cy, r)         # (T, H, W)
    on_a = pattern_mask(subj.pattern, x - cx, y - cy, p.scale)  # (T, H, W)
    video[mask & on_a] = spec.COLORS[subj.color_a]
    video[mask & ~on_a] = spec.COLORS[subj.color_b]
    return video


def render_image(p: ClipParams) -> np.ndarray:
    """Render frame 0 of `p` as a still image: uint8 (H, W, 3)."""
    return render_clip(dataclasses.replace(p, frames=1, motion="stays still"))[0]
