"""EDM preconditioning with Snap Video's input scaling.

EDM (Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS
2022) writes the denoiser as ``D(x; σ) = c_skip x + c_out F(c_in x; c_noise)`` (eq. 7) and picks
the coefficients so that F's input and training target both have unit variance (Table 1,
Appendix B.6). Snap Video (Menapace et al., CVPR 2024), extending EDM to video, notes that a
video (and an upsampled image) holds many redundant copies of each value, so a given σ destroys
far less information than on one image; it divides the clean signal by an input scale ``σ_in = s·√T`` (s: spatial
upscaling over the base resolution, T: frames) before noising, which moves every σ to a lower
signal-to-noise ratio. The network predicts ``v = σ_d² ε − σ x`` (normalised), so c_out has the
opposite sign of EDM's; with σ_in = 1 everything else reduces to EDM exactly (tested).

Noisy input convention: ``x_noisy = x / σ_in + σ ε``; D estimates the clean ``x`` itself.

This module only knows the formulas; it knows nothing about the backbone it wraps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class EDMConfig:
    """Diffusion settings shared by preconditioning, loss and training (stored with every run)."""

    sigma_data: float = 1.0        # σ_d, std of the clean data; Snap Video uses 1 (EDM's images: 0.5)
    P_mean: float = -1.2           # training ln σ ~ N(P_mean, P_std²) (EDM Table 1, "Training")
    P_std: float = 1.2
    # A second mode of the training σ: this share of samples draws ln σ ~ N(P_high_mean, P_high_std²) instead.
    # The caption's layout and an object's path are decided at high σ, where a log-normal fitted to detail
    # trains almost never; there the motion word is the only way to lower the loss (docs/learning.md).
    P_high_share: float = 0.0
    P_high_mean: float = 2.3       # ln 10
    P_high_std: float = 0.5
    P_high_given_only: bool = False  # the high mode only for clips given frames (prediction), where it pays
    # Clips given frames are denoised as their difference from the given frames, each later frame from the last
    # one given (EDMPrecond: D = a + D'(x - a)). An untrained denoiser's estimate at high σ is then the given frame
    # held, and what is left to learn is how the clip departs from it. Off by default: it won the lean benchmark's
    # prediction and lost t2v colour and motion in the demo (docs/learning.md, "Prediction as a residual").
    given_residual: bool = False
    cond_drop_prob: float = 0.1    # conditioning dropped in training for classifier-free guidance
    foreground_weight: float = 0.0  # α: loss weight 1 + α on pixels off their frame's dominant colour (loss.py)
    frame_noise_share: float = 0.0  # ρ: correlation of the noise between frames, training and sampling (rng.py)
    sigma_in: float | None = None  # fixed input scale σ_in; None -> s·√T from the clip shape (Snap Video)
    base_height: int = 32          # resolution at which the spatial upscaling factor s is 1
    base_width: int = 32

    def input_scale(self, frames: int, height: int, width: int) -> float:
        """σ_in for a clip of ``frames`` × ``height`` × ``width`` (the fixed value when one is set)."""
        if self.sigma_in is not None:
            return float(self.sigma_in)
        return video_input_scale(frames, height, width, self.base_height, self.base_width)


def video_input_scale(frames: int, height: int, width: int, base_height: int = 32, base_width: int = 32) -> float:
    """Snap Video's σ_in = s·√T, with s = √(H·W / (H_base·W_base)) the linear upscaling factor.

    T frames (or s² upsampled copies of a pixel) average independent noise down by √T (or s), so
    the input is divided by that much to keep the signal-to-noise ratio per σ that of one image.
    """
    if frames < 1 or height < 1 or width < 1 or base_height < 1 or base_width < 1:
        raise ValueError(f"input scale needs positive sizes, got T={frames} H={height} W={width} "
                         f"base={base_height}x{base_width}")
    s = math.sqrt((height * width) / (base_height * base_width))
    return s * math.sqrt(frames)


def resolve_sigma_in(cfg: EDMConfig, sigma_in: float | None) -> float:
    """The explicit σ_in, else the config's fixed one; never a silent default of 1 for video."""
    if sigma_in is not None:
        return float(sigma_in)
    if cfg.sigma_in is None:
        raise ValueError("EDMConfig.sigma_in is None (computed per clip): pass sigma_in=cfg.input_scale(T, H, W)")
    return float(cfg.sigma_in)


