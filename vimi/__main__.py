"""The command line: `python -m vimi generate --task t2v --prompt "..." --out video.mp4`.

`--image ref.png` gives a subject reference, `--frames first.png|clip.mp4` the frames prediction continues.
"""

from __future__ import annotations

import argparse
import sys

# The CLI flag that carries each kind of task image (the inputs key is the task's image_input).
IMAGE_FLAGS = {"frames": "--frames", "images": "--image"}


def main(argv: list[str] | None = None) -> int:
    from base.tasks import TASK_NAMES, TASKS

    ap = argparse.ArgumentParser(prog="python -m vimi")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="generate one video")
    g.add_argument("--task", required=True, choices=TASK_NAMES)
    g.add_argument("--prompt", required=True)
    g.add_argument("--image", dest="images", action="append", default=[],
                   help="subject: one reference image per <image>")
    g.add_argument("--frames", nargs="+", default=[], help="prediction: first frame image(s) or an mp4")
    g.add_argument("--pipeline", default=None, help="pipeline folder (default: $VIMI_PIPELINE or untrained)")
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--guidance", type=float, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--num-frames", type=int, default=None)
    g.add_argument("--out", required=True, help="output mp4")
    args = ap.parse_args(argv)

    from base.config import ConfigError
    from vimi.pipeline import InputError, PipelineLoadError, generate

    task = TASKS[args.task]
    inputs: dict = {"prompt": args.prompt}
    for key, flag in IMAGE_FLAGS.items():
        given = getattr(args, key)
        if key != task.image_input:
            if given:
                ap.error(f"{flag} is not an input of the {task.name} task (it takes {', '.join(task.inputs)})")
            continue
        # An empty list is passed on: the task's own check says what is missing.
        # One video file stands for its frames; image files are a list.
        inputs[key] = given[0] if len(given) == 1 and given[0].endswith(".mp4") else given
    try:
        video = generate(args.task, inputs, args.pipeline, steps=args.steps, guidance=args.guidance,
                         seed=args.seed, num_frames=args.num_frames, output=args.out)
    except (InputError, PipelineLoadError, ConfigError) as e:  # bad input: the message says what to fix
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({video.shape[0]} frames, {video.shape[2]}x{video.shape[1]})")
    return 0


if __name__ == "__main__":
    from base.cli_guard import guarded

    sys.exit(guarded(main, prog="python -m vimi"))
