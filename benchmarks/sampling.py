"""Benchmark: sampling speed per task, and quality versus the number of Heun steps.

    python benchmarks/sampling.py [--pipeline DIR] [--eval EVAL_DIR] [--batch-sizes 1 8]
                                  [--steps-list 4 8 16 32] [--per-split 4] [--threads N ...] [--json OUT]

Speed: seconds per video and denoiser evaluations (NFE) for t2v, prediction and subject at the
pipeline's default steps, at each batch size and torch thread count, after one warm-up call per task;
peak RSS of the process. Without --pipeline it times the default config (fit-tiny) untrained: speed
does not depend on the weights.

Quality (trained pipelines only, or --quality to force it): for each step count, the first
--per-split rows of every eval split are generated (`vimi.eval.generate`) and scored by the
ShapeWorld scorer (`vimi.eval.shapeworld`): all_correct and the mean of the applicable attribute
accuracies per split, PSNR for prediction. Without --eval a small world is rendered into a
temporary folder. Both tables are printed side by side at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from base.tasks import TASK_NAMES as TASKS  # noqa: E402
from vimi.eval.generate import UNTRAINED, EvalItem, generate_items, load_items, load_pipeline  # noqa: E402

SHORT = {"t2v-seen": "seen", "t2v-novel-composition": "novel-comp", "t2v-novel-subject": "novel-subj",
         "prediction": "pred", "subject": "subj"}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def render_world(out: Path, per_split: int, size: int, frames: int) -> Path:
    """A world with only eval sets (no training data); returns its eval folder."""
    from data_pipelines.shapeworld.generate import generate_world
    from data_pipelines.shapeworld.world import WorldConfig

    generate_world(WorldConfig(out=out, videos=0, memory=0, eval_per_split=per_split, size=size, frames=frames,
                               workers=1, overwrite=True))
    return out / "eval"


def subset_eval(eval_dir: Path, per_split: int, out: Path) -> Path:
    """The first ``per_split`` rows of each eval file, with absolute image / gt paths, so that the
    scorer counts only the rows generated here."""
    from data_pipelines.tables import resolve
    from vimi.eval.generate import eval_files, read_rows

    out.mkdir(parents=True, exist_ok=True)
    for f in eval_files(eval_dir):
        rows = read_rows(f)[:per_split]
        for r in rows:
            r["images"] = [resolve(f.parent, p) for p in r.get("images") or []]
            if r.get("gt"):
                r["gt"] = resolve(f.parent, r["gt"])
        (out / f.name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


# ---------------------------------------------------------------------------------------------
# Speed
# ---------------------------------------------------------------------------------------------

def time_sampling(pipe, items: list[EvalItem], batch_sizes: list[int], threads: list[int]) -> list[dict]:
    """One row per (task, batch size, torch threads): seconds per video at the pipeline's default steps."""
    import torch

    rows = []
    for task in TASKS:
        item = next((it for it in items if it.task == task), None)
        if item is None:
            print(f"no {task} row in the eval set: not timed", file=sys.stderr)
            continue
        pipe.generate_batch([(task, item.inputs)], seeds=[0], steps=1)  # warm-up: allocations, lazy init
        for b in batch_sizes:
            for n in threads:
                torch.set_num_threads(n)
                t0 = time.perf_counter()
                pipe.generate_batch([(task, item.inputs)] * b, seeds=list(range(b)))
                dt = time.perf_counter() - t0
                rows.append({"task": task, "batch": b, "threads": n, "steps": pipe.cfg.sampler.num_steps,
                             "nfe": pipe.last_nfe, "s_per_video": dt / b, "s_per_batch": dt,
                             "peak_rss_mib": peak_rss_mib()})
                print(f"[speed] {task} batch {b}, {n} threads: {dt / b:.2f} s/video, NFE {pipe.last_nfe}",
                      file=sys.stderr, flush=True)
    return rows


def speed_table(rows: list[dict]) -> list[str]:
    out = [f"{'task':<11}{'batch':>6}{'thr':>4}{'steps':>6}{'NFE':>5}{'s/video':>9}{'s/batch':>9}{'RSS MiB':>9}"]
    for r in rows:
        out.append(f"{r['task']:<11}{r['batch']:>6}{r['threads']:>4}{r['steps']:>6}{r['nfe']:>5}"
                   f"{r['s_per_video']:>9.2f}{r['s_per_batch']:>9.2f}{r['peak_rss_mib']:>9.0f}")
    return out


# ---------------------------------------------------------------------------------------------
# Quality versus steps
# ---------------------------------------------------------------------------------------------

