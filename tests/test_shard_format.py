"""The prompt-shard format and the retrieval-join stages, on plain lists (no index, no videos)."""
from __future__ import annotations

import io
import json
import subprocess
import tarfile
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from base.rng import sample_rng
from base.tar import AtomicTarWriter, TarError, iter_samples, ustar_header
from data_pipelines import shards as fmt
from data_pipelines.contexts import candidate_hits, normalize_caption, pick_contexts, shuffle_ties


@dataclass
class FakeHit:
    id: str
    caption: str
    score: float
    image: object = None


def _png(color=(255, 0, 0), size=8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def _sample(key="000000000_v0", n_ctx=2, n_ref=1) -> fmt.ShardSample:
    ctx = [fmt.ContextEntry(id=f"m{i}", caption=f"a photo {i}", score=1.5 - i, rank=i, image=fmt.to_jpeg(_png()))
           for i in range(n_ctx)]
    return fmt.ShardSample(key=key, video_id="v/0.x", caption="a red circle moves left", source="test",
                           mp4=b"not-really-mp4", fps=8.0, frames=8, size=(32, 32), contexts=ctx,
                           references=[_png((0, 0, 255))] * n_ref, attributes={"size": "small", "n": 3})


# ------------------------------------------------------------------ keys and names


def test_sample_keys_are_safe_and_unique():
    keys = {fmt.sample_key(0, "a.b"), fmt.sample_key(0, "a_b"), fmt.sample_key(0, "a/b"), fmt.sample_key(1, "a.b")}
    assert len(keys) == 4
    for k in keys | {fmt.sample_key(3, "ü" * 200), fmt.sample_key(2, "..")}:
        assert all(c.isascii() and (c.isalnum() or c in "_-") for c in k), k
        assert len(k) < 100
    assert fmt.sample_key(7, "vid_01") == "000000007_vid_01"


def test_shard_names_round_trip_and_listing_ignores_temp_files(tmp_path):
    assert fmt.shard_index(fmt.shard_name(12)) == 12
    for name in (fmt.shard_name(1), fmt.shard_name(0), ".shard-000002.tar.tmp-123", "manifest.json"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in fmt.list_shards(tmp_path)] == [fmt.shard_name(0), fmt.shard_name(1)]


# ------------------------------------------------------------------ writing / reading


def test_writer_commits_by_rename_and_aborts_cleanly(tmp_path):
    path = tmp_path / fmt.shard_name(0)
    with pytest.raises(RuntimeError):
        with AtomicTarWriter(path) as w:
            w.add(fmt.encode_sample(_sample()))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # no half shard, no temp file
    with AtomicTarWriter(path) as w:
        w.add(fmt.encode_sample(_sample()))
        assert not path.exists()  # invisible until committed
        w.commit()
    assert path.exists() and list(tmp_path.iterdir()) == [path]


def test_tars_are_byte_identical_and_tar_lists_them(tmp_path):
    for name in ("a.tar", "b.tar"):
        with AtomicTarWriter(tmp_path / name) as w:
            w.add(fmt.encode_sample(_sample("000000000_x")))
            w.add(fmt.encode_sample(_sample("000000001_y", n_ctx=0, n_ref=0)))
            w.commit()
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    listing = subprocess.run(
        ["tar", "tf", str(tmp_path / "a.tar")], capture_output=True, text=True, check=True
    ).stdout.split()
    assert listing[:9] == ["000000000_x.json", "000000000_x.mp4", "000000000_x.txt", "000000000_x.ctx0.jpg",
                           "000000000_x.ctx0.txt", "000000000_x.ctx1.jpg", "000000000_x.ctx1.txt",
                           "000000000_x.ref0.png", "000000001_y.json"]
    with tarfile.open(tmp_path / "a.tar") as t:
        assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in t} == {(0, 0, 0, "", 0o644)}


def test_tar_headers_equal_tarfiles_ustar_headers():
    longest_key = fmt.sample_key(10**9, "x." * 100)
    for name, size in [("a.json", 0), ("000000001_v.ctx0.jpg", 1234), (f"{longest_key}.ctx99.jpg", 8**11 - 1)]:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o644, "", ""
        assert ustar_header(name, size) == info.tobuf(tarfile.USTAR_FORMAT)
    with pytest.raises(TarError, match="too long"):
        ustar_header("x" * 100, 1)


