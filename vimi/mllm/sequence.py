"""Prompt segments -> one LLaVA token sequence, truncated by role.

Text segments are tokenized separately and concatenated; each image becomes ``n_image_tokens``
copies of LLaVA's image token, which the model replaces with the vision tower's projected patch
features (exactly what ``LlavaProcessor`` does when it expands ``<image>``). When the sequence is
longer than ``max_length`` the retrieved pairs go first, last-ranked first (VIMI retrieves them
as optional context); the instruction and task images are never cut. If the prompt is still too
long, the caption's tail is cut with a warning; if even that cannot make it fit (instruction and
task images alone are too long), :class:`PromptTooLongError` is raised.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from PIL import Image

from vimi.mllm.prompt import Prompt, PromptError


class PromptTooLongError(PromptError):
    """The instruction, task images and at least one caption token do not fit into max_length."""


@dataclass
class TokenizedPrompt:
    ids: list[int]                                               # token ids, image tokens expanded
    images: list[Image.Image] = field(default_factory=list)     # in the order their tokens appear
    dropped_pairs: int = 0                                       # retrieved pairs removed by truncation
    cut_caption_tokens: int = 0                                  # caption tokens removed (with a warning)
    roles: list[str] = field(default_factory=list)               # per token: its segment's role (BOS: instruction)


class PromptTokenizer:
    """Turns prompts into token ids for one LLaVA tokenizer and vision tower."""

    def __init__(self, tokenizer, image_token_id: int, n_image_tokens: int, max_length: int, bos_token_id: int | None):
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.tokenizer = tokenizer
        self.image_token_id = image_token_id        # LLaVA's <image> id (config.image_token_id)
        self.n_image_tokens = n_image_tokens        # vision features per image after LLaVA's selection
        self.max_length = max_length
        self.bos = [] if bos_token_id is None else [bos_token_id]

    def _text_ids(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        # A literal "<image>" inside retrieved or user text would add image tokens without an image
        # and break LLaVA's token/feature count; it means nothing as text, so it is dropped.
        return [[t for t in row if t != self.image_token_id] for row in ids]

    def __call__(self, prompt: Prompt) -> TokenizedPrompt:
        if not prompt:
            raise PromptError("empty prompt")
        texts = [s.text for s in prompt if not s.is_image]
        text_ids = iter(self._text_ids(texts))  # type: ignore[arg-type]
        pieces: list[list[int]] = [
            [self.image_token_id] * self.n_image_tokens if s.is_image else next(text_ids) for s in prompt
        ]
        keep = [True] * len(prompt)
        total = len(self.bos) + sum(len(p) for p in pieces)

        # 1) drop retrieved pairs, last-ranked first, until the sequence fits.
        ranks = sorted({s.pair for s in prompt if s.pair is not None}, reverse=True)
        dropped = 0
        for rank in ranks:
            if total <= self.max_length:
                break
            for i, s in enumerate(prompt):
                if s.pair == rank and keep[i]:
                    keep[i] = False
                    total -= len(pieces[i])
            dropped += 1

        # 2) still too long: cut the caption's tail (never the instruction or any image).
        cut = 0
        if total > self.max_length:
            excess = total - self.max_length
            caption_idx = [i for i, s in enumerate(prompt) if s.role == "caption"]
            n_caption = sum(len(pieces[i]) for i in caption_idx)
            if excess >= n_caption:
                raise PromptTooLongError(
                    f"prompt needs {total - n_caption} tokens without its caption (instruction + "
                    f"{sum(s.is_image for s in prompt)} image(s) x {self.n_image_tokens} tokens) but max_length is "
                    f"{self.max_length}; raise MLLMConfig.max_length or pass fewer images"
                )
            for i in reversed(caption_idx):
                take = min(excess - cut, len(pieces[i]))
                pieces[i] = pieces[i][: len(pieces[i]) - take]
                cut += take
                if cut == excess:
                    break
            warnings.warn(
                f"prompt longer than max_length={self.max_length}: cut {cut} caption token(s) from its end",
                stacklevel=3,
            )

        ids = list(self.bos)
        roles = ["instruction"] * len(ids)   # BOS is the same in every prompt, like the instruction
        images: list[Image.Image] = []
        for s, piece, k in zip(prompt, pieces, keep):
            if not k:
                continue
            ids.extend(piece)
            roles.extend([s.role] * len(piece))
            if s.is_image:
                images.append(s.image)  # type: ignore[arg-type]
        return TokenizedPrompt(ids=ids, images=images, dropped_pairs=dropped, cut_caption_tokens=cut, roles=roles)
