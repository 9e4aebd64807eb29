"""The VIMI generator: interleaved prompt → MLLM encoder → C → EDM-preconditioned FIT → video.

VIMI (Fang et al. 2024, §3) conditions a Snap Video-style diffusion transformer on the hidden
states of a multimodal LLM that reads the whole interleaved prompt (instruction, retrieved
image-text pairs, caption, task images). This module only assembles the pieces that live in
``vimi.mllm`` (encoder), ``vimi.models`` (backbones by name) and ``vimi.diffusion`` (preconditioning);
training (``vimi.training``) and inference (``vimi.pipeline``) both go through it.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn

from base.config import to_dict
from vimi.diffusion import EDMConfig, EDMPrecond, SamplerConfig
from vimi.mllm import MLLMConfig, MLLMEncoder, Prompt
from vimi.models import backbone_config, build_backbone, frame_condition
from vimi.models.adapters import (
    AdapterConfig,
    FrameCondConfig,
    FrameQueryFormer,
    FrameSlot,
    LoraConfig,
    add_frame_attention,
    add_latent_shift,
    apply_tuning,
    check_tuning,
)
from vimi.models.autoencoder import autoencoder_config, load_autoencoder


@dataclass
class VideoConfig:
    frames: int = 8          # T of generated clips
    size: int = 32           # H = W in pixels
    channels: int = 3        # RGB pixels
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
    hold_given_frame: bool = True                            # frames after k see the last given one (SVD-style)
    #                                                          (and the overlap of long-video chunks)
    # Related methods as options of this generator (vimi/models/adapters.py):
    tuning: Literal["full", "adapters", "lora", "frozen"] = "full"  # what of the backbone + encoder head trains
    adapters: AdapterConfig = field(default_factory=AdapterConfig)  # SimDA / AID adapters (tuning: adapters)
    lora: LoraConfig = field(default_factory=LoraConfig)            # backbone LoRA (tuning: lora)
    latent_shift: float = 0.0                                # SimDA latent shift: share of channels (0 = off)
    frame_cond: FrameCondConfig = field(default_factory=FrameCondConfig)  # FCA / AID frame-wise conditioning
    # Latent mode: diffusion on a trained per-frame autoencoder's latents (vimi.models.autoencoder;
    # python -m vimi.training.autoencoder). "" = pixel space.
    autoencoder: str = ""

    def diffusion_grid(self) -> tuple[int, int, int]:
        """(channels, H, W) of what the diffusion runs on: the video's pixels, or the autoencoder's latents."""
        size = self.video.size
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if not self.autoencoder:
            return self.video.channels, h, w
        ae = autoencoder_config(self.autoencoder)
        return ae.latent_channels, h // ae.factor, w // ae.factor

    def backbone_config(self) -> Any:
        """The backbone config: the named size, our overrides, the diffused channel count, and a second FiLM summary
        token where the encoder writes one (MLLMConfig.picture_token)."""
        c = self.diffusion_grid()[0]
        derived = {"in_channels": c, "frame_cond_channels": c + 1} | ({"summary_tokens": 2} if self.mllm.picture_token
                                                                      else {})
        return backbone_config(self.backbone, **{**derived, **self.backbone_args})

    def input_scale(self, frames: int) -> float:
        """Snap Video's input scale σ_in = s·√T for ``frames`` frames of the diffused grid."""
        _, h, w = self.diffusion_grid()
        return self.edm.input_scale(frames, h, w)

    @property
    def sigma_in(self) -> float:
        return self.input_scale(self.video.frames)


def build_tuned_backbone(cfg: VimiConfig, slot: FrameSlot,
                         device: torch.device | str | None = None) -> tuple[nn.Module, FrameQueryFormer | None]:
    """The named backbone with the configured tuning, latent shift and frame-wise conditioning
    (``device="meta"``: shapes only, for dry runs), and the frame-query former when enabled."""
    bb = cfg.backbone_config()
    check_tuning(cfg.tuning, cfg.adapters, cfg.lora, cfg.latent_shift, cfg.frame_cond)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        backbone = build_backbone(cfg.backbone, bb)
        # Order matters: LoRA wraps layers first, so the latent shift's hooks sit on the wrappers; the
        # frame-wise branch comes last, so it is trainable in every mode and LoRA never targets it.
        apply_tuning(backbone, cfg.tuning, cfg.adapters, cfg.lora)
        add_latent_shift(backbone, cfg.latent_shift)
        former = None
        fc = cfg.frame_cond
        if fc.enabled:
            former = FrameQueryFormer(bb.cond_dim, fc.max_frames or cfg.video.frames, fc)
            if fc.inject in ("add", "both"):
                add_frame_attention(backbone, bb.cond_dim, fc.heads, slot)
    return backbone, former