def test_decode_sample_round_trip(tmp_path, monkeypatch):
    with AtomicTarWriter(tmp_path / "s.tar") as w:
        w.add(fmt.encode_sample(_sample()))
        w.commit()
    raw = next(iter_samples(tmp_path / "s.tar"))
    raw["evil.pyd"] = b"\x80\x04not pickle"  # unknown members are ignored, never decoded
    s = fmt.decode_sample(raw, decode_video=False)
    assert s.key == "000000000_v0" and s.id == "v/0.x" and s.caption == "a red circle moves left"
    assert s.video == b"not-really-mp4"
    assert s.meta["size"] == [32, 32] and s.meta["attributes"] == {"size": "small", "n": 3}
    assert [(c.id, c.caption, c.rank) for c in s.contexts] == [("m0", "a photo 0", 0), ("m1", "a photo 1", 1)]
    assert s.contexts[0].image.size == (8, 8) and s.contexts[0].image.mode == "RGB"
    # JPEG is lossy, but a flat colour stays close (4:4:4, q95).
    assert np.abs(np.asarray(s.contexts[0].image, dtype=int) - [255, 0, 0]).max() <= 3
    assert len(s.references) == 1 and s.references[0].getpixel((0, 0)) == (0, 0, 255)
    del raw["ctx1.jpg"]
    with pytest.raises(fmt.ShardFormatError, match="ctx1.jpg"):
        fmt.decode_sample(raw, decode_video=False)


def test_image_conversion_passes_jpeg_through_and_rejects_garbage():
    jpg = fmt.to_jpeg(_png())
    assert jpg[:2] == b"\xff\xd8" and fmt.to_jpeg(jpg) == jpg
    assert fmt.to_png(_png()) == _png()
    with pytest.raises(fmt.ImageDataError):
        fmt.to_jpeg(b"\x89PNG\r\n\x1a\n truncated")


# ------------------------------------------------------------------ retrieval join


def test_normalize_caption():
    assert normalize_caption("A  Red circle, moves LEFT.") == normalize_caption("a red circle moves left")
    assert normalize_caption("a red circle") != normalize_caption("a red circles")


def test_candidates_drop_self_and_duplicate_captions_and_keep_rank():
    hits = [
        FakeHit("v1", "anything", 9.0),
        FakeHit("m1", "A red circle!", 8.0),
        FakeHit("m2", "a photo of a red circle", 7.0),
        FakeHit("m3", "a blue square", 1.0),
    ]
    dropped = Counter()
    cands = candidate_hits("v1", "a red circle", hits, dropped)
    assert [(r, h.id) for r, h in cands] == [(2, "m2"), (3, "m3")]
    assert dropped == Counter({"self": 1, "duplicate_caption": 1})


def test_shuffle_ties_only_within_equal_scores_and_is_seeded():
    cands = [(i, FakeHit(f"m{i}", "c", s)) for i, s in enumerate([3, 2, 2, 2, 2, 2, 1])]
    orders = {tuple(r for r, _ in shuffle_ties(cands, sample_rng(s, "key"))) for s in range(20)}
    assert len(orders) > 1  # ties do get shuffled
    for order in orders:
        assert order[0] == 0 and order[-1] == 6 and sorted(order[1:6]) == [1, 2, 3, 4, 5]
    a = shuffle_ties(cands, sample_rng(5, "key"))
    assert a == shuffle_ties(cands, sample_rng(5, "key"))


def test_pick_contexts_skips_hits_without_images():
    cands = [(i, FakeHit(f"m{i}", f"c{i}", 5.0 - i)) for i in range(5)]
    have = {"m0": b"a", "m2": b"c", "m3": b"d", "m4": b"e"}
    dropped = Counter()
    got = pick_contexts(cands, 3, lambda h: have.get(h.id), dropped)
    assert [(c.id, c.rank, c.image) for c in got] == [("m0", 0, b"a"), ("m2", 2, b"c"), ("m3", 3, b"d")]
    assert dropped == Counter({"missing_image": 1})
    assert len(pick_contexts(cands[:2], 3, lambda h: have.get(h.id), Counter())) == 1  # fewer than k: kept short


def test_manifest_read_error_is_clear(tmp_path):
    with pytest.raises(fmt.ShardFormatError, match="manifest.json"):
        fmt.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"samples_written": 1}))
    assert fmt.read_manifest(tmp_path)["samples_written"] == 1
