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
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=20000)
    ap.add_argument("--memory", type=int, default=50000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", help="output folder, kept (default: a temporary folder, removed)")
    args = ap.parse_args()
    tmp = None if args.out else Path(tempfile.mkdtemp(prefix="shapeworld-bench-", dir=ROOT / "outputs" if (ROOT / "outputs").is_dir() else None))
    out = Path(args.out) if args.out else tmp / "world"
    cmd = [sys.executable, "-m", "data_pipelines.shapeworld", "--out", str(out), "--videos", str(args.videos),
           "--memory", str(args.memory), "--size", str(args.size), "--frames", str(args.frames),
           "--workers", str(args.workers), "--overwrite"]
    load = os.getloadavg()[0]
    cpu0, t0 = _children_cpu(), time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stderr=subprocess.DEVNULL)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
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
