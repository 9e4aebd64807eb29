"""Training throughput: samples/s and peak RSS at 1 and 2 ranks, with and without the MLLM state cache.

    python benchmarks/training.py [--shards DIR] [--steps 20] [--batch 8] [--out outputs/benchmarks]

1. Trains ``--steps`` optimizer steps of configs/shapeworld/pretrain.yaml's model (its backbone,
   32x32x8 clips, the built-in tiny LLaVA) with ``python launch/pretrain.py`` (1 rank) and
   ``deepspeed --num_gpus 2`` (2 ranks), through the real launchers; samples/s comes from the run's
   metrics.jsonl (the first log window, with start-up, is dropped); peak RSS is the largest total
   resident memory of the launched process tree (launcher, ranks, dataloader workers), sampled.
   The 1-rank run is repeated with the frozen MLLM's per-prompt state cache switched off
   (``model.mllm.cache_prompts=0``): the default steps read every synthetic prompt more than once.
2. Iterates the same data loader alone (same workers, batch, decoding, prompt formatting) and
   compares its samples/s with what a training step consumes: the goal is >= 3x.
Without ``--shards`` it writes synthetic shards in the real format (vimi.training.synthetic).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = str(ROOT / "configs" / "shapeworld" / "pretrain.yaml")


def common_overrides(shards: str, out: Path, steps: int, batch: int, workers: int) -> list[str]:
    log_every = max(1, steps // 4)
    return [f"data.shards=[{shards}]", f"data.workers={workers}", f"optim.micro_batch={batch}",
            f"run.steps={steps}", f"run.log_every={log_every}", f"run.save_every={steps}", "run.export=false",
            "run.progress=false", "sample.every=0", "model.mllm.path=", f"run.out={out}", "optim.warmup_steps=1"]


def watch_rss(proc: subprocess.Popen, peak: list[float], stop: threading.Event) -> None:
    import psutil

    try:
        root = psutil.Process(proc.pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        try:
            procs = [root] + root.children(recursive=True)
            total = sum(p.memory_info().rss for p in procs if p.is_running())
            peak[0] = max(peak[0], total / 2 ** 20)
        except psutil.Error:
            pass
        time.sleep(0.2)


def train_run(ranks: int, shards: str, out: Path, steps: int, batch: int, workers: int, threads: int | None,
              cache: bool = True) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(ROOT)
    sets = common_overrides(shards, out, steps, batch, workers) + ([f"run.cpu_threads={threads}"] if threads else [])
    sets += [] if cache else ["model.mllm.cache_prompts=0"]
    if ranks == 1:
        cmd = [sys.executable, "launch/pretrain.py", "--config", CONFIG, "--set", *sets]
    else:
        from vimi.training.distributed import free_port

        cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(ranks), "--master_port",
               str(free_port()), "launch/pretrain.py", "--config", CONFIG, "--set", *sets]
    peak, stop = [0.0], threading.Event()
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watcher = threading.Thread(target=watch_rss, args=(proc, peak, stop), daemon=True)
    watcher.start()
    log, _ = proc.communicate()
    stop.set()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{ranks}-rank run failed:\n{log[-4000:]}")
    from vimi.training.metrics import read_metrics

    rows = read_metrics(out)[1:] or read_metrics(out)  # drop the first window (start-up, first batches)
    sps = sum(r["samples_per_s"] for r in rows) / len(rows)
    import torch

    return {"ranks": ranks, "mllm_cache": cache,
            "threads_per_rank": threads or max(1, torch.get_num_threads() // ranks),
            "samples_per_s": sps, "step_s": sum(r["step_s"] for r in rows) / len(rows),
            "data_wait_frac": sum(r["data_wait_frac"] for r in rows) / len(rows),
            "peak_rss_tree_mb": peak[0], "peak_rss_rank_mb": rows[-1]["peak_rss_mb"], "wall_s": time.time() - t0,
            "final_loss": rows[-1]["loss"]}


def loader_run(shards: str, batches: int, batch: int, workers: int) -> dict:
    from vimi.training.build import build_stream
    from vimi.training.config import load_train_config
    from vimi.training.loader import DataFeed

    cfg = load_train_config(
        CONFIG, [f"data.shards=[{shards}]", f"data.workers={workers}", f"optim.micro_batch={batch}"]
    )
    feed = DataFeed(build_stream(cfg, 0, 1, None), prefetch=cfg.data.prefetch)
    next(feed)  # worker start-up
    t0 = time.time()
    for _ in range(batches):
        next(feed)
    dt = time.time() - t0
    feed.close()
    return {"batches": batches, "samples_per_s": batches * batch / dt, "workers": workers}


def make_shards(folder: Path, n_shards: int, per_shard: int) -> str:
    from vimi.training.synthetic import write_synthetic_shard

    for i in range(n_shards):
        write_synthetic_shard(folder / f"shard-{i:06d}.tar", per_shard, i * per_shard, frames=8, size=32)
    return str(folder)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", help="prompt shards to read (default: synthetic ones, written to a temp folder)")
    ap.add_argument("--steps", type=int, default=80, help="80 steps x batch 8 read the 256 synthetic samples 2.5 times")
    ap.add_argument("--batch", type=int, default=8, help="micro-batch per rank")
    ap.add_argument("--workers", type=int, default=1, help="dataloader workers per rank")
    ap.add_argument("--loader-batches", type=int, default=40)
    ap.add_argument("--out", default=str(ROOT / "outputs" / "benchmarks"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vimi-bench-") as tmp:
        shards = args.shards or make_shards(Path(tmp) / "shards", 4, 64)
        load = os.getloadavg()[0]
        # 1 rank with the default threads (all cores) with and without the MLLM cache, 1 rank with 1 thread,
        # 2 ranks (1 thread each on 2 cores)
        runs = [train_run(r, shards, Path(tmp) / f"run{r}_{t}_{c}", args.steps, args.batch, args.workers, t, c)
                for r, t, c in ((1, None, True), (1, None, False), (1, 1, True), (2, None, True))]
        loader = loader_run(shards, args.loader_batches, args.batch, args.workers)
    need = max(r["samples_per_s"] for r in runs if r["ranks"] == 1)  # the faster 1-rank setting
    from vimi.training.config import load_train_config

    backbone = load_train_config(CONFIG).model.backbone
    result = {"config": f"{backbone} 32x32x8, tiny LLaVA (frozen), fp32, ZeRO-0", "steps": args.steps,
              "micro_batch": args.batch, "workers": args.workers, "cpu_cores": os.cpu_count(),
              "load_average_at_start": load, "train": runs, "loader": loader,
              "loader_over_step": loader["samples_per_s"] / need}
    lines = [
        "| ranks | threads/rank | MLLM cache | samples/s (all ranks) | s/step | data wait "
        "| peak RSS, process tree | peak RSS, one rank |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['ranks']} | {r['threads_per_rank']} | {'on' if r['mllm_cache'] else 'off'} "
            f"| {r['samples_per_s']:.2f} | {r['step_s']:.2f} "
            f"| {100 * r['data_wait_frac']:.0f}% "
            f"| {r['peak_rss_tree_mb']:.0f} MiB | {r['peak_rss_rank_mb']:.0f} MiB |"
        )
    lines.append(f"\ndata loader alone ({args.workers} worker(s), batch {args.batch}): {loader['samples_per_s']:.1f} "
                 f"samples/s = {result['loader_over_step']:.1f}x what a 1-rank step consumes "
                 f"({'meets' if result['loader_over_step'] >= 3 else 'BELOW'} the 3x goal)")
    lines.append(f"(load average at start: {load:.1f} on {os.cpu_count()} cores)")
    result["table"] = "\n".join(lines)
    (out / "training.json").write_text(json.dumps(result, indent=2) + "\n")
    print(result["table"])
    return result


if __name__ == "__main__":
    main()