def quality_vs_steps(pipe, eval_dir: Path, steps_list: list[int], batch_size: int, work: Path) -> list[dict]:
    from vimi.eval.shapeworld import score_all

    items = load_items(eval_dir)
    rows = []
    for steps in steps_list:
        videos = work / f"steps{steps}"
        stats = generate_items(pipe, items, videos, steps=steps, batch_size=batch_size, progress=False)
        reports = score_all(videos, eval_dir)
        per_split = {}
        for split, rep in reports.items():
            attrs = [v for a, v in rep["accuracy"].items() if a != "all_correct"]
            per_split[split] = {"all_correct": rep["accuracy"].get("all_correct"),
                                "attributes": sum(attrs) / len(attrs) if attrs else None,
                                "accuracy": rep["accuracy"], "psnr": rep["psnr"], "count": rep["count"]}
        rows.append({"steps": steps, "nfe": stats["nfe"],
                     "s_per_video": stats["seconds"] / max(stats["generated"], 1), "splits": per_split})
        print(
            f"[quality] steps {steps}: "
            + ", ".join(f"{SHORT.get(s, s)} {v['all_correct']:.0%}" for s, v in per_split.items()),
            file=sys.stderr,
            flush=True,
        )
    return rows


def quality_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    splits = list(rows[0]["splits"])
    head = f"{'steps':>5}{'NFE':>5}{'s/video':>8}" + "".join(f"{SHORT.get(s, s):>12}" for s in splits) + f"{'PSNR':>7}"
    n = rows[0]["splits"][splits[0]]["count"] if splits else 0
    out = [f"all_correct / mean attribute accuracy, {n} videos per split", head]
    for r in rows:
        cells = "".join(f"{v['all_correct']:.0%}/{v['attributes']:.0%}".rjust(12) for v in r["splits"].values())
        psnr = r["splits"].get("prediction", {}).get("psnr")
        out.append(
            f"{r['steps']:>5}{r['nfe']:>5}{r['s_per_video']:>8.2f}{cells}{'-' if psnr is None else f'{psnr:.1f}':>7}"
        )
    return out


def side_by_side(left: list[str], right: list[str], gap: int = 4) -> str:
    width = max((len(s) for s in left), default=0)
    return "\n".join(
        f"{(left[i] if i < len(left) else ''):<{width}}{' ' * gap}{right[i] if i < len(right) else ''}".rstrip()
        for i in range(max(len(left), len(right)))
    )


# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--pipeline", default=UNTRAINED, help=f"pipeline folder (default: '{UNTRAINED}', the default config)"
    )
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=f"config override for {UNTRAINED}")
    ap.add_argument("--eval", help="eval folder (default: a small world rendered into a temporary folder)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--steps-list", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--per-split", type=int, default=4, help="eval rows per split for the quality table")
    ap.add_argument("--quality-batch", type=int, default=8, help="batch size of the quality runs")
    ap.add_argument("--quality", action="store_true", help="measure quality even for an untrained pipeline")
    ap.add_argument("--threads", type=int, nargs="+", help="torch CPU thread counts to time side by side "
                    "(default: torch's); the quality runs use the first")
    ap.add_argument("--json", help="also write the measurements here")
    args = ap.parse_args(argv)

    import torch

    threads = args.threads or [torch.get_num_threads()]
    if min(threads) < 1:
        ap.error(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads[0])
    t0 = time.perf_counter()
    pipe = load_pipeline(args.pipeline, args.set)
    load_s = time.perf_counter() - t0
    cfg = pipe.cfg
    with tempfile.TemporaryDirectory(prefix="vimi-sampling-") as tmp:
        tmp = Path(tmp)
        eval_dir = (
            Path(args.eval).resolve()
            if args.eval
            else render_world(tmp / "world", args.per_split, cfg.video.size, cfg.video.frames)
        )
        eval_dir = subset_eval(eval_dir, args.per_split, tmp / "eval")
        speed = time_sampling(pipe, load_items(eval_dir), args.batch_sizes, threads)
        torch.set_num_threads(threads[0])
        trained = args.pipeline != UNTRAINED
        quality = quality_vs_steps(pipe, eval_dir, args.steps_list, args.quality_batch, tmp / "videos") \
            if trained or args.quality else []

    params = sum(p.numel() for p in pipe.model.net.parameters())
    print(f"\nsampling benchmark: {args.pipeline} ({cfg.backbone}, {params / 1e6:.2f}M backbone parameters, "
          f"{cfg.video.frames}x{cfg.video.size}x{cfg.video.size}, guidance {cfg.sampler.guidance_scale}), "
          f"torch {torch.__version__}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; pipeline load {load_s:.1f} s; peak RSS {peak_rss_mib():.0f} MiB")
    right = quality_table(quality) if quality else [
        "quality versus steps needs a trained pipeline:",
        "  python benchmarks/sampling.py --pipeline DIR",
        "(an untrained pipeline scores ~0 at any step count; --quality forces it)"]
    print(side_by_side(speed_table(speed), right))
    if args.json:
        Path(args.json).write_text(json.dumps({"pipeline": args.pipeline, "threads": threads,
                                               "load_s": load_s, "speed": speed, "quality": quality,
                                               "peak_rss_mib": peak_rss_mib()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
