"""build_shards end to end on a tiny hand-made world: content rules, bad inputs, restarts, ranks."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from base.tar import iter_samples
from data_pipelines import shards as fmt
from data_pipelines.build_index import index_memory
from data_pipelines.build_shards import ShardBuildConfig, build_shards
from data_pipelines.contexts import normalize_caption
from data_pipelines.video_io import read_video, write_video
from retrieval import BuildConfig, RetrieverUnavailableError, open_index
from retrieval.serve import BackgroundServer, ServiceConfig, create_app

COLORS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 230)}
SHAPES = ["circle", "square", "triangle"]
MOTIONS = ["left", "right"]
K = 3
GOOD_VIDEOS = len(COLORS) * len(SHAPES) * len(MOTIONS) + 2  # + a subject video + a frame folder


def _clip(rgb, shift) -> np.ndarray:
    frames = np.zeros((8, 16, 16, 3), np.uint8)
    for t in range(8):
        frames[t, 6:10, (t * shift) % 12 : (t * shift) % 12 + 4] = rgb
    return frames


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Videos (good and bad), a memory with traps (own id, duplicate caption, deleted image), an index."""
    root = tmp_path_factory.mktemp("world")
    for d in ("videos", "memory", "refs"):
        (root / d).mkdir()
    videos, memory = [], []
    for (name, rgb) in COLORS.items():
        for shape in SHAPES:
            for j in range(4):
                mid = f"m_{name}_{shape}_{j}"
                Image.new("RGB", (8, 8), rgb).save(root / "memory" / f"{mid}.png")
                memory.append({"id": mid, "caption": f"a photo of a small {name} {shape} on grass",
                               "image": f"memory/{mid}.png"})
            for motion in MOTIONS:
                vid = f"v_{name}_{shape}_{motion}"
                write_video(root / "videos" / f"{vid}.mp4", _clip(rgb, 1 if motion == "right" else 3), lossless=True)
                videos.append({"id": vid, "caption": f"a small {name} {shape} moves {motion} on grass",
                               "path": f"videos/{vid}.mp4", "kind": "object", "color": name, "shape": shape,
                               "size": "small", "motion": motion})
    # Traps: the video's own item; an exact duplicate of a caption (up to case/punctuation);
    # a strong match whose image is deleted after indexing; a row without image.
    memory += [
        {
            "id": "v_red_circle_left",
            "caption": "a small red circle moves left on grass photo",
            "image": "memory/m_red_circle_0.png",
        },
        {"id": "dup", "caption": "A small RED circle moves right, on grass.", "image": "memory/m_red_circle_1.png"},
        {"id": "gone", "caption": "small blue square moves left on grass", "image": "memory/gone.png"},
        {"id": "noimg", "caption": "small green triangle moves left on grass", "image": None},
    ]
    Image.new("RGB", (8, 8)).save(root / "memory" / "gone.png")
    for j in range(3):
        Image.new("RGB", (8, 8), (200, 100, 0)).save(root / "memory" / f"kiki{j}.png")
        memory.append({"id": f"kiki{j}", "caption": "a photo of Kiki on sand", "image": f"memory/kiki{j}.png"})
    Image.new("RGB", (8, 8), (200, 100, 0)).save(root / "refs" / "Kiki_0.png")
    write_video(root / "videos" / "kiki.mp4", _clip((200, 100, 0), 2), lossless=True)
    videos.append({"id": "kiki", "caption": "Kiki moves up on sand", "path": "videos/kiki.mp4", "kind": "subject",
                   "subject": "Kiki", "references": ["refs/Kiki_0.png"]})
    # A video given as a folder of frames (stored in the shard as a lossless mp4).
    (root / "videos" / "frames").mkdir()
    for t, frame in enumerate(_clip((40, 200, 60), 2)):
        Image.fromarray(frame).save(root / "videos" / "frames" / f"{t:03d}.png")
    videos.append({"id": "framesdir", "caption": "a small green square moves up on grass", "path": "videos/frames"})
    # Bad rows, spread over several shards.
    good = (root / "videos" / "v_red_circle_left.mp4").read_bytes()
    (root / "videos" / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (root / "videos" / "garbage.mp4").write_bytes(b"\x00not an mp4" * 50)
    bad = [
        {"id": "truncated", "caption": "a small red square moves left on grass", "path": "videos/truncated.mp4"},
        {"id": "garbage", "caption": "a small red square moves right on grass", "path": "videos/garbage.mp4"},
        {"id": "nofile", "caption": "a small green circle moves left on grass", "path": "videos/nofile.mp4"},
        {"id": "nocaption", "caption": "  ", "path": "videos/v_red_circle_left.mp4"},
        {"id": "noref", "caption": "Kiki moves down on sand", "path": "videos/kiki.mp4", "kind": "subject",
         "subject": "Kiki", "references": ["refs/missing.png"]},
    ]
    for i, row in enumerate(bad):
        videos.insert(3 + 4 * i, row)
    (root / "videos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in videos))
    (root / "memory.jsonl").write_text("".join(json.dumps(r) + "\n" for r in memory))
    index = root / "index"
    index_memory(BuildConfig(memory=str(root / "memory.jsonl"), out=str(index), progress=False))
    (root / "memory" / "gone.png").unlink()
    return {"root": root, "videos": str(root / "videos.jsonl"), "index": str(index), "rows": len(videos),
            "table": videos}


def _build(world, out, **kw) -> dict:
    cfg = ShardBuildConfig(videos=world["videos"], index=world["index"], out=str(out), k=K, shard_size=5,
                           progress=False, **kw)
    return build_shards(cfg)


def _samples(out) -> list[fmt.PromptSample]:
    return [fmt.decode_sample(raw) for tar in fmt.list_shards(out) for raw in iter_samples(tar)]


def _tar_bytes(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in fmt.list_shards(out)}


@pytest.fixture(scope="module")
def built(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "out"
    _build(world, out)
    return out


# ------------------------------------------------------------------ content


def test_every_sample_has_k_clean_contexts(world, built):
    samples = _samples(built)
    assert len(samples) == GOOD_VIDEOS
    rows = {r["id"]: r for r in world["table"]}
    for s in samples:
        assert len(s.contexts) == K, s.id
        assert s.caption == rows[s.id]["caption"] and s.meta["caption"] == s.caption
        for c in s.contexts:
            assert c.id != s.id
            assert normalize_caption(c.caption) != normalize_caption(s.caption)
            assert c.id not in ("gone", "noimg")  # hits without a loadable image are passed over
        assert [c.score for c in s.contexts] == sorted((c.score for c in s.contexts), reverse=True)
        assert s.meta["fps"] == 8.0 and s.meta["frames"] == 8 and s.meta["size"] == [16, 16]
        assert s.meta["source"] == world["root"].name
        source = read_video(world["root"] / rows[s.id]["path"])
        if s.id == "framesdir":  # re-encoded: lossless H.264 up to 8-bit YCbCr rounding
            assert s.video.shape == source.shape and np.abs(s.video.astype(int) - source).max() <= 2
        else:  # the source mp4's bytes, as is
            np.testing.assert_array_equal(s.video, source)
    by_id = {s.id: s for s in samples}
    red = by_id["v_red_circle_left"]
    assert red.meta["attributes"].items() >= {"kind": "object", "color": "red", "shape": "circle", "size": "small",
                                              "motion": "left"}.items()
    assert not {"id", "caption", "path", "references"} & set(red.meta["attributes"])
    assert all("red circle" in c.caption.lower() for c in red.contexts)
    kiki = by_id["kiki"]
    assert len(kiki.references) == 1 and kiki.references[0].getpixel((0, 0)) == (200, 100, 0)
    assert {c.id for c in kiki.contexts} == {"kiki0", "kiki1", "kiki2"}
    assert all(not s.references for s in samples if s.id != "kiki")


def test_manifest_counts_skips_and_dropped_hits(world, built):
    m = fmt.read_manifest(built)
    assert m["complete"] and m["num_shards"] == m["finished_shards"] == -(-world["rows"] // 5)
    assert m["rows"] == world["rows"] and m["samples_written"] == GOOD_VIDEOS
    skipped = Counter(m["skipped"])
    assert skipped["video_missing"] == 1 and skipped["empty_caption"] == 1 and skipped["missing_reference"] == 1
    assert skipped["video_corrupt"] >= 1 and skipped["video_corrupt"] + skipped["video_truncated"] == 2
    assert m["samples_skipped"] == 5 == sum(skipped.values())
    assert m["samples_written"] + m["samples_skipped"] == m["rows"]
    assert m["context_dropped"]["self"] >= 1 and m["context_dropped"]["duplicate_caption"] >= 1
    assert m["context_dropped"]["missing_image"] >= 2  # "gone" (file deleted) and "noimg" (no image)
    assert m["short_context"] == 0 and m["k"] == K
    assert sum(s["samples"] for s in m["shards"]) == GOOD_VIDEOS


def test_plain_webdataset_and_tar_read_the_shards(world, built):
    urls = [str(p) for p in fmt.list_shards(built)]
    paths = {r["id"]: world["root"] / r["path"] for r in world["table"]}
    for raw in wds.WebDataset(urls, shardshuffle=False, empty_check=False):  # raw bytes, no decoding
        vid = json.loads(raw["json"])["id"]
        if vid != "framesdir":
            assert raw["mp4"] == paths[vid].read_bytes()  # the source video, byte for byte
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).map(fmt.decode_sample)
    got = list(ds)
    assert len(got) == GOOD_VIDEOS and all(s.video.shape == (8, 16, 16, 3) for s in got)
    assert all(s.key.replace("_", "").replace("-", "").isalnum() for s in got)
    listing = subprocess.run(["tar", "tf", urls[0]], capture_output=True, text=True, check=True).stdout.split()
    assert listing and all(n.count(".") in (1, 2) for n in listing)


# ------------------------------------------------------------------ restarts, determinism, ranks


def test_same_inputs_give_identical_shards_and_rerun_skips_finished(world, built, tmp_path):
    out = tmp_path / "again"
    _build(world, out)
    assert _tar_bytes(out) == _tar_bytes(built)
    # A re-run skips finished shards (they are not rewritten) and rebuilds a missing one identically.
    before = {p.name: p.stat().st_mtime_ns for p in fmt.list_shards(out)}
    victim = fmt.list_shards(out)[1]
    victim.unlink()
    (out / ".shard-000003.tar.tmp-99999").write_bytes(b"half")  # left by a killed run
    m = _build(world, out)
    after = {p.name: p.stat().st_mtime_ns for p in fmt.list_shards(out)}
    assert {n for n in after if after[n] != before.get(n)} == {victim.name}
    assert _tar_bytes(out) == _tar_bytes(built) and m["complete"]
    assert not list(out.glob(".*tmp*"))
    # Different seeds may choose different tied contexts, but never a different count.
    _build(world, tmp_path / "seed1", seed=1)
    other = _samples(tmp_path / "seed1")
    assert [len(s.contexts) for s in other] == [len(s.contexts) for s in _samples(built)]


def test_settings_mismatch_in_same_folder_is_refused(world, built):
    with pytest.raises(ValueError, match="other settings"):
        _build(world, built, seed=7)


def test_ranks_split_work_without_overlap_or_gap(world, built, tmp_path):
    out = tmp_path / "ranks"
    seen = {}
    for r in range(3):
        _build(world, out, worker_rank=r, num_workers=3)
        names = {p.name for p in fmt.list_shards(out)} - set(seen)
        assert all(fmt.shard_index(n) % 3 == r for n in names)
        seen.update({n: r for n in names})
    assert _tar_bytes(out) == _tar_bytes(built)  # together: exactly the single-worker output
    m = fmt.read_manifest(out)
    assert m["complete"] and m["samples_written"] == GOOD_VIDEOS
    keys = [s.key for s in _samples(out)]
    assert len(keys) == len(set(keys)) == GOOD_VIDEOS
    with pytest.raises(ValueError, match="out of range"):
        _build(world, tmp_path / "bad", worker_rank=3, num_workers=3)


# ------------------------------------------------------------------ through the HTTP service


def test_retriever_url_gives_the_same_shards(world, built, tmp_path):
    index = open_index(world["index"])
    with BackgroundServer(create_app(index, ServiceConfig(index=world["index"]))) as url:
        cfg = ShardBuildConfig(videos=world["videos"], retriever=url, out=str(tmp_path / "http"), k=K,
                               shard_size=5, progress=False)
        build_shards(cfg)
    assert _tar_bytes(tmp_path / "http") == _tar_bytes(built)


def test_dead_service_mid_build_leaves_no_half_shard(world, tmp_path, monkeypatch):
    import data_pipelines.build_shards as bs

    real = bs.open_retriever

    class DiesAfterTwo:
        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def search(self, queries, k):
            self.calls += 1
            if self.calls > 2:
                raise RetrieverUnavailableError("retrieval service at http://x unreachable after 4 attempt(s)")
            return self.inner.search(queries, k)

        def image(self, hit):
            return self.inner.image(hit)

    monkeypatch.setattr(bs, "open_retriever", lambda cfg: DiesAfterTwo(real(cfg)))
    out = tmp_path / "dies"
    with pytest.raises(RetrieverUnavailableError):
        _build(world, out)
    assert [p.name for p in fmt.list_shards(out)] == [fmt.shard_name(0), fmt.shard_name(1)]
    assert not list(out.glob(".*tmp*"))  # the shard in progress was removed
    monkeypatch.setattr(bs, "open_retriever", real)
    assert _build(world, out)["complete"]


def test_cli_dead_url_is_a_clear_error(world, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = "http://127.0.0.1:%d" % s.getsockname()[1]
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "data_pipelines.build_shards", "--videos", world["videos"], "--retriever", url,
         "--out", str(out), "-k", "2", "--retries", "1", "--no-progress"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and url in proc.stderr and "unreachable" in proc.stderr, proc.stderr
    assert not fmt.list_shards(out) and not list(out.glob(".*tmp*"))
