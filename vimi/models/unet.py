"""A factorised space-time U-Net: per-frame 2-D convolutions, temporal convolutions, space-time attention.

The family SimDA, AID and Stable Video Diffusion build on (a 2-D image U-Net whose blocks gain
temporal layers): every residual block mixes space with a 3×3 convolution inside each frame and
time with a k×1×1 convolution across frames; the coarsest levels add self-attention over all
space-time tokens of the clip (where an object's trajectory is a few tokens long) and
cross-attention to the conditioning tokens C. The σ embedding and a pooled summary of C modulate
every block (FiLM, as in the ADM U-Net's adaptive group norm).

It sits behind the same ``F(x; c_noise, C, cond_mask, frame_cond)`` interface as FIT, so EDMPrecond,
the loss and the sampler use either unchanged. On 32×32×8 ShapeWorld clips it learns far more per
clip than FIT at the same compute (benchmarks/learning.py; the numbers are in
configs/shapeworld/pretrain.yaml).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vimi.models.layers import Attention, FeedForward, NoiseEmbedding, check_inputs, sincos_1d, sincos_3d


class UNetInputError(ValueError):
    """The inputs do not match the backbone's config (shapes, channels, divisibility)."""


@dataclass
class UNetConfig:
    in_channels: int = 3                          # channels of x (RGB pixels, or VAE latents)
    frame_cond_channels: int = 4                       # clean conditioning frames (RGB) + mask; zeros when absent
    patch_size: int = 1                           # p: frames enter as p×p pixel patches (pixel unshuffle), H/p × W/p
    channels: tuple[int, ...] = (32, 64, 128)     # width per level; each level below the first halves H and W
    blocks_per_level: int = 1                     # residual blocks per level on the way down (up: one more)
    attention_levels: tuple[int, ...] = (2,)      # levels (0 = full resolution) with space-time + cross attention
    num_heads: int = 4                            # attention heads (each attention level's width must divide)
    mlp_ratio: float = 2.0                        # feed-forward width after attention / token width
    temporal_kernel: int = 3                      # frames seen by each temporal convolution (odd)
    # Pixels each temporal convolution sees per frame: 1 gives the factorised k×1×1 (SimDA, AID, SVD); 3 a full
    # k×3×3 space-time convolution, which can match a shifted object across frames in one layer: a
    # direction-selective filter, where a factorised pair must carry the direction through its channels.
    temporal_spatial_kernel: int = 1
    # FiLM (σ + caption embedding) on each temporal convolution's input, as on the per-frame convolutions: the
    # caption can then choose which of its filters run (which way an object moves), not only what they see.
    temporal_film: bool = False
    emb_dim: int = 128                            # width of the σ + pooled-condition embedding (FiLM input)
    cond_dim: int = 256                           # width of the incoming conditioning tokens C
    groups: int = 8                               # GroupNorm groups (each level's width must divide)
    cond_pool: str = "mean"      # C's summary for FiLM: "mean" | "attention" (a learned query) | "first" token
                                 # (MLLMConfig.caption_summary puts the caption's mean there)
    # With cond_pool "first": FiLM reads this many leading tokens of C, each through its own projection; the
    # second (MLLMConfig.picture_token: the caption's pictures) starts at zero, as adapters do, so it adds to
    # what a stage-1 model learned and stage 1, whose prompts hold no such picture, never moves it.
    summary_tokens: int = 1
    # Where a frame sits in the clip, for the layers that read the caption. Per-frame convolutions and a
    # clip-wide FiLM cannot tell frame 0 from frame 7, so "moves left" has nowhere to act but the
    # self-attention. frame_embedding: each frame's FiLM input adds an embedding of its index (as the σ
    # embedding is added); cross_attention_positions: cross-attention queries carry the (t, h, w)
    # embedding that self-attention's already do. Neither made the motion word steer the samples at
    # 8,000 clips (docs/learning.md, "Motion words"), so both are off.
    frame_embedding: bool = False
    cross_attention_positions: bool = False
    # Coordinate channels (CoordConv, Liu et al. 2018): t, y and x in [-1, 1] enter the stem beside the noisy
    # clip. At high σ the input is noise, and the caption's layout (a big object moving right starts on the
    # left) must be drawn from position alone; convolutions see position only through their zero padding.
    coordinate_channels: bool = False
    # A caption-chosen velocity for space-time self-attention (VelocityBias): each head's logits get
    # -w ||Δp - v Δt||², so "moves left" can make attention look along leftward paths: a direct word ×
    # (relative place, time) interaction, where the other layers can only combine the word with positions
    # through several nonlinear steps. "" = off; "embedding": v and w read from the σ + pooled-caption
    # embedding (there a direction word is an eighth of a mean beside a σ token 3-5× larger: it learned one
    # velocity for every word); "tokens": each head reads the caption's tokens through its own attention query.
    velocity_attention: str = ""
    gradient_checkpointing: bool = False          # recompute each block in backward to save activation memory

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)              # YAML gives lists
        self.attention_levels = tuple(int(a) for a in self.attention_levels)
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"UNetConfig.channels must be a non-empty list of positive widths, got {self.channels}")
        for name in ("in_channels", "patch_size", "blocks_per_level", "num_heads", "emb_dim", "cond_dim", "groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"UNetConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.cond_pool not in ("mean", "attention", "first"):
            raise ValueError(f"UNetConfig.cond_pool must be 'mean', 'attention' or 'first', got {self.cond_pool!r}")
        if self.summary_tokens < 1 or (self.summary_tokens > 1 and self.cond_pool != "first"):
            raise ValueError(f"UNetConfig.summary_tokens must be >= 1, and 1 unless cond_pool is 'first', got "
                             f"{self.summary_tokens} with cond_pool {self.cond_pool!r}")
        if self.frame_cond_channels < 0 or self.temporal_kernel < 1 or self.temporal_kernel % 2 == 0:
            raise ValueError("UNetConfig: frame_cond_channels must be >= 0 and temporal_kernel odd and >= 1")
        if self.velocity_attention not in ("", "embedding", "tokens"):
            raise ValueError(f"UNetConfig.velocity_attention must be '', 'embedding' or 'tokens', "
                             f"got {self.velocity_attention!r}")
        if self.temporal_spatial_kernel < 1 or self.temporal_spatial_kernel % 2 == 0:
            raise ValueError(f"UNetConfig.temporal_spatial_kernel must be odd and >= 1, got "
                             f"{self.temporal_spatial_kernel}")
        for c in self.channels:
            if c % self.groups:
                raise ValueError(f"UNetConfig: width {c} is not divisible by groups {self.groups}")
        for a in self.attention_levels:
            if not 0 <= a < len(self.channels) or self.channels[a] % self.num_heads:
                raise ValueError(f"UNetConfig.attention_levels: level {a} does not exist or its width "
                                 f"is not divisible by num_heads {self.num_heads}")


# Named sizes. unet-s is the CPU world's default (the learning benchmark's winner); unet-b is for GPUs.
UNET_CONFIGS: dict[str, UNetConfig] = {
    "unet-xs": UNetConfig(channels=(16, 32, 64), attention_levels=(2,), num_heads=2, emb_dim=64, cond_dim=192),
    "unet-p2": UNetConfig(patch_size=2, channels=(64, 128), attention_levels=(1,), num_heads=4, emb_dim=128,
                          cond_dim=192),
    # 4×4-pixel patches: every level works on 8×8 tokens or fewer, as FIT's patches do, but with convolutions.
    "unet-p4": UNetConfig(patch_size=4, channels=(96, 192), attention_levels=(0, 1), num_heads=4, emb_dim=128,
                          cond_dim=192),
    # For latent mode's 8×8 latents (vimi.models.autoencoder, f = 4): two levels, attention at both.
    "unet-lat": UNetConfig(channels=(64, 128), attention_levels=(0, 1), num_heads=4, emb_dim=128, cond_dim=192),
    # For f = 2 latents (16×16): a convolution-only level above unet-lat's two. A 2-px step of ShapeWorld is
    # then a whole-cell shift, which a translation-equivariant layer can copy (at f = 4 it is half a cell). It
    # learned later than unet-lat on f = 4 at 8,000 clips (docs/learning.md, "The autoencoder, again").
    "unet-lat2": UNetConfig(channels=(32, 64, 128), attention_levels=(1, 2), num_heads=4, emb_dim=128,
                            cond_dim=192),
    "unet-s": UNetConfig(channels=(32, 64, 128), attention_levels=(2,), num_heads=4, emb_dim=128, cond_dim=192),
    "unet-m": UNetConfig(channels=(64, 128, 256), blocks_per_level=2, attention_levels=(1, 2), num_heads=4,
                         emb_dim=256, cond_dim=384),
    "unet-b": UNetConfig(channels=(128, 256, 512, 512), blocks_per_level=2, attention_levels=(2, 3), num_heads=8,
                         emb_dim=512, cond_dim=768, groups=32),
}


# ----------------------------------------------------------------------------------------------
# Blocks. Activations are (B·T, C, H, W): frames are images for the 2-D layers; T is restored
# only where time is mixed.
# ----------------------------------------------------------------------------------------------

class TemporalConv(nn.Module):
    """x ← x + Conv_t(SiLU(GN x)) across frames, k×1×1 or k×s×s (zero-initialised: starts as identity)."""

    def __init__(self, channels: int, kernel: int, groups: int, spatial: int = 1, film_dim: int = 0):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.film = nn.Linear(film_dim, 2 * channels) if film_dim else None
        if self.film is not None:   # zero: starts unmodulated
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        self.kernel, self.spatial = kernel, spatial
        if spatial == 1:
            # A k×1 Conv2d over (T, H·W) is the k×1×1 Conv3d, but oneDNN runs it ~4× faster on CPU at 32×32
            # (PyTorch's Conv3d falls back to its slow path here: 13.4 vs 3.3 ms forward + backward).
            self.conv = nn.Conv2d(channels, channels, (kernel, 1), padding=(kernel // 2, 0))
        else:
            # k×s×s as an s×s Conv2d over each frame stacked with its k-1 neighbours (zeros past the ends):
            # the same weights and sums as a Conv3d, on the same fast 2-D path.
            self.conv = nn.Conv2d(kernel * channels, channels, spatial, padding=spatial // 2)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor, frames: int, emb: Tensor | None = None) -> Tensor:
        BT, C, H, W = x.shape
        h = self.norm(x)
        if self.film is not None:
            scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = F.silu(h)
        if self.spatial == 1:
            h = h.view(BT // frames, frames, C, H * W).transpose(1, 2)                   # (B, C, T, H·W)
            return x + self.conv(h).transpose(1, 2).reshape(BT, C, H, W)
        r = self.kernel // 2
        h = F.pad(h.view(BT // frames, frames, C, H, W), (0, 0, 0, 0, 0, 0, r, r))       # (B, T+2r, C, H, W)
        stacked = torch.cat([h[:, dt:dt + frames] for dt in range(self.kernel)], dim=2)  # (B, T, k·C, H, W)
        return x + self.conv(stacked.reshape(BT, self.kernel * C, H, W))


class ResBlock(nn.Module):
    """Per-frame residual block with FiLM from the embedding, then a temporal convolution."""

    def __init__(self, c_in: int, c_out: int, cfg: UNetConfig):
        super().__init__()
        self.norm1 = nn.GroupNorm(cfg.groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(cfg.emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(cfg.groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.temporal = TemporalConv(c_out, cfg.temporal_kernel, cfg.groups, cfg.temporal_spatial_kernel,
                                     cfg.emb_dim if cfg.temporal_film else 0)
        nn.init.zeros_(self.conv2.weight)   # each block starts as its skip path (DiT/ADM zero-init)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor, frames: int) -> Tensor:
        # x (B·T, c_in, H, W); emb (B·T, emb_dim)
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.temporal(self.skip(x) + h, frames, emb=emb)   # frames last: adapter hooks read it there


class VelocityBias(nn.Module):
    """Attention logits bias -w_h ||(p_k - p_q) - v_h (t_k - t_q)||² per head h, v_h and w_h read from a vector
    (the embedding) or, per head, from an attention-weighted mean of the caption's tokens.

    Positions are in this level's grid cells and frames. v starts at 0 and w at 0.1 (a weak locality
    prior; at w = 0 no gradient could reach v); a token query starts at 0, the tokens' plain mean."""

    def __init__(self, in_dim: int, heads: int, from_tokens: bool):
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.zeros(heads, in_dim)) if from_tokens else None
        self.proj = nn.Linear(in_dim, 3 * heads)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        with torch.no_grad():
            self.proj.bias[2 * heads:] = math.log(math.expm1(0.1))    # softplus⁻¹(0.1)

    def forward(self, emb: Tensor, tokens: Tensor, mask: Tensor, frames: int, H: int, W: int) -> Tensor:
        """emb (B, E) or tokens (B, L, E) with ``mask`` (B, L), whichever this bias reads -> (B, heads, L', L'),
        L' = frames·H·W."""
        if self.query is None:
            vx, vy, raw_w = self.proj(emb).view(-1, 3, self.heads, 1, 1).unbind(1)      # (B, heads, 1, 1) each
        else:
            scores = (tokens @ self.query.T / tokens.shape[-1] ** 0.5).masked_fill(~mask[..., None], float("-inf"))
            pooled = torch.einsum("blh,ble->bhe", torch.softmax(scores, dim=1).nan_to_num(0.0), tokens)
            weight = self.proj.weight.view(3, self.heads, -1)                              # head h reads pooled h
            out = torch.einsum("bhe,khe->bkh", pooled, weight) + self.proj.bias.view(3, self.heads)
            vx, vy, raw_w = out[..., None, None].unbind(1)
        t, y, x = (g.reshape(-1).to(tokens.dtype) for g in torch.meshgrid(
            *(torch.arange(n, device=tokens.device) for n in (frames, H, W)), indexing="ij"))
        dt, dy, dx = (a[None, :] - a[:, None] for a in (t, y, x))                      # (L', L'): key - query
        return -F.softplus(raw_w) * ((dx - vx * dt) ** 2 + (dy - vy * dt) ** 2)


class SpaceTimeAttention(nn.Module):
    """Self-attention over all T·h·w tokens of a clip, cross-attention to C, feed-forward."""

    def __init__(self, channels: int, context_dim: int, cfg: UNetConfig):
        super().__init__()
        self.cross_positions = cfg.cross_attention_positions
        self.velocity = None if not cfg.velocity_attention else (
            VelocityBias(context_dim, cfg.num_heads, from_tokens=True) if cfg.velocity_attention == "tokens"
            else VelocityBias(cfg.emb_dim, cfg.num_heads, from_tokens=False))
        self.norm_self, self.norm_cross, self.norm_ff = (nn.LayerNorm(channels) for _ in range(3))
        self.self_attn = Attention(channels, channels, channels, cfg.num_heads, qk_norm=True)
        self.cross_attn = Attention(channels, context_dim, channels, cfg.num_heads, qk_norm=True)
        self.ff = FeedForward(channels, cfg.mlp_ratio)
        for out in (self.self_attn.proj, self.cross_attn.proj, self.ff[2]):   # start as identity
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)

    def forward(self, x: Tensor, cond: Tensor, cond_mask: Tensor, frames: int, emb: Tensor | None = None) -> Tensor:
        BT, C, H, W = x.shape
        B = BT // frames
        tokens = x.view(B, frames, C, H * W).transpose(2, 3).reshape(B, frames * H * W, C)   # (B, T·h·w, C)
        pos = sincos_3d(frames, H, W, C, x.device).to(x.dtype)                               # (T·h·w, C)
        h = self.norm_self(tokens) + pos
        bias = None if self.velocity is None else self.velocity(emb.view(B, frames, -1)[:, 0], cond, cond_mask,
                                                                 frames, H, W)
        tokens = tokens + self.self_attn(h, h, bias=bias)
        q = self.norm_cross(tokens) + pos if self.cross_positions else self.norm_cross(tokens)
        tokens = tokens + self.cross_attn(q, cond, cond_mask)
        tokens = tokens + self.ff(self.norm_ff(tokens))
        return tokens.view(B, frames, H * W, C).transpose(2, 3).reshape(BT, C, H, W)


class Level(nn.Module):
    """The residual blocks (and attention) of one resolution."""

    def __init__(self, c_in: int, c_out: int, blocks: int, attention: bool, cfg: UNetConfig):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c_in if i == 0 else c_out, c_out, cfg) for i in range(blocks))
        self.attn = SpaceTimeAttention(c_out, cfg.channels[-1], cfg) if attention else None

    def forward(self, x: Tensor, emb: Tensor, cond: Tensor, cond_mask: Tensor, frames: int) -> Tensor:
        for block in self.blocks:
            x = block(x, emb, frames)
        if self.attn is not None:
            x = self.attn(x, cond, cond_mask, frames, emb=emb)   # frames last: adapter hooks read it there
        return x


# ----------------------------------------------------------------------------------------------
# The backbone
# ----------------------------------------------------------------------------------------------

class UNet(nn.Module):
    """F(x_in; c_noise, C): (B, C, T, H, W) -> (B, C, T, H, W), the network that EDMPrecond wraps."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        ch, n = cfg.channels, len(cfg.channels)
        attn = set(cfg.attention_levels)
        self.noise_embed = NoiseEmbedding(cfg.emb_dim)
        self.cond_norm = nn.LayerNorm(cfg.cond_dim)     # MLLM hidden states carry large outlier channels
        self.cond_proj = nn.Linear(cfg.cond_dim, ch[-1])
        self.cond_pool = nn.Linear(ch[-1], cfg.emb_dim)
        # Attention pooling (as Imagen pools its text embeddings): a VIMI prompt is mostly retrieved
        # pictures (K = 4 pairs of 64 image tokens around a 10-token caption), so their plain mean says
        # little about the caption. The query starts at zero, where the weights are uniform: the mean.
        self.pool_query = nn.Parameter(torch.zeros(ch[-1])) if cfg.cond_pool == "attention" else None
        self.summary_pools = nn.ModuleList(nn.Linear(ch[-1], cfg.emb_dim, bias=False)
                                           for _ in range(cfg.summary_tokens - 1))
        for lin in self.summary_pools:
            nn.init.zeros_(lin.weight)
        self.frame_embed = nn.Linear(cfg.emb_dim, cfg.emb_dim) if cfg.frame_embedding else None
        if self.frame_embed is not None:   # zero: starts as the clip-wide FiLM
            nn.init.zeros_(self.frame_embed.weight)
            nn.init.zeros_(self.frame_embed.bias)
        p2 = cfg.patch_size ** 2
        coords = 3 if cfg.coordinate_channels else 0
        self.stem = nn.Conv2d((cfg.in_channels + cfg.frame_cond_channels + coords) * p2, ch[0], 3, padding=1)
        self.down = nn.ModuleList(Level(ch[max(i - 1, 0)], ch[i], cfg.blocks_per_level, i in attn, cfg)
                                  for i in range(n))
        self.downsample = nn.ModuleList(nn.Conv2d(ch[i], ch[i], 3, stride=2, padding=1) for i in range(n - 1))
        self.mid = Level(ch[-1], ch[-1], 1, True, cfg)
        # Up path: each level reads its skip (concatenated) and the upsampled level below.
        self.up = nn.ModuleList(Level(ch[i] + (ch[i + 1] if i + 1 < n else ch[i]), ch[i], cfg.blocks_per_level + 1,
                                      i in attn, cfg) for i in range(n))
        self.upsample = nn.ModuleList(nn.Conv2d(ch[i + 1], ch[i + 1], 3, padding=1) for i in range(n - 1))
        self.out_norm = nn.GroupNorm(cfg.groups, ch[0])
        self.out_conv = nn.Conv2d(ch[0], cfg.in_channels * p2, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)   # F = 0 at init: D starts as c_skip x, the best linear guess
        nn.init.zeros_(self.out_conv.bias)
        self.gradient_checkpointing = cfg.gradient_checkpointing

    def _check(self, x: Tensor, c_noise: Tensor, cond: Tensor, cond_mask: Tensor, frame_cond: Tensor | None) -> None:
        cfg = self.config
        check_inputs(cfg, x, c_noise, cond, cond_mask, frame_cond, UNetInputError)
        H, W = x.shape[-2:]
        f = cfg.patch_size * 2 ** (len(cfg.channels) - 1)
        if H % f or W % f:
            raise UNetInputError(f"H×W = {H}×{W} must be divisible by {f} (patch_size {cfg.patch_size}, "
                                 f"{len(cfg.channels)} levels)")

    def _pool(self, c: Tensor, mask: Tensor) -> Tensor:
        """(B, L, D) tokens, (B, L) valid -> (B, D): their masked mean, attention-weighted mean, or the first."""
        if self.config.cond_pool == "first":
            return c[:, 0] * mask[:, 0, None].to(c.dtype) if c.shape[1] else c.new_zeros(c.shape[0], c.shape[2])
        if self.pool_query is None:
            w = mask.to(c.dtype)[..., None]                                            # (B, L, 1)
            return (c * w).sum(1) / w.sum(1).clamp(min=1.0)
        scores = (c @ self.pool_query / c.shape[-1] ** 0.5).masked_fill(~mask, float("-inf"))   # (B, L)
        w = torch.softmax(scores, dim=1).nan_to_num(0.0)                               # rows with no valid token: 0
        return (w[..., None] * c).sum(1)

    def _run(self, module: nn.Module, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None, cond_mask: Tensor | None = None,
                frame_cond: Tensor | None = None) -> Tensor:
        """x (B, C, T, H, W), c_noise (B,), cond (B, L, cond_dim), cond_mask (B, L) bool True=valid,
        frame_cond (B, frame_cond_channels, T, H, W) or None -> (B, C, T, H, W)."""
        cfg = self.config
        if cond is None:
            cond = x.new_zeros((x.shape[0], 0, cfg.cond_dim))
        if cond_mask is None:
            cond_mask = torch.ones(cond.shape[:2], dtype=torch.bool, device=cond.device)
        self._check(x, c_noise, cond, cond_mask, frame_cond)
        B, _, T, H, W = x.shape

        # 1. Conditioning: C projected once; the σ token plus C's masked mean drive every FiLM.
        sigma_tok = self.noise_embed(c_noise)                                          # (B, 1, E)
        c = self.cond_proj(self.cond_norm(cond.to(sigma_tok.dtype)))                   # (B, L, Ctop)
        ctx = torch.cat([sigma_tok.new_zeros((B, 1, c.shape[-1])), c], dim=1)           # (B, 1+L, Ctop)
        ctx_mask = torch.cat([torch.ones((B, 1), dtype=torch.bool, device=c.device), cond_mask.to(c.device)], 1)
        pooled = self._pool(c, cond_mask.to(c.device))                                 # (B, Ctop)
        emb = sigma_tok[:, 0] + self.cond_pool(pooled)                                  # (B, E)
        for i, lin in enumerate(self.summary_pools, 1):
            if c.shape[1] > i:
                emb = emb + lin(c[:, i] * cond_mask[:, i, None].to(device=c.device, dtype=c.dtype))
        emb = emb[:, None]                                                              # (B, 1, E)
        if self.frame_embed is not None:
            index = sincos_1d(torch.arange(T, device=emb.device), cfg.emb_dim).to(emb.dtype)
            emb = emb + self.frame_embed(index)[None]                                  # (B, T, E)
        emb = F.silu(emb.expand(B, T, -1)).reshape(B * T, -1)                          # (B·T, E)

        # 2. Frames as images: clean conditioning frames and mask ride along as input channels.
        if cfg.frame_cond_channels:
            if frame_cond is None:
                frame_cond = x.new_zeros((B, cfg.frame_cond_channels, T, H, W))
            x = torch.cat([x, frame_cond.to(x.dtype)], dim=1)                                  # (B, C+E, T, H, W)
        if cfg.coordinate_channels:
            axes = [torch.linspace(-1, 1, n, device=x.device, dtype=x.dtype) for n in (T, H, W)]
            grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))                            # (3, T, H, W)
            x = torch.cat([x, grid.expand(B, -1, -1, -1, -1)], dim=1)
        frames = x.transpose(1, 2).reshape(B * T, -1, H, W)                             # (B·T, C+E, H, W)
        h = self.stem(F.pixel_unshuffle(frames, cfg.patch_size))                        # (B·T, ch0, H/p, W/p)

        # 3. Down, middle, up.
        skips = []
        for i, level in enumerate(self.down):
            h = self._run(level, h, emb, ctx, ctx_mask, T)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self._run(self.mid, h, emb, ctx, ctx_mask, T)
        for i in reversed(range(len(self.up))):
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
            h = self._run(self.up[i], torch.cat([h, skips[i]], dim=1), emb, ctx, ctx_mask, T)

        # 4. Back to a clip.
        out = F.pixel_shuffle(self.out_conv(F.silu(self.out_norm(h))), cfg.patch_size)  # (B·T, C, H, W)
        return out.view(B, T, cfg.in_channels, H, W).transpose(1, 2)
