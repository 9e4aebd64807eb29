"""Optimizer side of a run: weight-decay groups, warmup + cosine LR, and the DeepSpeed config.

The DeepSpeed JSON (``configs/deepspeed/*.json``) says how to distribute: ZeRO stage, precision,
communication. Batch sizes, the optimizer, clipping and the schedule come from ``TrainConfig`` and
are written into it here, so each setting has one home; a JSON that sets them is refused.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from base.config import ConfigError
from vimi.training.config import OptimConfig, TrainConfig
from vimi.training.distributed import PROJECT_ROOT

# Keys of the DeepSpeed JSON that TrainConfig owns.
OWNED_KEYS = ("optimizer", "scheduler", "train_batch_size", "train_micro_batch_size_per_gpu",
              "gradient_accumulation_steps", "gradient_clipping")


class WarmupCosine:
    """LR multiplier: linear warmup from 0, then cosine decay to ``min_ratio`` at ``total`` steps.

    A callable object (not a lambda) so LambdaLR's state_dict records it in checkpoints.
    """

    def __init__(self, warmup: int, total: int, min_ratio: float, cosine: bool = True):
        self.warmup, self.total, self.min_ratio, self.cosine = int(warmup), int(total), float(min_ratio), bool(cosine)

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if not self.cosine:
            return 1.0
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def scheduler_factory(cfg: OptimConfig, total_steps: int):
    """The callable deepspeed.initialize takes as ``lr_scheduler`` (it builds it on its optimizer)."""
    mult = WarmupCosine(cfg.warmup_steps, total_steps, cfg.min_lr_ratio, cfg.schedule == "cosine")
    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, mult)


def param_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Decay matrices only: biases, norm gains and 1-D embeddings keep their scale (nanoGPT, DiT)."""
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def resolve_precision(cfg: TrainConfig, ds: dict, device: torch.device) -> str:
    """"bf16" | "fp32": what the run computes in (bf16 where the accelerator has it, by default)."""
    want = cfg.run.precision
    if want == "auto":
        explicit = ds.get("bf16", {}).get("enabled")
        if explicit is not None:
            return "bf16" if explicit else "fp32"
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return "bf16" if cuda_bf16 else "fp32"
    return want


def deepspeed_config(cfg: TrainConfig, world_size: int, device: torch.device) -> dict:
    """Read ``run.deepspeed`` and fill in what TrainConfig owns."""
    path = Path(cfg.run.deepspeed)
    if not path.is_file() and not path.is_absolute() and (PROJECT_ROOT / path).is_file():
        path = PROJECT_ROOT / path  # the shipped configs/deepspeed/*.json, from any working directory
    if not path.is_file():
        raise ConfigError(f"run.deepspeed: no DeepSpeed JSON at {path}")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    clash = [k for k in OWNED_KEYS if k in ds]
    if clash:
        raise ConfigError(
            f"{path} sets {clash}; those come from the training config (optim.*) — remove them from the JSON"
        )
    o = cfg.optim
    precision = resolve_precision(cfg, ds, device)
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": precision == "bf16"}
    ds.update({
        "train_micro_batch_size_per_gpu": o.micro_batch,
        "gradient_accumulation_steps": o.accumulation,
        "train_batch_size": o.micro_batch * o.accumulation * world_size,
        "gradient_clipping": o.grad_clip,
        "optimizer": {"type": "AdamW", "params": {
            "lr": o.lr, "betas": list(o.betas), "eps": o.eps, "weight_decay": o.weight_decay,
            # torch's AdamW on CPU: DeepSpeed's fused kernel would need a JIT build for no gain.
            **({"torch_adam": True} if device.type != "cuda" else {}),
        }},
    })
    ds.setdefault("steps_per_print", 10 ** 9)  # our own logging; keep DeepSpeed quiet
    ds.setdefault("wall_clock_breakdown", False)
    return ds
