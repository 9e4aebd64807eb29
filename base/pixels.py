"""Pixels on disk vs pixels in the model: uint8 (..., T, H, W, 3) <-> float (..., 3, T, H, W) in [-1, 1].

Files, shards and renderers hold channels-last uint8 frames; the diffusion model works on
channels-first floats in [-1, 1] (EDM's data range). Both directions live here so a clip written
by the sampler decodes to the values training saw.
"""
from __future__ import annotations

import numpy as np
import torch


def to_model_video(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (..., T, H, W, 3) -> float32 (..., 3, T, H, W) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(frames)).float() / 127.5 - 1.0
    return x.movedim(-1, -4).contiguous()


def to_uint8_video(video: torch.Tensor) -> np.ndarray:
    """float (..., 3, T, H, W), clamped to [-1, 1] -> uint8 (..., T, H, W, 3), rounded to nearest."""
    v = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.movedim(-4, -1).cpu().numpy()
