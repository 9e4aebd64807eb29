"""Adapting one stage-1 generator to video prediction: full fine-tuning vs adapters vs LoRA vs adapters +
frame-wise conditioning, at equal budgets. One table, every method side by side.

    python benchmarks/adaptation.py --init runs/shapeworld/pretrain/pipeline --shards data/shards \\
        --eval data/world/eval --steps 500 [--config configs/shapeworld/instruct.yaml] [--rows 20]
    python benchmarks/adaptation.py --smoke        # seconds: plumbing only, numbers mean nothing

Each method is one stage-2 run (``launch/instruct_tune.py``, its own process, so peak RSS is its own)
from the same ``--init`` export with ``data.tasks={prediction: 1}`` and the same steps, batch, LR and
seed; then its exported pipeline generates the prediction and t2v-seen eval splits, which the
ShapeWorld scorer reads: prediction PSNR and all_correct (did it learn the task), t2v all_correct
(what the tuning forgot). AID (Xing et al. 2024) reports adapters beating full fine-tuning on SSv2
(FVD 50.2 vs 163.8 for a fully fine-tuned SVD); this table is where that claim is tested here.

``--smoke`` writes synthetic shards, a one-step stage-1 export of a tiny FIT and a two-per-split
eval world, and tunes each method for two steps: it checks that the comparison runs, not who wins.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from base.io import write_json_atomic  # noqa: E402

# method -> model overrides on top of the config (the tuning is the only difference between rows)
METHODS: dict[str, list[str]] = {
    "full": ["model.tuning=full"],
    "adapters": ["model.tuning=adapters"],
    "lora": ["model.tuning=lora"],
    "adapters+frame-cond": ["model.tuning=adapters", "model.frame_cond.enabled=true"],
}
SMOKE_MODEL = ["model.video.frames=8", "model.video.size=32", "model.mllm.image_size=32"]


def launch(script: str, config: str, sets: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, script, "--config", config, "--set", *sets], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(sets)} failed:\n{proc.stdout[-4000:]}")


def tune(method: str, args, out: Path) -> dict:
    from vimi.training.metrics import read_metrics

    run = out / method
    sets = ["run.stage=instruct", f"data.shards=[{args.shards}]", "data.tasks={prediction: 1.0}",
            f"run.init={args.init}", f"run.out={run}", f"run.steps={args.steps}", f"run.save_every={args.steps}",
            "run.progress=false", f"run.log_every={max(1, args.steps // 4)}", "run.resume=never", "sample.every=0",
            f"run.cpu_threads={args.threads}", *args.set, *METHODS[method]]
    launch("launch/instruct_tune.py", args.config, sets)
    rows = read_metrics(run)
    timed = rows[1:] or rows                          # the first window carries start-up
    return {"method": method, "pipeline": str(run / "pipeline"),
            "samples_per_s": sum(r["samples_per_s"] for r in timed) / len(timed),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rows)}


def evaluate(row: dict, args, out: Path) -> dict:
    from vimi.eval.generate import generate_eval
    from vimi.eval.shapeworld import score_folder
    from vimi.pipeline import VimiPipeline

    pipe = VimiPipeline.from_pretrained(row["pipeline"])
    row["trainable"] = sum(p.numel() for p in pipe.model.trainable_parameters())
    for split in ("prediction", "t2v-seen"):
        videos = out / row["method"] / "eval" / split
        generate_eval(pipe, Path(args.eval) / f"{split}.jsonl", videos, steps=args.sample_steps, limit=args.rows,
                      progress=False)
        rep = score_folder(videos, Path(args.eval) / f"{split}.jsonl")
        row[split] = {"all_correct": rep["accuracy"].get("all_correct"), "psnr": rep["psnr"]}
    return row


def table(rows: list[dict]) -> str:
    head = f"{'method':22s} {'trainable':>10s} {'samples/s':>9s} {'peak RSS MB':>11s} {'pred PSNR':>9s} " \
           f"{'pred all_correct':>16s} {'t2v all_correct':>15s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        p, t = r["prediction"], r["t2v-seen"]
        lines.append(f"{r['method']:22s} {r['trainable']:>10,d} {r['samples_per_s']:>9.2f} {r['peak_rss_mb']:>11.0f} "
                     f"{p['psnr'] or float('nan'):>9.2f} {p['all_correct']:>16.2f} {t['all_correct']:>15.2f}")
    return "\n".join(lines)


def smoke_inputs(work: Path, args) -> None:
    """Synthetic shards, a one-step stage-1 export and a tiny eval world (see module doc)."""
    from data_pipelines.shapeworld.__main__ import main as shapeworld_main
    from vimi.training.synthetic import write_synthetic_shard

    (work / "shards").mkdir(parents=True, exist_ok=True)
    write_synthetic_shard(work / "shards" / "shard-000000.tar", 8, frames=8, size=32)
    args.shards = str(work / "shards")
    pre = work / "pretrain"
    launch("launch/pretrain.py", args.config, [f"data.shards=[{args.shards}]", f"run.out={pre}", "run.steps=1",
                                                "run.save_every=1", "sample.every=0", "run.cpu_threads=1",
                                                *args.set])
    args.init = str(pre / "pipeline")
    if shapeworld_main(["--out", str(work / "world"), "--videos", "0", "--memory", "0", "--eval-per-split", "2",
                        "--workers", "1"]) != 0:
        raise RuntimeError("could not write the smoke eval world")
    args.eval = str(work / "world" / "eval")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", help="stage-1 pipeline export every method starts from")
    ap.add_argument("--shards", help="stage-2 prompt shards (prediction samples are drawn from them)")
    ap.add_argument("--eval", help="ShapeWorld eval folder (prediction.jsonl, t2v-seen.jsonl)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "shapeworld" / "instruct.yaml"))
    ap.add_argument("--set", nargs="*", default=[], help="extra overrides for every run (key=value)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated: " + ", ".join(METHODS))
    ap.add_argument("--steps", type=int, default=500, help="optimizer steps per method (the equal budget)")
    ap.add_argument("--rows", type=int, default=20, help="eval clips per split")
    ap.add_argument("--sample-steps", type=int, default=None, help="Heun steps at evaluation (config default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("outputs/adaptation"))
    ap.add_argument("--smoke", action="store_true", help="tiny synthetic inputs, two steps: plumbing only")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    if args.smoke:
        work = Path(tempfile.mkdtemp(prefix="vimi-adapt-"))
        args.config = str(ROOT / "configs" / "shapeworld" / "tiny_ci.yaml")
        args.set = [*SMOKE_MODEL, "data.workers=0", *args.set]
        args.steps, args.rows, args.sample_steps, args.threads, args.out = 2, 2, 2, 1, work / "out"
        smoke_inputs(work, args)
    elif not (args.init and args.shards and args.eval):
        ap.error("--init, --shards and --eval are required (or --smoke)")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [evaluate(tune(m, args, args.out), args, args.out) for m in methods]
    write_json_atomic(args.out / "results.json", rows, indent=1)
    print(("SMOKE RUN (tiny synthetic inputs, 2 steps; the numbers say nothing about the methods)\n"
           if args.smoke else "") + table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
