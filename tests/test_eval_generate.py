"""python -m vimi.eval.generate: one playable mp4 (+ exact npy) per eval row, resumable, user-shaped requests."""
import json
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import TINY_MODEL
from PIL import Image

from data_pipelines.video_io import read_video
from vimi.eval.generate import EvalGenerateError, generate_eval, load_items, load_pipeline, main
from vimi.pipeline import check_inputs

STEPS = 2


@pytest.fixture(scope="module")
def world(eval_world) -> Path:
    return eval_world


@pytest.fixture(scope="module")
def pipe(tiny_pipeline):
    return tiny_pipeline


def test_requests_are_what_a_user_passes_to_generate(world):
    items = load_items(world / "eval")
    assert {it.task for it in items} == {"t2v", "prediction", "subject"}
    assert len({it.id for it in items}) == len(items) == 10
    for it in items:
        assert set(it.inputs) == {"t2v": {"prompt"}, "prediction": {"prompt", "frames"},
                                  "subject": {"prompt", "images"}}[it.task]
        for p in it.inputs.get("frames", []) + it.inputs.get("images", []):
            assert Path(p).is_file(), p
        # The pipeline's own input check accepts every request as is.
        check_inputs(it.task, it.inputs, 32, 1)
    # Seeds follow the row index within each eval file.
    assert [it.seed for it in items if it.split == "subject"] == [0, 1]
    assert [it.seed for it in load_items(world / "eval", seed=5) if it.split == "subject"] == [5, 6]


def test_writes_one_playable_mp4_per_row_and_resumes(world, pipe, tmp_path):
    out = tmp_path / "videos"
    stats = generate_eval(pipe, world / "eval", out, steps=STEPS, batch_size=3, progress=False)
    items = load_items(world / "eval")
    assert stats["generated"] == len(items) and stats["skipped"] == 0
    assert sorted(p.stem for p in out.glob("*.mp4")) == sorted(it.id for it in items)
    for it in items:
        with av.open(str(out / f"{it.id}.mp4")) as c:  # H.264 yuv420p: what browsers play
            s = c.streams.video[0]
            assert (s.codec_context.name, s.codec_context.pix_fmt) == ("h264", "yuv420p")
        frames = np.load(out / f"{it.id}.npy", allow_pickle=False)
        assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
        assert read_video(out / f"{it.id}.mp4").shape == frames.shape
    pred = next(it for it in items if it.task == "prediction")
    first = np.asarray(Image.open(pred.inputs["frames"][0]).convert("RGB"))
    assert np.array_equal(np.load(out / f"{pred.id}.npy")[0], first)  # the given first frame is kept exactly

    # Resume: nothing left to do; a removed video is regenerated alone, identically although the
    # batch size differs (per-row seeds).
    again = generate_eval(pipe, world / "eval", out, steps=STEPS, batch_size=3, progress=False)
    assert (again["generated"], again["skipped"]) == (0, len(items))
    victim = items[4].id
    before = np.load(out / f"{victim}.npy")
    (out / f"{victim}.mp4").unlink()
    (out / f"{victim}.npy").unlink()
    third = generate_eval(pipe, world / "eval", out, steps=STEPS, batch_size=1, progress=False)
    assert third["generated"] == 1
    assert np.abs(np.load(out / f"{victim}.npy").astype(int) - before.astype(int)).max() <= 1


