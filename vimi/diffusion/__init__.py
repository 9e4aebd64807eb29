"""EDM diffusion with Snap Video's video input scaling, in EDM's three swappable pieces.

- :mod:`vimi.diffusion.precond`: ``EDMConfig``, ``EDMPrecond`` (wraps any backbone F).
- :mod:`vimi.diffusion.loss`: ``EDMLoss`` (lognormal σ, EDM weighting; calls any denoiser).
- :mod:`vimi.diffusion.sampler`: ``edm_sampler`` (Heun, Karras steps, churn), ``SamplerConfig``.
- :mod:`vimi.diffusion.guidance`: classifier-free guidance, dynamic thresholding, condition dropout.
"""
from vimi.diffusion.guidance import GuidedDenoiser, concat_conditions, drop_conditions, dynamic_threshold
from vimi.diffusion.loss import EDMLoss
from vimi.diffusion.precond import EDMConfig, EDMPrecond, edm_coefficients, video_input_scale
from vimi.diffusion.rng import make_generators, randn_per_sample
from vimi.diffusion.sampler import SamplerConfig, SamplerOutput, edm_sampler, heun_nfe, karras_sigmas

__all__ = [
    "EDMConfig", "EDMPrecond", "EDMLoss", "edm_coefficients", "video_input_scale",
    "SamplerConfig", "SamplerOutput", "edm_sampler", "karras_sigmas", "heun_nfe",
    "GuidedDenoiser", "concat_conditions", "drop_conditions", "dynamic_threshold",
    "make_generators", "randn_per_sample",
]
