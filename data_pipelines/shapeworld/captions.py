"""Canonical ShapeWorld captions (docs/shapeworld.md, Captions). Evaluation uses exactly these forms."""
from __future__ import annotations

from base.tasks import IMAGE_TOKEN

from .render import ClipParams


def video_caption(p: ClipParams) -> str:
    """'a small red circle moves left on sand' or 'Kiki moves up on grass'."""
    if p.subject is not None:
        return f"{p.subject} {p.motion} {p.scene}"
    return f"a {p.size} {p.color} {p.shape} {p.motion} {p.scene}"


def memory_caption(p: ClipParams) -> str:
    """'a photo of a big blue ring on grass' or 'a photo of Fifi in a dark room' (never a subject's look)."""
    if p.subject is not None:
        return f"a photo of {p.subject} {p.scene}"
    return f"a photo of a {p.size} {p.color} {p.shape} {p.scene}"


def subject_prompt(p: ClipParams) -> str:
    """Subject task prompt, the name replaced by an image placeholder: 'A <image> moves left on sand'."""
    return f"A {IMAGE_TOKEN} {p.motion} {p.scene}"
