"""python -m data_pipelines.shapeworld --out DIR --videos N --memory M --seed S [--size 32 --frames 8]"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from . import spec
from .generate import generate_world
from .render import ShapeWorldError
from .world import WorldConfig


def main(argv: list[str] | None = None) -> int:
    d = WorldConfig()
    ap = argparse.ArgumentParser(
        prog="python -m data_pipelines.shapeworld", description="Render a ShapeWorld dataset (docs/shapeworld.md)."
    )
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--videos", type=int, default=d.videos, help="training videos")
    ap.add_argument("--looks", type=int, default=d.looks,
                    help="extra training videos, each of a made-up subject with a look of its own, its own "
                         "reference picture and --look-pictures memory pictures")
    ap.add_argument("--look-pictures", type=int, default=d.look_pictures, help="memory pictures per made-up subject")
    ap.add_argument("--memory", type=int, default=d.memory, help="image-text memory items")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--size", type=int, default=d.size, help="H = W in pixels, a multiple of 32")
    ap.add_argument("--frames", type=int, default=d.frames, help="frames per clip (T >= 2)")
    ap.add_argument("--eval-per-split", type=int, default=d.eval_per_split)
    ap.add_argument("--references-per-subject", type=int, default=d.references_per_subject)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing world in --out")
    args = ap.parse_args(argv)
    fields = {f.name for f in dataclasses.fields(WorldConfig)}
    try:
        cfg = WorldConfig(**{k: v for k, v in vars(args).items() if k in fields})
        world = generate_world(cfg)
    except ShapeWorldError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dropped = [m for m in spec.MOTIONS if m not in world["object_motions"]]
    if dropped:
        print(f"note: {dropped} do not fit {cfg.frames} frames of {cfg.size} px and were left out", file=sys.stderr)
    counts = world["counts"]
    print(f"wrote {cfg.out}: {counts['videos']} videos, {counts['looks']} looks, "
          f"{counts['memory'] + counts['look_pictures']} memory images, "
          f"{counts['references']} references, eval {counts['eval']} in {world['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    from base.cli_guard import guarded

    sys.exit(guarded(main, prog="python -m data_pipelines.shapeworld"))
