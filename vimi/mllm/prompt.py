"""Multimodal prompts: the one place where VIMI's instruction templates live.

A prompt is a list of :class:`Segment` s, each text or an image, tagged with the *role* it plays so
that truncation (``vimi.mllm.encoder``) can drop retrieved pairs before it touches the caption or
the task images. Templates follow VIMI's figure 2 (Fang et al., EMNLP 2024):

- stage 1, retrieval-augmented pretraining: the K retrieved (caption_i, image_i) pairs, then the
  caption; no instruction;
- t2v: "Generate a video with the retrieved text-image pairs." + K pairs + caption;
- prediction: "Generate a video with the text and first frame." + caption + <image> (the frame(s));
- subject: "Generate a video with the text and image." + caption with <image> where the subject
  stands (the caption holds one placeholder per reference image, several allowed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
from PIL import Image

IMAGE_TOKEN = "<image>"  # placeholder in user captions; LLaVA's image token has the same spelling

Role = Literal["instruction", "context_text", "context_image", "caption", "task_image"]
ROLES: tuple[str, ...] = ("instruction", "context_text", "context_image", "caption", "task_image")
TASKS: tuple[str, ...] = ("t2v", "prediction", "subject")

# VIMI, figure 2: the instruction that opens each stage-2 task prompt.
INSTRUCTIONS: dict[str, str] = {
    "t2v": "Generate a video with the retrieved text-image pairs.",
    "prediction": "Generate a video with the text and first frame.",
    "subject": "Generate a video with the text and image.",
}


class PromptError(ValueError):
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
    """Split the caption at each <image> placeholder and put the matching reference image there."""
    parts = caption.split(IMAGE_TOKEN)
    if len(parts) - 1 != len(images):
        raise PromptError(
            f"caption has {len(parts) - 1} {IMAGE_TOKEN} placeholder(s) "
            f"but {len(images)} image(s) were given: {caption!r}"
        )
    out: list[Segment] = []
    for i, part in enumerate(parts):
        if part.strip():
            out.append(Segment("caption", text=part.strip()))
        if i < len(images):
            out.append(Segment("task_image", image=as_image(images[i], f"images[{i}]")))
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
    """Stage-2 multimodal instruction prompt for ``task`` in TASKS (VIMI sec. 3.2, figure 2).

    ``images``: the first frame(s) for prediction, one reference image per ``<image>`` for subject,
    none for t2v. ``context``: retrieved (caption, image) pairs, best first; t2v only.
    """
    if task not in TASKS:
        raise PromptError(f"unknown task {task!r}; expected one of {TASKS}")
    caption = _check_caption(caption)
    images = list(images)
    if context and task != "t2v":
        raise PromptError(f"retrieved context is part of the t2v instruction only, not {task}")
    head = [Segment("instruction", text=INSTRUCTIONS[task])]
    if task == "t2v":
        if images or IMAGE_TOKEN in caption:
            raise PromptError(f"t2v takes no images or {IMAGE_TOKEN} placeholders (got {len(images)} image(s))")
        return head + _context_segments(context) + [Segment("caption", text=caption)]
    if task == "prediction":
        if IMAGE_TOKEN in caption:
            raise PromptError(f"prediction puts the frame(s) after the caption; remove {IMAGE_TOKEN} from {caption!r}")
        if not images:
            raise PromptError("prediction needs at least one conditioning frame")
        frames = [Segment("task_image", image=as_image(im, f"frames[{i}]")) for i, im in enumerate(images)]
        return head + [Segment("caption", text=caption)] + frames
    if IMAGE_TOKEN not in caption:
        raise PromptError(f"subject captions mark where the subject stands with {IMAGE_TOKEN}: {caption!r}")
    return head + _interleave(caption, images)


def render_text(prompt: Prompt) -> str:
    """Human-readable form of a prompt (images shown as <image>), for logs and debugging."""
    return " ".join(IMAGE_TOKEN if s.is_image else str(s.text) for s in prompt)