class VimiModel(nn.Module):
    """``encoder`` (MLLM, frozen by default) + ``net`` (EDMPrecond over the named backbone)."""

    def __init__(self, cfg: VimiConfig):
        super().__init__()
        self.cfg = cfg
        bb = cfg.backbone_config()
        check_tuning(cfg.tuning, cfg.adapters, cfg.lora, cfg.latent_shift, cfg.frame_cond)  # before the MLLM loads
        self.encoder = MLLMEncoder(cfg.mllm, out_dim=bb.cond_dim)
        self.frame_slot = FrameSlot()
        backbone, self.frame_cond = build_tuned_backbone(cfg, self.frame_slot)
        # A parameter-efficient mode trains only what it adds (SimDA, AID): the encoder's projection and
        # null tokens, trained in stage 1, stay as they are unless the whole generator is tuned.
        for p in (*self.encoder.proj.parameters(), self.encoder.null):
            p.requires_grad_(cfg.tuning == "full")
        self.net = EDMPrecond.from_config(backbone, cfg.edm, cfg.sigma_in)
        # Frozen and loaded from its own folder: kept out of the module tree, so that no state dict,
        # optimizer or ZeRO partition sees it (as frozen.py does for the MLLM).
        self.__dict__["autoencoder"] = load_autoencoder(cfg.autoencoder) if cfg.autoencoder else None

    # ------------------------------------------------------------------ latent mode
    @torch.no_grad()
    def to_latent(self, video: Tensor) -> Tensor:
        """Pixels (B, 3, T, H, W) in [-1, 1] -> what the diffusion runs on (the pixels in pixel space)."""
        if self.autoencoder is None:
            return video
        return self.autoencoder.to(video.device).encode_video(video)

    @torch.no_grad()
    def from_latent(self, x: Tensor) -> Tensor:
        if self.autoencoder is None:
            return x
        return self.autoencoder.to(x.device).decode_video(x.float()).clamp(-1, 1)

    # ------------------------------------------------------------------ conditioning
    def condition(self, prompts: Sequence[Prompt], drop: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Prompts -> (C (B, L, D), mask (B, L)); rows where ``drop`` is True get the null condition."""
        c, mask = self.encoder.encode(prompts)
        if drop is not None:
            c, mask = self.encoder.drop_condition(c, mask, drop)
        return c, mask

    def null_condition(self, batch: int) -> tuple[Tensor, Tensor]:
        return self.encoder.null_condition(batch)

    def given_frame_condition(self, video: Tensor, k: Tensor | int) -> Tensor:
        """Clean first-k-frames input of prediction (beyond VIMI, which conditions only through the MLLM).

        video (B, C, T, H, W) in [-1, 1], k scalar or (B,) -> frame_cond (B, C+1, T, H, W)
        (``vimi.models.frame_condition``: the first k frames, then the last of them held, and a mask).
        """
        return frame_condition(video, k, hold=self.cfg.hold_given_frame)

    # ------------------------------------------------------------------ denoising
    def forward(self, x_noisy: Tensor, sigma: Tensor, cond: Tensor, cond_mask: Tensor,
                frame_cond: Tensor | None = None, sigma_in: Tensor | float | None = None) -> Tensor:
        """D(x; σ | C, frame_cond): the clean-video estimate (B, C, T, H, W)."""
        cond, cond_mask = self.framewise_condition(cond, cond_mask, x_noisy.shape[2])
        return self.net(x_noisy, sigma, sigma_in=sigma_in, cond=cond, cond_mask=cond_mask, frame_cond=frame_cond)

    def framewise_condition(self, cond: Tensor, cond_mask: Tensor, frames: int) -> tuple[Tensor, Tensor]:
        """Frame-wise conditioning (off by default): one embedding per output frame from C, handed to the
        backbone's per-frame cross-attention branches (FCA) and/or appended to C as extra tokens (AID)."""
        if self.frame_cond is None:
            return cond, cond_mask
        fe = self.frame_cond(cond, cond_mask, frames)                                    # (B, T, q, D)
        inject = self.cfg.frame_cond.inject
        self.frame_slot.value = fe if inject in ("add", "both") else None
        if inject in ("tokens", "both"):
            tokens = fe.flatten(1, 2).to(cond.dtype)                                      # (B, T·q, D)
            cond = torch.cat([cond, tokens], dim=1)
            cond_mask = torch.cat([cond_mask, cond_mask.new_ones(tokens.shape[:2])], dim=1)
        return cond, cond_mask

    # ------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The backbone + the encoder's projection and null tokens (+ LoRA / full MLLM when configured)."""
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Weights a checkpoint or pipeline stores beside the (unchanged) MLLM folder."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def base_state_dict(self, tuned: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The frozen generator weights a tuned model runs on (the backbone and encoder head as stage 1
        left them; the MLLM has its own folder): everything but ``tuned`` (default: the trainable
        weights) and the MLLM. Empty under ``tuning: full``."""
        tuned = self.trainable_state_dict() if tuned is None else tuned
        return {n: p.detach() for n, p in self.named_parameters()
                if n not in tuned and not n.startswith("encoder.llava.")}

    def tuning_signature(self, defaults: bool = False) -> dict[str, str]:
        """What tuned weights were made for (stored in their file's metadata): the backbone, its
        resolved size and the tuning options. Tuned weights load only where all of it matches.
        ``defaults``: every option at its default value instead (see :meth:`check_tuning_signature`)."""
        c = self.cfg
        pick = (lambda x: type(x)()) if defaults else (lambda x: x)
        return {"tuning": c.tuning, "backbone": c.backbone,
                "backbone_resolved": json.dumps(to_dict(pick(c.backbone_config())), sort_keys=True),
                "tuning_options": json.dumps({"adapters": to_dict(pick(c.adapters)), "lora": to_dict(pick(c.lora)),
                                              "frame_cond": to_dict(pick(c.frame_cond))}, sort_keys=True)}

    def check_tuning_signature(self, saved: dict[str, str], source: str) -> None:
        """One line naming each mismatch between tuned weights' metadata and this model."""
        mine = self.tuning_signature()
        if "tuning" not in saved:
            return  # weights written before signatures existed (full tuning): names and shapes decide
        defaults = self.tuning_signature(defaults=True)
        bad = []
        for key, value in mine.items():
            there = saved.get(key, "<absent>")
            if there == value:
                continue
            if key in ("backbone_resolved", "tuning_options"):
                # An option absent there was added after the weights were written: they were made with its default.
                a = _flat(json.loads(defaults[key])) | (_flat(json.loads(there)) if there != "<absent>" else {})
                b = _flat(json.loads(value))
                bad += [f"{key}.{k} {a.get(k)!r} there, {b.get(k)!r} here" for k in sorted(set(a) | set(b))
                        if a.get(k) != b.get(k)]
            else:
                bad.append(f"{key} {there!r} there, {value!r} here")
        if bad:
            raise ValueError(f"{source}: tuned weights made for another model: " + "; ".join(bad))

    def load_trainable_state_dict(self, state: dict[str, Tensor], base: dict[str, Tensor] | None = None) -> None:
        """Trained weights (and, for a tuned model, the frozen ``base`` it runs on), names and shapes checked."""
        if self.cfg.tuning != "full":
            if base is None:
                raise KeyError("a tuned model (tuning != full) needs its frozen base weights too")
            self._load_exact(base, set(self.base_state_dict()), "base weights")
        self._load_exact(state, {n for n, p in self.named_parameters() if p.requires_grad}, "weights")

    def _load_exact(self, state: dict[str, Tensor], expected: set[str], what: str) -> None:
        own = dict(self.named_parameters())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(f"{what} do not match this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        with torch.no_grad():
            for n, v in state.items():
                if own[n].shape != v.shape:
                    raise ValueError(f"weight {n}: checkpoint shape {tuple(v.shape)} != model {tuple(own[n].shape)}")
                own[n].copy_(v)


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out
