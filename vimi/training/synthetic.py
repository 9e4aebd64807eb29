"""Synthetic prompt shards (the real format of data_pipelines.shards) for tests and benchmarks.

Each video is a square moving right on a flat background; every third sample is a named subject
("Kiki ...") with a reference image; each sample carries two retrieved (caption, image) pairs.
"""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def moving_square(T: int = 8, H: int = 16, W: int = 16, seed: int = 0) -> np.ndarray:
    """uint8 (T, H, W, 3): a square moving right one pixel per frame on a flat background."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 255, 3, dtype=np.uint8)
    out = np.empty((T, H, W, 3), np.uint8)
    out[:] = bg
    side = max(2, H * 3 // 8)
    for t in range(T):
        out[t, H // 4:H // 4 + side, t % W:t % W + side] = 255 - bg
    return out


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_synthetic_shard(path: str | Path, n: int, start: int = 0, *, corrupt: set[int] = frozenset(),
                          frames: int = 8, size: int = 16, subject_every: int = 3, fps: float = 8.0) -> Path:
    """Write ``n`` samples (ids start .. start+n-1) to shard ``path``; ids in ``corrupt`` get a
    truncated mp4 (training must skip and count them)."""
    from base.tar import AtomicTarWriter
    from data_pipelines.shards import ContextEntry, ShardSample, encode_sample, to_jpeg
    from data_pipelines.video_io import write_video

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, AtomicTarWriter(path) as w:
        for i in range(start, start + n):
            mp4 = write_video(Path(tmp) / f"{i}.mp4", moving_square(frames, size, size, seed=i), fps=fps,
                              lossless=True).read_bytes()
            if i in corrupt:
                mp4 = mp4[: len(mp4) // 3]
            subject = i % subject_every == 0
            caption = f"Kiki moves right on sand {i}" if subject else f"a small red square moves right {i}"
            ctx = [ContextEntry(id=f"m{i}_{j}", caption=f"a photo of thing {j}", score=1.0 - j, rank=j,
                                image=to_jpeg(png_bytes(moving_square(1, 8, 8, seed=100 + j)[0]))) for j in range(2)]
            refs = [png_bytes(moving_square(1, 14, 14, seed=7)[0])] if subject else []
            sample = ShardSample(key=f"{i:09d}_v{i}", video_id=f"v{i}", caption=caption, source="synthetic", mp4=mp4,
                                 fps=fps, frames=frames, size=(size, size), contexts=ctx, references=refs,
                                 attributes={"subject": "Kiki" if subject else None})
            w.add(encode_sample(sample))
        w.commit()
    return path
