"""Train the per-frame autoencoder of latent mode on ShapeWorld frames rendered on the fly.

    python -m vimi.training.autoencoder --out outputs/ae --steps 1500

Each step renders ``batch`` fresh training clips and memory pictures (so every subject, the novel
ones included, is seen as a picture, as the memory holds them) and fits L1 + MSE reconstruction
from jittered latents (vimi.models.autoencoder). At the end ``latent_scale`` is set so that the
latents have standard deviation 0.5 (σ_d of the EDM settings), and the held-out reconstruction
PSNR and the scorer's agreement on held-out reconstructions (per attribute: read the same as the
original) are written to OUT/report.json: a latent recipe cannot score above what its decoder draws.
The report also says how plainly one latent cell tells which object covers it (``cell_identity_probe``).
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
from data_pipelines.shapeworld import spec
from data_pipelines.shapeworld.render import ClipParams, render_clip, render_image
from data_pipelines.shapeworld.world import WorldConfig, eval_params, memory_params, train_video_params
from vimi.diffusion.loss import foreground_weights, off_median_mask
from vimi.eval.linear_probe import linear_probe
from vimi.eval.shapeworld import analyze, psnr
from vimi.models.autoencoder import AutoencoderConfig, FrameAutoencoder

LATENT_STD = 0.5   # σ_d of the EDM settings the latents are scaled to


@dataclass
class AETrainConfig:
    out: str = ""
    steps: int = 1500
    clips: int = 4                 # training clips per step (all their frames) ...
    pictures: int = 16             # ... plus this many memory pictures
    lr: float = 2e-3
    # Latent jitter (· std) in training: the decoder must draw a sampler's near-miss latents as clean frames.
    # At 0.05 the scorer's object mask caught the specks it drew in the background of samples; at 0.2 the
    # denoiser's t2v samples under the same recipe score objects 1.00 / colour 0.92 at 8,000 clips, against
    # 0.62 / 0.46 at 0.05 (27.5 against 28.1 dB held out; docs/learning.md, "A decoder for near misses").
    latent_noise: float = 0.2
    # α of vimi.diffusion.loss.foreground_weights: objects are 7.5% of the pixels. At 2,000 steps α = 4
    # lets the scorer read back colour 0.88 / shape 0.55 / subject 0.18 of 240 held-out clips, against
    # 0.58 / 0.43 / 0.10 unweighted, and PSNR 24.0 against 23.3 dB (docs/learning.md, latent mode).
    foreground_weight: float = 4.0
    # ... on the object mask grown by this many pixels: the background inside and around an outline (a ring's
    # hole, a cross's notches) is what tells shapes apart, and unweighted the decoder fills it in. Widths
    # (16, 32), 3,600 steps: shape 0.80 against 0.65 undilated (rings 0.59 against 0.00), 28.1 against 25.6 dB,
    # subject 0.31 against 0.43 (docs/learning.md, "The autoencoder, again").
    foreground_dilation: int = 2
    # A semantic latent (as VA-VAE aligns its latents with a vision model's features, Yao et al. 2025): a
    # linear head must read the object's identity (its shape, or which subject it is) from each latent cell
    # the object covers; the head is for training only. Off: at W = 0.1 the t2v denoiser reads the shape word
    # from 2,000 clips on (without: from ~8,000), but its samples are speckled and score nothing by 8,000
    # clips; W = 0.03 lifts every ceiling (shape 0.85, subject 0.38, 28.1 dB) and with latent_noise 0.2 draws
    # the cleanest backgrounds, yet scores a draw with the default at 8,000 clips (docs/learning.md, "A
    # latent that says what the object is").
    identity_weight: float = 0.0
    seed: int = 0
    threads: int = 2
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)


IDENTITIES = (*spec.SHAPES, *spec.SUBJECTS)   # the identity head's classes: an object's shape, or a subject


def identity(p: ClipParams) -> int:
    return IDENTITIES.index(p.subject or p.shape)


def _frames(world: WorldConfig, cfg: AETrainConfig, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A step's frames (N, 3, H, W) and the identity of the object in each (N,)."""
    clips = [train_video_params(world, step * cfg.clips + i) for i in range(cfg.clips)]
    pics = [memory_params(world, step * cfg.pictures + i) for i in range(cfg.pictures)]
    frames = np.concatenate([*map(render_clip, clips), np.stack([render_image(p) for p in pics])])  # (N, H, W, 3)
    ids = [identity(p) for p in [*(c for c in clips for _ in range(c.frames)), *pics]]
    return to_model_video(frames[None])[0].transpose(0, 1), torch.tensor(ids)


