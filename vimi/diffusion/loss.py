"""EDM's training loss (Karras et al. 2022, eq. 8 and Table 1 "Training"), with Snap Video's input scale.

ln σ ~ N(P_mean, P_std²) (optionally a share from a second, high mode); the denoiser is trained to recover
x from x/σ_in + σε with weight λ(σ) = (σ² + σ_d²) / (σ σ_d)². The loss only calls
``net(x_noisy, sigma, sigma_in=..., **cond)`` and compares its output with x: it knows nothing of the
preconditioning inside ``net``.

λ(σ) is EDM's weight on D, kept as docs/architecture.md (The model) specifies. With σ_in = 1 it equals 1/c_out², i.e. a
unit-weight regression of F on its unit-variance target (EDM eq. 8 → Table 1). With σ_in ≠ 1 the
implied weight on F's error is σ_in² (σ²+σ_d²)² / (σ_d² + σ_in σ²)²: σ_in² at low σ, 1 at high σ.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from vimi.diffusion.precond import EDMConfig, per_sample, resolve_sigma_in
from vimi.diffusion.rng import randn_per_sample, share_across_frames


class EDMLoss:
    """Per-sample EDM loss; pass ``generators`` (one per sample) for reproducible σ and ε."""

    def __init__(
        self,
        P_mean: float = -1.2,     # mean of ln σ during training
        P_std: float = 1.2,       # std of ln σ during training
        sigma_data: float = 1.0,  # σ_d, std of the clean data
        sigma_in: float = 1.0,    # default input scale σ_in (Snap Video); override per call for other T
        foreground_weight: float = 0.0,  # extra weight α on pixels off their frame's dominant colour (see below)
        frame_noise_share: float = 0.0,  # ρ: noise correlation between a video's frames (rng.share_across_frames)
        high: tuple[float, float, float] = (0.0, 2.3, 0.5),  # (share, mean, std) of a second ln σ mode
        high_given_only: bool = False,   # ... drawn only by the samples the caller marks as given frames
    ):
        if P_std <= 0 or sigma_data <= 0 or sigma_in <= 0 or foreground_weight < 0:
            raise ValueError("P_std, sigma_data and sigma_in must be > 0, foreground_weight >= 0")
        if not 0.0 <= frame_noise_share < 1.0:
            raise ValueError(f"frame_noise_share must be in [0, 1), got {frame_noise_share}")
        if not 0.0 <= high[0] <= 1.0 or high[2] <= 0:
            raise ValueError(f"the high-σ mode needs a share in [0, 1] and a std > 0, got {high}")
        self.high = tuple(float(v) for v in high)
        self.high_given_only = bool(high_given_only)
        self.frame_noise_share = float(frame_noise_share)
        self.P_mean, self.P_std = float(P_mean), float(P_std)
        self.sigma_data, self.sigma_in = float(sigma_data), float(sigma_in)
        self.foreground_weight = float(foreground_weight)

    @classmethod
    def from_config(cls, cfg: EDMConfig, sigma_in: float | None = None) -> "EDMLoss":
        """``sigma_in`` overrides ``cfg.sigma_in``; one of them must be set (e.g. cfg.input_scale(T, H, W))."""
        return cls(cfg.P_mean, cfg.P_std, cfg.sigma_data, resolve_sigma_in(cfg, sigma_in), cfg.foreground_weight,
                   cfg.frame_noise_share, (cfg.P_high_share, cfg.P_high_mean, cfg.P_high_std), cfg.P_high_given_only)

    def __call__(self, net: Callable[..., Tensor], x: Tensor, *, sigma_in: Tensor | float | None = None,
                 generators: Sequence[torch.Generator] | None = None, given: Tensor | None = None,
                 pixels: Tensor | None = None, **cond) -> Tensor:
        """x: clean batch (B, ...) -> loss (B,), the weighted squared error averaged per sample. ``given`` (B,)
        bool marks the samples given frames, for ``high_given_only`` (None: every sample may draw the high mode).
        ``pixels``: the clean clips in pixel space when x is their latent, for ``foreground_weight`` (the object's
        mask is found in pixels and pooled to x's grid; None: found in x itself)."""
        B, nd = x.shape[0], x.ndim
        s_in = per_sample(self.sigma_in if sigma_in is None else sigma_in, B, nd, x)   # (B, 1, ..., 1)
        # Noise level first, then ε, from the same per-sample stream: fixed order keeps runs exact.
        z = randn_per_sample((B,), generators, x.device, x.dtype)
        ln_sigma = z * self.P_std + self.P_mean
        share, high_mean, high_std = self.high
        if share > 0:   # which mode, from the same stream (drawn only when there is a second mode)
            pick = torch.special.ndtr(randn_per_sample((B,), generators, x.device, x.dtype)) < share
            if self.high_given_only and given is not None:
                pick = pick & given.to(pick.device)
            ln_sigma = torch.where(pick, z * high_std + high_mean, ln_sigma)
        sigma = ln_sigma.exp().reshape(B, *([1] * (nd - 1)))                            # (B, 1, ..., 1)
        eps = share_across_frames(randn_per_sample(x.shape, generators, x.device, x.dtype), self.frame_noise_share)
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
        D = net(x / s_in + sigma * eps, sigma.reshape(B), sigma_in=s_in.reshape(B), **cond)
        if self.foreground_weight:
            weight = weight * foreground_weights(x, self.foreground_weight, pixels=pixels)
        return (weight * (D.to(x.dtype) - x) ** 2).reshape(B, -1).mean(dim=1)


def off_median_mask(x: Tensor, threshold: float = 0.3) -> Tensor:
    """(B, 1, [T,] H, W) bool: pixels whose colour is farther than ``threshold`` from their frame's median."""
    median = x.flatten(-2).median(-1).values[..., None, None]                  # (B, C, [T,] 1, 1)
    return (x - median).square().sum(1, keepdim=True).sqrt() > threshold


def foreground_mask(x: Tensor, pixels: Tensor | None = None, threshold: float = 0.3, dilate: int = 0) -> Tensor:
    """(B, 1, [T,] h, w) float in {0, 1} on x's grid: where the object is. Found off the frame's median colour in
    ``pixels`` (default: x itself, in [-1, 1]), grown by ``dilate`` pixels each way, then max-pooled to x's grid:
    in latent mode a latent cell counts as the object's if any of its pixels does. A latent's own median is no
    guide there: the scene's cells vary as much as the object's (half of them sit farther than 0.3 from the
    median on ShapeWorld's f = 4 latents, against the object's 17%)."""
    source = x if pixels is None else pixels
    mask = off_median_mask(source, threshold).to(x.dtype)
    flat = mask.reshape(-1, 1, *mask.shape[-2:])
    if dilate > 0:
        flat = F.max_pool2d(flat, 2 * dilate + 1, stride=1, padding=dilate)
    if flat.shape[-2:] != x.shape[-2:]:
        flat = F.adaptive_max_pool2d(flat, x.shape[-2:])
    return flat.reshape(*mask.shape[:-2], *x.shape[-2:])


def foreground_weights(x: Tensor, alpha: float, threshold: float = 0.3, dilate: int = 0,
                       pixels: Tensor | None = None) -> Tensor:
    """Per-element loss weights 1 + α·[element on the object] (:func:`foreground_mask`), normalised to mean 1
    per sample.

    x (B, C, [T,] H, W). On ShapeWorld the median colour is the scene's and the object covers
    7.6% of the pixels, so under a uniform loss the denoiser learns the background long before it learns
    to denoise objects (docs/learning.md). The mask needs no labels (only the clean clip), and where
    most pixels are off the median, as in natural video, the weights tend to uniform. ``dilate`` grows the
    mask by that many pixels each way, so the background an outline encloses or borders (a ring's hole, the
    notches of a cross) weighs as much as the object: what tells one shape from another is there.
    """
    w = 1.0 + alpha * foreground_mask(x, pixels, threshold, dilate)
    return w / w.flatten(1).mean(1).reshape(-1, *([1] * (x.ndim - 1)))
