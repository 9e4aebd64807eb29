"""The one training loop of both VIMI stages (docs/architecture.md, Training); the stage is a config.

    result = train(load_train_config("configs/shapeworld/pretrain.yaml"))

Per run: build the model (optionally from a stage-1 export, ``run.init``), freeze all but its
trainable parameters and hide the frozen MLLM from DeepSpeed (frozen.py), keep an EMA on rank 0
(ema.py), wrap :class:`~vimi.training.step.TrainStep` in a DeepSpeed engine (ZeRO stage and
precision from the JSON; batch, AdamW, clipping and warmup+cosine from TrainConfig), resume from
the latest checkpoint when there is one, then step: gradient accumulation over micro-batches,
EMA update, metrics, samples, checkpoints (every ``save_every`` steps, on SIGTERM, at the end),
and finally export the EMA weights as an inference pipeline folder.
"""
from __future__ import annotations

import json
import logging
import math
import resource
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from base.config import save_config, to_dict
from vimi.training import checkpoint as ckpt
from vimi.training.config import TrainConfig
from vimi.training.distributed import DistInfo, cpu_threads, setup_env

log = logging.getLogger("vimi.training")


@dataclass
class TrainResult:
    run_dir: Path
    step: int                                  # last completed optimizer step
    losses: dict[int, float] = field(default_factory=dict)  # step -> mean loss over ranks and micro-batches
    interrupted: bool = False                  # stopped by SIGTERM or run.stop_at before run.steps
    checkpoint: Path | None = None
    pipeline: Path | None = None               # exported EMA pipeline (end of stage, rank 0)
    counts: dict[str, int] = field(default_factory=dict)  # data: ok / skipped/<reason>


