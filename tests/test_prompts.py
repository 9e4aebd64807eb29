"""Prompt templates (VIMI fig. 2), placeholder checks, and truncation by role (no model needed)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from base.tasks import TASKS
from vimi.mllm.prompt import (
    PromptError,
    Segment,
    pretrain_prompt,
    render_text,
    task_prompt,
)
from vimi.mllm.sequence import PromptTokenizer, PromptTooLongError

IMG_ID, BOS, N_IMG = 1, 0, 4


class WordTokenizer:
    """One id per whitespace word, like a tokenizer's ``__call__`` (ids >= 2)."""

    def __init__(self):
        self.vocab: dict[str, int] = {"<image>": IMG_ID}

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[self.vocab.setdefault(w, len(self.vocab) + 1) for w in t.split()] for t in texts]}


def img(value: int = 0) -> np.ndarray:
    return np.full((8, 8, 3), value, dtype=np.uint8)


def roles(prompt):
    return [s.role for s in prompt]


def test_pretrain_prompt_puts_pairs_before_caption_without_instruction():
    p = pretrain_prompt("a red circle", [("a blue square", img(1)), ("a green ring", img(2))])
    assert roles(p) == ["context_text", "context_image", "context_text", "context_image", "caption"]
    assert [s.pair for s in p] == [0, 0, 1, 1, None]
    assert render_text(p) == "a blue square <image> a green ring <image> a red circle"


def test_task_templates_follow_vimi_instructions():
    t2v = task_prompt("t2v", "a red circle moves left", context=[("a red circle", img())])
    assert t2v[0] == Segment("instruction", text="Generate a video with the retrieved text-image pairs.")
    assert roles(t2v) == ["instruction", "context_text", "context_image", "caption"]

    pred = task_prompt("prediction", "a red circle moves left", images=[img(), img(5)])
    assert (
        render_text(pred) == "Generate a video with the text and first frame. a red circle moves left <image> <image>"
    )
    assert roles(pred)[-2:] == ["task_image", "task_image"]

    subj = task_prompt(
        "subject", "A <image> moves left next to <image> on sand", images=[img(1), Image.new("RGB", (8, 8))]
    )
    assert render_text(subj) == "Generate a video with the text and image. A <image> moves left next to <image> on sand"
    assert roles(subj) == ["instruction", "caption", "caption_image", "caption", "caption_image", "caption"]
    assert subj[2].image.getpixel((0, 0)) == (1, 1, 1)  # images land where their placeholders stand
    assert set(TASKS) == {"t2v", "prediction", "subject"}


def test_context_pair_without_image_keeps_its_text():
    p = pretrain_prompt("a red circle", [("no picture", None)])
    assert roles(p) == ["context_text", "caption"]


@pytest.mark.parametrize(
    "task, caption, images, match",
    [
        ("subject", "A <image> moves left", [], "1 <image> placeholder"),
        ("subject", "A <image> and <image>", [img()], "2 <image> placeholder"),
        ("subject", "A cat moves left", [img()], "must contain <image>"),
        ("prediction", "a red circle", [], "at least one image"),
        ("prediction", "a <image> circle", [img()], "placeholders belong to"),
        ("t2v", "a red circle", [img()], "no images"),
        ("dance", "a red circle", [], "unknown task"),
        ("t2v", "  ", [], "non-empty"),
    ],
)
def test_bad_task_inputs_raise_clear_errors(task, caption, images, match):
    with pytest.raises(PromptError, match=match):
        task_prompt(task, caption, images=images)


def test_context_only_for_t2v_and_images_validated():
    with pytest.raises(PromptError, match="t2v instruction only"):
        task_prompt("prediction", "x", images=[img()], context=[("y", img())])
    with pytest.raises(PromptError, match="uint8"):
        task_prompt("prediction", "x", images=[np.zeros((8, 8, 3), dtype=np.float32)])
    with pytest.raises(PromptError, match="numpy array or a PIL image"):
        task_prompt("prediction", "x", images=["frame.png"])


def _tok(max_length: int) -> PromptTokenizer:
    return PromptTokenizer(
        WordTokenizer(), image_token_id=IMG_ID, n_image_tokens=N_IMG, max_length=max_length, bos_token_id=BOS
    )


def test_sequence_expands_images_in_order():
    p = task_prompt("subject", "A <image> moves", images=[img(3)])
    t = _tok(100)(p)
    n_instr = len(TASKS["subject"].instruction.split())
    assert t.ids[0] == BOS and len(t.ids) == 1 + n_instr + 1 + N_IMG + 1
    assert t.ids[1 + n_instr + 1 : 1 + n_instr + 1 + N_IMG] == [IMG_ID] * N_IMG
    assert len(t.images) == 1 and t.dropped_pairs == 0


def test_truncation_drops_last_ranked_pairs_first_and_keeps_caption_and_task_images():
    ctx = [(f"pair{i} words here", img(i)) for i in range(4)]  # 3 words + 4 image tokens = 7 per pair
    p = task_prompt("t2v", "a red circle moves left", context=ctx)
    full = _tok(1000)(p)
    t = _tok(len(full.ids) - 7)(p)  # room for exactly one pair less
    assert t.dropped_pairs == 1 and t.cut_caption_tokens == 0
    assert len(t.ids) == len(full.ids) - 7 and len(t.images) == 3
    assert t.images[-1].getpixel((0, 0)) == (2, 2, 2)  # the last-ranked pair (3) went, the best stayed
    assert t.ids[-5:] == full.ids[-5:]  # caption intact
    t = _tok(len(full.ids) - 4 * 7)(p)
    assert t.dropped_pairs == 4 and t.images == [] and t.ids[-5:] == full.ids[-5:]

    # subject: its reference images are task images, never dropped
    subj = task_prompt("subject", "A <image> moves left on sand", images=[img()])
    n = len(_tok(1000)(subj).ids)
    with pytest.warns(UserWarning, match="cut 2 caption token"):
        t = _tok(n - 2)(subj)
    assert t.ids.count(IMG_ID) == N_IMG and len(t.images) == 1 and len(t.ids) == n - 2


def test_too_long_without_caption_raises():
    p = task_prompt("prediction", "a red circle", images=[img()] * 3)
    with pytest.raises(PromptTooLongError, match="max_length"):
        _tok(3 * N_IMG)(p)


def test_literal_image_text_in_context_is_not_an_image():
    p = pretrain_prompt("a red circle", [("weird <image> caption", None)])
    t = _tok(100)(p)
    assert IMG_ID not in t.ids
