"""VimiPipeline / vimi.generate: the user's inference path, on a tiny untrained model."""
import subprocess
import sys

import numpy as np
import pytest

from vimi.pipeline import InputError, PipelineLoadError, VimiPipeline, generate

STEPS = 2
RED = np.zeros((32, 32, 3), np.uint8)
RED[..., 0] = 200


@pytest.fixture(scope="module")
def pipe(tiny_pipeline):
    return tiny_pipeline


REQUESTS = [
    ("t2v", {"prompt": "a big red circle moves left on sand"}),
    ("prediction", {"prompt": "a big red circle moves left on sand", "frames": [RED]}),
    ("subject", {"prompt": "A <image> moves up on grass", "images": [RED]}),
]


def test_three_tasks_give_uint8_videos(pipe):
    videos = pipe.generate_batch(REQUESTS, seeds=[0, 1, 2], steps=STEPS)
    for v in videos:
        assert v.shape == (8, 32, 32, 3) and v.dtype == np.uint8
    # Prediction keeps the given first frame exactly.
    assert np.array_equal(videos[1][0], RED)


def test_sample_does_not_depend_on_batch(pipe):
    alone = pipe.generate_batch(REQUESTS[2:], seeds=[7], steps=STEPS)[0]
    batched = pipe.generate_batch(REQUESTS, seeds=[5, 6, 7], steps=STEPS)[2]
    assert np.abs(alone.astype(int) - batched.astype(int)).max() <= 1
    other = pipe.generate_batch(REQUESTS[2:], seeds=[8], steps=STEPS)[0]
    assert not np.array_equal(alone, other)


def test_save_load_gives_identical_outputs(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    assert (tmp_path / "p" / "config.json").is_file() and (tmp_path / "p" / "mllm" / "config.json").is_file()
    again = VimiPipeline.from_pretrained(tmp_path / "p")
    a = pipe.generate_batch(REQUESTS, seeds=[0, 1, 2], steps=STEPS)
    b = again.generate_batch(REQUESTS, seeds=[0, 1, 2], steps=STEPS)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)


def test_truncated_weights_are_a_clear_error(pipe, tmp_path):
    folder = pipe.save_pretrained(tmp_path / "p")
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(PipelineLoadError, match="unreadable weights"):
        VimiPipeline.from_pretrained(folder)
    with pytest.raises(PipelineLoadError, match="not a pipeline folder"):
        VimiPipeline.from_pretrained(tmp_path / "nothing")


@pytest.mark.parametrize("task,inputs,message", [
    ("t2x", {"prompt": "a"}, "unknown task"),
    ("t2v", {}, "missing"),
    ("t2v", {"prompt": "a", "images": [RED]}, "unexpected"),
    ("t2v", {"prompt": "  "}, "non-empty"),
    ("subject", {"prompt": "A <image> and <image> move", "images": [RED]}, "2 <image> placeholder"),
    ("subject", {"prompt": "Kiki moves up", "images": [RED]}, "must contain <image>"),
    ("subject", {"prompt": "A <image> moves", "images": [RED.astype(np.float32)]}, "uint8"),
    ("prediction", {"prompt": "a", "frames": [np.zeros((64, 64, 3), np.uint8)]}, "64x64"),
    ("prediction", {"prompt": "a", "frames": ["/no/such.png"]}, "not found"),
])
def test_bad_inputs_are_clear_errors(pipe, task, inputs, message):
    with pytest.raises(InputError, match=message):
        generate(task, inputs, pipeline=pipe, steps=STEPS)


