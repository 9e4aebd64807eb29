"""Long videos by autoregressive extension (vimi.pipeline: AID; Open-Sora's video extension)."""
from __future__ import annotations

import numpy as np
import pytest

from vimi.pipeline import InputError, VimiPipeline


def first_frame(seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def test_extension_reaches_num_frames_and_each_chunk_continues_from_the_last_frames(tiny_pipeline, monkeypatch):
    pipe: VimiPipeline = tiny_pipeline
    T0, k = pipe.cfg.video.frames, pipe.cfg.max_cond_frames             # 8 frames, overlap 1
    chunks = []
    sample = VimiPipeline._sample

    def spy(self, reqs, seeds, T, *a):
        out = sample(self, reqs, seeds, T, *a)
        chunks.append(([r.first_frames.copy() for r in reqs], out))
        return out

    monkeypatch.setattr(VimiPipeline, "_sample", spy)
    inputs = {"prompt": "a big red circle moves left on sand", "frames": [first_frame()]}
    N = T0 + 2 * (T0 - k)                                               # three chunks
    video = pipe("prediction", inputs, seeds=[3], steps=2, num_frames=N)
    assert video.shape == (N, 32, 32, 3) and len(chunks) == 3
    np.testing.assert_array_equal(video[0], inputs["frames"][0])        # the given frame is kept
    for c, (given, out) in enumerate(chunks[1:], start=1):
        end = T0 + (c - 1) * (T0 - k)                                    # frames generated before this chunk
        np.testing.assert_array_equal(given[0], video[end - k:end])     # conditioned on the last k frames ...
        np.testing.assert_array_equal(out[0][:k], video[end - k:end])   # ... which it shares at the boundary
        np.testing.assert_array_equal(out[0][k:], video[end:end + T0 - k])
    chunks.clear()
    short = pipe("prediction", inputs, seeds=[3], steps=2)                # the first chunk is the plain clip
    np.testing.assert_array_equal(short, video[:T0])
    np.testing.assert_array_equal(pipe("prediction", inputs, seeds=[3], steps=2, num_frames=N), video)


def test_bad_num_frames_is_one_clear_line(tiny_pipeline, monkeypatch):
    pipe: VimiPipeline = tiny_pipeline
    inputs = {"prompt": "a small blue square moves right on grass", "frames": [first_frame()]}
    with pytest.raises(InputError, match=r"num_frames 10 is not reachable by whole chunks: chunks of 8 frames "
                                         r"overlapping by 1 give 8, 15, 22, 29"):
        pipe("prediction", inputs, steps=2, num_frames=10)
    with pytest.raises(InputError, match=r"extends only tasks given first frames \(prediction\)"):
        pipe.generate_batch([("prediction", inputs), ("t2v", {"prompt": "a red circle"})], steps=2, num_frames=15)
    monkeypatch.setattr(pipe.cfg, "max_cond_frames", 3)
    three = {**inputs, "frames": [first_frame(i) for i in range(3)]}
    with pytest.raises(InputError, match=r"num_frames 2 is shorter than the 3 first frame\(s\) given"):
        pipe("prediction", three, steps=2, num_frames=2)


def test_cli_generates_a_long_prediction(tiny_pipeline, tmp_path, capsys):
    from PIL import Image

    from data_pipelines.video_io import read_video
    from vimi.__main__ import main

    folder = tiny_pipeline.save_pretrained(tmp_path / "pipe")
    Image.fromarray(first_frame()).save(tmp_path / "f.png")
    out = tmp_path / "long.mp4"
    args = ["generate", "--task", "prediction", "--prompt", "a red circle moves up on sand", "--frames",
            str(tmp_path / "f.png"), "--pipeline", str(folder), "--steps", "2", "--out", str(out)]
    assert main(args + ["--num-frames", "15"]) == 0
    assert read_video(out).shape[0] == 15
    assert main(args + ["--num-frames", "12"]) == 2
    assert "not reachable by whole chunks" in capsys.readouterr().err
