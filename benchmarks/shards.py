"""Benchmark: prompt-shard building, samples/s end to end (goal >= 300 samples/s with K=4 on 2 cores).

    python benchmarks/shards.py [--world DIR] [--videos 2000 --memory 10000] [-k 4] [--workers 2]

Generates a ShapeWorld world (if --world has none) and its BM25 index, then builds the same
shards several ways, each into a fresh folder, and prints one table:
in-process index vs the HTTP service (``python -m retrieval.serve`` in its own process),
1 vs ``--workers`` builder processes (split by ``--worker-rank``), full-decode vs header-only video
checks. Samples/s = samples written / wall time from the first worker's start to the last one's end
(process start-up and imports excluded; the index open, table scan and retrieval included).
CPU seconds (builders + service) are reported too: on a shared machine they, not wall time, say
what 2 idle cores would do. Every run's tars are compared byte for byte with the first run's.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from base.tar import iter_samples  # noqa: E402
from data_pipelines import shards as fmt  # noqa: E402
from data_pipelines.build_shards import ShardBuildConfig, build_shards  # noqa: E402


def _worker(cfg: ShardBuildConfig) -> tuple[float, float, float, int]:
    t0, c0 = time.time(), time.process_time()
    build_shards(cfg)
    t1, c1 = time.time(), time.process_time()
    written = sum(len(list(iter_samples(p))) for p in fmt.list_shards(cfg.out)
                  if fmt.shard_index(p.name) % cfg.num_workers == cfg.worker_rank)
    return t0, t1, c1 - c0, written


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run(base: ShardBuildConfig, out: Path, workers: int, **kw) -> tuple[float, float, int]:
    """-> (wall s, worker CPU s, samples written)."""
    shutil.rmtree(out, ignore_errors=True)
    cfgs = [ShardBuildConfig(**{**vars(base), **kw, "out": str(out), "worker_rank": r, "num_workers": workers})
            for r in range(workers)]
    pool = mp.get_context("spawn").Pool(workers)
    results = pool.map(_worker, cfgs)
    pool.close()
    pool.join()
    wall = max(r[1] for r in results) - min(r[0] for r in results)
    return wall, sum(r[2] for r in results), sum(r[3] for r in results)


def _start_service(index: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "retrieval.serve", "--index", str(index), "--port", "0"],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    line = proc.stdout.readline()
    if not line.startswith("retrieval service on "):
        proc.kill()
        raise RuntimeError(f"service did not start: {line!r}")
    from retrieval import RetrieverClient

    url = line.split()[3]
    RetrieverClient(url, retries=40, backoff=0.05).health()  # wait until it answers
    return proc, url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default="outputs/bench_shards/world")
    ap.add_argument("--videos", type=int, default=2000)
    ap.add_argument("--memory", type=int, default=10000)
    ap.add_argument("-k", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=250)
    ap.add_argument("--out", default="outputs/bench_shards/runs")
    args = ap.parse_args()
    world, out = Path(args.world), Path(args.out)
    if not (world / "world.json").is_file():
        subprocess.run([sys.executable, "-m", "data_pipelines.shapeworld", "--out", str(world), "--videos",
                        str(args.videos), "--memory", str(args.memory), "--seed", "0"], check=True)
    index = world.parent / f"{world.name}-index"
    if not (index / "index.json").is_file():
        from data_pipelines.build_index import index_memory
        from retrieval import BuildConfig

        index_memory(BuildConfig(memory=str(world / "memory.parquet"), out=str(index), progress=False, overwrite=True))
    base = ShardBuildConfig(videos=str(world / "videos.parquet"), index=str(index), out="", k=args.k,
                            shard_size=args.shard_size, progress=False)
    runs = [("in-process", 1, "decode"), ("in-process", args.workers, "decode"), ("in-process", args.workers, "header"),
            ("http", 1, "decode"), ("http", args.workers, "decode")]
    rows, reference = [], None
    service = None
    try:
        for name, workers, verify in runs:
            kw = {"verify": verify}
            if name == "http":
                if service is None:
                    service = _start_service(index)
                kw.update(index=None, retriever=service[1])
            folder = out / f"{name}-{workers}w-{verify}"
            server_cpu0 = _proc_cpu(service[0].pid) if name == "http" else 0.0
            wall, cpu, n = _run(base, folder, workers, **kw)
            cpu += _proc_cpu(service[0].pid) - server_cpu0 if name == "http" else 0.0
            tars = {p.name: p.read_bytes() for p in fmt.list_shards(folder)}
            if verify == "decode":
                reference = reference or tars
                same = "yes" if tars == reference else "NO"
            else:
                same = "n/a"
            rows.append((name, workers, verify, n, wall, n / wall, cpu, same))
            print(f"  {name:10s} workers={workers} verify={verify}: {n} samples in {wall:.2f} s", file=sys.stderr)
    finally:
        if service is not None:
            service[0].terminate()
            service[0].wait(10)
    print(f"\nShard building, K={args.k}, ShapeWorld world {world} ({rows[0][3]} samples), "
          f"{mp.cpu_count()} cores visible\n")
    print("| retriever  | workers | video check | samples | wall s | samples/s | CPU s | samples/CPU-s | same tars |")
    print("|------------|---------|-------------|---------|--------|-----------|-------|---------------|-----------|")
    for name, workers, verify, n, wall, rate, cpu, same in rows:
        print(f"| {name:10s} | {workers:7d} | {verify:11s} | {n:7d} | {wall:6.2f} | {rate:9.0f} | {cpu:5.1f} "
              f"| {n / cpu:13.0f} | {same:9s} |")
    print("\nCPU s: builder processes plus, for http, the service process. With the cores to itself, 2 builder\n"
          "processes reach about 2 x samples/CPU-s; the wall-clock column depends on what else the machine runs.")


if __name__ == "__main__":
    main()
