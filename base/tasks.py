"""The task registry: every stage-2 task of VIMI, and everything the code needs to know about it.

VIMI's multimodal instruction tuning (Fang et al., EMNLP 2024, Sec. 3.2 and Fig. 2) trains one
generator on several tasks, each opened by its own instruction. What differs between tasks is
stated here once and read by the prompt builder (``vimi.mllm.prompt``), ``vimi.generate``'s input
checks, the training data stages and config, the command line, eval generation and the report.

Adding a task: add a ``Task`` to ``_TASKS`` below; if its images sit in the prompt in a new way,
add that ``layout`` to ``vimi.mllm.prompt.task_prompt``. Stage 1 (retrieval-augmented
pretraining) is not a task: it has no instruction and every sample carries retrieved pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

IMAGE_TOKEN = "<image>"  # placeholder in user prompts; LLaVA's image token has the same spelling

Images = Literal["none", "first_frames", "references"]
Layout = Literal["context_then_caption", "caption_then_images", "images_in_caption"]


class TaskError(ValueError):
    """An unknown task, or inputs that do not fit the task (missing, extra, placeholders vs images)."""


@dataclass(frozen=True)
class Task:
    name: str           # what users pass as ``task=`` and ``--task``; eval rows' ``task`` column
    instruction: str    # the sentence that opens the task's prompt (VIMI, Fig. 2)
    images: Images      # the task's images: none, the clip's first frames, or subject references
    layout: Layout      # where those images (or the retrieved pairs) sit around the caption
    retrieves: bool     # the prompt carries the top-K retrieved (caption, image) pairs
    image_label: str = ""  # what the report calls the task image it shows beside the frames

    @property
    def image_input(self) -> str | None:
        """The ``inputs`` key (and, with ``--``, the CLI flag stem) that holds the task's images."""
        return {"none": None, "first_frames": "frames", "references": "images"}[self.images]

    @property
    def inputs(self) -> tuple[str, ...]:
        """The keys of ``vimi.generate(task, inputs)`` this task takes, all required."""
        return ("prompt",) if self.image_input is None else ("prompt", self.image_input)

    @property
    def given_frames(self) -> bool:
        """Whether the model is given the clip's first k frames clean (k: the model config's
        ``max_cond_frames``, the one place that number is set); 0 frames for every other task."""
        return self.images == "first_frames"

    def check(self, prompt: str, n_images: int, error: type[Exception] = TaskError) -> None:
        """Raise ``error`` with one clear line when ``prompt`` and ``n_images`` do not fit the task."""
        marks = prompt.count(IMAGE_TOKEN)
        if self.layout == "images_in_caption":
            if marks == 0:
                raise error(f"a {self.name} prompt must contain {IMAGE_TOKEN} where each image stands: {prompt!r}")
            if marks != n_images:
                raise error(f"the {self.name} prompt has {marks} {IMAGE_TOKEN} placeholder(s) "
                            f"but {n_images} image(s) were given")
            return
        if marks:
            raise error(f"{IMAGE_TOKEN} placeholders belong to tasks that place images in the caption "
                        f"({', '.join(t.name for t in TASKS.values() if t.layout == 'images_in_caption')}), "
                        f"not {self.name}: {prompt!r}")
        if self.images == "none" and n_images:
            raise error(f"{self.name} takes no images (got {n_images})")
        if self.images != "none" and not n_images:
            raise error(f"{self.name} needs at least one image in inputs[{self.image_input!r}]")


_TASKS = (
    Task("t2v", "Generate a video with the retrieved text-image pairs.",
         images="none", layout="context_then_caption", retrieves=True),
    Task("prediction", "Generate a video with the text and first frame.",
         images="first_frames", layout="caption_then_images", retrieves=False, image_label="first frame"),
    Task("subject", "Generate a video with the text and image.",
         images="references", layout="images_in_caption", retrieves=False, image_label="reference"),
)
TASKS: dict[str, Task] = {t.name: t for t in _TASKS}  # in the order reports and CLIs list them
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def get_task(name: object, error: type[Exception] = TaskError) -> Task:
    """The registered task called ``name``, or ``error`` naming the known ones."""
    task = TASKS.get(name) if isinstance(name, str) else None
    if task is None:
        raise error(f"unknown task {name!r}; expected one of {', '.join(TASK_NAMES)}")
    return task
