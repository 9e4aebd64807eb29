"""``--dry-run``: build what a run would build, print parameter counts and a per-rank memory estimate.

Two ways to build:
- the real model (``VimiModel``, as training builds it) when its MLLM weights are at hand;
- ``meta=True``, or an MLLM folder that holds only ``config.json`` (a real-scale config on a
  machine without the 7B weights): FIT and the LLaVA are built on PyTorch's *meta* device from
  their configs — shapes without storage, nothing read or allocated — and the encoder's trained
  head (projection + null tokens, LoRA) is counted from the same configs.

Memory per rank (bytes; activations excluded — they depend on clip size and checkpointing):
weights p·N_t (/W under ZeRO-3), gradients p·N_t (/W from ZeRO-2), AdamW state 8·N_t plus an fp32
master copy 4·N_t when training in bf16 (/W from ZeRO-1), the EMA 4·N_t on rank 0, and the frozen
MLLM whole on every rank; p = 2 (bf16) or 4 (fp32).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vimi.training.config import TrainConfig

GiB = 2 ** 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class DryRun:
    trainable: int
    frozen: int
    parts: dict[str, tuple[int, int]]          # part -> (trainable, frozen)
    memory: dict[str, float]                   # item -> GiB per rank (rank 0)
    precision: str
    zero_stage: int
    world_size: int
    meta: bool
    data: str
    text: str = ""
    deepspeed: dict = field(default_factory=dict)


def _mllm_has_weights(path: str) -> bool:
    if not path:
        return True  # the built-in tiny default is built from config
    p = Path(path).expanduser()
    return p.is_dir() and (any(p.glob("*.safetensors")) or any(p.glob("*.bin")))


def _count(module: nn.Module) -> tuple[int, int]:
    return _count_params(list(module.parameters()))


def _meta_llava(cfg: TrainConfig) -> nn.Module:
    """The configured LLaVA on the meta device (config only, no weights)."""
    m = cfg.model.mllm
    with torch.device("meta"):
        if not m.path:
            from vimi.mllm.tiny import TinyLlavaConfig, tiny_llava

            return tiny_llava(m.seed, TinyLlavaConfig(image_size=m.image_size))[0]
        from transformers import AutoConfig, LlavaForConditionalGeneration

        from vimi.mllm.encoder import MLLMLoadError

        folder = Path(m.path).expanduser()
        if not (folder / "config.json").is_file():
            raise MLLMLoadError(f"model.mllm.path {m.path!r}: no config.json there (a LLaVA folder; "
                                "python -m vimi.mllm.align writes one)")
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        return LlavaForConditionalGeneration(config).to(getattr(torch, m.dtype))


def _meta_parts(cfg: TrainConfig) -> dict[str, tuple[int, int]]:
    """(trainable, frozen) per part, built on the meta device."""
    from vimi.model import build_tuned_backbone
    from vimi.models.adapters import FrameSlot

    bb_cfg = cfg.model.backbone_config()
    backbone, former = build_tuned_backbone(cfg.model, FrameSlot(), device="meta")
    llava = _meta_llava(cfg)
    m = cfg.model.mllm
    hidden = llava.config.text_config.hidden_size
    head = hidden * bb_cfg.cond_dim + bb_cfg.cond_dim + m.null_tokens * bb_cfg.cond_dim  # proj + null tokens
    if m.refiner_layers:
        from vimi.mllm.encoder import RefinerBlock

        with torch.device("meta"):
            block = RefinerBlock(bb_cfg.cond_dim, m.refiner_heads)
        head += m.refiner_layers * sum(p.numel() for p in block.parameters())
    n_llava = sum(p.numel() for p in llava.parameters())
    lora = 0
    if m.tuning == "lora":  # r (in + out) per targeted language-model linear
        for name, mod in llava.named_modules():
            if isinstance(mod, nn.Linear) and "language_model" in name and name.rsplit(".", 1)[-1] in m.lora_targets:
                lora += m.lora_r * (mod.in_features + mod.out_features)
    llava_trainable = n_llava if m.tuning == "full" else lora
    head_part = (head, 0) if cfg.model.tuning == "full" else (0, head)
    return {**_generator_parts(cfg, backbone, former), "MLLM head (projection, null, refiner)": head_part,
            f"MLLM ({m.tuning})": (llava_trainable, n_llava - (n_llava if m.tuning == "full" else 0))}


def _generator_parts(cfg: TrainConfig, backbone: nn.Module, former: nn.Module | None) -> dict[str, tuple[int, int]]:
    """The backbone (split into what tuning added and the rest) and the frame-query former."""
    from vimi.models.adapters import is_tuning_param

    m = cfg.model
    added = [p for n, p in backbone.named_parameters() if is_tuning_param(n)]
    ids = {id(p) for p in added}
    rest = [p for p in backbone.parameters() if id(p) not in ids]
    parts = {f"backbone ({m.backbone}, tuning {m.tuning})": _count_params(rest)}
    if added:
        parts["added by tuning (adapters / LoRA / frame-wise branch)"] = _count_params(added)
    if former is not None:
        parts["frame-wise query former"] = _count(former)
    return parts


def _count_params(params: list[nn.Parameter]) -> tuple[int, int]:
    t = sum(p.numel() for p in params if p.requires_grad)
    return t, sum(p.numel() for p in params) - t


def _real_parts(cfg: TrainConfig) -> dict[str, tuple[int, int]]:
    from vimi.model import VimiModel

    model = VimiModel(cfg.model)
    enc = model.encoder
    head = [p for n, p in enc.named_parameters() if not n.startswith("llava.")]   # projection, null, refiner
    llava_t, llava_f = _count(enc.llava)
    return {**_generator_parts(cfg, model.net.backbone, model.frame_cond),
            "MLLM head (projection, null, refiner)": _count_params(head),
            f"MLLM ({cfg.model.mllm.tuning})": (llava_t, llava_f)}


def memory_estimate(n_trainable: int, n_frozen: int, precision: str, zero: int, world: int,
                    frozen_bytes: int) -> dict[str, float]:
    p = 2 if precision == "bf16" else 4
    w = max(world, 1)
    est = {
        "trained weights": p * n_trainable / (w if zero >= 3 else 1),
        "gradients": p * n_trainable / (w if zero >= 2 else 1),
        "AdamW state (+ fp32 master)": (8 + (4 if p == 2 else 0)) * n_trainable / (w if zero >= 1 else 1),
        "EMA (rank 0, fp32)": 4.0 * n_trainable,
        "frozen MLLM": float(frozen_bytes * n_frozen),
    }
    est["total (without activations)"] = sum(est.values())
    return {k: v / GiB for k, v in est.items()}


def _data_check(cfg: TrainConfig) -> str:
    from vimi.training.build import build_stream
    from vimi.training.data import DataError, shard_urls

    try:
        urls = shard_urls(cfg.data.shards)
    except DataError as e:
        return f"not checked ({e})"
    try:
        batch = next(iter(build_stream(cfg, 0, 1, None)))  # in this process: no dataloader workers
    except Exception as e:  # noqa: BLE001 - a dry run reports what would fail
        return f"{len(urls)} shard(s); first batch FAILED: {type(e).__name__}: {e}"
    from vimi.mllm.prompt import render_text

    return (f"{len(urls)} shard(s); first batch video {tuple(batch['video'].shape)}, tasks {batch['tasks']}, "
            f"prompt[0]: {render_text(batch['prompts'][0])[:160]!r}")


def dry_run(cfg: TrainConfig, meta: bool = False, world_size: int | None = None) -> DryRun:
    import os

    from vimi.training.optim import deepspeed_config

    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    meta = meta or not _mllm_has_weights(cfg.model.mllm.path)
    parts = _meta_parts(cfg) if meta else _real_parts(cfg)
    n_t = sum(t for t, _ in parts.values())
    n_f = sum(f for _, f in parts.values())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ds = deepspeed_config(cfg, world, device)
    precision = "bf16" if ds["bf16"]["enabled"] else "fp32"
    zero = int(ds.get("zero_optimization", {}).get("stage", 0))
    memory = memory_estimate(n_t, n_f, precision, zero, world, DTYPE_BYTES[cfg.model.mllm.dtype])
    data = _data_check(cfg)
    lines = [f"VIMI dry run: stage {cfg.run.stage}, backbone {cfg.model.backbone}, MLLM "
             f"{cfg.model.mllm.path or '(built-in tiny LLaVA)'} [{cfg.model.mllm.tuning}]"
             f"{', built on the meta device (no weights)' if meta else ''}",
             f"{'part':40s} {'trainable':>15s} {'frozen':>15s}"]
    lines += [f"{k:40s} {t:>15,d} {f:>15,d}" for k, (t, f) in parts.items()]
    lines += [f"{'total':40s} {n_t:>15,d} {n_f:>15,d}", "",
              f"memory per rank estimate ({precision}, ZeRO-{zero}, world size {world}; activations not included):"]
    lines += [f"  {k:36s} {v * 1024:12.1f} MiB" for k, v in memory.items()]
    lines += ["", f"DeepSpeed config ({cfg.run.deepspeed}): " + json.dumps(ds, sort_keys=True), "", f"data: {data}"]
    return DryRun(trainable=n_t, frozen=n_f, parts=parts, memory=memory, precision=precision, zero_stage=zero,
                  world_size=world, meta=meta, data=data, text="\n".join(lines), deepspeed=ds)
