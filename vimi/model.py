"""The VIMI generator: interleaved prompt → MLLM encoder → C → EDM-preconditioned FIT → video.

VIMI (Fang et al. 2024, §3) conditions a Snap Video-style diffusion transformer on the hidden
states of a multimodal LLM that reads the whole interleaved prompt (instruction, retrieved
image-text pairs, caption, task images). This module only assembles the pieces that live in
``vimi.mllm`` (encoder), ``vimi.models`` (backbones by name) and ``vimi.diffusion`` (preconditioning);
training (``vimi.training``) and inference (``vimi.pipeline``) both go through it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from vimi.diffusion import EDMConfig, EDMPrecond, SamplerConfig
from vimi.mllm import MLLMConfig, MLLMEncoder, Prompt
from vimi.models import backbone_config, build_backbone, frame_condition


@dataclass
class VideoConfig:
    frames: int = 8          # T of generated clips
    size: int = 32           # H = W in pixels
    channels: int = 3        # RGB pixels (pixel-space diffusion; a VAE latent mode would change this)
    fps: int = 8


@dataclass
class VimiConfig:
    """Every model setting; saved in each run folder and in each pipeline's config.json."""

    video: VideoConfig = field(default_factory=VideoConfig)
    backbone: str = "unet-s"                                 # a named size of vimi.models (fit-*, unet-*)
    backbone_args: dict[str, Any] = field(default_factory=dict)  # field overrides of that size
    edm: EDMConfig = field(default_factory=EDMConfig)
    mllm: MLLMConfig = field(default_factory=MLLMConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    retrieval_k: int = 4                                     # K retrieved pairs per t2v prompt
    max_cond_frames: int = 1                                 # prediction: first k clean frames given

    def backbone_config(self) -> Any:
        """The backbone config: the named size, our overrides, and the video's channel count."""
        return backbone_config(self.backbone, **{"in_channels": self.video.channels,
                                                 "extra_channels": self.video.channels + 1, **self.backbone_args})

    @property
    def sigma_in(self) -> float:
        """Snap Video's input scale for this clip shape (σ_in = s·√T)."""
        v = self.video
        return self.edm.input_scale(v.frames, v.size, v.size)


class VimiModel(nn.Module):
    """``encoder`` (MLLM, frozen by default) + ``net`` (EDMPrecond over the named backbone)."""

    def __init__(self, cfg: VimiConfig):
        super().__init__()
        self.cfg = cfg
        bb = cfg.backbone_config()
        self.encoder = MLLMEncoder(cfg.mllm, out_dim=bb.cond_dim)
        self.net = EDMPrecond(build_backbone(cfg.backbone, bb), sigma_data=cfg.edm.sigma_data, sigma_in=cfg.sigma_in)

    # ------------------------------------------------------------------ conditioning
    def condition(self, prompts: Sequence[Prompt], drop: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Prompts -> (C (B, L, D), mask (B, L)); rows where ``drop`` is True get the null condition."""
        c, mask = self.encoder.encode(prompts)
        if drop is not None:
            c, mask = self.encoder.drop_condition(c, mask, drop)
        return c, mask

    def null_condition(self, batch: int) -> tuple[Tensor, Tensor]:
        return self.encoder.null_condition(batch)

    def cond_frames(self, video: Tensor, k: Tensor | int) -> Tensor:
        """Clean first-k-frames input of prediction (beyond VIMI, which conditions only through the MLLM).

        video (B, C, T, H, W) in [-1, 1], k scalar or (B,) -> extra (B, C+1, T, H, W)
        (``vimi.models.frame_condition``: the first k frames, zeros after, and a mask channel).
        """
        return frame_condition(video, k)

    # ------------------------------------------------------------------ denoising
    def forward(self, x_noisy: Tensor, sigma: Tensor, cond: Tensor, cond_mask: Tensor,
                extra: Tensor | None = None, sigma_in: Tensor | float | None = None) -> Tensor:
        """D(x; σ | C, extra): the clean-video estimate (B, C, T, H, W)."""
        return self.net(x_noisy, sigma, sigma_in=sigma_in, cond=cond, cond_mask=cond_mask, extra=extra)

    # ------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The backbone + the encoder's projection and null tokens (+ LoRA / full MLLM when configured)."""
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Weights a checkpoint or pipeline stores beside the (unchanged) MLLM folder."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        own = dict(self.named_parameters())
        expected = {n for n, p in own.items() if p.requires_grad}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(f"weights do not match this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        with torch.no_grad():
            for n, v in state.items():
                if own[n].shape != v.shape:
                    raise ValueError(f"weight {n}: checkpoint shape {tuple(v.shape)} != model {tuple(own[n].shape)}")
                own[n].copy_(v)
