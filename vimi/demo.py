"""`make demo`: the whole VIMI pipeline on ShapeWorld, on CPU, from nothing.

Each step is the user's own command line, run as a subprocess, and skipped when its output is
already complete, so an interrupted demo resumes where it stopped. ``--scale`` is the one knob for
longer runs: it multiplies data sizes and training steps.
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
    print(f"[demo] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    log[name] = {"seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="outputs/demo", help="report folder")
    ap.add_argument("--data", default="data/demo", help="generated world, index and shards")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies data sizes and training steps")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out, data = Path(args.out), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    steps: dict = {}
    t0 = time.time()

    world = data / "world"
    n_videos, n_memory = int(2000 * args.scale), int(5000 * args.scale)
    run_step("world", [PY, "-m", "data_pipelines.shapeworld", "--out", str(world), "--videos", str(n_videos),
                       "--memory", str(n_memory), "--seed", str(args.seed)], world / "world.json", steps)

    gt_report = out / "ground_truth_report.json"
    run_step("score ground truth", [PY, "-m", "vimi.eval.shapeworld", "--videos", str(world / "eval" / "gt"),
                                    "--eval", str(world / "eval"), "--out", str(gt_report)], gt_report, steps)

    summary = {"wall_seconds": round(time.time() - t0, 1), "steps": steps,
               "ground_truth": json.loads(gt_report.read_text())}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"[demo] done in {summary['wall_seconds']} s -> {out}/metrics.json")


if __name__ == "__main__":
    main()
