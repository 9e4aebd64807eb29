"""Benchmark: ShapeWorld generation time (target: 20,000 videos + 50,000 memory images in <= 3 min on 2 cores).

    python benchmarks/shapeworld_gen.py [--videos 20000 --memory 50000 --workers 2 --out DIR --keep]

Prints one JSON line: wall and CPU seconds (this process and its workers), items per second, bytes on disk.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipelines.shapeworld.generate import generate_world  # noqa: E402
from data_pipelines.shapeworld.world import WorldConfig  # noqa: E402


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=20000)
    ap.add_argument("--memory", type=int, default=50000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", help="output folder (default: a temporary folder, removed unless --keep)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="shapeworld-bench-")) / "world"
    cfg = WorldConfig(out=out, videos=args.videos, memory=args.memory, size=args.size, frames=args.frames,
                      workers=args.workers, overwrite=True)
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    world = generate_world(cfg)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    nbytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    items = args.videos + args.memory
    print(json.dumps({
        "videos": args.videos, "memory": args.memory, "size": args.size, "frames": args.frames, "workers": args.workers,
        "cores": os.cpu_count(), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "items_per_s": round(items / wall),
        "bytes": nbytes, "world": str(out), "counts": world["counts"],
    }))
    if not args.keep and not args.out:
        shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
