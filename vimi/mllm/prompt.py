"""Multimodal prompts: VIMI's instruction templates put together (the instructions: ``base.tasks``).

A prompt is a list of :class:`Segment` s, each text or an image, tagged with the *role* it plays so
that truncation (``vimi.mllm.encoder``) can drop retrieved pairs before it touches the caption or
the task images. Templates follow VIMI's figure 2 (Fang et al., EMNLP 2024):

- stage 1, retrieval-augmented pretraining: the K retrieved (caption_i, image_i) pairs, then the
  caption; no instruction;
- stage 2, every task opens with its instruction, then by the task's ``layout``:
  ``context_then_caption`` (t2v): the K pairs, then the caption;
  ``caption_then_images`` (prediction): the caption, then the given frame(s);
  ``images_in_caption`` (subject): the caption with each ``<image>`` replaced by its reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
from PIL import Image

from base.tasks import IMAGE_TOKEN, TaskError, get_task

# task_image: a picture the task gives after its caption (prediction's frames); caption_image: a picture standing
# inside the caption for a word (a subject's reference in "A <image> moves left"), read as part of the caption.
Role = Literal["instruction", "context_text", "context_image", "caption", "caption_image", "task_image"]
ROLES: tuple[str, ...] = ("instruction", "context_text", "context_image", "caption", "caption_image", "task_image")


class PromptError(TaskError):
    """A prompt cannot be built: unknown task, bad image, or images that do not match placeholders."""


@dataclass(frozen=True)
class Segment:
    """One piece of a prompt: text (``text`` set) or an image (``image`` set), with its role."""

    role: str                        # one of ROLES
    text: str | None = None          # text segments only
    image: Image.Image | None = None  # image segments only, RGB
    pair: int | None = None          # context segments: retrieval rank of the pair (0 = best)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise PromptError(f"unknown segment role {self.role!r}; expected one of {ROLES}")
        if (self.text is None) == (self.image is None):
            raise PromptError(f"a {self.role} segment holds exactly one of text or image")
        if self.role.endswith("image") and self.image is None:
            raise PromptError(f"a {self.role} segment must hold an image")
        if self.role in ("context_text", "context_image") and self.pair is None:
            raise PromptError(f"a {self.role} segment needs its pair rank")

    @property
    def is_image(self) -> bool:
        return self.image is not None


Prompt = list[Segment]


def as_image(img: Any, what: str = "image") -> Image.Image:
    """uint8 (H, W, 3) array or PIL image -> RGB PIL image; anything else is a PromptError."""
    if isinstance(img, Image.Image):
        return img.convert("RGB") if img.mode != "RGB" else img
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise PromptError(f"{what}: expected a uint8 (H, W, 3) array, got {img.dtype} {img.shape}")
        return Image.fromarray(img, mode="RGB")
    raise PromptError(f"{what}: expected a uint8 (H, W, 3) numpy array or a PIL image, got {type(img).__name__}")


def _context_segments(context: Sequence[tuple[str, Any]]) -> list[Segment]:
    """Retrieved pairs in rank order, each caption_i then <image_i>; a pair without image keeps its text."""
    out: list[Segment] = []
    for rank, item in enumerate(context):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise PromptError(f"context[{rank}]: expected a (caption, image) pair, got {item!r}")
        caption, image = item
        out.append(Segment("context_text", text=str(caption), pair=rank))
        if image is not None:
            out.append(Segment("context_image", image=as_image(image, f"context[{rank}] image"), pair=rank))
    return out


def _interleave(caption: str, images: Sequence[Any]) -> list[Segment]:
    """Split the caption at each <image> placeholder and put the matching image there (the task's
    ``check`` has matched placeholders to images)."""
    parts = caption.split(IMAGE_TOKEN)
    out: list[Segment] = []
    for i, part in enumerate(parts):
        if part.strip():
            out.append(Segment("caption", text=part.strip()))
        if i < len(images):
            out.append(Segment("caption_image", image=as_image(images[i], f"images[{i}]")))
    return out


def _check_caption(caption: Any) -> str:
    if not isinstance(caption, str) or not caption.strip():
        raise PromptError(f"caption must be a non-empty string, got {caption!r}")
    return caption.strip()


def pretrain_prompt(caption: str, context: Sequence[tuple[str, Any]] = ()) -> Prompt:
    """Stage-1 prompt: the retrieved pairs placed before the caption, no instruction (VIMI sec. 3.1)."""
    caption = _check_caption(caption)
    if IMAGE_TOKEN in caption:
        raise PromptError(f"pretraining captions take no {IMAGE_TOKEN} placeholder: {caption!r}")
    return _context_segments(context) + [Segment("caption", text=caption)]


def task_prompt(task: str, caption: str, images: Sequence[Any] = (), context: Sequence[tuple[str, Any]] = ()) -> Prompt:
    """Stage-2 multimodal instruction prompt for a registered task (``base.tasks``; VIMI sec. 3.2, fig. 2).

    ``images``: the task's images (the first frame(s) for prediction, one reference image per
    ``<image>`` for subject, none for t2v). ``context``: retrieved (caption, image) pairs, best
    first, for tasks that retrieve.
    """
    spec = get_task(task, PromptError)
    caption = _check_caption(caption)
    images = list(images)
    if context and not spec.retrieves:
        raise PromptError(f"retrieved context is part of the t2v instruction only, not {task}")
    spec.check(caption, len(images), PromptError)
    head = [Segment("instruction", text=spec.instruction)]
    if spec.layout == "context_then_caption":
        return head + _context_segments(context) + [Segment("caption", text=caption)]
    if spec.layout == "caption_then_images":
        frames = [Segment("task_image", image=as_image(im, f"frames[{i}]")) for i, im in enumerate(images)]
        return head + [Segment("caption", text=caption)] + frames
    return head + _interleave(caption, images)


def render_text(prompt: Prompt) -> str:
    """Human-readable form of a prompt (images shown as <image>), for logs and debugging."""
    return " ".join(IMAGE_TOKEN if s.is_image else str(s.text) for s in prompt)