class StopFlag:
    """SIGTERM -> finish the current step, checkpoint, exit (the launcher gives a grace period)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def install(self) -> "StopFlag":
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. some test runners): no signal handling
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def pick_device(cfg: TrainConfig, info: DistInfo) -> torch.device:
    want = cfg.run.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("run.device=cuda but no CUDA device is available")
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    torch.set_num_threads(cfg.run.cpu_threads or cpu_threads(info))
    return torch.device("cpu")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _all_reduce(values: list[float], device: torch.device, op: str = "sum") -> list[float]:
    """Sum (or max) of a fixed-length vector over ranks."""
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def _sum_dicts(d: dict[str, float]) -> dict[str, float]:
    """Key-wise sum of a small dict over ranks (keys may differ: a task or skip reason seen on one rank only)."""
    import torch.distributed as dist

    parts = [d]
    if dist.is_initialized() and dist.get_world_size() > 1:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, d)
    out: dict[str, float] = defaultdict(float)
    for part in parts:
        for k, v in part.items():
            out[k] += v
    return dict(out)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) one training stage. Every rank calls this; rank 0 writes the shared files."""
    cfg.validate()
    info = setup_env()
    rank, world = info.rank, info.world_size
    run_dir = Path(cfg.run.out)
    ckpt_root = run_dir / "checkpoints"
    cfg_dict = to_dict(cfg)

    # 1. Checks that need no heavy import: a checkpoint from another config or a missing --init
    #    must fail before minutes of building.
    from vimi.training.build import build_stream, build_training_model, check_init
    from vimi.training.data import shard_urls
    from vimi.training.optim import deepspeed_config, param_groups, scheduler_factory
    from vimi.training.shard_check import check_shards

    device = pick_device(cfg, info)
    ds_config = deepspeed_config(cfg, world, device)
    layout = {"zero_stage": int(ds_config.get("zero_optimization", {}).get("stage", 0)),
              "precision": "bf16" if ds_config["bf16"]["enabled"] else "fp32"}
    resume_path = ckpt.resolve_resume(cfg.run.resume, ckpt_root)
    train_state = ckpt.read_train_state(resume_path, cfg_dict, world, layout) if resume_path else None
    check_init(cfg, resuming=resume_path is not None)
    check_shards(cfg.data.shards, shard_urls(cfg.data.shards), cfg.data.allow_incomplete)

    import deepspeed  # after setup_env: the accelerator and the op cache are chosen from the environment

    from vimi.training.ema import EMA
    from vimi.training.loader import DataFeed, StreamState
    from vimi.training.metrics import MetricsLog, plot_loss_curve
    from vimi.training.samples import export_pipeline, write_samples
    from vimi.training.step import TrainStep, drop_mask, sample_seeds

    logging.basicConfig(level=logging.INFO if info.is_main else logging.WARNING, format="[%(name)s] %(message)s")
    if train_state and train_state["harmless_differences"] and info.is_main:
        log.warning("resuming with changed settings:\n  %s", "\n  ".join(train_state["harmless_differences"]))
    ckpt.seed_everything(cfg.run.seed + rank)

    # 2. Model, frozen parts out of DeepSpeed's sight, EMA, engine. The model is built before the
    #    process group exists: transformers' save_pretrained writes on rank 0 only once one does,
    #    and the MLLM may be written to a per-process folder while it is built.
    # A tuned run's frozen base is hidden from DeepSpeed (not in its checkpoints): it comes from the
    # export on resume too, and the checkpoint then restores what was tuned.
    init = cfg.run.init if resume_path is None or cfg.model.tuning != "full" else None
    built = build_training_model(cfg, device, init=init, with_ema=info.is_main)
    if not torch.distributed.is_initialized():
        if world == 1 and device.type == "cpu":
            # DeepSpeed's shared-memory allreduce op serves CPU ranks that talk to each other; one rank has
            # nobody to talk to, yet would compile it (~30 s of the demo's first stage on a fresh machine).
            # DeepSpeed keeps this probe result in one module dict, read when the backend is built.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    step_module = TrainStep(built.model, built.loss, built.sigma_in)
    named = [(n, p) for n, p in step_module.named_parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(
        model=step_module, model_parameters=param_groups(named, cfg.optim.weight_decay), config=ds_config,
        lr_scheduler=scheduler_factory(cfg.optim, cfg.run.steps), dist_init_required=False)
    ema = EMA(built.trainable_names, built.ema_model, cfg.ema.decay, cfg.ema.warmup)
    wanted = set(ema.names)
    live = {n[len("model."):]: p for n, p in engine.module.named_parameters() if n[len("model."):] in wanted}
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        (run_dir / "deepspeed.json").write_text(json.dumps(ds_config, indent=2) + "\n")
        log.info("parameters: %s trainable, %s frozen (%s hidden from DeepSpeed); precision %s; ZeRO stage %s; "
                 "world size %d", f"{built.n_trainable:,}", f"{built.n_frozen:,}", f"{built.n_hidden:,}",
                 "bf16" if ds_config["bf16"]["enabled"] else "fp32", engine.zero_optimization_stage(), world)

    start, stream_state = 0, None
    if resume_path:
        rank_state = ckpt.load(engine, resume_path, rank=rank, ema=ema, ema_updates=train_state["ema_updates"])
        start, stream_state = train_state["step"], StreamState.from_dict(rank_state["data"])
        if info.is_main:
            log.info("resumed from %s at step %d", resume_path, start)

    # 3. Data.
    feed = DataFeed(build_stream(cfg, rank, world, stream_state), prefetch=cfg.data.prefetch)

    # 4. Loop.
    metrics = MetricsLog(run_dir, info.is_main, resume_step=start)
    stop = StopFlag().install()
    result = TrainResult(run_dir=run_dir, step=start)
    bar = None
    if info.is_main and cfg.run.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.run.steps, initial=start, desc=f"{cfg.run.stage}", unit="step", dynamic_ncols=True)
    samples_per_step = cfg.optim.micro_batch * cfg.optim.accumulation * world
    window = {"t": time.time(), "steps": 0, "data_s": 0.0}
    pending: list[tuple[list[str], torch.Tensor]] = []   # (tasks, per-sample losses) since the last log
    engine.train()
    step = start
    try:
        while step < cfg.run.steps:
            for micro in range(cfg.optim.accumulation):
                t_data = time.time()
                batch = next(feed)
                window["data_s"] += time.time() - t_data
                video = batch["video"].to(device, non_blocking=True)                 # (B, 3, T, H, W)
                seeds = sample_seeds(cfg.run.seed, step, rank, micro, video.shape[0])
                drop = drop_mask(seeds, cfg.model.edm.cond_drop_prob).to(device)
                per_sample = engine(video, batch["prompts"], batch["given_frames"].to(device), drop, seeds)  # (B,)
                engine.backward(per_sample.mean())
                if engine.is_gradient_accumulation_boundary():
                    window["lr"] = float(engine.get_lr()[0])   # the LR this optimizer step uses
                    window["grad_norm"] = _grad_norm(named)    # before the step zeroes the gradients
                engine.step()
                pending.append((batch["tasks"], per_sample.detach()))  # read back at log time (no sync here)
            step += 1
            window["steps"] += 1
            if step % cfg.ema.every == 0:
                ema.update(live)
            # One small collective per step: every rank learns whether any rank got SIGTERM.
            stopping = _all_reduce([float(stop.requested)], device, "max")[0] > 0 or step == cfg.run.stop_at
            if bar is not None:
                bar.update(1)
            if step % cfg.run.log_every == 0 or step == cfg.run.steps or stopping:
                row = _log_row(pending, window, samples_per_step, engine, feed, device)
                result.losses[step] = row["loss"]
                metrics.log(step, row)
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.4f}", sps=f"{row['samples_per_s']:.1f}")
                pending.clear()
                window.update(t=time.time(), steps=0, data_s=0.0)
                window.pop("grad_norm", None)
            t_pause = time.time()  # samples and checkpoints do not count against throughput
            if cfg.sample.every and step % cfg.sample.every == 0 and info.is_main:
                write_samples(ema.average, cfg, step, run_dir, metrics)
            if step % cfg.run.save_every == 0 or step == cfg.run.steps or stopping:
                result.checkpoint = ckpt.save(
                    engine, ckpt_root, step, rank=rank, world_size=world, config=cfg_dict,
                    rank_state={"data": feed.state_dict(), "step": step}, ema=ema, keep=cfg.run.keep_checkpoints,
                    barrier=_barrier, layout=layout)
                if info.is_main:
                    plot_loss_curve(run_dir, title=f"{cfg.run.stage} ({run_dir.name})")
            window["t"] += time.time() - t_pause
            result.step = step
            if stopping:
                result.interrupted = step < cfg.run.steps
                if info.is_main:
                    log.info("stopping after step %d (%s); resume with the same command",
                             step, "SIGTERM" if stop.requested else "run.stop_at")
                break
        result.counts = feed.counts()
        if step == cfg.run.steps and cfg.run.export and info.is_main:
            result.pipeline = export_pipeline(ema, run_dir / "pipeline", cfg.data.index)
            log.info("exported EMA pipeline to %s", result.pipeline)
        _barrier()
    finally:
        stop.uninstall()
        feed.close()
        metrics.close()
        if bar is not None:
            bar.close()
    return result


