"""ShapeWorld v1: the project's procedural world (docs/shapeworld.md), rendered pixel-exactly.

    spec       the world's constants (scenes, colours, shapes, motions, subjects, splits)
    render     ClipParams -> uint8 (T, H, W, 3) frames; single images
    captions   canonical captions and prompts
    sampling   random clips and start positions; per-item generators
    world      WorldConfig and which item is which
    generate   the dataset folder (python -m data_pipelines.shapeworld)
"""
from .captions import memory_caption, subject_prompt, video_caption
from .render import ClipParams, ShapeWorldError, render_clip, render_image
from .world import EVAL_SPLITS, WorldConfig

__all__ = ["ClipParams", "ShapeWorldError", "render_clip", "render_image", "video_caption", "memory_caption",
           "subject_prompt", "WorldConfig", "EVAL_SPLITS"]
