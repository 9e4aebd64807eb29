"""EMA of the trained weights, correct under ZeRO-3.

EDM (and most diffusion code) keeps ``ema = deepcopy(net)`` and lerps every parameter toward the
live one. Under ZeRO-3 that is wrong: each rank holds only a slice of every parameter (the live
tensor is empty outside a forward). Here the average lives on rank 0 as a full copy of the
*trainable* modules only (frozen modules are shared, not copied), and each update gathers the
live parameters with ``deepspeed.zero.GatheredParameters`` — a collective, so every rank calls
:meth:`update`, but only rank 0 does arithmetic. Without ZeRO-3 there is nothing to gather.
"""
from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Iterable

import torch
from torch import nn


def shared_copy(model: nn.Module, share: Iterable[nn.Module]) -> nn.Module:
    """deepcopy of ``model`` whose tensors are its own, except inside ``share`` (frozen modules),
    which are shared, as are plain attributes (configs, tokenizers, temp-folder handles): only
    weights differ between a model and its EMA twin."""
    memo: dict[int, object] = {}
    for m in share:
        memo[id(m)] = m
        for t in list(m.parameters()) + list(m.buffers()):
            memo[id(t)] = t
    for m in model.modules():
        for value in vars(m).values():
            if not isinstance(value, (dict, list, set, tuple, torch.Tensor, nn.Module)):
                memo[id(value)] = value
    return copy.deepcopy(model, memo)


def is_zero3_param(p: torch.Tensor) -> bool:
    return hasattr(p, "ds_id")


def gathered(params: list[nn.Parameter]):
    """Full values of (possibly ZeRO-3 partitioned) parameters inside the context, read-only."""
    if any(is_zero3_param(p) for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return nullcontext()


class EMA:
    """EMA of the named trainable parameters of a live model.

    ``average`` (rank 0 only, else None) is a module whose parameters hold the average; it is a
    whole model ready for sampling and export.
    """

    def __init__(self, names: list[str], average: nn.Module | None, decay: float = 0.999, warmup: bool = True,
                 chunk_numel: int = 50_000_000):
        self.names = list(names)
        self.average = average
        self.decay, self.warmup = float(decay), bool(warmup)
        self.chunk_numel = chunk_numel  # bound the memory of one gather under ZeRO-3
        self.updates = 0
        if average is not None:
            own = dict(average.named_parameters())
            missing = [n for n in self.names if n not in own]
            if missing:
                raise KeyError(f"EMA model lacks trained parameters {missing[:5]}")
            self._avg = [own[n] for n in self.names]
            for p in self._avg:
                p.requires_grad_(False)
                p.data = p.data.float()  # the average is kept in float32 whatever the training dtype

    def beta(self) -> float:
        """β at this update; with warmup, (1+t)/(10+t) caps it early on (the init is forgotten fast)."""
        t = self.updates
        return min(self.decay, (1.0 + t) / (10.0 + t)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, live: dict[str, nn.Parameter]) -> None:
        """Move the average toward the live parameters (name -> parameter). Call on every rank."""
        beta = self.beta()
        params = [live[n] for n in self.names]
        for lo, hi in self._chunks(params):
            chunk = params[lo:hi]
            with gathered(chunk):
                if self.average is not None:
                    for avg, p in zip(self._avg[lo:hi], chunk):
                        avg.lerp_(p.detach().to(device=avg.device, dtype=avg.dtype), 1.0 - beta)
        self.updates += 1

    def _chunks(self, params: list[nn.Parameter]):
        lo, size = 0, 0
        for i, p in enumerate(params):
            n = p.ds_numel if is_zero3_param(p) else p.numel()
            if size and size + n > self.chunk_numel:
                yield lo, i
                lo, size = i, 0
            size += n
        if lo < len(params):
            yield lo, len(params)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """name -> float32 average (rank 0)."""
        if self.average is None:
            raise RuntimeError("the EMA lives on rank 0")
        return {n: p.detach().cpu().contiguous() for n, p in zip(self.names, self._avg)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        self.updates = int(updates)
        if self.average is None:
            return
        missing, unexpected = set(self.names) - set(state), set(state) - set(self.names)
        if missing or unexpected:
            raise KeyError(f"EMA state mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        for n, p in zip(self.names, self._avg):
            if tuple(state[n].shape) != tuple(p.shape):
                raise ValueError(f"EMA {n}: checkpoint shape {tuple(state[n].shape)} != model {tuple(p.shape)}")
            p.copy_(state[n].to(p.device, p.dtype))
