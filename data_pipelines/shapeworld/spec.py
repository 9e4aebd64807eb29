"""ShapeWorld v1 constants, exactly as docs/shapeworld.md lists them (the one place they live).

Every length here is at the 32-pixel scale; renderers and the scorer multiply by ``s = W / 32``.
"""
from __future__ import annotations

from dataclasses import dataclass

BASE_SIZE = 32  # the scale at which every length below is given
FPS = 8

# Scene phrase -> background RGB.
SCENES: dict[str, tuple[int, int, int]] = {
    "on a gray floor": (128, 128, 128),
    "in a dark room": (24, 24, 24),
    "on sand": (194, 178, 128),
    "on grass": (60, 110, 50),
}

# Palette name -> RGB.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 130, 20),
    "yellow": (235, 215, 30),
    "green": (40, 190, 60),
    "cyan": (30, 200, 210),
    "blue": (40, 70, 220),
    "purple": (140, 50, 200),
    "pink": (240, 110, 170),
    "white": (245, 245, 245),
}

SHAPES: tuple[str, ...] = ("circle", "square", "diamond", "cross", "ring", "triangle")

# Size word -> radius.
SIZES: dict[str, float] = {"small": 4.0, "big": 7.0}


@dataclass(frozen=True)
class Motion:
    """Per-frame change of centre (dx, dy) and radius (dr)."""

    dx: float = 0.0
    dy: float = 0.0
    dr: float = 0.0
    only_size: str | None = None  # grows starts small, shrinks starts big


MOTIONS: dict[str, Motion] = {
    "moves left": Motion(dx=-2.0),
    "moves right": Motion(dx=2.0),
    "moves up": Motion(dy=-2.0),
    "moves down": Motion(dy=2.0),
    "stays still": Motion(),
    "grows": Motion(dr=0.5, only_size="small"),
    "shrinks": Motion(dr=-0.5, only_size="big"),
}
TRANSLATIONS: tuple[str, ...] = ("moves left", "moves right", "moves up", "moves down", "stays still")

PATTERNS: tuple[str, ...] = ("stripes-h", "stripes-v", "checker", "dots")


@dataclass(frozen=True)
class Subject:
    """A named subject: a shape filled with a two-colour pattern (always radius 7)."""

    name: str
    shape: str
    pattern: str
    color_a: str  # where the pattern is true
    color_b: str  # elsewhere


SUBJECT_RADIUS = 7.0
SUBJECT_SIZE = "big"

SUBJECTS: dict[str, Subject] = {
    s.name: s
    for s in (
        Subject("Bobo", "circle", "stripes-h", "red", "white"),
        Subject("Kiki", "circle", "checker", "blue", "yellow"),
        Subject("Roro", "circle", "stripes-v", "yellow", "purple"),
        Subject("Nono", "circle", "dots", "green", "orange"),
        Subject("Zuzu", "square", "stripes-v", "green", "pink"),
        Subject("Pip", "square", "dots", "orange", "blue"),
        Subject("Lulu", "square", "checker", "pink", "white"),
        Subject("Gigi", "square", "stripes-h", "cyan", "orange"),
        Subject("Mimi", "diamond", "stripes-h", "purple", "yellow"),
        Subject("Tika", "diamond", "checker", "cyan", "red"),
        Subject("Fifi", "diamond", "dots", "white", "purple"),
        Subject("Dodo", "diamond", "stripes-v", "green", "white"),
    )
}

# The held-out parts of the world: never in training videos, always in the memory.
NOVEL_SUBJECTS: frozenset[str] = frozenset({"Nono", "Gigi", "Fifi", "Dodo"})
NOVEL_COMPOSITIONS: frozenset[tuple[str, str]] = frozenset(
    {
        ("purple", "triangle"),
        ("orange", "ring"),
        ("cyan", "cross"),
        ("pink", "square"),
        ("yellow", "diamond"),
        ("green", "circle"),
    }
)

SEEN_SUBJECTS: tuple[str, ...] = tuple(n for n in SUBJECTS if n not in NOVEL_SUBJECTS)
ALL_COMPOSITIONS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLORS for s in SHAPES)
SEEN_COMPOSITIONS: tuple[tuple[str, str], ...] = tuple(cs for cs in ALL_COMPOSITIONS if cs not in NOVEL_COMPOSITIONS)

# Made-up subjects (docs/shapeworld.md, "Made-up subjects"): training clips of one-off subjects whose look
# changes from clip to clip, so that drawing one means copying it from its pictures (retrieved, or the
# subject task's reference), not recalling which of eight seen looks a name means. A look is written
# "shape/pattern/color_a/color_b". None is a named subject's look (SUBJECT_BY_LOOK, below): the novel
# subjects stay held out.
LOOK_SHAPES: tuple[str, ...] = ("circle", "square", "diamond")  # the named subjects' shapes

# How a subject is told apart (the scorer reads the same): its shape and its two colours, in any order.
SUBJECT_BY_LOOK: dict[tuple[str, frozenset[str]], str] = {
    (s.shape, frozenset((s.color_a, s.color_b))): s.name for s in SUBJECTS.values()
}

UNNAMED_LOOKS: tuple[str, ...] = tuple(
    f"{shape}/{pattern}/{a}/{b}"
    for shape in LOOK_SHAPES
    for pattern in PATTERNS
    for a in COLORS
    for b in COLORS
    if a != b and (shape, frozenset((a, b))) not in SUBJECT_BY_LOOK
)
_UNNAMED = frozenset(UNNAMED_LOOKS)

# Made-up names: three consonant-vowel syllables (never a named subject's one or two), one per index.
NAME_CONSONANTS, NAME_VOWELS = "bdfgklmnprstvz", "aeiou"


def subject_look(name: str) -> Subject | None:
    """The Subject a named subject's name or an unnamed look stands for; None for anything else."""
    if name in SUBJECTS:
        return SUBJECTS[name]
    if name in _UNNAMED:
        return Subject(name, *name.split("/"))
    return None
