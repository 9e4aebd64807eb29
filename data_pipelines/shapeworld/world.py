"""What a ShapeWorld dataset holds, item by item (docs/shapeworld.md, Splits; Tasks and eval sets).

`WorldConfig` names a world; the `*_params` functions say which clip or image item `i` of each
part is. They are pure functions of (config, index): every item draws from its own generator
(`sampling.item_rng`), so the world is the same whatever the number of workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import sampling, spec
from .render import ClipParams, ShapeWorldError

VERSION = "shapeworld-v1"
EVAL_SPLITS: tuple[str, ...] = ("t2v-seen", "t2v-novel-composition", "t2v-novel-subject", "prediction", "subject")
SUBJECT_NAMES: tuple[str, ...] = tuple(spec.SUBJECTS)


@dataclass
class WorldConfig:
    out: Path = Path("data/shapeworld")  # output folder
    videos: int = 20000                  # training videos
    looks: int = 0                       # extra training videos, each of its own made-up subject
    look_pictures: int = 4               # memory pictures of each made-up subject (K = 4 retrieves them all)
    memory: int = 50000                  # image-text memory items
    seed: int = 0                        # the whole world is a function of this (and the sizes)
    size: int = 32                       # H = W, a multiple of 32
    frames: int = 8                      # T >= 2
    eval_per_split: int = 50             # records in each eval file
    references_per_subject: int = 4      # reference images per named subject
    subject_fraction: float = 0.25       # share of subject clips among training / seen-eval videos
    memory_subject_every: int = 5        # every n-th memory item is a subject (others cycle compositions)
    num_cond_frames: int = 1             # k ground-truth frames given to the prediction task
    workers: int = 2                     # processes rendering and encoding
    overwrite: bool = False              # replace an existing world in `out`

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        checks = [
            (self.size > 0 and self.size % spec.BASE_SIZE == 0, f"size must be a multiple of {spec.BASE_SIZE}"),
            (self.frames >= 2, "frames must be >= 2"),
            (min(self.videos, self.looks, self.look_pictures, self.memory, self.eval_per_split) >= 0,
             "counts must be >= 0"),
            (self.references_per_subject >= 1, "references_per_subject must be >= 1"),
            (0.0 <= self.subject_fraction <= 1.0, "subject_fraction must be in [0, 1]"),
            (self.memory_subject_every >= 2, "memory_subject_every must be >= 2"),
            (1 <= self.num_cond_frames < self.frames, "num_cond_frames must be in [1, frames)"),
            (self.workers >= 1, "workers must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ShapeWorldError(message)
        # Fail now, not in a worker, when a clip length leaves no motion that fits the canvas.
        sampling.object_choices(self.frames, self.size)
        if not sampling.subject_motions(self.frames, self.size):
            raise ShapeWorldError(f"no subject motion fits {self.frames} frames of {self.size} px")


def _seen_clip(cfg: WorldConfig, stream: str, i: int) -> ClipParams:
    """A clip of the seen world: seen subjects or seen compositions only (training, t2v-seen, prediction)."""
    rng = sampling.item_rng(cfg.seed, stream, i)
    if rng.random() < cfg.subject_fraction:
        return sampling.sample_subject_clip(rng, spec.SEEN_SUBJECTS, cfg.frames, cfg.size)
    return sampling.sample_object_clip(rng, spec.SEEN_COMPOSITIONS, cfg.frames, cfg.size)


def train_video_params(cfg: WorldConfig, i: int) -> ClipParams:
    """Training video i: never a novel subject, never a novel composition."""
    return _seen_clip(cfg, "videos", i)


_SYLLABLES = tuple(c + v for c in spec.NAME_CONSONANTS for v in spec.NAME_VOWELS)   # 70


def made_up_name(i: int) -> str:
    """Look video i's subject name: three syllables (spec.NAME_*), a different name for every i < 70³."""
    n = len(_SYLLABLES)
    code = (i * 7919 + 4021) % n**3   # 7919 is prime to 70³ = 2³·5³·7³: an affine permutation of the codes
    return "".join(_SYLLABLES[code // n**k % n] for k in range(3)).capitalize()


def look_params(cfg: WorldConfig, i: int) -> tuple[ClipParams, ClipParams, list[ClipParams]]:
    """Look video i: a made-up subject's clip, its reference picture, and its `look_pictures` memory
    pictures, each the subject alone at its own position and scene (as a named subject's are). The look is
    uniform over spec.UNNAMED_LOOKS, so a name says nothing about it: only the pictures do."""
    rng = sampling.item_rng(cfg.seed, "looks", i)
    look, name = spec.UNNAMED_LOOKS[rng.integers(len(spec.UNNAMED_LOOKS))], made_up_name(i)
    clip = sampling.sample_subject_clip(rng, [name], cfg.frames, cfg.size, look=look)
    pictures = [sampling.sample_subject_image(rng, name, cfg.size, look=look) for _ in range(1 + cfg.look_pictures)]
    return clip, pictures[0], pictures[1:]


def memory_params(cfg: WorldConfig, i: int) -> ClipParams:
    """Memory image i. Every `memory_subject_every`-th item is a subject (cycling all 12), the rest
    cycle all 54 compositions, so even a small memory holds everything, novel parts included."""
    rng = sampling.item_rng(cfg.seed, "memory", i)
    n = cfg.memory_subject_every
    if i % n == n - 1:
        return sampling.sample_subject_image(rng, SUBJECT_NAMES[(i // n) % len(SUBJECT_NAMES)], cfg.size)
    color, shape = spec.ALL_COMPOSITIONS[(i - (i + 1) // n) % len(spec.ALL_COMPOSITIONS)]
    return sampling.sample_object_image(rng, color, shape, cfg.size)


def reference_params(cfg: WorldConfig, name: str, j: int) -> ClipParams:
    """Reference picture j of a subject: the subject alone at a random position and scene."""
    index = SUBJECT_NAMES.index(name) * cfg.references_per_subject + j
    return sampling.sample_subject_image(sampling.item_rng(cfg.seed, "references", index), name, cfg.size)


def eval_params(cfg: WorldConfig, split: str, i: int) -> ClipParams:
    """Eval clip i of a split; the t2v-novel-* splits hold exactly what training never shows."""
    if split in ("t2v-seen", "prediction"):
        return _seen_clip(cfg, split, i)
    rng = sampling.item_rng(cfg.seed, split, i)
    if split == "t2v-novel-composition":
        return sampling.sample_object_clip(rng, sorted(spec.NOVEL_COMPOSITIONS), cfg.frames, cfg.size)
    if split == "t2v-novel-subject":
        return sampling.sample_subject_clip(rng, sorted(spec.NOVEL_SUBJECTS), cfg.frames, cfg.size)
    if split == "subject":  # every subject, seen and novel, in turn
        return sampling.sample_subject_clip(rng, [SUBJECT_NAMES[i % len(SUBJECT_NAMES)]], cfg.frames, cfg.size)
    raise ShapeWorldError(f"unknown eval split {split!r}; expected one of {EVAL_SPLITS}")


def is_novel(p: ClipParams) -> bool:
    if p.subject is not None:
        return p.subject in spec.NOVEL_SUBJECTS
    return (p.color, p.shape) in spec.NOVEL_COMPOSITIONS