def _grad_norm(named: list[tuple[str, torch.nn.Parameter]]) -> float | None:
    """Global L2 norm of full local gradients (None when ZeRO holds them elsewhere)."""
    grads = [p.grad.detach().float().norm() for _, p in named if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else None


def _log_row(pending: list, window: dict, samples_per_step: int, engine, feed, device) -> dict[str, Any]:
    """Mean losses over ranks since the last log, throughput, LR, grad norm, data counts, memory."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])   # key -> [sum, count]
    for tasks, losses in pending:
        for task, v in zip(tasks, losses.float().cpu().tolist()):   # the one device sync per log
            for key in ("loss", f"loss/{task}"):
                sums[key][0] += v
                sums[key][1] += 1
    totals = _sum_dicts({**{f"{k}#sum": v[0] for k, v in sums.items()}, **{f"{k}#n": v[1] for k, v in sums.items()},
                         **{f"data/{k}": float(v) for k, v in feed.counts().items()}})
    row: dict[str, Any] = {}
    for k in sorted(sums_keys(totals)):
        if totals.get(f"{k}#n"):
            row[k] = totals[f"{k}#sum"] / totals[f"{k}#n"]
    row.update({k: int(v) for k, v in sorted(totals.items()) if k.startswith("data/")})
    elapsed = max(time.time() - window["t"], 1e-9)
    row["samples_per_s"] = window["steps"] * samples_per_step / elapsed
    row["step_s"] = elapsed / max(window["steps"], 1)
    row["data_wait_frac"] = window["data_s"] / elapsed
    row["lr"] = window.get("lr", float("nan"))
    # DeepSpeed knows the norm when its optimizer wrapper clips (ZeRO, bf16); plain ZeRO-0 fp32 does not.
    gn = engine.get_global_grad_norm()
    gn = float(gn) if gn is not None else window.get("grad_norm")
    row["grad_norm"] = gn if gn is not None and math.isfinite(gn) else float("nan")
    row["peak_rss_mb"] = _all_reduce([peak_rss_mb()], device, "max")[0]
    if device.type == "cuda":
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return row


def sums_keys(totals: dict[str, float]) -> set[str]:
    return {k[: -len("#sum")] for k in totals if k.endswith("#sum")}
