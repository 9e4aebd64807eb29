"""ShapeWorld renderer and dataset writer: pixel-exact against docs/shapeworld.md and the golden clips."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_pipelines.shapeworld import (
    ClipParams,
    ShapeWorldError,
    render_clip,
    render_image,
    sampling,
    spec,
    video_caption,
)
from data_pipelines.shapeworld.__main__ import main as shapeworld_main
from data_pipelines.shapeworld.render import shape_mask
from data_pipelines.shapeworld.world import EVAL_SPLITS, made_up_name
from data_pipelines.video_io import read_video

# 103 clips rendered from docs/shapeworld.md by an independent implementation (tests/data/shapeworld_golden).
GOLDEN = Path(__file__).resolve().parent / "data" / "shapeworld_golden"


# ----------------------------------------------------------------------------- the spec, pixel by pixel

def test_golden_clips_reproduced_exactly():
    cases = json.loads((GOLDEN / "cases.json").read_text())
    golden = np.load(GOLDEN / "golden.npz", allow_pickle=False)
    assert len(cases) == 103
    for case in cases:
        p = ClipParams.from_record(case)
        clip = render_clip(p)
        assert clip.dtype == np.uint8 and clip.shape == golden[case["key"]].shape, case["key"]
        assert np.array_equal(clip, golden[case["key"]]), f"{case['key']} differs: {case}"
        assert video_caption(p) == case["caption"]


# (shape, r, point inside, point outside), centre (16, 16); worked by hand from docs/shapeworld.md.
HAND_WORKED = [
    ("circle", 4, (19.5, 16.5), (19.5, 18.5)),    # 3.5² + 0.5² = 12.5 <= 16;  3.5² + 2.5² = 18.5 > 16
    ("square", 4, (19.3, 12.7), (19.5, 16.0)),    # |3.3| <= 3.4 both;  3.5 > 0.85·4
    ("diamond", 4, (18.0, 17.9), (18.5, 17.6)),   # 2 + 1.9 = 3.9 <= 4;  2.5 + 1.6 = 4.1 > 4
    ("cross", 6, (17.9, 21.9), (18.5, 18.5)),     # vertical bar |dx| 1.9 <= 2, |dy| 5.9 <= 6;  2.5 > 2 both ways
    ("cross", 6, (21.5, 17.0), (22.5, 17.0)),     # horizontal bar |dx| 5.5 <= 6;  6.5 > 6
    ("ring", 4, (19.0, 16.0), (16.5, 16.5)),      # 2.2 <= 3 <= 4;  the hole: 0.5 < 2.2²
    ("ring", 4, (16.0, 19.9), (20.5, 16.0)),      # 3.9 <= 4;  4.5 > 4
    ("triangle", 5, (18.4, 15.5), (18.6, 15.5)),  # top 11, base 20: half-width at y=15.5 is 5·4.5/9 = 2.5
    ("triangle", 5, (16.2, 11.5), (16.4, 11.5)),  # near the apex: half-width 5·0.5/9 = 0.28
    ("triangle", 5, (16.0, 19.9), (16.0, 20.5)),  # the base is at cy + 0.8 r = 20
]


@pytest.mark.parametrize("shape,r,inside,outside", HAND_WORKED)
def test_shape_formulas_on_hand_worked_points(shape, r, inside, outside):
    assert shape_mask(shape, np.float64(inside[0]), np.float64(inside[1]), 16.0, 16.0, float(r))
    assert not shape_mask(shape, np.float64(outside[0]), np.float64(outside[1]), 16.0, 16.0, float(r))


def test_pixel_centres_scale_and_subject_patterns():
    # A small red circle at (16, 16): pixel (row 16, col 19) has centre (19.5, 16.5) -> inside.
    img = render_image(ClipParams("on sand", "stays still", 16.0, 16.0, color="red", shape="circle", size="small"))
    assert tuple(img[16, 19]) == spec.COLORS["red"] and tuple(img[18, 19]) == spec.SCENES["on sand"]
    # At 64 px every length doubles: r = 8, pixel (32, 39) centre (39.5, 32.5): 7.5² + 0.5² <= 64.
    img = render_image(
        ClipParams("on sand", "stays still", 32.0, 32.0, 1, 64, color="red", shape="circle", size="small")
    )
    assert tuple(img[32, 39]) == spec.COLORS["red"] and tuple(img[32, 40]) == spec.SCENES["on sand"]

    def subject_pixel(name, row, col, size_px=32):
        c = size_px / 2
        return tuple(render_image(ClipParams("on grass", "stays still", c, c, 1, size_px, subject=name))[row, col])

    # Bobo (stripes-h, red/white): row 16 -> v = 16, (16 // 2) % 2 == 0 -> red; row 18 -> v = 18 -> white.
    assert subject_pixel("Bobo", 16, 16) == spec.COLORS["red"] and subject_pixel("Bobo", 18, 16) == spec.COLORS["white"]
    # Kiki (checker, blue/yellow): u = v = 16 -> 8 + 8 even -> blue; u = 18 -> 9 + 8 odd -> yellow.
    assert (
        subject_pixel("Kiki", 16, 16) == spec.COLORS["blue"] and subject_pixel("Kiki", 16, 18) == spec.COLORS["yellow"]
    )
    # Nono (dots, green/orange): u % 4 = v % 4 = 0 -> the dot -> orange; u = 18 -> green.
    assert (
        subject_pixel("Nono", 16, 16) == spec.COLORS["orange"] and subject_pixel("Nono", 16, 18) == spec.COLORS["green"]
    )
    # At 64 px the pattern is in 32-px units: columns 32..35 are u = 16, 17 (one stripe pair), 36 -> u = 18.
    assert (
        subject_pixel("Roro", 32, 35, 64) == spec.COLORS["yellow"]
        and subject_pixel("Roro", 32, 36, 64) == spec.COLORS["purple"]
    )


def test_motions_move_by_the_spec_per_frame_and_scale():
    p = ClipParams("on grass", "moves left", 40.0, 32.0, 3, 64, color="white", shape="square", size="small")
    clip = render_clip(p)
    cols = [np.nonzero((clip[t] != spec.SCENES["on grass"]).any(-1).any(0))[0] for t in range(3)]
    assert [c.mean() for c in cols] == [39.5, 35.5, 31.5]  # 2 px per frame at 32 px = 4 px at 64 px
    grows = render_clip(ClipParams("on grass", "grows", 16.0, 16.0, 3, 32, color="white", shape="circle", size="small"))
    areas = (grows != spec.SCENES["on grass"]).any(-1).sum((1, 2))
    assert list(areas) == [
        int(
            shape_mask("circle", np.arange(32)[None] + 0.5, np.arange(32)[:, None] + 0.5, 16.0, 16.0, 4 + 0.5 * t).sum()
        )
        for t in range(3)
    ]
    assert areas[0] < areas[1] < areas[2]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(color="beige", shape="circle", size="small"),
        dict(color="red", shape="hexagon", size="small"),
        dict(color="red", shape="circle", size="small", size_px=48),
        dict(color="red", shape="circle", size="big", motion="grows"),
        dict(subject="Bobo", motion="shrinks"),
        dict(subject="Zaza"),
        dict(color="red", shape="circle", size="big", motion="shrinks", frames=16),  # radius would reach 0
    ],
)
def test_bad_parameters_raise_a_clear_error(kwargs):
    base = dict(scene="on sand", motion="stays still", cx0=16.0, cy0=16.0)
    with pytest.raises(ShapeWorldError):
        ClipParams(**(base | kwargs))


def test_sampled_trajectories_stay_inside_the_canvas():
    for i in range(300):
        rng = np.random.default_rng(i)
        size = (32, 64)[i % 2]
        p = (sampling.sample_subject_clip(rng, list(spec.SUBJECTS), 8, size) if i % 3 == 0
             else sampling.sample_object_clip(rng, spec.ALL_COMPOSITIONS, 8, size))
        clip = render_clip(p)
        border = np.concatenate([clip[:, 0], clip[:, -1], clip[:, :, 0], clip[:, :, -1]], axis=1)
        assert (border == spec.SCENES[p.scene]).all(), p
    with pytest.raises(ShapeWorldError):
        sampling.start_range("moves left", 4.0, 20, 32)  # 38 px of travel cannot fit


# ----------------------------------------------------------------------------- the dataset folder

def _world(out: Path, *extra: str) -> None:
    args = ["--out", str(out), "--videos", "40", "--memory", "70", "--seed", "3", "--eval-per-split", "13", *extra]
    assert shapeworld_main(args) == 0


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "sw"
    _world(out, "--workers", "2")
    return out


def test_world_layout_and_tables(world):
    info = json.loads((world / "world.json").read_text())
    assert info["counts"]["videos"] == 40 and info["counts"]["memory"] == 70 and info["seed"] == 3
    videos = pq.read_table(world / "videos.parquet").to_pylist()
    assert videos == [json.loads(line) for line in (world / "videos.jsonl").read_text().splitlines()]
    assert len(videos) == 40 and all((world / v["path"]).is_file() for v in videos)
    for v in videos:
        assert v["split"] == "train" and v["caption"] == video_caption(ClipParams.from_record(v))
        assert v["subject"] not in spec.NOVEL_SUBJECTS and (v["color"], v["shape"]) not in spec.NOVEL_COMPOSITIONS
        if v["kind"] == "subject":
            assert v["references"] and all((world / r).is_file() for r in v["references"])
    memory = pq.read_table(world / "memory.parquet").to_pylist()
    assert len(memory) == 70 and all((world / m["image"]).is_file() for m in memory)
    # Even a small memory holds every subject and every composition, the novel ones included.
    assert {m["subject"] for m in memory if m["subject"]} == set(spec.SUBJECTS)
    assert {(m["color"], m["shape"]) for m in memory if m["kind"] == "object"} >= set(spec.NOVEL_COMPOSITIONS)
    for m in memory[:10]:
        img = np.asarray(Image.open(world / m["image"]))
        assert np.array_equal(img, render_image(ClipParams.from_record(m | {"motion": "stays still"})))
        assert m["caption"].startswith("a photo of ")
    assert not any(word in m["caption"] for m in memory for word in ("stripe", "checker", "dots"))


def test_eval_files_hold_inputs_and_exact_ground_truth(world):
    for split in EVAL_SPLITS:
        rows = [json.loads(line) for line in (world / "eval" / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == 13 and all(r["split"] == split for r in rows)
        for r in rows:
            gt = np.load(world / "eval" / r["gt"], allow_pickle=False)
            assert np.array_equal(gt, render_clip(ClipParams.from_record(r)))
            assert all((world / "eval" / im).is_file() for im in r["images"])
        if split == "t2v-novel-composition":
            assert all((r["color"], r["shape"]) in spec.NOVEL_COMPOSITIONS for r in rows)
        if split == "t2v-novel-subject":
            assert all(r["subject"] in spec.NOVEL_SUBJECTS for r in rows)
        if split == "prediction":
            r = rows[0]
            assert r["task"] == "prediction" and r["num_cond_frames"] == 1 and len(r["images"]) == 1
            first = np.asarray(Image.open(world / "eval" / r["images"][0]))
            assert np.array_equal(first, np.load(world / "eval" / r["gt"])[0])
        if split == "subject":
            assert {r["subject"] for r in rows} == set(spec.SUBJECTS)
            r = rows[0]
            assert r["task"] == "subject" and r["prompt"] == f"A <image> {r['motion']} {r['scene']}"
            ref = np.asarray(Image.open(world / "eval" / r["images"][0]))
            assert r["images"][0].startswith(f"../references/{r['subject']}_")
            assert (ref != spec.SCENES["on a gray floor"]).any()


def test_world_is_deterministic_whatever_the_worker_count(world, tmp_path):
    _world(tmp_path / "one", "--workers", "1")
    for name in ("videos.jsonl", "memory.jsonl", "world.json", *(f"eval/{s}.jsonl" for s in EVAL_SPLITS)):
        assert (world / name).read_text() == (tmp_path / "one" / name).read_text(), name
    for f in sorted((world / "eval" / "gt").iterdir())[:20] + sorted((world / "memory").iterdir())[:20]:
        assert f.read_bytes() == (tmp_path / "one" / f.relative_to(world)).read_bytes(), f


def test_made_up_subjects_never_wear_a_named_subjects_look():
    named = {(s.shape, frozenset((s.color_a, s.color_b))) for s in spec.SUBJECTS.values()}
    looks = [spec.subject_look(look) for look in spec.UNNAMED_LOOKS]
    assert len(looks) == 3 * 4 * (9 * 8 - 8)   # 3 shapes x 4 patterns x ordered pairs, less 4 named pairs each way
    assert not {(s.shape, frozenset((s.color_a, s.color_b))) for s in looks} & named
    look = spec.subject_look(spec.UNNAMED_LOOKS[17])
    clip = render_clip(ClipParams("on sand", "moves right", 10.0, 16.0, subject="Zabeko", look=look.name))
    for color in (look.color_a, look.color_b):
        assert ((clip == spec.COLORS[color]).all(-1).sum((1, 2)) > 10).all()
    assert len({made_up_name(i) for i in range(5000)}) == 5000
    assert not {made_up_name(i) for i in range(5000)} & set(spec.SUBJECTS)
    for subject, bad in [("Zabeko", "circle/dots/red/red"), ("Zabeko", "ring/dots/red/white"),
                         ("Zabeko", "circle/dots/green/orange"),     # Nono's look
                         ("Kiki", look.name)]:                       # a named subject keeps its own look
        with pytest.raises(ShapeWorldError, match="made-up subject"):
            ClipParams("on sand", "stays still", 16.0, 16.0, subject=subject, look=bad)


def test_looks_add_made_up_subjects_with_pictures_and_a_reference(world, tmp_path):
    _world(tmp_path / "looks", "--workers", "1", "--looks", "12", "--look-pictures", "3")
    for name in (f"eval/{s}.jsonl" for s in EVAL_SPLITS):   # what the world held before is unchanged
        assert (world / name).read_text() == (tmp_path / "looks" / name).read_text(), name
    videos = pq.read_table(tmp_path / "looks" / "videos.parquet").to_pylist()
    assert videos[:40] == pq.read_table(world / "videos.parquet").to_pylist()
    # the memory the MLLM is aligned on stays as it was; the made-up subjects' pictures have their own table
    assert (tmp_path / "looks" / "memory.jsonl").read_text() == (world / "memory.jsonl").read_text()
    assert pq.read_table(world / "made_up_memory.parquet").num_rows == 0
    looks, pictures = videos[40:], pq.read_table(tmp_path / "looks" / "made_up_memory.parquet").to_pylist()
    assert len(looks) == 12 and len(pictures) == 36 and len({r["look"] for r in looks}) > 6
    for r in looks:
        look = spec.subject_look(r["look"])
        assert r["caption"] == f"{r['subject']} {r['motion']} {r['scene']}" and r["subject"] not in spec.SUBJECTS
        video = read_video(tmp_path / "looks" / r["path"]).astype(int)
        assert np.abs(video - render_clip(ClipParams.from_record(r))).max() <= 2   # lossless H.264
        mine = [m for m in pictures if m["subject"] == r["subject"]]
        assert len(mine) == 3 and {m["look"] for m in mine} == {r["look"]}
        assert all(m["caption"].startswith(f"a photo of {r['subject']} ") for m in mine)
        for path in [r["references"][0], *(m["image"] for m in mine)]:
            picture = np.asarray(Image.open(tmp_path / "looks" / path))
            assert all((picture == spec.COLORS[c]).all(-1).sum() > 5 for c in (look.color_a, look.color_b)), path


def test_existing_world_is_kept_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "w"
    args = ["--out", str(out), "--videos", "2", "--memory", "3", "--eval-per-split", "1", "--workers", "1"]
    assert shapeworld_main(args) == 0
    assert shapeworld_main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert shapeworld_main(args + ["--overwrite", "--seed", "9"]) == 0
    assert json.loads((out / "world.json").read_text())["seed"] == 9
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    assert shapeworld_main(["--out", str(foreign), "--videos", "1", "--memory", "1", "--workers", "1"]) == 2
    assert (foreign / "precious.txt").read_text() == "keep"
    assert shapeworld_main(["--out", str(tmp_path / "t1"), "--videos", "1", "--memory", "1", "--frames", "1"]) == 2
    assert "frames" in capsys.readouterr().err
