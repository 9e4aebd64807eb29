"""Rank-0 side outputs of a run: sample videos for fixed prompts (EMA weights) and the pipeline export."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vimi.training.config import TrainConfig

log = logging.getLogger("vimi.training")


def fixed_prompts(cfg: TrainConfig) -> list:
    """The run's sample captions as prompts of its stage (stage 1: caption alone; stage 2: t2v)."""
    from vimi.mllm.prompt import pretrain_prompt, task_prompt

    if cfg.run.stage == "pretrain":
        return [pretrain_prompt(c) for c in cfg.sample.prompts]
    return [task_prompt("t2v", c) for c in cfg.sample.prompts]


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """float (B, 3, T, H, W) in [-1, 1] -> uint8 (B, T, H, W, 3)."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1).cpu().numpy()


def contact_sheet(videos: np.ndarray, scale: int = 2) -> np.ndarray:
    """uint8 (B, T, H, W, 3) -> one image, a row of frames per video (H·B, W·T, 3), upscaled."""
    B, T, H, W, _ = videos.shape
    sheet = videos.transpose(0, 2, 1, 3, 4).reshape(B * H, T * W, 3)
    return sheet.repeat(scale, 0).repeat(scale, 1)


@torch.no_grad()
def write_samples(model: nn.Module | None, cfg: TrainConfig, step: int, run_dir: Path, metrics=None) -> Path | None:
    """Generate the fixed prompts with ``model`` (the EMA twin) -> RUN/samples/step_N/{i}.mp4 + sheet.png."""
    if model is None or not cfg.sample.prompts:
        return None
    from PIL import Image

    from data_pipelines.video_io import write_video
    from vimi.pipeline import sample_videos

    was_training = model.training
    model.eval()
    seeds = [cfg.sample.seed + i for i in range(len(cfg.sample.prompts))]
    videos = sample_videos(model, fixed_prompts(cfg), seeds=seeds, num_steps=cfg.sample.num_steps,
                           guidance=cfg.sample.guidance)                    # uint8 (B, T, H, W, 3)
    model.train(was_training)
    out = Path(run_dir) / "samples" / f"step_{step:06d}"
    out.mkdir(parents=True, exist_ok=True)
    fps = cfg.model.video.fps
    for i, (caption, frames) in enumerate(zip(cfg.sample.prompts, videos)):
        write_video(out / f"{i:02d}.mp4", frames, fps=fps)
    (out / "prompts.txt").write_text("".join(f"{i:02d}\t{c}\n" for i, c in enumerate(cfg.sample.prompts)))
    sheet = contact_sheet(videos)
    Image.fromarray(sheet).save(out / "sheet.png")
    if metrics is not None:
        metrics.image("samples", sheet, step)
    return out


def export_pipeline(model: nn.Module, cfg: TrainConfig, out: Path) -> Path:
    """The EMA model as an inference pipeline folder (config.json + safetensors), VimiPipeline's format."""
    from vimi.pipeline import VimiPipeline

    pipe = VimiPipeline(model)
    pipe.save_pretrained(out)
    return Path(out)