def test_generate_writes_mp4_and_cli(pipe, tmp_path):
    from data_pipelines.video_io import read_video

    folder = pipe.save_pretrained(tmp_path / "p")
    out = tmp_path / "v.mp4"
    video = generate("t2v", {"prompt": "a small blue square stays still on grass"}, pipeline=pipe, steps=STEPS,
                     output=out)
    assert read_video(out).shape == video.shape
    ref = tmp_path / "ref.png"
    from PIL import Image

    Image.fromarray(RED).save(ref)
    cli = tmp_path / "cli.mp4"
    r = subprocess.run([sys.executable, "-m", "vimi", "generate", "--task", "subject", "--prompt", "A <image> moves up",
                        "--image", str(ref), "--pipeline", str(folder), "--steps", "2", "--out", str(cli)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert read_video(cli).shape == (8, 32, 32, 3)
    bad = subprocess.run([sys.executable, "-m", "vimi", "generate", "--task", "subject", "--prompt", "A <image>",
                          "--pipeline", str(folder), "--out", str(cli)], capture_output=True, text=True)
    assert bad.returncode == 2 and "placeholder" in bad.stderr


def test_t2v_retrieves_from_the_bundled_index(pipe, tmp_path):
    """VIMI retrieves image-text pairs at inference for t2v; the index travels with the pipeline."""
    world, index = tmp_path / "world", tmp_path / "index"
    subprocess.run([sys.executable, "-m", "data_pipelines.shapeworld", "--out", str(world), "--videos", "12",
                    "--memory", "60", "--eval-per-split", "1", "--workers", "1"], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "data_pipelines.build_index", "--memory", str(world / "memory.parquet"),
                    "--out", str(index), "--quiet"], check=True, capture_output=True)
    from retrieval import open_index

    with_index = VimiPipeline(pipe.model, open_index(index), str(index))
    folder = with_index.save_pretrained(tmp_path / "p")
    assert (folder / "index" / "index.json").is_file()
    loaded = VimiPipeline.from_pretrained(folder)
    (pairs,) = loaded._retrieve(["a big red circle moves left on sand"])
    assert len(pairs) == pipe.cfg.retrieval_k
    assert all("photo" in caption and image.size == (32, 32) for caption, image in pairs)
    assert loaded._retrieve([None]) == [[]]  # prediction / subject prompts retrieve nothing


def test_factorized_t2v_is_the_prediction_task_from_the_first_draws_frame(pipe, monkeypatch):
    from dataclasses import replace

    from vimi.pipeline import VimiPipeline

    draws = []
    sample = VimiPipeline._sample

    def spy(self, reqs, seeds, T, *a):
        out = sample(self, reqs, seeds, T, *a)
        draws.append(([(r.task, r.prompt, r.first_frames) for r in reqs], out))
        return out

    monkeypatch.setattr(VimiPipeline, "_sample", spy)
    monkeypatch.setattr(pipe.cfg, "sampler", replace(pipe.cfg.sampler, factorized=True))
    videos = pipe.generate_batch(REQUESTS, seeds=[0, 1, 2], steps=STEPS)
    (_, first), (again, second) = draws
    assert [(task, prompt) for task, prompt, _ in again] == [("prediction", REQUESTS[0][1]["prompt"])]  # t2v only
    np.testing.assert_array_equal(again[0][2], first[0][:1])     # ... from its own first frame
    np.testing.assert_array_equal(videos[0], second[0])
    for i in (1, 2):                                              # the other tasks are drawn once
        np.testing.assert_array_equal(videos[i], first[i])


def test_given_residual_reaches_the_pipelines_denoiser(pipe):
    # model.edm.given_residual from the config reaches the denoiser the pipeline samples with: with FIT's
    # zero-initialised output (F = 0), its estimate at high σ is the given frame held in every later frame.
    import torch

    from base.config import load_config
    from tests.conftest import TINY_MODEL
    from vimi.model import VimiConfig

    torch.manual_seed(0)
    video = torch.rand(1, 3, 8, 32, 32) * 2 - 1
    residual_pipe = VimiPipeline.from_config(load_config(VimiConfig, None, TINY_MODEL + ["edm.given_residual=true"]))
    for model, residual in ((residual_pipe.model, True), (pipe.model, False)):   # pipe: the default, off
        assert model.net.given_residual is residual
        frame_cond = model.given_frame_condition(video, torch.tensor([1]))
        held = frame_cond[:, :3]
        s_in = model.cfg.input_scale(8)
        with torch.no_grad():
            D = model(held / s_in + 80 * torch.randn_like(video), torch.tensor([80.0]), *model.null_condition(1),
                      frame_cond, sigma_in=s_in)
        assert bool((D - held).abs().max() < 0.1) is residual
