"""EDM's stochastic Heun sampler (Karras et al. 2022, Algorithm 2) on ρ-spaced steps (eq. 5).

The sampler integrates the probability-flow ODE in the network's input space y = x/σ_in + σε
(Snap Video's input scaling): it starts from y = σ_max ε, uses ``denoise(...) / σ_in`` as the
denoised y, and multiplies the final y by σ_in. It knows nothing of the preconditioning or the
backbone: ``denoise(x_noisy, sigma (B,), sigma_in=...)`` returns the clean-x estimate D.

Noise comes from one generator per sample seed (initial noise and churn), so a sample does not
change with the batch it is drawn in (EDM's generate.py, StackedRandomGenerator).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from vimi.diffusion.precond import per_sample
from vimi.diffusion.rng import make_generators, randn_per_sample, share_across_frames


@dataclass
class SamplerConfig:
    """Sampling settings (stored in the pipeline's config.json)."""

    num_steps: int = 32                # Heun steps N; NFE = 2N − 1 denoiser calls
    sigma_min: float = 0.002           # EDM Table 1 (sampling)
    sigma_max: float = 80.0
    rho: float = 7.0                   # step spacing exponent (EDM eq. 5)
    S_churn: float = 0.0               # total stochasticity; 0 = deterministic ODE sampler
    S_min: float = 0.0                 # churn only for σ in [S_min, S_max]
    S_max: float = math.inf
    S_noise: float = 1.0               # scale of the churn noise (EDM Table 5: slightly > 1 helps)
    guidance_scale: float = 3.0        # classifier-free guidance w; 1 = conditional only (one pass)
    # Guidance only for σ in [guidance_sigma_min, guidance_sigma_max], the conditional half alone elsewhere
    # (Kynkäänniemi et al., NeurIPS 2024: guidance at high σ pulls samples to a few modes, at low σ it does little).
    guidance_sigma_min: float = 0.0
    guidance_sigma_max: float = math.inf
    dynamic_threshold: float | None = None  # Imagen percentile (e.g. 0.995) to clamp x0; None = off
    threshold_floor: float = 1.0       # the clamp never goes below the data range [-1, 1]
    # Text-to-video in two draws (Emu Video's factorisation, Girdhar et al. 2023): a t2v clip, then the
    # prediction task from its first frame. The path is the prediction task's, which reads the motion word
    # where t2v's loss barely does (docs/learning.md, "Where the word can be learned").
    factorized: bool = False

    @property
    def guidance_interval(self) -> tuple[float, float]:
        return self.guidance_sigma_min, self.guidance_sigma_max

    def step_kwargs(self) -> dict:
        """The keyword arguments of :func:`edm_sampler` that this config sets."""
        return dict(num_steps=self.num_steps, sigma_min=self.sigma_min, sigma_max=self.sigma_max, rho=self.rho,
                    S_churn=self.S_churn, S_min=self.S_min, S_max=self.S_max, S_noise=self.S_noise)


class SamplerOutput(NamedTuple):
    samples: Tensor  # (B, ...) clean samples in data scale
    nfe: int         # number of denoiser calls (each one batched forward)


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> Tensor:
    """σ_0 = σ_max > ... > σ_{N-1} = σ_min, then σ_N = 0 (EDM eq. 5), shape (N + 1,)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    i = torch.arange(num_steps, dtype=dtype, device=device)
    ramp = i / max(num_steps - 1, 1)
    inv_min, inv_max = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (inv_max + ramp * (inv_min - inv_max)) ** rho
    return torch.cat([sigmas, torch.zeros_like(sigmas[:1])])


def heun_nfe(num_steps: int) -> int:
    """Denoiser calls of the Heun sampler: two per step except the last (Euler to σ = 0)."""
    return 2 * num_steps - 1


@torch.no_grad()
def edm_sampler(
    denoise: Callable[..., Tensor],       # denoise(x_noisy, sigma (B,), sigma_in=...) -> clean-x estimate
    noise: Tensor | None = None,          # (B, ...) initial noise (with the frame correlation), or None: from seeds
    *,
    shape: Sequence[int] | None = None,   # (B, ...) when drawing the initial noise from seeds
    seeds: Sequence[int] | None = None,   # one seed per sample: initial noise and churn noise
    num_steps: int = 32,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = math.inf,
    S_noise: float = 1.0,
    sigma_in: Tensor | float = 1.0,       # Snap Video input scale (scalar or (B,))
    frame_noise_share: float = 0.0,       # the noise correlation between frames that training used (EDMConfig)
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,   # integration dtype (EDM integrates in float64)
    progress: bool = False,
) -> SamplerOutput:
    """Sample with EDM's Heun 2nd-order sampler; returns the samples and the number of denoiser calls."""
    generators = None
    if noise is None:
        if shape is None or seeds is None:
            raise ValueError("give either `noise` or both `shape` and `seeds`")
        if len(seeds) != shape[0]:
            raise ValueError(f"{len(seeds)} seeds for a batch of {shape[0]}")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        generators = make_generators(seeds, dev)
        noise = share_across_frames(randn_per_sample(shape, generators, dev, dtype), frame_noise_share)
    else:
        if seeds is not None:
            if len(seeds) != noise.shape[0]:
                raise ValueError(f"{len(seeds)} seeds for a batch of {noise.shape[0]}")
            generators = make_generators(seeds, noise.device)
        noise = noise.to(device=device or noise.device, dtype=dtype)
    B, nd = noise.shape[0], noise.ndim
    s_in = per_sample(sigma_in, B, nd, noise)                                   # (B, 1, ..., 1)
    t_steps = karras_sigmas(num_steps, sigma_min, sigma_max, rho, dtype, noise.device)
    nfe = 0

    def denoised_y(y: Tensor, t: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        D = denoise(y, t.expand(B), sigma_in=s_in.reshape(B)).to(dtype)       # clean-x estimate
        return D / s_in                                                         # in y = x/σ_in space

    y_next = noise * t_steps[0]
    steps = range(num_steps)
    for i in tqdm(steps, desc="sampling", disable=not progress, leave=False):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        y_cur = y_next
        # Churn (Algorithm 2 lines 4-6): raise σ by γ and add matching fresh noise.
        gamma = min(S_churn / num_steps, math.sqrt(2.0) - 1.0) if S_min <= float(t_cur) <= S_max else 0.0
        t_hat = t_cur + gamma * t_cur
        if gamma > 0:
            eps = share_across_frames(randn_per_sample(y_cur.shape, generators, y_cur.device, dtype), frame_noise_share)
            y_hat = y_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * eps
        else:
            y_hat = y_cur
        # Euler step (lines 7-8), then Heun's correction unless stepping to σ = 0 (lines 9-11).
        d_cur = (y_hat - denoised_y(y_hat, t_hat)) / t_hat
        y_next = y_hat + (t_next - t_hat) * d_cur
        if i < num_steps - 1:
            d_prime = (y_next - denoised_y(y_next, t_next)) / t_next
            y_next = y_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return SamplerOutput(y_next * s_in, nfe)