def test_cli_untrained_limit_resume_and_settings(world, tmp_path, capsys, monkeypatch):
    out = tmp_path / "v"
    subject = str(world / "eval" / "subject.jsonl")
    args = [
        "--pipeline",
        "untrained",
        *[a for s in TINY_MODEL for a in ("--set", s)],
        "--eval",
        subject,
        "--out",
        str(out),
        "--steps",
        "1",
        "--limit",
        "1",
        "--threads",
        "1",
    ]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["generation.json", "subject-0000.mp4", "subject-0000.npy"]
    assert "1 generated" in capsys.readouterr().out
    # Everything is there: a resumed run does not even load the pipeline.
    monkeypatch.setattr("vimi.eval.generate.load_pipeline", lambda *a: pytest.fail("pipeline loaded for nothing"))
    assert main(args) == 0
    assert "0 generated, 1 already there" in capsys.readouterr().out
    # Other settings into the same folder would mix two configurations in one score.
    assert main([*args[:-5], "2", "--limit", "1"]) == 2
    assert "steps: 1 -> 2" in capsys.readouterr().err
    monkeypatch.undo()
    assert not (out / ".complete").exists()  # --limit 1 of 2 rows: the eval set is not complete
    assert main([*args[:-4], *args[-2:]]) == 0 and "1 generated, 1 already there" in capsys.readouterr().out
    assert json.loads((out / ".complete").read_text())["rows"] == 2  # the marker `make demo` resumes on
    assert main(["--pipeline", str(tmp_path / "nope"), "--eval", subject, "--out", str(tmp_path / "w")]) == 2
    assert "not a pipeline folder" in capsys.readouterr().err


def test_a_trained_pipeline_takes_sampler_overrides_only(world, pipe, tmp_path, capsys):
    """How a saved pipeline samples can be changed at eval time; what it learned cannot."""
    folder = tmp_path / "pipeline"
    pipe.save_pretrained(folder)
    loaded = load_pipeline(str(folder), ["sampler.guidance_sigma_max=5", "sampler.guidance_scale=4"])
    assert (loaded.cfg.sampler.guidance_sigma_max, loaded.cfg.sampler.guidance_scale) == (5.0, 4.0)
    assert loaded.cfg.sampler.num_steps == pipe.cfg.sampler.num_steps
    with pytest.raises(EvalGenerateError, match=r"--set edm\.P_mean=0: a trained pipeline takes sampler"):
        load_pipeline(str(folder), ["edm.P_mean=0"])
    args = ["--pipeline", str(folder), "--eval", str(world / "eval" / "subject.jsonl"), "--out", str(tmp_path / "v")]
    assert main([*args, "--set", "sampler.guidance_sigma_max=soon"]) == 2
    assert "sampler.guidance_sigma_max" in capsys.readouterr().err


def test_bad_eval_input_is_a_clear_error(world, tmp_path):
    rows = [json.loads(line) for line in (world / "eval" / "t2v-seen.jsonl").read_text().splitlines()]
    (tmp_path / "a.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(EvalGenerateError, match="must be unique"):
        load_items(tmp_path)
    (tmp_path / "b.jsonl").write_text(json.dumps(rows[1] | {"task": "t2x"}) + "\n")
    with pytest.raises(EvalGenerateError, match="unknown task"):
        load_items(tmp_path)
    with pytest.raises(EvalGenerateError, match="not found"):
        load_items(tmp_path / "missing")


def test_retrieval_k_zero_switches_retrieval_off(world, pipe, tmp_path, monkeypatch, capsys):
    """VIMI's ablation: the same pipeline with --retrieval-k 0 asks the index for nothing."""
    asked = []

    class Spy:
        def search(self, queries, k):
            asked.append(k)
            return [[] for _ in queries]

    monkeypatch.setattr(pipe, "retriever", Spy())
    monkeypatch.setattr(pipe.cfg, "retrieval_k", 4)
    monkeypatch.setattr("vimi.eval.generate.load_pipeline", lambda *a: pipe)
    args = ["--pipeline", "untrained", "--eval", str(world / "eval" / "t2v-seen.jsonl"), "--steps", "1", "--limit", "1"]
    assert main([*args, "--out", str(tmp_path / "on")]) == 0 and asked == [4]
    assert main([*args, "--out", str(tmp_path / "off"), "--retrieval-k", "0"]) == 0 and asked == [4]
    assert (tmp_path / "off" / "t2v-seen-0000.mp4").is_file()
    assert main([*args, "--out", str(tmp_path / "bad"), "--retrieval-k", "-1"]) == 2
    assert "--retrieval-k must be >= 0, got -1" in capsys.readouterr().err
