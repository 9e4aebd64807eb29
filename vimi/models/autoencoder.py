"""A per-frame convolutional autoencoder: the latent space for the backbone's latent mode.

Latent diffusion (Rombach et al., CVPR 2022; the image VAE under Stable Video Diffusion) moves the
denoising problem from pixels to a smaller latent grid, and a decoder trained on the data turns
imperfect latents back into clean frames. On ShapeWorld the pixel-space denoiser leaves object
pixels as noisy as it got them for thousands of steps (docs/learning.md, "Where the speckle comes
from"); a decoder that only knows how to draw flat scenes and objects cannot draw speckle.

Frames are encoded independently (B·T images); the latents of a clip keep the (B, C, T, h, w) layout
the backbones read. ``latent_scale`` maps the trained encoder's output to a standard deviation of
σ_d = 0.5, so the EDM settings of pixel space carry over. A trained autoencoder is a local folder
(config.json + model.safetensors) written by ``python -m vimi.training.autoencoder``.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn


@dataclass
class AutoencoderConfig:
    in_channels: int = 3
    # Width per level; each level halves H and W (f = 2^levels). (16, 32) at 3,600 steps beats (32, 64) at 2,500
    # in half the time: 25.6 against 24.6 dB, shape 0.65 against 0.58 (docs/learning.md, "The autoencoder, again").
    channels: tuple[int, ...] = (16, 32)
    latent_channels: int = 8
    groups: int = 8
    latent_scale: float = 1.0              # z_model = latent_scale · z_encoder (set after training: std → 0.5)

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if not self.channels or any(c % self.groups for c in self.channels) or self.latent_channels < 1:
            raise ValueError(f"AutoencoderConfig: channels {self.channels} must be non-empty and divisible by "
                             f"groups {self.groups}, latent_channels >= 1")

    @property
    def factor(self) -> int:
        return 2 ** len(self.channels)


class _Res(nn.Module):
    def __init__(self, c: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(groups, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                                  nn.GroupNorm(groups, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class FrameAutoencoder(nn.Module):
    """encode: frames (N, 3, H, W) in [-1, 1] -> (N, latent_channels, H/f, W/f); decode: the inverse."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.config = cfg
        ch, g = cfg.channels, cfg.groups
        enc: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)]
        for i, c in enumerate(ch):
            enc += [_Res(c, g), nn.Conv2d(c, ch[min(i + 1, len(ch) - 1)], 3, stride=2, padding=1)]
        enc += [_Res(ch[-1], g), nn.GroupNorm(g, ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], cfg.latent_channels, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, ch[-1], 3, padding=1), _Res(ch[-1], g)]
        for i in reversed(range(len(ch))):
            dec += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(ch[min(i + 1, len(ch) - 1)], ch[i], 3,
                                                                             padding=1), _Res(ch[i], g)]
        dec += [nn.GroupNorm(g, ch[0]), nn.SiLU(), nn.Conv2d(ch[0], cfg.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, frames: Tensor) -> Tensor:
        return self.encoder(frames) * self.config.latent_scale

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z / self.config.latent_scale)

    def encode_video(self, video: Tensor) -> Tensor:
        """(B, C, T, H, W) -> (B, latent_channels, T, H/f, W/f), frame by frame."""
        B, C, T, H, W = video.shape
        z = self.encode(video.transpose(1, 2).reshape(B * T, C, H, W))
        return z.view(B, T, *z.shape[1:]).transpose(1, 2)

    def decode_video(self, z: Tensor) -> Tensor:
        B, C, T, h, w = z.shape
        x = self.decode(z.transpose(1, 2).reshape(B * T, C, h, w))
        return x.view(B, T, *x.shape[1:]).transpose(1, 2)

    def loss(self, frames: Tensor, latent_noise: float = 0.1, weights: Tensor | None = None
             ) -> tuple[Tensor, Tensor]:
        """L1 + MSE reconstruction from latents jittered by ``latent_noise``·std: the decoder must draw
        clean frames from the slightly-off latents a diffusion sampler produces. ``weights`` (N, 1, H, W),
        mean 1, weigh the pixels (e.g. more on objects than on the flat background). Returns the loss and
        the (unjittered, unscaled) latents, for a training-only loss on them."""
        z = self.encoder(frames)
        jittered = z + latent_noise * z.detach().std() * torch.randn_like(z)
        err = self.decoder(jittered) - frames
        per_pixel = err.abs() + err.square()
        if weights is not None:
            per_pixel = per_pixel * weights
        return per_pixel.mean() + 1e-4 * z.square().mean(), z

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        from base.io import atomic_path, write_json_atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp))
        write_json_atomic(folder / "config.json", asdict(self.config))
        return folder


class AutoencoderError(ValueError):
    """An autoencoder folder that cannot be loaded (missing or damaged file, bad config)."""


def autoencoder_config(folder: str | Path) -> AutoencoderConfig:
    """The config.json of a trained autoencoder folder (read without loading the weights; read once per
    file version, since the model config asks for it on every generation call)."""
    cfg_file = Path(folder) / "config.json"
    try:
        return replace(_read_config(str(cfg_file.resolve()), cfg_file.stat().st_mtime_ns))
    except FileNotFoundError:
        raise AutoencoderError(f"{cfg_file}: not found (an autoencoder folder has config.json and "
                               f"model.safetensors; train one with python -m vimi.training.autoencoder)") from None
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise AutoencoderError(f"{cfg_file}: not an autoencoder config ({e})") from None


@functools.lru_cache(maxsize=16)
def _read_config(path: str, mtime_ns: int) -> AutoencoderConfig:
    return AutoencoderConfig(**json.loads(Path(path).read_text()))


def load_autoencoder(folder: str | Path) -> FrameAutoencoder:
    """A trained autoencoder folder -> the module in eval mode, frozen."""
    from vimi.weights import load_safetensors

    folder = Path(folder)
    ae = FrameAutoencoder(autoencoder_config(folder))
    ae.load_state_dict(load_safetensors(folder / "model.safetensors", AutoencoderError))
    return ae.eval().requires_grad_(False)
