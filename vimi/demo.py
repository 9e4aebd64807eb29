"""`make demo`: the whole VIMI pipeline on ShapeWorld, on CPU, from nothing.

world → BM25 index → prompt shards → MLLM alignment → autoencoder → stage 1 (retrieval-augmented pretraining)
→ stage 2 (multimodal instruction tuning) → the five eval sets generated → scored → report.

Each step is the user's own command line, run as a subprocess, and skipped when its output is
already complete, so an interrupted demo resumes where it stopped. ``--scale`` is the one knob for
longer runs: it multiplies data sizes and training steps (scale 1: 24.5–27 minutes on the 2-core
machine of docs/learning.md; the target is 25).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable


def run_step(name: str, cmd: list[str], done: Path, log: dict) -> None:
    """Run one pipeline step unless ``done`` already exists; record its wall time."""
    if done.exists():
        print(f"[demo] {name}: already done ({done})", flush=True)
        log[name] = {"skipped": True}
        return
    print(f"\n[demo] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "DS_ACCELERATOR": "cpu"}
    subprocess.run(cmd, check=True, env=env)
    log[name] = {"seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/demo", help="report folder")
    ap.add_argument("--data", default="data/demo", help="world, index, shards, MLLM and training runs")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies data sizes and training steps")
    ap.add_argument("--looks", type=int, default=0,
                    help="made-up subjects' training videos at scale 1 (docs/shapeworld.md, Made-up subjects)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample-steps", type=int, default=12, help="Heun steps for the eval videos")
    args = ap.parse_args(argv)
    out, data = Path(args.out), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    s = args.scale
    steps: dict = {}
    t0 = time.time()

    world, index, shards, mllm = data / "world", data / "index", data / "shards", data / "mllm"
    run_step("world", [PY, "-m", "data_pipelines.shapeworld", "--out", str(world), "--videos", str(int(2000 * s)),
                       "--looks", str(int(args.looks * s)), "--memory", str(int(5000 * s)), "--seed", str(args.seed),
                       "--eval-per-split", str(int(20 * s))], world / "world.json", steps)
    gt_report = out / "ground_truth_scores.json"
    run_step("score ground truth", [PY, "-m", "vimi.eval.shapeworld", "--videos", str(world / "eval" / "gt"),
                                    "--eval", str(world / "eval"), "--out", str(gt_report)], gt_report, steps)
    # The index searches the made-up subjects' pictures too; the MLLM is aligned on memory.parquet alone, since
    # no picture tells a made-up name (docs/shapeworld.md, "Made-up subjects").
    run_step("bm25 index", [PY, "-m", "data_pipelines.build_index", "--memory", str(world / "memory.parquet"),
                            str(world / "made_up_memory.parquet"), "--out", str(index)], index / "index.json", steps)
    run_step("prompt shards", [PY, "-m", "data_pipelines.build_shards", "--videos", str(world / "videos.parquet"),
                               "--index", str(index), "--out", str(shards), "-k", "4", "--seed", str(args.seed)],
             shards / "manifest.json", steps)
    # 4-px vision patches (64 tokens per picture): the encoder probe (LM layer -2) reads colour 0.98 from
    # the tokens' states and subjects 0.70 from their mean, against 0.82 and 0.50 with 8-px patches, for
    # ~130-160 s instead of 80 s on 2 threads. A 2-layer convolutional stem and the alignment's caption
    # words (its default) read colour 1.00 and subjects 1.00 at the layer the generator reads, for ~175 s
    # (docs/learning.md, "The encoder"). Shape stays near chance.
    run_step("mllm alignment", [PY, "-m", "vimi.mllm.align", "--memory", str(world / "memory.parquet"),
                                "--out", str(mllm), "--steps", str(int(1000 * s)), "--tiny-patch-size", "4",
                                "--tiny-stem-layers", "2", "--threads", "2"], mllm / "config.json", steps)

    probe = out / "probe.json"
    from base.config import load_config
    from vimi.training.config import TrainConfig

    layer = load_config(TrainConfig, "configs/shapeworld/pretrain.yaml").model.mllm.layer   # what the generator reads
    run_step("mllm probe", [PY, "-m", "vimi.mllm.probe", "--mllm", str(mllm), "--layer", str(layer),
                            "--out", str(probe)], probe, steps)

    # Latent mode's per-frame autoencoder (configs/shapeworld/*.yaml: model.autoencoder).
    autoencoder = data / "autoencoder"
    run_step("autoencoder", [PY, "-m", "vimi.training.autoencoder", "--out", str(autoencoder),
                             "--steps", str(int(3600 * s)), "--threads", "2"], autoencoder / "report.json", steps)

    # Two BLAS threads: the U-Net step is compute-bound and the loader worker is idle most of the time
    # (data_wait_frac ~0.002 in metrics.jsonl).
    common = [f"data.shards=[{shards}]", f"data.index={index}", f"model.mllm.path={mllm}",
              f"model.autoencoder={autoencoder}", "run.cpu_threads=2"]
    stage1, stage2 = data / "runs" / "pretrain", data / "runs" / "instruct"
    # 2,800 steps split 1,000 + 1,800: stage 2's prediction clips are where the motion word is learned. A/B on one
    # world, 20 rows a split (docs/learning.md, "A longer stage 2"): with the configs' FiLM on the caption's mean,
    # against 1,400 + 1,400, motion up on all five splits (t2v-seen 0.25 -> 0.35, prediction 0.45 -> 0.55, 19.2 ->
    # 19.7 dB); 700 + 2,100 went further on prediction (20.1 dB) but lost what retrieval adds to novel subjects
    # (subject colours 0.25 at K = 4 and K = 0).
    run_step("stage 1: pretrain", [PY, "launch/pretrain.py", "--config", "configs/shapeworld/pretrain.yaml", "--set",
                                   f"run.out={stage1}", f"run.steps={int(1000 * s)}", *common],
             stage1 / "pipeline" / "config.json", steps)
    run_step("stage 2: instruct", [PY, "launch/instruct_tune.py", "--config", "configs/shapeworld/instruct.yaml",
                                   "--init", str(stage1 / "pipeline"), "--set", f"run.out={stage2}",
                                   f"run.steps={int(1800 * s)}", *common],
             stage2 / "pipeline" / "config.json", steps)

    # Two threads: 1.6-1.8x faster per video than one on this 2-core machine, with nothing beside it
    # (benchmarks/sampling.py --threads 1 2, batch 8, the long run's pipeline; docs/learning.md).
    videos, scores = out / "videos", out / "scores.json"
    run_step("generate eval sets", [PY, "-m", "vimi.eval.generate", "--pipeline", str(stage2 / "pipeline"),
                                    "--eval", str(world / "eval"), "--out", str(videos), "--seed", str(args.seed),
                                    "--steps", str(args.sample_steps), "--threads", "2"],
             videos / ".complete", steps)
    run_step("score", [PY, "-m", "vimi.eval.shapeworld", "--videos", str(videos), "--eval", str(world / "eval"),
                       "--out", str(scores)], scores, steps)

    # VIMI's central claim (sec. 4): the same model on novel subjects with retrieval switched off (K = 0).
    novel = world / "eval" / "t2v-novel-subject.jsonl"
    videos_k0, scores_k0 = out / "videos_retrieval_off", out / "scores_retrieval_off.json"
    run_step("generate without retrieval", [PY, "-m", "vimi.eval.generate", "--pipeline", str(stage2 / "pipeline"),
                                            "--eval", str(novel), "--out", str(videos_k0), "--retrieval-k", "0",
                                            "--seed", str(args.seed), "--steps", str(args.sample_steps),
                                            "--threads", "2"], videos_k0 / ".complete", steps)
    run_step("score without retrieval", [PY, "-m", "vimi.eval.shapeworld", "--videos", str(videos_k0),
                                         "--eval", str(novel), "--out", str(scores_k0)], scores_k0, steps)

    metrics = {"wall_seconds": round(time.time() - t0, 1), "scale": s, "steps": steps,
               "scores": json.loads(scores.read_text()), "ground_truth": json.loads(gt_report.read_text()),
               "retrieval_off": json.loads(scores_k0.read_text()),
               "mllm_probe": json.loads(probe.read_text()),
               "autoencoder": json.loads((autoencoder / "report.json").read_text())}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    run_step("report", [PY, "-m", "vimi.eval.report", "--videos", str(videos), "--eval", str(world / "eval"),
                        "--scores", str(scores), "--metrics", str(out / "metrics.json"),
                        "--run-dirs", str(stage1), str(stage2), "--out", str(out)], out / "report.html", steps)
    print(f"[demo] done in {time.time() - t0:.0f} s -> {out}/report.html")


if __name__ == "__main__":
    main()
