"""Train the per-frame autoencoder of latent mode on ShapeWorld frames rendered on the fly.

    python -m vimi.training.autoencoder --out outputs/ae --steps 1500

Each step renders ``batch`` fresh training clips and memory pictures (so every subject, the novel
ones included, is seen as a picture, as the memory holds them) and fits L1 + MSE reconstruction
from jittered latents (vimi.models.autoencoder). At the end ``latent_scale`` is set so that the
latents have standard deviation 0.5 (σ_d of the EDM settings), and the held-out reconstruction
PSNR is written to OUT/report.json: a latent recipe cannot score above what its decoder draws.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from base.io import write_json_atomic
from base.pixels import to_model_video, to_uint8_video
from data_pipelines.shapeworld.render import render_clip, render_image
from data_pipelines.shapeworld.world import WorldConfig, eval_params, memory_params, train_video_params
from vimi.eval.shapeworld import psnr
from vimi.models.autoencoder import AutoencoderConfig, FrameAutoencoder

LATENT_STD = 0.5   # σ_d of the EDM settings the latents are scaled to


@dataclass
class AETrainConfig:
    out: str = ""
    steps: int = 1500
    clips: int = 4                 # training clips per step (all their frames) ...
    pictures: int = 16             # ... plus this many memory pictures
    lr: float = 2e-3
    latent_noise: float = 0.05     # latent jitter (· std) in training: robustness to a sampler's latent errors
    seed: int = 0
    threads: int = 2
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)


def _frames(world: WorldConfig, cfg: AETrainConfig, step: int) -> torch.Tensor:
    clips = [render_clip(train_video_params(world, step * cfg.clips + i)) for i in range(cfg.clips)]
    pics = [render_image(memory_params(world, step * cfg.pictures + i)) for i in range(cfg.pictures)]
    frames = np.concatenate([*clips, np.stack(pics)])                                   # (N, H, W, 3)
    return to_model_video(frames[None])[0].transpose(0, 1)                              # (N, 3, H, W)


def held_out_frames(world: WorldConfig, n: int = 16) -> torch.Tensor:
    """Frames of eval clips from every split (novel subjects and compositions included)."""
    splits = ("t2v-seen", "t2v-novel-composition", "t2v-novel-subject", "prediction")
    clips = [render_clip(eval_params(world, s, i)) for s in splits for i in range(n // len(splits))]
    return to_model_video(np.concatenate(clips)[None])[0].transpose(0, 1)


def train(cfg: AETrainConfig) -> dict:
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    world = WorldConfig(out="unused", videos=10**9, memory=10**9, seed=cfg.seed)
    ae = FrameAutoencoder(cfg.model)
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.lr)
    test = held_out_frames(world)
    t0, losses = time.process_time(), []
    for step in (bar := tqdm(range(cfg.steps), desc="autoencoder", unit="step")):
        for g in opt.param_groups:   # cosine decay: the last steps sharpen edges
            g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        loss = ae.loss(_frames(world, cfg, step), cfg.latent_noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    ae.eval()
    with torch.no_grad():
        z = ae.encoder(_frames(world, cfg, 10**6))
        ae.config = replace(ae.config, latent_scale=LATENT_STD / float(z.std()))
        rec = ae.decode(ae.encode(test))
    as_clip = [to_uint8_video(v[None].transpose(1, 2))[0] for v in (rec, test)]   # the scorer's uint8 PSNR
    report = {"steps": cfg.steps, "cpu_seconds": round(time.process_time() - t0, 1),
              "final_loss": float(np.mean(losses[-50:])), "held_out_psnr_db": round(psnr(*as_clip), 2),
              "latent_scale": ae.config.latent_scale, "factor": ae.config.factor,
              "latent_shape": [ae.config.latent_channels, *(2 * [world.size // ae.config.factor])]}
    ae.save(cfg.out)
    write_json_atomic(Path(cfg.out) / "report.json", report)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder (config.json, model.safetensors)")
    ap.add_argument("--steps", type=int, default=AETrainConfig.steps)
    ap.add_argument("--threads", type=int, default=AETrainConfig.threads)
    ap.add_argument("--latent-channels", type=int, default=AutoencoderConfig.latent_channels)
    ap.add_argument("--latent-noise", type=float, default=AETrainConfig.latent_noise)
    ap.add_argument("--clips", type=int, default=AETrainConfig.clips, help="training clips per step (all frames)")
    ap.add_argument("--pictures", type=int, default=AETrainConfig.pictures, help="memory pictures per step")
    ap.add_argument("--lr", type=float, default=AETrainConfig.lr)
    args = ap.parse_args(argv)
    for name in ("steps", "clips", "latent_channels"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    cfg = AETrainConfig(out=str(args.out), steps=args.steps, threads=args.threads, latent_noise=args.latent_noise,
                        clips=args.clips, pictures=args.pictures, lr=args.lr,
                        model=AutoencoderConfig(latent_channels=args.latent_channels))
    report = train(cfg)
    print(f"held-out reconstruction {report['held_out_psnr_db']:.1f} dB after {cfg.steps} steps "
          f"({report['cpu_seconds']:.0f} CPU-s); latents ×{report['latent_scale']:.3f} -> std {LATENT_STD}")
    return 0


if __name__ == "__main__":
    from base.cli_guard import guarded

    sys.exit(guarded(main, prog="python -m vimi.training.autoencoder"))