def object_cover(frames: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, h, w): the share of each latent cell (factor × factor pixels) that the frame's object covers."""
    return torch.nn.functional.avg_pool2d(off_median_mask(frames).float(), factor)[:, 0]


def identity_loss(head: torch.nn.Conv2d, z: torch.Tensor, frames: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the object's identity read by ``head`` at each latent cell, weighted by how much of
    the cell the object covers (AETrainConfig.identity_weight)."""
    cover = object_cover(frames, frames.shape[-1] // z.shape[-1])
    ce = torch.nn.functional.cross_entropy(head(z), ids[:, None, None].expand_as(cover), reduction="none")
    return (ce * cover).sum() / cover.sum().clamp_min(1.0)


def held_out_params(world: WorldConfig, n: int = 240) -> list[ClipParams]:
    """Eval clips from every split (novel subjects and compositions included)."""
    splits = ("t2v-seen", "t2v-novel-composition", "t2v-novel-subject", "prediction")
    return [eval_params(world, s, i) for s in splits for i in range(n // len(splits))]


@torch.no_grad()
def cell_identity_probe(ae: FrameAutoencoder, clips: list[np.ndarray], params: list[ClipParams]) -> float:
    """Held-out accuracy of a linear probe reading the object's identity (shape or subject) from a single
    latent cell the object covers at least half of: how plainly the latent says what the object is
    (AETrainConfig.identity_weight). Fitted on the cells of half the clips of each identity, tested on the
    rest (cells of one clip are near copies, so they stay on one side)."""
    video = to_model_video(np.stack(clips))                                             # (B, 3, T, H, W)
    z = ae.encode_video(video).transpose(1, 2).flatten(0, 1)                            # (B·T, c, h, w)
    frames = video.transpose(1, 2).flatten(0, 1)
    b, y, x = torch.nonzero(object_cover(frames, frames.shape[-1] // z.shape[-1]) >= 0.5, as_tuple=True)
    per_clip = [identity(p) for p in params]
    held = torch.tensor([per_clip[:i].count(c) % 2 == 1 for i, c in enumerate(per_clip)])   # every other clip
    clip = b // video.shape[2]
    return round(linear_probe(z[b, :, y, x], [per_clip[i] for i in clip.tolist()], test=held[clip]), 3)


@torch.no_grad()
def reconstruct(ae: FrameAutoencoder, clips: list[np.ndarray]) -> list[np.ndarray]:
    """uint8 clips -> their uint8 reconstructions (encode, decode)."""
    video = to_model_video(np.stack(clips))                                             # (B, 3, T, H, W)
    return list(to_uint8_video(ae.decode_video(ae.encode_video(video))))


Readings = list[tuple[dict, dict]]   # the scorer's analysis of each original clip and of its reconstruction


def read_back(originals: list[np.ndarray], reconstructions: list[np.ndarray]) -> Readings:
    """Each clip analysed by the scorer before and after the autoencoder (once, for both agreements below)."""
    return [(analyze(orig), analyze(rec)) for orig, rec in zip(originals, reconstructions)]


def scorer_agreement(readings: Readings) -> dict[str, float]:
    """Per attribute, the share of clips the scorer reads the same before and after the autoencoder.

    A latent recipe cannot score an attribute above what the decoder lets the scorer read back, so
    this is the ceiling of every generation score in latent mode. Only clips where the original has
    the attribute count (a subject only on subject clips).
    """
    agree: dict[str, list[bool]] = {a: [] for a in ("scene", "color", "shape", "motion", "subject")}
    for a, b in readings:
        for attr, hits in agree.items():
            if a[attr] is not None:
                hits.append(a[attr] == b[attr])
    return {attr: round(float(np.mean(hits)), 3) for attr, hits in agree.items() if hits}


def shape_agreement(readings: Readings) -> dict[str, float]:
    """``scorer_agreement``'s shape reading split by the original's shape: which outlines the decoder loses
    (with the object mask unweighted around it, every ring came back filled: docs/learning.md)."""
    agree: dict[str, list[bool]] = {}
    for a, b in readings:
        if a["shape"] is not None:
            agree.setdefault(a["shape"], []).append(b["shape"] == a["shape"])
    return {shape: round(float(np.mean(hits)), 3) for shape, hits in sorted(agree.items())}


def train(cfg: AETrainConfig) -> dict:
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    world = WorldConfig(out="unused", videos=10**9, memory=10**9, seed=cfg.seed)
    ae = FrameAutoencoder(cfg.model)
    head = torch.nn.Conv2d(cfg.model.latent_channels, len(IDENTITIES), 1) if cfg.identity_weight > 0 else None
    opt = torch.optim.Adam([*ae.parameters(), *(head.parameters() if head else ())], lr=cfg.lr)
    test_params = held_out_params(world)
    test = [render_clip(p) for p in test_params]
    t0, losses = time.process_time(), []
    for step in (bar := tqdm(range(cfg.steps), desc="autoencoder", unit="step")):
        for g in opt.param_groups:   # cosine decay: the last steps sharpen edges
            g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        frames, ids = _frames(world, cfg, step)
        weights = (foreground_weights(frames, cfg.foreground_weight, dilate=cfg.foreground_dilation)
                   if cfg.foreground_weight > 0 else None)
        loss, z = ae.loss(frames, cfg.latent_noise, weights)
        if head is not None:
            loss = loss + cfg.identity_weight * identity_loss(head, z, frames, ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    ae.eval()
    with torch.no_grad():
        z = ae.encoder(_frames(world, cfg, 10**6)[0])
        ae.config = replace(ae.config, latent_scale=LATENT_STD / float(z.std()))
    rec = reconstruct(ae, test)
    readings = read_back(test, rec)
    report = {"steps": cfg.steps, "cpu_seconds": round(time.process_time() - t0, 1),
              "final_loss": float(np.mean(losses[-50:])),
              "held_out_psnr_db": round(float(np.mean([psnr(r, t) for r, t in zip(rec, test)])), 2),
              "scorer_agreement": scorer_agreement(readings),
              "shape_agreement": shape_agreement(readings),
              "cell_identity_probe": cell_identity_probe(ae, test, test_params),
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
    ap.add_argument("--foreground-weight", type=float, default=AETrainConfig.foreground_weight,
                    help="extra loss weight α on object pixels (off the frame's median colour)")
    ap.add_argument("--foreground-dilation", type=int, default=AETrainConfig.foreground_dilation,
                    help="grow the object mask of --foreground-weight by this many pixels (0 = the object only)")
    ap.add_argument("--identity-weight", type=float, default=AETrainConfig.identity_weight,
                    help="weight of a linear head reading each object's shape or subject from its latent cells")
    ap.add_argument("--channels", default=",".join(map(str, AutoencoderConfig.channels)),
                    help="width per level, comma-separated (each level halves H and W)")
    args = ap.parse_args(argv)
    try:
        channels = tuple(int(c) for c in args.channels.split(","))
    except ValueError:
        print(f"error: --channels must be comma-separated integers, got {args.channels!r}", file=sys.stderr)
        return 2
    for name in ("steps", "clips", "latent_channels"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    for name in ("foreground_dilation", "identity_weight", "latent_noise"):
        if getattr(args, name) < 0:
            print(f"error: --{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}", file=sys.stderr)
            return 2
    cfg = AETrainConfig(out=str(args.out), steps=args.steps, threads=args.threads, latent_noise=args.latent_noise,
                        clips=args.clips, pictures=args.pictures, lr=args.lr,
                        foreground_weight=args.foreground_weight, foreground_dilation=args.foreground_dilation,
                        identity_weight=args.identity_weight,
                        model=AutoencoderConfig(channels=channels, latent_channels=args.latent_channels))
    report = train(cfg)
    agree = ", ".join(f"{a} {v:.2f}" for a, v in report["scorer_agreement"].items())
    print(f"held-out reconstruction {report['held_out_psnr_db']:.1f} dB, scorer agreement {agree}, "
          f"after {cfg.steps} steps ({report['cpu_seconds']:.0f} CPU-s); "
          f"latents ×{report['latent_scale']:.3f} -> std {LATENT_STD}")
    return 0


if __name__ == "__main__":
    from base.cli_guard import guarded

    sys.exit(guarded(main, prog="python -m vimi.training.autoencoder"))
