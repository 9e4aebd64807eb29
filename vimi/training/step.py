"""What one training example costs: condition → clean-frame input → EDM loss (the module DeepSpeed wraps).

Randomness is explicit, per sample: the noise level σ and ε come from one generator per sample
(seeded by run seed, step, rank, micro-batch and index) and the classifier-free-guidance dropout
from the same seeds. A resumed run therefore draws exactly what an uninterrupted one would,
regardless of the global RNG.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from vimi.diffusion import EDMLoss, make_generators


def sample_seeds(seed: int, step: int, rank: int, micro: int, batch: int) -> list[int]:
    """63-bit seeds for the samples of one micro-batch (independent streams, stable everywhere)."""
    ss = np.random.SeedSequence([seed, step, rank, micro])
    return [int(s) >> 1 for s in ss.generate_state(batch, dtype=np.uint64)]


def drop_mask(seeds: Sequence[int], p: float) -> Tensor:
    """(B,) bool: which samples lose their condition (CFG training, p = EDMConfig.cond_drop_prob)."""
    u = [np.random.default_rng([s, 1]).random() for s in seeds]
    return torch.tensor([x < p for x in u], dtype=torch.bool)


class TrainStep(nn.Module):
    """Per-sample EDM loss of a VimiModel on a batch; the only module handed to DeepSpeed."""

    def __init__(self, model: nn.Module, loss: EDMLoss, sigma_in: float):
        super().__init__()
        self.model = model      # VimiModel (its frozen parts hidden from the module tree, see frozen.py)
        self.loss = loss
        self.sigma_in = sigma_in

    def forward(self, video: Tensor, prompts: list, given_frames: Tensor, drop: Tensor,
                seeds: Sequence[int]) -> Tensor:
        """video (B, 3, T, H, W) pixels in [-1, 1], prompts (B), given_frames (B,) count of clean leading
        frames shown to the model, drop (B,) bool -> loss (B,)."""
        model = self.model
        C, mask = model.condition(prompts, drop=drop)                 # (B, L, D), (B, L)
        x = model.to_latent(video)                                    # latent mode: (B, c, T, h, w)
        frame_cond = model.given_frame_condition(x, given_frames)                 # (B, c + 1, T, h, w)
        dtype = next(p.dtype for p in model.net.parameters())
        generators = make_generators(seeds, device=x.device)

        def denoise(x_noisy: Tensor, sigma: Tensor, sigma_in=None) -> Tensor:
            # EDMPrecond casts x to the backbone dtype itself; the side inputs are cast here.
            return model(x_noisy, sigma, C.to(dtype), mask, frame_cond.to(dtype), sigma_in=sigma_in)

        return self.loss(denoise, x, sigma_in=self.sigma_in, generators=generators,
                         given=given_frames > 0, pixels=video)  # (B,)