def edm_coefficients(sigma: Tensor, sigma_data: float, sigma_in: Tensor | float = 1.0
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) for noise level ``sigma`` (any shape, broadcast with sigma_in).

    Snap Video's input scaling (docs/architecture.md, The model; EDM Table 1 when σ_in = 1, c_out negated):
      c_in    = 1 / √(σ_d²/σ_in² + σ²)           input x/σ_in + σε has variance σ_d²/σ_in² + σ²
      c_skip  = σ_in σ_d² / (σ_in σ² + σ_d²)
      c_out   = −σ_in σ σ_d √(σ² + σ_d²) / (σ_d² + σ_in σ²)
      c_noise = ln(σ) / 4
    With these, the ideal F is v / (σ_d √(σ²+σ_d²)), v = σ_d² ε − σ x: unit variance for any σ_in.
    """
    sd2 = sigma_data ** 2
    s2 = sigma ** 2
    c_in = 1.0 / torch.sqrt(sd2 / sigma_in ** 2 + s2)
    c_skip = sigma_in * sd2 / (sigma_in * s2 + sd2)
    c_out = -sigma_in * sigma * sigma_data * torch.sqrt(s2 + sd2) / (sd2 + sigma_in * s2)
    c_noise = torch.log(sigma) / 4.0
    return c_skip, c_out, c_in, c_noise


def per_sample(value: Tensor | float, batch: int, ndim: int, like: Tensor) -> Tensor:
    """Scalar or (B,) value -> (B, 1, ..., 1) tensor with ``ndim`` dims, dtype/device of ``like``."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(batch)
    t = t.reshape(-1)
    if t.shape[0] != batch:
        raise ValueError(f"expected a scalar or {batch} per-sample values, got shape {tuple(t.shape)}")
    return t.reshape(batch, *([1] * (ndim - 1)))


class EDMPrecond(nn.Module):
    """D(x; σ) = c_skip x + c_out F(c_in x; c_noise, cond) around any backbone F (EDM eq. 7).

    ``backbone(x_in, c_noise (B,), **cond)`` must return a tensor shaped like ``x_in``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        sigma_data: float = 1.0,   # σ_d, std of the clean data
        sigma_in: float = 1.0,     # default input scale σ_in (Snap Video); callers may override per call
        given_residual: bool = False,  # denoise the difference from ``frame_cond``'s frames (EDMConfig)
    ):
        super().__init__()
        if sigma_data <= 0 or sigma_in <= 0:
            raise ValueError(f"sigma_data and sigma_in must be > 0, got {sigma_data}, {sigma_in}")
        self.backbone = backbone
        self.sigma_data = float(sigma_data)
        self.sigma_in = float(sigma_in)
        self.given_residual = bool(given_residual)

    @classmethod
    def from_config(cls, backbone: nn.Module, cfg: EDMConfig, sigma_in: float | None = None) -> "EDMPrecond":
        """``sigma_in`` overrides ``cfg.sigma_in``; one of them must be set (e.g. cfg.input_scale(T, H, W))."""
        return cls(backbone, cfg.sigma_data, resolve_sigma_in(cfg, sigma_in), cfg.given_residual)

    def forward(self, x_noisy: Tensor, sigma: Tensor | float, sigma_in: Tensor | float | None = None,
                **cond) -> Tensor:
        """x_noisy = x/σ_in + σε (B, ...), sigma scalar or (B,) -> D, the estimate of clean x (B, ...)."""
        if not torch.is_floating_point(x_noisy):
            raise TypeError(f"x_noisy must be a float tensor, got {x_noisy.dtype}")
        B, nd = x_noisy.shape[0], x_noisy.ndim
        sigma = per_sample(sigma, B, nd, x_noisy)                                     # (B, 1, ..., 1)
        s_in = per_sample(self.sigma_in if sigma_in is None else sigma_in, B, nd, x_noisy)
        frame_cond = cond.get("frame_cond")
        if self.given_residual and frame_cond is not None:
            # The given frames, the last one held (vimi.models.frame_condition; zeros for t2v) are an anchor a:
            # x/σ_in + σε - a/σ_in is the residual x - a noised alike, so D(x) = a + D'(residual). As in residual
            # video diffusion (Yang et al. 2023), the denoiser models the change, not the frame it was given.
            anchor = frame_cond[:, :x_noisy.shape[1]].to(x_noisy.dtype)
            return anchor + self._denoise(x_noisy - anchor / s_in, sigma, s_in, cond)
        return self._denoise(x_noisy, sigma, s_in, cond)

    def _denoise(self, x_noisy: Tensor, sigma: Tensor, s_in: Tensor, cond: dict) -> Tensor:
        B = x_noisy.shape[0]
        if bool((sigma <= 0).any()):
            raise ValueError("sigma must be > 0 (c_noise = ln σ / 4)")
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data, s_in)
        # The backbone runs in its own parameter dtype (float32 by default) while the sampler may
        # integrate in float64: cast at this boundary, as EDM's EDMPrecond does.
        param = next(self.backbone.parameters(), None)
        dtype = param.dtype if param is not None else x_noisy.dtype
        F_x = self.backbone((c_in * x_noisy).to(dtype), c_noise.reshape(B).to(dtype), **cond)
        if F_x.shape != x_noisy.shape:
            raise ValueError(f"backbone returned {tuple(F_x.shape)}, expected {tuple(x_noisy.shape)}")
        return c_skip * x_noisy + c_out * F_x.to(x_noisy.dtype)
