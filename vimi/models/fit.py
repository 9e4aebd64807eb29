"""FIT backbone: Snap Video's far-reaching interleaved transformer for video (Menapace et al., CVPR 2024, Fig. 3b).

FIT (Chen & Li, "FIT: Far-reaching Interleaved Transformers", 2023) splits data tokens into
groups and does most of its computation on a small set of latent tokens. Snap Video adapts it to
video: a clip is cut into 1×p×p patch tokens, patches are grouped in space-time windows spanning
all frames (so motion is modelled jointly with appearance), each group owns a few learnable latent
tokens, and every block

    1. reads the conditioning tokens (a σ token from c_noise + the MLLM tokens C) into the latents,
    2. reads each group's patches into that group's latents (cross-attention),
    3. runs self-attention over ALL latents of the clip (the "far-reaching", global part),
    4. writes each group's latents back to its patches (cross-attention patches ← latents),

with a feed-forward layer after every read and write. Compute grows with the number of latents,
not of pixels, which is what lets Snap Video model space and time jointly at scale.

Beyond Snap Video, ``frame_cond`` input channels carry clean conditioning frames plus a mask channel
(video prediction, long-video extension); they are zeros when absent.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vimi.models.layers import Attention, FeedForward, NoiseEmbedding, check_inputs, sincos_3d


class FITInputError(ValueError):
    """The inputs do not match the backbone's config (shapes, channels, divisibility)."""


@dataclass
class FITConfig:
    in_channels: int = 3              # channels of x (RGB pixels, or VAE latents)
    frame_cond_channels: int = 4           # clean conditioning frames (RGB) + mask; zeros when absent
    patch_size: int = 4               # p: tokens are 1×p×p patches (one frame each)
    group_frames: int = 0             # frames per patch group; 0 = all frames (Snap Video groups span the clip)
    group_size: tuple[int, int] = (4, 4)  # patches per group along height, width
    patch_dim: int = 128              # width of patch tokens
    latents_per_group: int = 16       # learnable latent tokens per group
    latent_dim: int = 256             # width of latent tokens (where most compute happens)
    num_blocks: int = 4               # FIT blocks (read cond → read patches → self-attn → write)
    latent_layers: int = 2            # latent self-attention layers per block
    num_heads: int = 4                # attention heads (latent_dim must divide evenly)
    mlp_ratio: float = 4.0            # feed-forward hidden width / token width
    cond_dim: int = 256               # width of the incoming conditioning tokens C
    qk_norm: bool = True              # RMS-normalise queries and keys (stable attention logits in bf16)
    gradient_checkpointing: bool = False  # recompute each block in backward to save activation memory

    def __post_init__(self) -> None:
        self.group_size = tuple(int(v) for v in self.group_size)  # YAML gives lists
        if len(self.group_size) != 2:
            raise ValueError(f"group_size must be (height, width) in patches, got {self.group_size}")
        for name in ("in_channels", "patch_size", "patch_dim", "latents_per_group", "latent_dim",
                     "num_blocks", "num_heads", "cond_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"FITConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.frame_cond_channels < 0 or self.group_frames < 0 or self.latent_layers < 0 or min(self.group_size) < 1:
            raise ValueError("frame_cond_channels, group_frames, latent_layers must be >= 0 and group_size >= 1")
        if self.latent_dim % self.num_heads:
            raise ValueError(f"latent_dim {self.latent_dim} is not divisible by num_heads {self.num_heads}")


# Named sizes (DiT's registry idea). fit-500m follows Snap Video's ~500M-parameter ablation model
# (16×36×64 clips, 1×4×4 patches, 12 groups of 4×3 patches × all frames → 768 latents); its widths
# and depths are ours, chosen to land on the reported size. fit-tiny is for the 32×32 CPU world.
FIT_CONFIGS: dict[str, FITConfig] = {
    "fit-tiny": FITConfig(patch_size=4, group_size=(4, 4), patch_dim=128, latents_per_group=16, latent_dim=192,
                          num_blocks=3, latent_layers=2, num_heads=4, cond_dim=192),
    "fit-s": FITConfig(patch_size=4, group_size=(4, 4), patch_dim=192, latents_per_group=32, latent_dim=384,
                       num_blocks=4, latent_layers=3, num_heads=6, cond_dim=384),
    "fit-b": FITConfig(patch_size=4, group_size=(4, 4), patch_dim=384, latents_per_group=64, latent_dim=768,
                       num_blocks=4, latent_layers=3, num_heads=12, cond_dim=768),
    "fit-500m": FITConfig(patch_size=4, group_size=(3, 4), patch_dim=768, latents_per_group=64, latent_dim=1024,
                          num_blocks=6, latent_layers=4, num_heads=16, cond_dim=1024),
}


def fit_config(name: str, **overrides) -> FITConfig:
    """A registry config by name, with field overrides (e.g. ``cond_dim=4096``)."""
    if name not in FIT_CONFIGS:
        raise KeyError(f"unknown FIT size {name!r}; known: {sorted(FIT_CONFIGS)}")
    return replace(FIT_CONFIGS[name], **overrides)


class CrossAttentionLayer(nn.Module):
    """x ← x + Attn(LN x, LN context); x ← x + FF(LN x): one read or write, with its feed-forward."""

    def __init__(self, dim: int, context_dim: int, inner_dim: int, heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm_x, self.norm_ctx = nn.LayerNorm(dim), nn.LayerNorm(context_dim)
        self.attn = Attention(dim, context_dim, inner_dim, heads, qk_norm)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, mlp_ratio)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm_x(x), self.norm_ctx(context), mask)
        return x + self.ff(self.norm_ff(x))


