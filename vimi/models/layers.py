"""Layers both backbones share: fixed position embeddings, the σ embedding, attention, feed-forward,
and the check of the inputs every backbone takes."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sincos_1d(pos: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer sinusoidal embedding of positions ``pos`` (N,) -> (N, dim) (dim even)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=pos.device) / half)
    args = pos.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def sincos_3d(t: int, h: int, w: int, dim: int, device: torch.device) -> Tensor:
    """Fixed space-time position embedding of a t×h×w grid -> (t·h·w, dim), axes in (t, h, w) order.

    Fixed (not learned) so one model runs at any frame count and resolution; each axis gets an
    equal even share of the channels, the remainder is zero.
    """
    per_axis = 2 * (dim // 6)
    grid = torch.stack(torch.meshgrid(torch.arange(t, device=device), torch.arange(h, device=device),
                                      torch.arange(w, device=device), indexing="ij"), dim=-1).reshape(-1, 3)
    parts = [sincos_1d(grid[:, a], per_axis) for a in range(3)]
    emb = torch.cat(parts, dim=1)
    return F.pad(emb, (0, dim - emb.shape[1]))


class NoiseEmbedding(nn.Module):
    """c_noise (B,) -> the σ token (B, 1, D): sinusoidal features through an MLP (as DiT embeds timesteps).

    c_noise = ln(σ)/4 spans about [-1.6, 1.1]; it is scaled by 1000 so the sinusoid frequencies
    resolve it like DiT's timesteps in [0, 1000).
    """

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise: Tensor) -> Tensor:
        feats = sincos_1d(c_noise * 1000.0, self.freq_dim).to(self.mlp[0].weight.dtype)  # (B, freq_dim)
        return self.mlp(feats)[:, None]                                                    # (B, 1, D)


class Attention(nn.Module):
    """Multi-head attention of queries (N, Lq, Dq) over a context (N, Lk, Dk), on torch SDPA."""

    def __init__(self, query_dim: int, context_dim: int, inner_dim: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads, self.head_dim = heads, inner_dim // heads
        self.to_q = nn.Linear(query_dim, inner_dim)
        self.to_kv = nn.Linear(context_dim, 2 * inner_dim)
        self.q_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(inner_dim, query_dim)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """``mask`` (N, Lk) True = attend; ``bias`` (N, h, Lq, Lk) added to the attention logits."""
        N, Lq, _ = x.shape
        Lk = context.shape[1]
        q = self.to_q(x).view(N, Lq, self.heads, self.head_dim).transpose(1, 2)            # (N, h, Lq, d)
        k, v = self.to_kv(context).view(N, Lk, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (N, h, Lk, d)
        q, k = self.q_norm(q), self.k_norm(k)
        attn_mask = None if mask is None else mask[:, None, None, :]                       # (N, 1, 1, Lk) True=attend
        if bias is not None:
            attn_mask = bias if attn_mask is None else bias.masked_fill(~attn_mask, float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)                  # (N, h, Lq, d)
        return self.proj(out.transpose(1, 2).reshape(N, Lq, self.heads * self.head_dim))


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, ratio: float):
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


def check_inputs(cfg, x: Tensor, c_noise: Tensor, cond: Tensor, cond_mask: Tensor, frame_cond: Tensor | None,
                 error: type[Exception]) -> None:
    """The shapes of ``F(x; c_noise, C, cond_mask, frame_cond)`` against a backbone config (``in_channels``,
    ``cond_dim``, ``frame_cond_channels``); a mismatch raises ``error`` saying what was expected."""
    if x.ndim != 5 or x.shape[1] != cfg.in_channels:
        raise error(f"x must be (B, {cfg.in_channels}, T, H, W), got {tuple(x.shape)}")
    B = x.shape[0]
    if c_noise.shape != (B,):
        raise error(f"c_noise must be ({B},), got {tuple(c_noise.shape)}")
    if cond.ndim != 3 or cond.shape[0] != B or cond.shape[2] != cfg.cond_dim:
        raise error(f"cond must be ({B}, L, {cfg.cond_dim}), got {tuple(cond.shape)}")
    if cond_mask.shape != cond.shape[:2] or cond_mask.dtype != torch.bool:
        raise error(f"cond_mask must be bool {tuple(cond.shape[:2])}, got {cond_mask.dtype} {tuple(cond_mask.shape)}")
    if frame_cond is not None and frame_cond.shape != (B, cfg.frame_cond_channels, *x.shape[2:]):
        raise error(f"frame_cond must be ({B}, {cfg.frame_cond_channels}, {', '.join(map(str, x.shape[2:]))}), "
                    f"got {tuple(frame_cond.shape)}")
