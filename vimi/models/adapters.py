"""Parameter-efficient tuning and frame-aware options for either backbone, without editing its blocks
(docs/architecture.md, The model: related methods as options).

The related methods of VIMI's line of work become options of the one generator:

- **Adapters** (SimDA, Xing et al. 2023; AID, Xing et al. 2024): in every block, a spatial adapter
  (a bottleneck MLP, token-wise, after the block's attention / spatial mixing) and a temporal
  adapter (a bottleneck whose middle mixes the frames: a temporal convolution or temporal
  attention). Both are residual with a zero-initialised up-projection, so an adapted model computes
  exactly what the untuned one did until the first optimizer step.
- **LoRA** (through ``peft``) on the backbone's linear layers and the U-Net's 3×3 convolutions.
- **Latent shift** (SimDA's latent-shift attention): before each block's spatial mixing a share of
  each frame's channels is taken from the previous and the next frame (zeros at the clip's ends),
  so per-frame layers see their neighbours at no parameter cost.
- **Frame-wise conditioning** (FCA; AID's dual-query former): see :class:`FrameQueryFormer`; this
  module inserts its per-frame cross-attention branch.

Everything is attached by forward (pre-)hooks to the blocks of a built backbone; each hook is a
method of a module stored as a child of the hooked module. That keeps the backbone's parameter
names (a stage-1 export loads unchanged), and it keeps an EMA twin correct: a hooked module holds
trainable parameters, so ``vimi.training.ema.shared_copy`` deep-copies it, hooks included, and the
copy's hooks call the copy's adapters (frozen modules, which the twin shares, carry no adapter hook).

A backbone declares nothing: :data:`SITES` knows where each family's blocks keep their per-frame
tokens (FIT: patches grouped as (B·G, frames·gh·gw, D); U-Net: (B·T, C, H, W) activations).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vimi.models.layers import Attention

TUNINGS = ("full", "adapters", "lora", "frozen")
TEMPORAL_KINDS = ("conv", "attention", "none")
INJECTS = ("add", "tokens", "both")
# Child names under which tuning modules hang: parameters below them are new (not in a stage-1 export).
ADAPTER_ATTR, FRAME_ATTR = "adapter", "frame_attn"


class TuningError(ValueError):
    """A tuning option the backbone cannot take, or tuned weights that belong to another model."""


@dataclass
class AdapterConfig:
    """SimDA / AID adapters (``model.tuning: adapters``)."""

    bottleneck: int = 16                 # width inside each adapter (SimDA uses a quarter of the channels)
    spatial: bool = True                 # token-wise bottleneck MLP after each block's spatial mixing
    temporal: Literal["conv", "attention", "none"] = "conv"  # how the temporal adapter mixes frames (none: off)
    kernel: int = 3                      # frames seen by the temporal adapter's convolution (odd)


@dataclass
class LoraConfig:
    """LoRA on the backbone (``model.tuning: lora``), applied with peft."""

    r: int = 8
    alpha: int = 16                      # scale = alpha / r
    # Module-name suffixes: attention and feed-forward linears of both families, the U-Net's 3×3 convs.
    targets: list[str] = field(default_factory=lambda: ["to_q", "to_kv", "proj", "ff.0", "ff.2", "conv1", "conv2"])


@dataclass
class FrameCondConfig:
    """Frame-wise conditioning (FCA; AID's dual-query former). Off by default."""

    enabled: bool = False
    # "add": a parallel per-frame cross-attention branch (FCA); "tokens": extra conditioning tokens (AID)
    inject: Literal["add", "tokens", "both"] = "both"
    queries_per_frame: int = 1           # learned queries (hence embeddings) per output frame
    max_frames: int = 0                  # frames with their own queries; 0 = the model's video.frames
    layers: int = 1                      # query-transformer layers (cross-attention to C, self-attention, FF)
    heads: int = 4


def check_tuning(tuning: str, adapters: AdapterConfig, lora: LoraConfig, latent_shift: float,
                 frame_cond: FrameCondConfig) -> None:
    """Config-level checks (no backbone needed); each error names the setting and its value."""
    if tuning not in TUNINGS:
        raise TuningError(f"model.tuning: got {tuning!r}, expected one of {TUNINGS}")
    if adapters.temporal not in TEMPORAL_KINDS:
        raise TuningError(f"model.adapters.temporal: got {adapters.temporal!r}, expected one of {TEMPORAL_KINDS}")
    if adapters.bottleneck < 1:
        raise TuningError(f"model.adapters.bottleneck: got {adapters.bottleneck}, expected >= 1")
    if adapters.kernel < 1 or adapters.kernel % 2 == 0:
        raise TuningError(f"model.adapters.kernel: got {adapters.kernel}, expected an odd number of frames >= 1")
    if lora.r < 1 or not lora.targets:
        raise TuningError(f"model.lora: r must be >= 1 and targets non-empty, got r={lora.r}, targets={lora.targets}")
    if not 0.0 <= latent_shift <= 1.0:
        raise TuningError(f"model.latent_shift: got {latent_shift}, expected a share of channels in [0, 1]")
    if frame_cond.inject not in INJECTS:
        raise TuningError(f"model.frame_cond.inject: got {frame_cond.inject!r}, expected one of {INJECTS}")
    if frame_cond.queries_per_frame < 1 or frame_cond.layers < 1 or frame_cond.heads < 1 or frame_cond.max_frames < 0:
        raise TuningError("model.frame_cond: queries_per_frame, layers, heads must be >= 1 and max_frames >= 0")


# ----------------------------------------------------------------------------------------------
# Per-frame token layouts: every site hands its adapter (N, T, S, D) tokens (N clips or groups,
# T frames, S tokens per frame) and takes them back in its own layout.
# ----------------------------------------------------------------------------------------------

def maps_to_frames(x: Tensor, frames: int) -> Tensor:
    """(B·T, C, H, W) -> (B, T, H·W, C)."""
    BT, C, H, W = x.shape
    return x.reshape(BT // frames, frames, C, H * W).transpose(2, 3)


def frames_to_maps(t: Tensor, like: Tensor) -> Tensor:
    """(B, T, H·W, C) -> the (B·T, C, H, W) shape of ``like``."""
    return t.transpose(2, 3).reshape(like.shape)


def shift_frames(t: Tensor, share: float) -> Tensor:
    """(N, T, S, D): the first ``share/2`` of the channels from frame t-1, the next ``share/2`` from
    frame t+1, zeros past the clip's ends (SimDA's latent shift; TSM's shift, Lin et al. 2019)."""
    fold = int(t.shape[-1] * share / 2)
    if fold == 0 or t.shape[1] < 2:
        return t
    out = t.clone()
    out[:, 1:, :, :fold] = t[:, :-1, :, :fold]
    out[:, :1, :, :fold] = 0
    out[:, :-1, :, fold:2 * fold] = t[:, 1:, :, fold:2 * fold]
    out[:, -1:, :, fold:2 * fold] = 0
    return out


# ----------------------------------------------------------------------------------------------
# Adapters
# ----------------------------------------------------------------------------------------------

class Bottleneck(nn.Module):
    """LN → down → GELU → up (zero-initialised): a token-wise residual branch that starts at 0."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down, self.up = nn.Linear(dim, width), nn.Linear(width, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, t: Tensor) -> Tensor:
        return self.up(F.gelu(self.down(self.norm(t))))


class TemporalBottleneck(Bottleneck):
    """Bottleneck whose middle mixes frames at each spatial token: a k-tap temporal convolution
    (SimDA's temporal adapter) or single-head attention across frames (AID's temporal adapter)."""

    def __init__(self, dim: int, width: int, kind: str, kernel: int):
        super().__init__(dim, width)
        self.kind = kind
        if kind == "conv":
            self.mix = nn.Conv1d(width, width, kernel, padding=kernel // 2)
        else:
            self.mix = Attention(width, width, width, heads=1, qk_norm=True)

    def forward(self, t: Tensor) -> Tensor:
        N, T, S, D = t.shape
        h = self.down(self.norm(t)).transpose(1, 2).reshape(N * S, T, -1)       # (N·S, T, r)
        if self.kind == "conv":
            h = h + self.mix(h.transpose(1, 2)).transpose(1, 2)
        else:
            h = h + self.mix(h, h)
        h = self.up(F.gelu(h))                                                   # (N·S, T, D)
        return h.reshape(N, S, T, D).transpose(1, 2)


class FrameAdapter(nn.Module):
    """Spatial then temporal adapter on (N, T, S, D) per-frame tokens (both residual, both start at 0)."""

    def __init__(self, dim: int, cfg: AdapterConfig):
        super().__init__()
        self.spatial = Bottleneck(dim, cfg.bottleneck) if cfg.spatial else None
        self.temporal = (TemporalBottleneck(dim, cfg.bottleneck, cfg.temporal, cfg.kernel)
                         if cfg.temporal != "none" else None)

    def forward(self, t: Tensor) -> Tensor:
        if self.spatial is not None:
            t = t + self.spatial(t)
        if self.temporal is not None:
            t = t + self.temporal(t)
        return t

    # hooks: the two U-Net sites hand (B·T, C, H, W) maps with the frame count as an argument
    def unet_hook(self, module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        return frames_to_maps(self(maps_to_frames(out, args[-1])), out)


class FITBlockAdapter(nn.Module):
    """FIT block output: adapters on the patches (per frame) and a spatial adapter on the latents."""

    def __init__(self, patch_dim: int, latent_dim: int, group_hw: int, cfg: AdapterConfig):
        super().__init__()
        self.patches = FrameAdapter(patch_dim, cfg)
        self.latents = Bottleneck(latent_dim, cfg.bottleneck)   # after the latent self-attention
        self.group_hw = group_hw

    def hook(self, module: nn.Module, args: tuple, out: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        patches, latents = out                                  # (B·G, gt·gh·gw, Dp), (B, G·M, Dl)
        BG, N, D = patches.shape
        t = self.patches(patches.reshape(BG, N // self.group_hw, self.group_hw, D))
        return t.reshape(BG, N, D), latents + self.latents(latents)


# ----------------------------------------------------------------------------------------------
# Where each family keeps per-frame tokens
# ----------------------------------------------------------------------------------------------

@dataclass
class Site:
    """One block of a backbone, seen by the tuning options."""

    block: nn.Module                     # adapters hang here (child + forward hook)
    add_adapter: Callable[[AdapterConfig], None]
    add_shift: Callable[[float], None]
    cross_attn: list[tuple[nn.Module, Callable[[int], int]]]  # (Attention, Lq -> tokens per frame) for FCA


def _fit_sites(net: nn.Module) -> list[Site]:
    cfg = net.config
    gh, gw = cfg.group_size

    def adapter(block):
        def add(acfg: AdapterConfig) -> None:
            block.add_module(ADAPTER_ATTR, FITBlockAdapter(cfg.patch_dim, cfg.latent_dim, gh * gw, acfg))
            block.register_forward_hook(getattr(block, ADAPTER_ATTR).hook)
        return add

    def shift(block):
        def add(share: float) -> None:
            # Only the read of the patches into the latents sees the shifted patches; the residual
            # stream of patches stays per frame (TSM's residual shift).
            def pre(module, args):
                latents, patches = args[0], args[1]
                BG, N, D = patches.shape
                shifted = shift_frames(patches.reshape(BG, N // (gh * gw), gh * gw, D), share)
                return (latents, shifted.reshape(BG, N, D), *args[2:])
            block.read_patches.register_forward_pre_hook(pre)
        return add

    return [Site(b, adapter(b), shift(b), [(b.write.attn, lambda n: gh * gw)]) for b in net.blocks]


def _unet_sites(net: nn.Module) -> list[Site]:
    from vimi.models.unet import ResBlock, SpaceTimeAttention

    sites = []
    for m in net.modules():
        if isinstance(m, ResBlock):
            # after the block's spatial convolutions and its temporal convolution
            sites.append(Site(m.temporal, _unet_adapter(m.temporal, m.norm2.num_channels), _unet_shift(m), []))
        elif isinstance(m, SpaceTimeAttention):
            # after the attention; its cross-attention gets the per-frame branch (Lq = T·h·w)
            sites.append(Site(m, _unet_adapter(m, m.norm_ff.normalized_shape[0]), lambda share: None,
                              [(m.cross_attn, None)]))
    return sites


def _unet_adapter(module: nn.Module, dim: int):
    def add(acfg: AdapterConfig) -> None:
        module.add_module(ADAPTER_ATTR, FrameAdapter(dim, acfg))
        module.register_forward_hook(getattr(module, ADAPTER_ATTR).unet_hook)
    return add


def _unet_shift(block: nn.Module):
    def add(share: float) -> None:
        # conv1 is the block's spatial mixing, but it does not know the frame count: the block's
        # pre-hook records it (a recomputation under gradient checkpointing records it again).
        frames = [1]

        def record(module, args):
            frames[0] = args[-1]

        def pre(module, args):
            return (frames_to_maps(shift_frames(maps_to_frames(args[0], frames[0]), share), args[0]),)
        block.register_forward_pre_hook(record)
        block.conv1.register_forward_pre_hook(pre)
    return add


SITES: dict[str, Callable[[nn.Module], list[Site]]] = {"FIT": _fit_sites, "UNet": _unet_sites}


def sites(net: nn.Module) -> list[Site]:
    kind = type(net).__name__
    if kind not in SITES:
        raise TuningError(f"backbone {kind} has no per-frame sites for adapters, latent shift or frame-wise "
                          f"conditioning; known: {sorted(SITES)}")
    return SITES[kind](net)


def _frames_per_group(net: nn.Module) -> int | None:
    """FIT: frames in one patch group (None = the whole clip); the U-Net sees whole clips."""
    return getattr(net.config, "group_frames", 0) or None


# ----------------------------------------------------------------------------------------------
# Applying the options to a built backbone
# ----------------------------------------------------------------------------------------------

def add_latent_shift(net: nn.Module, share: float) -> None:
    if share <= 0:
        return
    if _frames_per_group(net) == 1:
        raise TuningError(f"model.latent_shift={share}: backbone {type(net).__name__} has group_frames=1, so no "
                          "block sees a neighbouring frame to shift from")
    for s in sites(net):
        s.add_shift(share)


def add_adapters(net: nn.Module, cfg: AdapterConfig) -> None:
    if cfg.temporal != "none" and _frames_per_group(net) == 1:
        raise TuningError(f"model.adapters.temporal={cfg.temporal!r}: backbone {type(net).__name__} has "
                          "group_frames=1, so its blocks never see two frames; use temporal: none")
    if not cfg.spatial and cfg.temporal == "none":
        raise TuningError("model.adapters: spatial is false and temporal is 'none': no adapter to train")
    for s in sites(net):
        s.add_adapter(cfg)


def add_lora(net: nn.Module, cfg: LoraConfig) -> None:
    """peft LoRA (B zero-initialised: the tuned model starts as the untuned one)."""
    from peft import LoraConfig as PeftLora
    from peft import inject_adapter_in_model

    suffixes = "|".join(re.escape(t) for t in cfg.targets)
    pattern = rf"(.*\.)?({suffixes})"
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    hits = [n for n, m in net.named_modules() if isinstance(m, kinds) and re.fullmatch(pattern, n)]
    if not hits:
        raise TuningError(f"model.lora.targets {cfg.targets} match no linear or conv layer of backbone "
                          f"{type(net).__name__}")
    inject_adapter_in_model(PeftLora(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=hits), net)


def is_tuning_param(name: str) -> bool:
    """A parameter added by tuning (absent from an untuned export)."""
    parts = name.split(".")
    return (ADAPTER_ATTR in parts or FRAME_ATTR in parts or "lora_A" in parts or "lora_B" in parts
            or parts[0] == "frame_cond")


def untuned_name(name: str) -> str:
    """The name a (frozen) tuned-model weight has in an untuned export: peft's ``base_layer`` removed."""
    return name.replace(".base_layer.", ".")


def apply_tuning(net: nn.Module, tuning: str, adapters: AdapterConfig, lora: LoraConfig) -> None:
    """Insert the tuning mode's modules into a built backbone and set what trains:
    full: everything; adapters / lora: only the added parameters; frozen: nothing."""
    if tuning == "adapters":
        add_adapters(net, adapters)
    elif tuning == "lora":
        add_lora(net, lora)
    for name, p in net.named_parameters():
        p.requires_grad_(tuning == "full" or (tuning in ("adapters", "lora") and is_tuning_param(name)))


# ----------------------------------------------------------------------------------------------
# Frame-wise conditioning
# ----------------------------------------------------------------------------------------------

class FrameSlot:
    """The current clip's frame embeddings, set by the model before each backbone call and read by
    the per-frame cross-attention hooks (the backbone's signature has no place for them)."""

    def __init__(self) -> None:
        self.value: Tensor | None = None


class FrameQueryFormer(nn.Module):
    """C (B, L, D) -> one embedding per output frame (B, T, q, D): learned per-frame queries read C by
    cross-attention, then attend to each other (AID's dual-query former; FCA's frame-wise text
    conditioning). The frame queries carry a fixed frame position, so frame t's embedding knows t."""

    def __init__(self, dim: int, max_frames: int, cfg: FrameCondConfig):
        super().__init__()
        from vimi.models.layers import FeedForward, sincos_1d

        self.max_frames, self.q = max_frames, cfg.queries_per_frame
        self.queries = nn.Parameter(torch.randn(max_frames * self.q, dim) * 0.02)
        self.register_buffer("frame_pos", sincos_1d(torch.arange(max_frames).repeat_interleave(self.q), dim),
                             persistent=False)
        self.cond_norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(nn.ModuleDict({
            "norm_c": nn.LayerNorm(dim), "cross": Attention(dim, dim, dim, cfg.heads, qk_norm=True),
            "norm_s": nn.LayerNorm(dim), "self": Attention(dim, dim, dim, cfg.heads, qk_norm=True),
            "norm_f": nn.LayerNorm(dim), "ff": FeedForward(dim, 2.0)}) for _ in range(cfg.layers))
        self.out_norm = nn.LayerNorm(dim)

    def forward(self, cond: Tensor, cond_mask: Tensor, frames: int) -> Tensor:
        if frames > self.max_frames:
            raise TuningError(f"frame-wise conditioning has queries for {self.max_frames} frames, asked for "
                              f"{frames} in one chunk (model.frame_cond.max_frames)")
        B = cond.shape[0]
        n = frames * self.q
        q = (self.queries[:n] + self.frame_pos[:n].to(self.queries.dtype))[None].expand(B, -1, -1)
        c = self.cond_norm(cond.to(q.dtype))
        mask = cond_mask
        if c.shape[1] == 0 or not bool(mask.any(1).all()):   # a row with no valid token reads nothing
            c = torch.cat([c, c.new_zeros(B, 1, c.shape[-1])], 1)
            mask = torch.cat([mask, ~mask.any(1, keepdim=True)], 1)
        for layer in self.layers:
            q = q + layer["cross"](layer["norm_c"](q), c, mask)
            h = layer["norm_s"](q)
            q = q + layer["self"](h, h)
            q = q + layer["ff"](layer["norm_f"](q))
        return self.out_norm(q).view(B, frames, self.q, -1)        # (B, T, q, D)


class FrameCrossAttention(nn.Module):
    """FCA's parallel branch beside a cross-attention: each frame's tokens attend to that frame's
    embeddings only (the frame mask, realised by folding frames into the batch); the output, through a
    zero-initialised projection, is added to the cross-attention's."""

    def __init__(self, query_dim: int, cond_dim: int, heads: int, slot: FrameSlot,
                 tokens_per_frame: Callable[[int], int] | None):
        super().__init__()
        heads = heads if query_dim % heads == 0 else 1
        self.attn = Attention(query_dim, cond_dim, query_dim, heads, qk_norm=True)
        nn.init.zeros_(self.attn.proj.weight)
        nn.init.zeros_(self.attn.proj.bias)
        self.slot, self.tokens_per_frame = slot, tokens_per_frame

    def hook(self, module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        fe = self.slot.value                                      # (B, T, q, D)
        if fe is None:
            return out
        x = args[0]                                               # (N, Lq, Dq): the branch reads the same queries
        N, Lq, Dq = x.shape
        B, T, q, D = fe.shape
        if self.tokens_per_frame is None:                         # U-Net: N = B, Lq = T·h·w
            per, gt = Lq // T, T
            ctx = fe
        else:                                                     # FIT: N = B·G, Lq = gt·gh·gw
            per = self.tokens_per_frame(Lq)
            gt = Lq // per
            G = N // B
            nt = T // gt                                          # groups along time; (b nt nh nw) order
            ctx = fe.view(B, nt, 1, gt, q, D).expand(B, nt, G // nt, gt, q, D).reshape(N, gt, q, D)
        y = self.attn(x.reshape(N * gt, per, Dq), ctx.reshape(N * gt, q, D).to(x.dtype))
        return out + y.reshape(N, Lq, Dq)


def add_frame_attention(net: nn.Module, cond_dim: int, heads: int, slot: FrameSlot) -> None:
    for s in sites(net):
        for attn, per in s.cross_attn:
            attn.add_module(FRAME_ATTR, FrameCrossAttention(attn.to_q.in_features, cond_dim, heads, slot, per))
            attn.register_forward_hook(getattr(attn, FRAME_ATTR).hook)
