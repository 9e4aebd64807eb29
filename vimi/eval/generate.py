"""Generate the videos of ShapeWorld eval sets: one ``{id}.mp4`` per eval row, ready for the scorer.

    python -m vimi.eval.generate --pipeline PIPELINE_DIR --eval EVAL_FILE_OR_DIR --out VIDEOS_DIR \
        [--steps N --guidance W --batch-size B --limit N --seed S]

Each eval row becomes the request a user would pass to ``vimi.generate`` (t2v ``{"prompt"}``;
prediction ``{"prompt", "frames": [first-frame PNGs]}``; subject ``{"prompt" with <image>,
"images": [reference PNGs]}``), image paths resolved against the eval file's folder as the world
generator writes them. Row ``i`` of an eval file is sampled with seed ``seed + i``, so a video
depends neither on the batch size nor on ``--limit`` nor on which other splits run with it.

Two files per row, both written atomically (so a killed run resumes with ``--out`` unchanged;
``generation.json`` in ``--out`` records the settings and a resume with other settings is refused):
``{id}.mp4`` (yuv420p H.264, plays in a browser) and ``{id}.npy`` (the exact uint8 frames, which
the scorer prefers). The npy matters: 4:2:0 chroma subsampling at 32 px smears colours enough
that even the ground truth scores only ~60-80% all_correct when read back from such an mp4.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from base.io import atomic_path
from base.tasks import TaskError, get_task
from data_pipelines.tables import resolve

UNTRAINED = "untrained"


class EvalGenerateError(ValueError):
    """Bad eval input: unreadable file, unknown task, duplicate ids, missing fields."""


@dataclass
class EvalItem:
    """One eval row turned into a generation request."""

    id: str
    split: str
    task: str
    inputs: dict     # exactly what vimi.generate takes for this task
    seed: int        # seed + the row's index in its eval file
    record: dict     # the eval row as written by the world generator


# ---------------------------------------------------------------------------------------------
# Eval rows -> requests
# ---------------------------------------------------------------------------------------------

def eval_files(path: str | Path) -> list[Path]:
    """One eval JSONL, or every *.jsonl of an eval folder (the scorer's split order)."""
    from vimi.eval.shapeworld import ScoreError
    from vimi.eval.shapeworld import eval_files as _files

    try:
        return _files(path)
    except ScoreError as e:
        raise EvalGenerateError(str(e)) from None


def read_rows(eval_file: Path) -> list[dict]:
    from vimi.eval.shapeworld import ScoreError, read_records

    try:
        return read_records(eval_file)
    except ScoreError as e:
        raise EvalGenerateError(str(e)) from None


def request_for(record: dict, base: Path) -> tuple[str, dict]:
    """The (task, inputs) pair of one eval row; ``base`` is the folder its image paths are relative to.

    A row's ``images`` are the task's images (``base.tasks``): the given frame(s), or references."""
    try:
        task = get_task(record.get("task"))
    except TaskError as e:
        raise EvalGenerateError(f"eval row {record.get('id')!r}: {e}") from None
    prompt = record.get("prompt")
    if not isinstance(prompt, str):
        raise EvalGenerateError(f"eval row {record.get('id')!r} has no prompt")
    if task.image_input is None:
        return task.name, {"prompt": prompt}
    images = [resolve(base, p) for p in record.get("images") or []]
    if not images:
        raise EvalGenerateError(f"{task.name} row {record.get('id')!r} names no image in 'images'")
    return task.name, {"prompt": prompt, task.image_input: images}


def load_items(eval_path: str | Path, limit: int | None = None, seed: int = 0) -> list[EvalItem]:
    """Requests for every row of one eval file or folder (the first ``limit`` rows of each file).

    Ids must be unique across all files: the videos of every split share one output folder.
    """
    items: list[EvalItem] = []
    seen: dict[str, str] = {}
    for f in eval_files(eval_path):
        rows = read_rows(f)
        for i, rec in enumerate(rows[:limit] if limit is not None else rows):
            vid = rec.get("id")
            if not isinstance(vid, str) or not vid or "/" in vid or vid.startswith("."):
                raise EvalGenerateError(f"{f} row {i}: id {vid!r} is not a usable file name")
            if vid in seen:
                raise EvalGenerateError(f"id {vid!r} appears in {seen[vid]} and {f.name}: ids must be unique")
            seen[vid] = f.name
            task, inputs = request_for(rec, f.parent)
            items.append(EvalItem(vid, rec.get("split") or f.stem, task, inputs, seed + i, rec))
    return items


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------

def video_paths(out_dir: Path, vid: str) -> tuple[Path, Path]:
    return out_dir / f"{vid}.mp4", out_dir / f"{vid}.npy"


def is_done(out_dir: Path, vid: str, frames: bool = True) -> bool:
    mp4, npy = video_paths(out_dir, vid)
    return mp4.is_file() and (npy.is_file() or not frames)


def save_frames(path: Path, frames: np.ndarray) -> None:
    """np.save to a temporary name, then rename: a half-written npy never looks finished."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, frames, allow_pickle=False)


def generate_items(pipe, items: Sequence[EvalItem], out_dir: str | Path, *, steps: int | None = None,
                   guidance: float | None = None, batch_size: int = 8, frames: bool = True,
                   progress: bool = True) -> dict:
    """Sample every item whose video is not in ``out_dir`` yet; returns counts and timing."""
    from tqdm import tqdm

    from data_pipelines.video_io import write_video

    if batch_size < 1:
        raise EvalGenerateError(f"batch size must be >= 1, got {batch_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [it for it in items if not is_done(out_dir, it.id, frames)]
    if todo and pipe is None:
        raise EvalGenerateError(f"{len(todo)} videos to generate but no pipeline given")
    t0 = time.perf_counter()
    with tqdm(total=len(todo), desc="generate", unit="video", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            videos = pipe.generate_batch([(it.task, it.inputs) for it in batch], seeds=[it.seed for it in batch],
                                         steps=steps, guidance=guidance)
            for it, video in zip(batch, videos):
                mp4, npy = video_paths(out_dir, it.id)
                if frames:
                    save_frames(npy, video)
                write_video(mp4, video, fps=pipe.cfg.video.fps)  # mp4 last: it marks the row done
            bar.update(len(batch))
    seconds = time.perf_counter() - t0
    return {"total": len(items), "generated": len(todo), "skipped": len(items) - len(todo),
            "seconds": seconds, "videos_per_s": len(todo) / seconds if todo and seconds > 0 else None,
            "nfe": getattr(pipe, "last_nfe", None) if todo else None}


SETTINGS = "generation.json"
COMPLETE = ".complete"  # written by the CLI once every row of the (unlimited) eval set has its video


def check_settings(out_dir: str | Path, settings: dict) -> None:
    """Record the settings a videos folder is generated with; refuse to resume it with others, which
    would silently mix videos of two configurations in one score."""
    path = Path(out_dir) / SETTINGS
    if path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise EvalGenerateError(f"{out_dir} holds videos generated with other settings ({changes}); "
                                    f"use another --out or empty it")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


def load_pipeline(spec: str, overrides: Iterable[str] = (), index: str | None = None):
    """A pipeline folder, or ``untrained``: the default config (plus ``overrides``) built untrained.

    A trained pipeline takes ``sampler.*`` overrides only: how it samples, not what it learned.
    ``index`` (folder or service URL) replaces the pipeline's own retrieval index for t2v."""
    from base.config import apply_overrides, from_dict, load_config, to_dict
    from vimi.diffusion import SamplerConfig
    from vimi.model import VimiConfig
    from vimi.pipeline import VimiPipeline

    overrides = list(overrides)
    if spec == UNTRAINED:
        return VimiPipeline.from_config(load_config(VimiConfig, None, overrides), index=index)
    model_keys = [o for o in overrides if not o.startswith("sampler.")]
    if model_keys:
        raise EvalGenerateError(f"--set {model_keys[0]}: a trained pipeline takes sampler.* overrides only "
                                f"(other keys change the model; they apply to --pipeline {UNTRAINED})")
    pipe = VimiPipeline.from_pretrained(spec, index=index)
    if overrides:
        sampler = apply_overrides(to_dict(pipe.cfg.sampler), [o.removeprefix("sampler.") for o in overrides])
        pipe.cfg.sampler = from_dict(SamplerConfig, sampler, "sampler")
    return pipe


def generate_eval(pipe, eval_path: str | Path, out_dir: str | Path, *, steps: int | None = None,
                  guidance: float | None = None, batch_size: int = 8, limit: int | None = None,
                  seed: int = 0, frames: bool = True, progress: bool = True) -> dict:
    """Everything ``python -m vimi.eval.generate`` does, for a pipeline object."""
    items = load_items(eval_path, limit=limit, seed=seed)
    return generate_items(pipe, items, out_dir, steps=steps, guidance=guidance, batch_size=batch_size,
                          frames=frames, progress=progress)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m vimi.eval.generate",
        description="Generate {id}.mp4 (and exact {id}.npy) for every row of ShapeWorld eval sets.",
    )
    ap.add_argument(
        "--pipeline", required=True, help=f"pipeline folder, or '{UNTRAINED}' for the default config untrained"
    )
    ap.add_argument("--eval", required=True, help="an eval .jsonl, or the eval folder for every split")
    ap.add_argument("--out", required=True, help="folder for {id}.mp4 / {id}.npy (one folder for all splits)")
    ap.add_argument("--steps", type=int, help="Heun steps (default: the pipeline's)")
    ap.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the pipeline's)")
    ap.add_argument("--index", help="retrieval index folder or service URL for t2v (default: the pipeline's own)")
    ap.add_argument("--retrieval-k", type=int,
                    help="retrieved pairs per t2v prompt (default: the pipeline's; 0 = retrieval off, VIMI's ablation)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--limit", type=int, help="only the first N rows of each eval file")
    ap.add_argument("--seed", type=int, default=0, help="row i of an eval file uses seed + i")
    ap.add_argument("--no-frames", action="store_true", help="write only the mp4, not the exact {id}.npy frames")
    ap.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's; 1 is often faster on a shared machine)"
    )
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help=f"config override: sampler.* for a trained pipeline (e.g. sampler.guidance_sigma_max=5), "
                         f"any key for --pipeline {UNTRAINED}")
    args = ap.parse_args(list(argv) if argv is not None else None)
    from base.config import ConfigError
    from vimi.pipeline import InputError, PipelineLoadError

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        if args.retrieval_k is not None and args.retrieval_k < 0:
            raise EvalGenerateError(f"--retrieval-k must be >= 0, got {args.retrieval_k}")
        items = load_items(args.eval, limit=args.limit, seed=args.seed)
        pipeline = args.pipeline if args.pipeline == UNTRAINED else str(Path(args.pipeline).resolve())
        check_settings(args.out, {"pipeline": pipeline, "set": args.set, "steps": args.steps,
                                  "guidance": args.guidance, "seed": args.seed, "index": args.index,
                                  "retrieval_k": args.retrieval_k})
        # Loading a pipeline takes seconds: a finished folder (a resumed demo) does not need one.
        done = all(is_done(Path(args.out), it.id, not args.no_frames) for it in items)
        pipe = None if done else load_pipeline(args.pipeline, args.set, args.index)
        if pipe is not None and args.retrieval_k is not None:
            pipe.cfg.retrieval_k = args.retrieval_k
        stats = generate_items(pipe, items, args.out, steps=args.steps, guidance=args.guidance,
                               batch_size=args.batch_size, frames=not args.no_frames)
    except (EvalGenerateError, InputError, PipelineLoadError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.limit is None:  # every row of the eval set is there: the marker `make demo` resumes on
        (Path(args.out) / COMPLETE).write_text(json.dumps({"rows": stats["total"], "eval": str(args.eval)}) + "\n")
    rate = f"{stats['videos_per_s']:.3f} videos/s" if stats["videos_per_s"] else "nothing to generate"
    print(f"{args.out}: {stats['generated']} generated, {stats['skipped']} already there, "
          f"{stats['total']} rows; {stats['seconds']:.1f} s, {rate}, NFE {stats['nfe']}")
    return 0


if __name__ == "__main__":
    from base.cli_guard import guarded

    raise SystemExit(guarded(main, prog="python -m vimi.eval.generate"))
