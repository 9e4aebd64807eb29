"""Rank-0 side outputs of a run: sample videos for fixed prompts (EMA weights) and the pipeline export."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vimi.training.config import TrainConfig

log = logging.getLogger("vimi.training")


def contact_sheet(videos: np.ndarray, scale: int = 2) -> np.ndarray:
    """uint8 (B, T, H, W, 3) -> one image, a row of frames per video (H·B, W·T, 3), upscaled."""
    B, T, H, W, _ = videos.shape
    sheet = videos.transpose(0, 2, 1, 3, 4).reshape(B * H, T * W, 3)
    return sheet.repeat(scale, 0).repeat(scale, 1)


@torch.no_grad()
def write_samples(model: nn.Module | None, cfg: TrainConfig, step: int, run_dir: Path, metrics=None) -> Path | None:
    """Generate the fixed prompts with ``model`` (the EMA twin) -> RUN/samples/step_N/{i}.mp4 + sheet.png.

    Prompts go through VimiPipeline as t2v requests (sample i uses seed ``sample.seed + i``, so
    the videos of successive steps are comparable); stage 1 thus sees the t2v instruction it was
    not trained with, which the fixed-prompt videos only use to show progress."""
    if model is None or not cfg.sample.prompts:
        return None
    from PIL import Image

    from data_pipelines.video_io import write_video
    from vimi.pipeline import VimiPipeline, open_retriever

    was_training = model.training
    pipe = VimiPipeline(model, open_retriever(cfg.data.index or None), cfg.data.index or None)
    videos = np.stack(pipe.generate_batch([("t2v", {"prompt": c}) for c in cfg.sample.prompts],
                                          seeds=cfg.sample.seed, steps=cfg.sample.num_steps,
                                          guidance=cfg.sample.guidance))      # uint8 (B, T, H, W, 3)
    model.train(was_training)
    out = Path(run_dir) / "samples" / f"step_{step:06d}"
    out.mkdir(parents=True, exist_ok=True)
    fps = cfg.model.video.fps
    for i, frames in enumerate(videos):
        write_video(out / f"{i:02d}.mp4", frames, fps=fps)
    (out / "prompts.txt").write_text("".join(f"{i:02d}\t{c}\n" for i, c in enumerate(cfg.sample.prompts)))
    sheet = contact_sheet(videos)
    Image.fromarray(sheet).save(out / "sheet.png")
    if metrics is not None:
        metrics.image("samples", sheet, step)
    return out


def export_pipeline(ema, out: Path, index: str = "") -> Path:
    """The EMA weights as an inference pipeline folder (VimiPipeline: config.json + safetensors + mllm/,
    plus the retrieval index the shards were built with, so t2v retrieves at inference as in training)."""
    from vimi.pipeline import VimiPipeline

    return Path(VimiPipeline(ema.average, index_path=index or None).save_pretrained(out, state=ema.state_dict()))
