"""Classifier-free guidance (Ho & Salimans 2022) and Imagen's dynamic thresholding (Saharia et al. 2022, "Imagen").

Conditions are dicts of keyword arguments for the denoiser (for FIT: ``cond`` (B, L, D),
``cond_mask`` (B, L), ``frame_cond``). Conditional and unconditional halves run as one batched forward;
sequences of different lengths are right-padded (zeros, mask False) so they stack. The same
padding serves training's condition dropout (:func:`drop_conditions`).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def _pad_dim1(t: Tensor, length: int) -> Tensor:
    """Right-pad dim 1 to ``length`` with zeros (False for bool masks: padding is never attended)."""
    if t.shape[1] == length:
        return t
    pad = t.new_zeros((t.shape[0], length - t.shape[1], *t.shape[2:]))
    return torch.cat([t, pad], dim=1)


def _aligned(a: Tensor, b: Tensor, key: str) -> tuple[Tensor, Tensor]:
    if a.ndim != b.ndim or a.shape[2:] != b.shape[2:] or a.dtype != b.dtype:
        raise ValueError(f"condition {key!r}: cannot combine {tuple(a.shape)} {a.dtype} "
                         f"with {tuple(b.shape)} {b.dtype}")
    if a.ndim >= 2 and a.shape[1] != b.shape[1]:
        length = max(a.shape[1], b.shape[1])
        return _pad_dim1(a, length), _pad_dim1(b, length)
    return a, b


def _combine(a: dict, b: dict, fn: Callable[[Tensor, Tensor], Tensor]) -> dict:
    """Apply ``fn`` key by key to two condition dicts after aligning sequence lengths; None stays None."""
    if set(a) != set(b):
        raise ValueError(f"conditional and null conditions have different keys: {sorted(a)} vs {sorted(b)}")
    out = {}
    for key in a:
        va, vb = a[key], b[key]
        if va is None or vb is None:
            if va is not None or vb is not None:
                raise ValueError(f"condition {key!r} is None on one side only")
            out[key] = None
        else:
            out[key] = fn(*_aligned(va, vb, key))
    return out


def concat_conditions(a: dict, b: dict) -> dict:
    """Stack two condition dicts along the batch (a first), padding sequence lengths to match."""
    return _combine(a, b, lambda va, vb: torch.cat([va, vb], dim=0))


def drop_conditions(cond: dict, null: dict, keep: Tensor) -> dict:
    """Per sample, ``cond`` where keep[i] else ``null`` (training's condition dropout, p = cond_drop_prob).

    ``null`` holds batch-size tensors of the null condition (for example the MLLM's encoded empty
    prompt, or an empty sequence with an all-False mask).
    """
    def pick(vc: Tensor, vn: Tensor) -> Tensor:
        return torch.where(keep.to(vc.device).reshape(-1, *([1] * (vc.ndim - 1))), vc, vn)
    return _combine(cond, null, pick)


def dynamic_threshold(x0: Tensor, percentile: float, floor: float = 1.0) -> Tensor:
    """Imagen's dynamic thresholding: per sample s = max(floor, quantile(|x0|, p)); clamp to [-s, s], divide by s."""
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must be in (0, 1], got {percentile}")
    B = x0.shape[0]
    s = torch.quantile(x0.reshape(B, -1).abs().float(), percentile, dim=1).to(x0.dtype)
    s = s.clamp(min=floor).reshape(B, *([1] * (x0.ndim - 1)))
    return x0.clamp(-s, s) / s * floor


class GuidedDenoiser:
    """D = D_u + w (D_c − D_u), both halves in one forward; optional dynamic thresholding of D.

    With ``uncond`` None or w == 1 it runs the conditional half only (half the compute), and so it does at a σ
    outside ``interval`` (guidance in a limited interval, Kynkäänniemi et al. 2024).
    ``calls`` counts forwards of ``net`` (the sampler's NFE when the sampler owns it).
    """

    def __init__(
        self,
        net: Callable[..., Tensor],           # net(x_noisy, sigma, sigma_in=..., **cond) -> D (e.g. EDMPrecond)
        cond: dict,                           # conditional kwargs, batch B
        uncond: dict | None = None,           # null-condition kwargs, batch B (same keys)
        guidance_scale: float = 1.0,          # w
        threshold: float | None = None,       # dynamic-thresholding percentile; None = off
        threshold_floor: float = 1.0,         # data range bound (our videos live in [-1, 1])
        interval: tuple[float, float] = (0.0, math.inf),  # σ range where guidance applies
    ):
        self.net, self.cond, self.uncond = net, cond, uncond
        self.scale = float(guidance_scale)
        self.threshold, self.floor = threshold, float(threshold_floor)
        self.guided = uncond is not None and self.scale != 1.0
        self.interval = interval
        self.both = concat_conditions(cond, uncond) if self.guided else None
        self.calls = 0

    def __call__(self, x: Tensor, sigma: Tensor, sigma_in: Tensor | float = 1.0) -> Tensor:
        self.calls += 1
        lo, hi = self.interval
        if not self.guided or not bool(((sigma >= lo) & (sigma <= hi)).all()):
            D = self.net(x, sigma, sigma_in=sigma_in, **self.cond)
        else:
            s_in = torch.as_tensor(sigma_in, device=x.device).expand(x.shape[0])
            D_c, D_u = self.net(torch.cat([x, x]), torch.cat([sigma, sigma]), sigma_in=torch.cat([s_in, s_in]),
                                **self.both).chunk(2)
            D = D_u + self.scale * (D_c - D_u)
        if self.threshold is not None:
            D = dynamic_threshold(D, self.threshold, self.floor)
        return D
