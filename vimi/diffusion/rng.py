"""One random generator per sample, so a sample never depends on its batch (EDM's generate.py idea)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def make_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per seed, on ``device`` (draws then match the device's own RNG)."""
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(s))
        gens.append(g)
    return gens


def randn_per_sample(shape: Sequence[int], generators: Sequence[torch.Generator] | None,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal (B, ...) where row i comes from ``generators[i]`` (global RNG if None)."""
    shape = tuple(shape)
    if generators is None:
        return torch.randn(shape, device=device, dtype=dtype)
    if len(generators) != shape[0]:
        raise ValueError(f"need one generator per sample: {len(generators)} generators for batch {shape[0]}")
    # Draw in float32 then cast, so a float64 sampler sees the same noise as a float32 one.
    rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device=device, dtype=dtype)


def share_across_frames(noise: Tensor, share: float) -> Tensor:
    """Video noise (B, C, T, H, W) whose frames correlate by ``share`` (PYoCo's mixed noise).

    Ge et al. ("Preserve Your Own Correlation", ICCV 2023) give video frames noise with a component
    shared by all frames. Here the frames' own draws are split into their mean over T and the rest,
    and the two are rescaled so that every element stays N(0, 1) and any two frames correlate by ρ:
    no extra random numbers, and ρ = 0 returns the noise unchanged. The probability-flow ODE in D is
    the same for any fixed noise covariance, so the sampler only has to start from (and churn with)
    noise of the covariance that training used.
    """
    if not share or noise.ndim != 5 or noise.shape[2] < 2:
        return noise
    if not 0.0 <= share < 1.0:
        raise ValueError(f"frame noise share must be in [0, 1), got {share}")
    T = noise.shape[2]
    mean = noise.mean(dim=2, keepdim=True)
    # var(a·mean + b·rest) = (a² + b²(T−1))/T = 1 and cov between frames (a² − b²)/T = ρ.
    return (1.0 + share * (T - 1)) ** 0.5 * mean + (1.0 - share) ** 0.5 * (noise - mean)
