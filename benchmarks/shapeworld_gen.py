"""Benchmark: ShapeWorld generation time (target: 20,000 videos + 50,000 memory images in <= 3 min on 2 cores).

    python benchmarks/shapeworld_gen.py [--videos 20000 --memory 50000 --workers 2 --out DIR]

Runs the real CLI (`python -m data_pipelines.shapeworld`) in a subprocess and prints one JSON
line: wall seconds, CPU seconds of the CLI and all its workers, items per second, bytes written,
and the machine's load average (the 2-core machines are shared: compare cpu_s across runs).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def _run_measured(cmd: list[str]) -> float:
    """Run `cmd`; return the CPU seconds of it and every process below it (sampled: the pool's
    workers are forkserver children, which the OS does not add to our own rusage)."""
    proc = psutil.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL)
    cpu: dict[int, float] = {}
    while proc.poll() is None:
        try:
            for p in [proc, *proc.children(recursive=True)]:
                t = p.cpu_times()
                cpu[p.pid] = t.user + t.system  # not children_*: those are counted by their own pid
        except psutil.Error:  # a process ended between listing and reading
            pass
        time.sleep(0.2)
    if proc.returncode:
        raise SystemExit(f"generation failed with exit code {proc.returncode}")
    return sum(cpu.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=20000)
    ap.add_argument("--memory", type=int, default=50000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", help="output folder, kept (default: a temporary folder, removed)")
    args = ap.parse_args()
    tmp = (
        None
        if args.out
        else Path(
            tempfile.mkdtemp(prefix="shapeworld-bench-", dir=ROOT / "outputs" if (ROOT / "outputs").is_dir() else None)
        )
    )
    out = Path(args.out) if args.out else tmp / "world"
    cmd = [sys.executable, "-m", "data_pipelines.shapeworld", "--out", str(out), "--videos", str(args.videos),
           "--memory", str(args.memory), "--size", str(args.size), "--frames", str(args.frames),
           "--workers", str(args.workers), "--overwrite"]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    cpu = _run_measured(cmd)
    wall = time.perf_counter() - t0
    nbytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(json.dumps({
        "videos": args.videos, "memory": args.memory, "size": args.size, "frames": args.frames, "workers": args.workers,
        "cores": os.cpu_count(), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "items_per_s": round((args.videos + args.memory) / wall), "bytes": nbytes,
        "load_before": round(load, 1), "load_after": round(os.getloadavg()[0], 1),
    }))
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
