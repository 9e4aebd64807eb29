"""TrainConfig: every setting of a training run, one typed dataclass tree loaded from YAML.

    cfg = load_train_config("configs/shapeworld/pretrain.yaml", ["optim.lr=1e-4"])

The resolved config is saved as ``config.yaml`` in the run folder and inside every checkpoint,
so a run can be rebuilt exactly and a checkpoint from another config is refused (checkpoint.py).
The DeepSpeed JSON (``run.deepspeed``) only says *how* to distribute (ZeRO stage, precision,
communication); *what* to optimise (batch, lr, clipping) lives here, in one place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from base.config import ConfigError, config_source, load_config, save_config
from base.tasks import TASK_NAMES
from vimi.model import VimiConfig

STAGES = ("pretrain", "instruct")


@dataclass
class DataConfig:
    """Where the prompt shards are and how samples become training examples."""

    shards: list[str] = field(default_factory=list)  # shard files, folders of shard-*.tar, or globs
    tasks: dict[str, float] = field(default_factory=lambda: {t: 1.0 for t in TASK_NAMES})
    #                                 stage-2 task mix (VIMI sec. 3.2); stage 1 ignores it
    shuffle_buffer: int = 256       # samples held for the seeded shuffle (per dataloader worker)
    workers: int = 2                # dataloader worker processes per rank (0 = in the training process)
    prefetch: int = 2               # batches each worker prepares ahead
    max_contexts: int | None = None  # use at most this many retrieved pairs per sample (None = all stored)
    subject_field: str = "subject"  # attribute naming the subject in the caption (ShapeWorld: "Kiki")
    subject_phrase: str = "A <image>"  # what replaces that name in a subject-task caption
    subject_fallback: str = "{caption}, with <image>"  # caption when no subject name is known
    subject_crop: list[float] = field(default_factory=lambda: [0.5, 0.9])  # side fraction of the frame
    #                                 crop used as a reference when the source has none
    on_error: Literal["skip", "raise"] = "skip"  # corrupt samples: skip and count (docs/architecture.md) or stop
    index: str = ""                 # retrieval index (folder or service URL) the shards were built with:
    #                                 bundled into the exported pipeline so t2v retrieves at inference too
    allow_incomplete: bool = False  # train on a shard folder whose build did not finish (a warning, not an error)


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay, clipping and gradient accumulation."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-8
    weight_decay: float = 0.01       # not applied to biases, norms and 1-D parameters
    warmup_steps: int = 100          # linear warmup from 0 (optimizer steps)
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.1        # cosine floor as a fraction of lr
    grad_clip: float = 1.0           # global norm; 0 = off
    micro_batch: int = 4             # samples per rank per forward
    accumulation: int = 1            # micro-batches per optimizer step


@dataclass
class EMAConfig:
    """Exponential moving average of the trained weights (exported for inference)."""

    decay: float = 0.999             # β; the average spans ~1/(1-β) optimizer steps
    warmup: bool = True              # β_t = min(β, (1+t)/(10+t)): early averages forget the init faster
    every: int = 1                   # update every this many optimizer steps (gathers under ZeRO-3)


@dataclass
class SampleConfig:
    """Videos for fixed prompts during training, drawn with the EMA weights."""

    every: int = 0                   # optimizer steps between sample sets; 0 = off
    prompts: list[str] = field(default_factory=list)  # captions (t2v; stage 1 uses them as is)
    num_steps: int = 8               # Heun steps
    guidance: float = 3.0            # classifier-free guidance scale
    seed: int = 0                    # sample i uses seed + i, so videos are comparable across steps


@dataclass
class RunConfig:
    """Run folder, length, bookkeeping and the DeepSpeed side."""

    stage: Literal["pretrain", "instruct"] = "pretrain"
    out: str = "runs/shapeworld/pretrain"   # run folder: config, metrics, checkpoints, samples, pipeline
    steps: int = 1000                # optimizer steps in this stage
    save_every: int = 200            # checkpoint period in steps (also on SIGTERM and at the end)
    keep_checkpoints: int = 2        # older checkpoints are deleted once a newer one is complete
    log_every: int = 10              # metrics.jsonl / TensorBoard period
    seed: int = 0
    init: str | None = None          # stage-1 pipeline export to start from (required for "instruct")
    resume: str = "auto"             # "auto" (latest checkpoint of this run if any) | "never" | a checkpoint dir
    stop_at: int | None = None       # checkpoint and stop after this step, keeping the schedule of `steps`
    deepspeed: str = "configs/deepspeed/zero0.json"  # ZeRO stage / precision / communication JSON
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 where the accelerator supports it
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_threads: int | None = None   # intra-op threads per CPU rank; None: $OMP_NUM_THREADS, else cores / local ranks
    #                                 (1 is far faster on a machine busy with other work: OpenMP threads spin-wait)
    progress: bool = True            # tqdm bar on rank 0
    export: bool = True              # write the EMA pipeline folder at the end of the stage


@dataclass
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    model: VimiConfig = field(default_factory=VimiConfig)

    def validate(self) -> "TrainConfig":
        """Cross-field checks; each error names the setting, its value and what it must be."""
        r, o, d = self.run, self.optim, self.data
        for key in ("run.steps", "run.save_every", "run.log_every", "run.keep_checkpoints", "optim.micro_batch",
                    "optim.accumulation", "ema.every", "data.shuffle_buffer", "data.prefetch",
                    "model.max_cond_frames", "sample.num_steps"):
            _need(self._get(key) >= 1, key, self._get(key), ">= 1")
        for key in ("optim.warmup_steps", "optim.grad_clip", "data.workers", "sample.every"):
            _need(self._get(key) >= 0, key, self._get(key), ">= 0")
        _need(r.stop_at is None or 1 <= r.stop_at <= r.steps, "run.stop_at", r.stop_at,
              f"null or in [1, run.steps={r.steps}]")
        _need(o.lr > 0, "optim.lr", o.lr, "> 0")
        _need(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", o.min_lr_ratio, "in [0, 1]")
        _need(len(o.betas) == 2, "optim.betas", o.betas, "two values [beta1, beta2]")
        _need(0 <= self.ema.decay < 1, "ema.decay", self.ema.decay, "in [0, 1)")
        unknown = sorted(set(d.tasks) - set(TASK_NAMES))
        _need(not unknown, "data.tasks", d.tasks, f"tasks among {', '.join(TASK_NAMES)} (unknown task(s) {unknown})")
        _need(all(w >= 0 for w in d.tasks.values()) and (r.stage != "instruct" or sum(d.tasks.values()) > 0),
              "data.tasks", d.tasks, "weights >= 0 with a positive sum")
        _need(len(d.subject_crop) == 2 and 0 < d.subject_crop[0] <= d.subject_crop[1] <= 1, "data.subject_crop",
              d.subject_crop, "[lo, hi] with 0 < lo <= hi <= 1")
        for key in ("data.subject_phrase", "data.subject_fallback"):
            _need("<image>" in self._get(key), key, self._get(key), "a phrase containing <image>")
        _need(r.cpu_threads is None or r.cpu_threads >= 1, "run.cpu_threads", r.cpu_threads, ">= 1 or null")
        m = self.model
        _need(m.backbone_args.get("cond_pool") != "first" or m.mllm.caption_summary, "model.backbone_args.cond_pool",
              "first", "'mean' or 'attention' unless model.mllm.caption_summary is true (else C's first token is BOS)")
        _need(m.mllm.summary_images == "none" or m.mllm.caption_summary, "model.mllm.summary_images",
              m.mllm.summary_images,
              "'none' unless model.mllm.caption_summary is true (it adds to the caption's summary token)")
        _need("summary_tokens" not in m.backbone_args, "model.backbone_args.summary_tokens",
              m.backbone_args.get("summary_tokens"), "absent: it follows model.mllm.picture_token")
        _need(not m.mllm.picture_token or m.mllm.summary_images != "none", "model.mllm.picture_token", True,
              "false unless model.mllm.summary_images is 'in_caption' or 'all' (the token it adds)")
        return self

    def _get(self, key: str):
        section, name = key.split(".")
        return getattr(getattr(self, section), name)


def _need(ok: bool, key: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: got {value!r}, expected {expected}", key=key)


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None,
                      stage: str | None = None) -> TrainConfig:
    """YAML + ``a.b=value`` overrides -> validated TrainConfig (``stage`` checks the launcher matches)."""
    cfg = load_config(TrainConfig, path, overrides)
    try:
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{config_source(path, overrides, e.key)}: {e}", key=e.key) from None
    if stage is not None and cfg.run.stage != stage:
        raise ConfigError(f"{path}: run.stage is {cfg.run.stage!r} but this launcher trains stage {stage!r}; "
                          f"use launch/{'pretrain' if cfg.run.stage == 'pretrain' else 'instruct_tune'}.py")
    return cfg


__all__ = ["DataConfig", "OptimConfig", "EMAConfig", "SampleConfig", "RunConfig", "TrainConfig",
           "load_train_config", "save_config", "ConfigError", "STAGES"]
