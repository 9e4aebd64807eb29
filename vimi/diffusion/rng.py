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