class SelfAttentionLayer(nn.Module):
    """A pre-LN transformer layer over the latent tokens."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(dim), Attention(dim, dim, dim, heads, qk_norm)
        self.norm_ff, self.ff = nn.LayerNorm(dim), FeedForward(dim, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        x = x + self.attn(h, h)
        return x + self.ff(self.norm_ff(x))


class FITBlock(nn.Module):
    """Read conditioning → read patches → latent self-attention → write patches (Snap Video Fig. 3b)."""

    def __init__(self, cfg: FITConfig):
        super().__init__()
        Dl, Dp, h, r, qk = cfg.latent_dim, cfg.patch_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qk_norm
        self.read_cond = CrossAttentionLayer(Dl, Dl, Dl, h, r, qk)
        self.read_patches = CrossAttentionLayer(Dl, Dp, Dl, h, r, qk)
        self.latent_layers = nn.ModuleList(SelfAttentionLayer(Dl, h, r, qk) for _ in range(cfg.latent_layers))
        self.write = CrossAttentionLayer(Dp, Dl, Dl, h, r, qk)

    def forward(self, patches: Tensor, latents: Tensor, cond: Tensor, cond_mask: Tensor) -> tuple[Tensor, Tensor]:
        # patches (B·G, N, Dp) grouped; latents (B, G·M, Dl); cond (B, 1+L, Dl); cond_mask (B, 1+L)
        BG, _, _ = patches.shape
        B = latents.shape[0]
        latents = self.read_cond(latents, cond, cond_mask)                 # (B, G·M, Dl)
        per_group = latents.reshape(BG, -1, latents.shape[-1])             # (B·G, M, Dl)
        per_group = self.read_patches(per_group, patches)                  # (B·G, M, Dl)
        latents = per_group.reshape(B, -1, per_group.shape[-1])            # (B, G·M, Dl)
        for layer in self.latent_layers:                                   # global: all groups' latents
            latents = layer(latents)
        patches = self.write(patches, latents.reshape(BG, -1, latents.shape[-1]))  # (B·G, N, Dp)
        return patches, latents


# ----------------------------------------------------------------------------------------------
# The backbone
# ----------------------------------------------------------------------------------------------

class FIT(nn.Module):
    """F(x_in; c_noise, C): (B, C, T, H, W) -> (B, C, T, H, W), the network that EDMPrecond wraps."""

    def __init__(self, cfg: FITConfig):
        super().__init__()
        self.config = cfg
        p = cfg.patch_size
        self.patch_embed = nn.Conv3d(cfg.in_channels + cfg.frame_cond_channels, cfg.patch_dim,
                                     kernel_size=(1, p, p), stride=(1, p, p))
        self.latents = nn.Parameter(torch.zeros(cfg.latents_per_group, cfg.latent_dim))   # (M, Dl)
        self.noise_embed = NoiseEmbedding(cfg.latent_dim)
        self.cond_norm = nn.LayerNorm(cfg.cond_dim)    # MLLM hidden states carry large outlier channels
        self.cond_proj = nn.Linear(cfg.cond_dim, cfg.latent_dim)
        self.blocks = nn.ModuleList(FITBlock(cfg) for _ in range(cfg.num_blocks))
        self.out_norm = nn.LayerNorm(cfg.patch_dim)
        self.out_proj = nn.Linear(cfg.patch_dim, p * p * cfg.in_channels)
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears (as DiT), small random latents, and a zero output layer so F = 0 at init.

        A zero F makes the initial denoiser D = c_skip x, the best linear guess, so training
        starts from a sane model instead of random noise (DiT zero-initialises its final layer too).
        """
        def _basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.apply(_basic)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.latents, std=0.02)
        nn.init.normal_(self.noise_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.noise_embed.mlp[2].weight, std=0.02)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    # -- helpers --------------------------------------------------------------------------------
    def _groups(self, T: int, H: int, W: int) -> tuple[int, int, int, int, int, int]:
        """(gt, gh, gw) patches per group and (nt, nh, nw) groups along each axis; checks sizes."""
        cfg = self.config
        p, (gh, gw) = cfg.patch_size, cfg.group_size
        gt = cfg.group_frames or T
        if H % (p * gh) or W % (p * gw) or T % gt:
            raise FITInputError(
                f"clip T×H×W = {T}×{H}×{W} does not tile into groups of {gt} frames × {p * gh}×{p * gw} pixels "
                f"(patch_size {p}, group_size {cfg.group_size}, group_frames {cfg.group_frames})")
        return gt, gh, gw, T // gt, H // (p * gh), W // (p * gw)

    def _check(self, x: Tensor, c_noise: Tensor, cond: Tensor, cond_mask: Tensor, frame_cond: Tensor | None) -> None:
        check_inputs(self.config, x, c_noise, cond, cond_mask, frame_cond, FITInputError)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None, cond_mask: Tensor | None = None,
                frame_cond: Tensor | None = None) -> Tensor:
        """x (B, C, T, H, W), c_noise (B,), cond (B, L, cond_dim), cond_mask (B, L) bool True=valid,
        frame_cond (B, frame_cond_channels, T, H, W) or None -> (B, C, T, H, W)."""
        cfg = self.config
        B, _, T, H, W = x.shape if x.ndim == 5 else (None,) * 5
        if cond is None:
            cond = x.new_zeros((x.shape[0], 0, cfg.cond_dim))
        if cond_mask is None:
            cond_mask = torch.ones(cond.shape[:2], dtype=torch.bool, device=cond.device)
        self._check(x, c_noise, cond, cond_mask, frame_cond)
        gt, gh, gw, nt, nh, nw = self._groups(T, H, W)
        p = cfg.patch_size

        # 1. Patch tokens with space-time positions, grouped over (gt frames × gh × gw patches).
        if cfg.frame_cond_channels:
            if frame_cond is None:
                frame_cond = x.new_zeros((B, cfg.frame_cond_channels, T, H, W))
            x = torch.cat([x, frame_cond.to(x.dtype)], dim=1)                                   # (B, C+E, T, H, W)
        tokens = self.patch_embed(x)                                           # (B, Dp, T, H/p, W/p)
        tokens = rearrange(tokens, "b d t h w -> b (t h w) d")
        tokens = tokens + sincos_3d(T, H // p, W // p, cfg.patch_dim, x.device).to(tokens.dtype)
        patches = rearrange(tokens, "b (nt gt nh gh nw gw) d -> (b nt nh nw) (gt gh gw) d",
                            nt=nt, gt=gt, nh=nh, gh=gh, nw=nw, gw=gw)          # (B·G, N, Dp)

        # 2. Latent tokens: the learned set, told which group they serve by a fixed group position.
        G, M = nt * nh * nw, cfg.latents_per_group
        group_pos = sincos_3d(nt, nh, nw, cfg.latent_dim, x.device).to(self.latents.dtype)  # (G, Dl)
        latents = (self.latents[None] + group_pos[:, None]).reshape(1, G * M, -1).expand(B, -1, -1)  # (B, G·M, Dl)

        # 3. Conditioning tokens: the σ token is always valid, so no attention row is ever all-masked.
        sigma_tok = self.noise_embed(c_noise)                                  # (B, 1, Dl)
        ctx = torch.cat([sigma_tok, self.cond_proj(self.cond_norm(cond.to(sigma_tok.dtype)))], dim=1)  # (B, 1+L, Dl)
        sigma_valid = torch.ones((B, 1), dtype=torch.bool, device=cond_mask.device)
        ctx_mask = torch.cat([sigma_valid, cond_mask.to(sigma_valid.device)], dim=1)       # (B, 1+L)

        # 4. FIT blocks.
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                patches, latents = checkpoint(block, patches, latents, ctx, ctx_mask, use_reentrant=False)
            else:
                patches, latents = block(patches, latents, ctx, ctx_mask)

        # 5. Patches back to pixels.
        out = self.out_proj(self.out_norm(patches))                            # (B·G, N, p·p·C)
        return rearrange(out, "(b nt nh nw) (gt gh gw) (p q c) -> b c (nt gt) (nh gh p) (nw gw q)",
                         b=B, nt=nt, nh=nh, nw=nw, gt=gt, gh=gh, gw=gw, p=p, q=p)
