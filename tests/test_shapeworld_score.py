"""ShapeWorld scorer: reads the renderer's own videos back 100%, noise and blanks score 0."""
from __future__ import annotations

import json
from itertools import cycle
from pathlib import Path

import numpy as np
import pytest

from data_pipelines.shapeworld import ClipParams, render_clip, sampling, spec
from data_pipelines.shapeworld.__main__ import main as shapeworld_main
from data_pipelines.shapeworld.world import EVAL_SPLITS
from data_pipelines.video_io import read_video, write_video
from vimi.eval.shapeworld import PSNR_CAP, analyze, held_frame_psnr, score, score_folder
from vimi.eval.shapeworld import main as score_main

OBJECT_ATTRIBUTES = ("color", "shape", "motion", "subject")


def _random_clips(n: int) -> list[ClipParams]:
    """n clips cycling through every shape, colour, motion, scene and subject, at 32 and 64 px."""
    clips = []
    subjects, motions = cycle(spec.SUBJECTS), cycle(spec.MOTIONS)
    for i in range(n):
        rng = np.random.default_rng(i)
        size = (32, 64)[i % 2]
        scene = list(spec.SCENES)[(i // 2) % len(spec.SCENES)]
        if i % 4 == 3:
            p = sampling.sample_subject_clip(rng, [next(subjects)], 8, size)
            motion = spec.TRANSLATIONS[(i // 4) % len(spec.TRANSLATIONS)]
        else:
            color, shape = spec.ALL_COMPOSITIONS[(i * 7) % len(spec.ALL_COMPOSITIONS)]
            p = sampling.sample_object_clip(rng, [(color, shape)], 8, size)
            motion = next(motions)
        # Re-draw the start for the chosen motion (the sampler picked its own).
        radius = p.radius0 if p.subject else spec.SIZES[spec.MOTIONS[motion].only_size or p.size]
        (xlo, xhi), (ylo, yhi) = sampling.start_range(motion, radius, 8, size)
        size_word = None if p.subject else (spec.MOTIONS[motion].only_size or p.size)
        clips.append(ClipParams(scene, motion, float(rng.uniform(xlo, xhi)), float(rng.uniform(ylo, yhi)), 8, size,
                                color=p.color, shape=p.shape, size=size_word, subject=p.subject))
    return clips


def test_renderer_videos_score_100_percent():
    clips = _random_clips(540)
    seen = {k: {getattr(p, k) for p in clips} for k in ("shape", "color", "motion", "scene", "subject", "size_px")}
    assert (
        seen["shape"] >= set(spec.SHAPES) and seen["color"] >= set(spec.COLORS) and seen["motion"] == set(spec.MOTIONS)
    )
    assert seen["scene"] == set(spec.SCENES) and seen["subject"] >= set(spec.SUBJECTS) and seen["size_px"] == {32, 64}
    failures = []
    for p in clips:
        result = score(render_clip(p), p.to_record())
        if not result["all_correct"]:
            failures.append((p, result))
    assert not failures, failures[:3]


def test_analysis_reads_back_every_word():
    p = ClipParams("on grass", "moves up", 16.0, 24.0, 8, 64, color="cyan", shape="triangle", size="big")
    found = analyze(render_clip(p))
    assert (found["scene"], found["color"], found["shape"], found["motion"]) == (
        "on grass",
        "cyan",
        "triangle",
        "moves up",
    )
    assert found["object"] and found["subject"] is None and found["radius"] == pytest.approx(7, abs=0.5)
    right = analyze(render_clip(ClipParams("on sand", "moves right", 8.0, 16.0, color="blue", shape="cross",
                                           size="big")))
    assert right["velocity"] == pytest.approx([2.0, 0.0])      # 2 px per frame, as the spec moves it
    found = analyze(render_clip(ClipParams("in a dark room", "stays still", 16.0, 16.0, subject="Fifi")))
    assert found["subject"] == "Fifi" and found["shape"] == "diamond" and set(found["colors"]) == {"white", "purple"}


def _records() -> list[dict]:
    return [p.to_record() for p in _random_clips(24)]


@pytest.mark.parametrize("size", [32, 64])
def test_noise_and_blank_videos_score_zero_on_object_attributes(size):
    rng = np.random.default_rng(size)
    videos = [rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8) for _ in range(3)]
    for rgb in [*spec.SCENES.values(), (0, 0, 0), (255, 255, 255)]:
        videos.append(np.broadcast_to(np.array(rgb, np.uint8), (8, size, size, 3)).copy())
    records = _records()
    for i, video in enumerate(videos):
        found = analyze(video)
        assert not found["object"] and all(found[a] is None for a in OBJECT_ATTRIBUTES)
        for record in records[i::len(videos)]:  # every record against some video, each video a few times
            result = score(video, record)
            assert not any(result.get(a, False) for a in OBJECT_ATTRIBUTES) and not result["all_correct"]


def test_subject_colours_give_partial_credit_outside_all_correct():
    """A drawn subject is read for how many of the asked subject's two colours it shows, so a video of
    another subject sharing one colour reads 0.5 (the graded reading the retrieval on/off table uses)."""
    p = sampling.sample_subject_clip(np.random.default_rng(0), ["Nono"], 8, 32)     # green and orange dots
    video, record = render_clip(p), p.to_record()
    result = score(video, record)
    assert result["subject_colors"] == 1.0 and result["all_correct"]
    for other, share in (("Gigi", 0.5), ("Tika", 0.0)):                            # cyan + orange; cyan + red
        result = score(video, record | {"subject": other})
        assert result["subject_colors"] == share and not result["subject"] and not result["all_correct"]
    blank = np.zeros_like(video)
    assert score(blank, record)["subject_colors"] == 0.0
    clip = _random_clips(1)[0]                                                     # an object clip
    assert clip.subject is None and "subject_colors" not in score(render_clip(clip), clip.to_record())


def test_bad_input_raises():
    with pytest.raises(ValueError, match="uint8"):
        analyze(np.zeros((8, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        analyze(np.zeros((8, 32, 32, 3), np.float32))


def test_lossless_mp4_round_trip_scores_100_percent(tmp_path):
    for i, p in enumerate(_random_clips(48)):
        clip = render_clip(p)
        back = read_video(write_video(tmp_path / f"{i}.mp4", clip, fps=spec.FPS, lossless=True))
        assert back.shape == clip.shape and np.abs(back.astype(int) - clip).max() <= 1
        assert score(back, p.to_record())["all_correct"], p


def test_prediction_psnr_on_the_continuation():
    p = ClipParams("on sand", "moves right", 8.0, 16.0, color="blue", shape="cross", size="big")
    gt = render_clip(p)
    record = p.to_record() | {"task": "prediction", "num_cond_frames": 1}
    assert score(gt, record, gt)["psnr"] == PSNR_CAP
    frozen = np.repeat(gt[:1], len(gt), axis=0)  # a model that only copies the given frame
    result = score(frozen, record, gt)
    assert 5 < result["psnr"] < 30 and not result["motion"]
    assert score(gt[:4], record, gt)["psnr"] is None
    assert held_frame_psnr(gt, 1) == result["psnr"]         # the reference is exactly that copy's reading


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("score") / "sw"
    args = ["--out", str(out), "--videos", "4", "--memory", "4", "--eval-per-split", "12", "--workers", "1"]
    assert shapeworld_main(args) == 0
    return out


def test_ground_truth_eval_files_score_100_percent(world, tmp_path):
    report_path = tmp_path / "report.json"
    assert (
        score_main(["--videos", str(world / "eval" / "gt"), "--eval", str(world / "eval"), "--out", str(report_path)])
        == 0
    )
    report = json.loads(report_path.read_text())["splits"]
    assert list(report) == list(EVAL_SPLITS)
    for split, rep in report.items():
        assert rep["count"] == 12 and rep["missing"] == 0 and rep["unreadable"] == 0
        assert all(v == 1.0 for v in rep["accuracy"].values()), (split, rep)
    assert report["prediction"]["psnr"] == PSNR_CAP and report["prediction"]["psnr_count"] == 12
    assert 5 < report["prediction"]["psnr_held_frame"] < PSNR_CAP      # the moving clips are not copies
    assert set(report["t2v-novel-composition"]["accuracy"]) == {"scene", "color", "shape", "motion", "all_correct"}
    assert set(report["subject"]["accuracy"]) == {"scene", "motion", "subject", "all_correct"}
    assert report["subject"]["subject_colors"] == 1.0 and report["t2v-novel-composition"]["subject_colors"] is None


def test_mp4_folder_with_missing_and_unreadable_videos(world, tmp_path):
    records = [json.loads(line) for line in (world / "eval" / "t2v-seen.jsonl").read_text().splitlines()]
    for r in records[2:]:
        write_video(tmp_path / f"{r['id']}.mp4", np.load(world / "eval" / r["gt"]), fps=spec.FPS, lossless=True)
    (tmp_path / f"{records[1]['id']}.mp4").write_bytes(b"not a video")  # records[0] is missing
    rep = score_folder(tmp_path, world / "eval" / "t2v-seen.jsonl")
    assert rep["missing"] == 1 and rep["unreadable"] == 1
    assert rep["accuracy"]["all_correct"] == pytest.approx(10 / 12) and rep["accuracy"]["scene"] == pytest.approx(
        10 / 12
    )


def test_subject_split_is_also_scored_on_seen_and_novel_subjects_apart(world, tmp_path):
    records = [json.loads(line) for line in (world / "eval" / "subject.jsonl").read_text().splitlines()]
    for r in records:   # seen subjects drawn exactly; novel ones as an empty scene
        clip = np.load(world / "eval" / r["gt"])
        np.save(tmp_path / f"{r['id']}.npy", clip if not r["novel"] else np.broadcast_to(clip[:, :1, :1], clip.shape))
    rep = score_folder(tmp_path, world / "eval" / "subject.jsonl")
    seen, novel = rep["by_novelty"]["seen"], rep["by_novelty"]["novel"]
    assert seen["count"] + novel["count"] == 12 and novel["count"] == sum(r["novel"] for r in records) > 0
    assert seen["accuracy"]["subject"] == 1.0 and seen["subject_colors"] == 1.0
    assert novel["accuracy"]["subject"] == 0.0 and novel["subject_colors"] == 0.0
    assert rep["accuracy"]["subject"] == pytest.approx(seen["count"] / 12)
    assert "by_novelty" not in score_folder(world / "eval" / "gt", world / "eval" / "t2v-seen.jsonl")


def test_cli_reports_bad_paths(tmp_path, capsys):
    assert score_main(["--videos", str(tmp_path), "--eval", str(tmp_path / "nope.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err
