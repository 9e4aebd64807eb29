"""`python -m vimi generate --task t2v --prompt "..." [--image ref.png] [--frames first.png|clip.mp4] --out video.mp4`."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vimi")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="generate one video")
    g.add_argument("--task", required=True, choices=["t2v", "prediction", "subject"])
    g.add_argument("--prompt", required=True)
    g.add_argument("--image", action="append", default=[], help="subject: one reference image per <image>")
    g.add_argument("--frames", nargs="+", default=None, help="prediction: first frame image(s) or an mp4")
    g.add_argument("--pipeline", default=None, help="pipeline folder (default: $VIMI_PIPELINE or untrained)")
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--guidance", type=float, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--num-frames", type=int, default=None)
    g.add_argument("--out", required=True, help="output mp4")
    args = ap.parse_args(argv)

    from vimi.config import ConfigError
    from vimi.pipeline import InputError, PipelineLoadError, generate

    inputs: dict = {"prompt": args.prompt}
    if args.task == "subject":
        inputs["images"] = args.image
    elif args.image:
        ap.error("--image is for the subject task")
    if args.task == "prediction":
        if not args.frames:
            ap.error("prediction needs --frames")
        inputs["frames"] = args.frames[0] if len(args.frames) == 1 and args.frames[0].endswith(".mp4") else args.frames
    elif args.frames:
        ap.error("--frames is for the prediction task")
    try:
        video = generate(args.task, inputs, args.pipeline, steps=args.steps, guidance=args.guidance,
                         seed=args.seed, num_frames=args.num_frames, output=args.out)
    except (InputError, PipelineLoadError, ConfigError) as e:  # bad input: the message says what to fix
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({video.shape[0]} frames, {video.shape[2]}x{video.shape[1]})")
    return 0


if __name__ == "__main__":
    from vimi.cli_guard import guarded

    sys.exit(guarded(main, prog="python -m vimi"))
