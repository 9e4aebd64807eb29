"""Training data stages: split, shuffle, frame sampling, task formatting, error policy, exact resume."""
from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from base.rng import sample_rng
from vimi.training.data import (
    DataError,
    Example,
    SkipCounter,
    TaskFormat,
    batched,
    clip_start,
    collate,
    consumer_split,
    decode,
    every_nth,
    format_tasks,
    frame_crop,
    shard_urls,
    shuffle,
    subject_caption,
)
from vimi.training.loader import DataFeed, ShardStream, StreamState, VideoSpec
from vimi.training.synthetic import moving_square, write_synthetic_shard

# ---------------------------------------------------------------------------- fixtures


def clip(T=8, H=16, W=16, seed=0) -> np.ndarray:
    return moving_square(T, H, W, seed)


def write_shard(path: Path, n: int, start: int = 0, corrupt: set[int] = frozenset()) -> Path:
    return write_synthetic_shard(path, n, start, corrupt=corrupt)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("shards")
    write_shard(d / "shard-000000.tar", 6, 0)
    write_shard(d / "shard-000001.tar", 6, 6)
    return [str(d)]


def example(key="k", caption="a small red square moves right", T=8, refs=(), subject=None) -> Example:
    img = Image.new("RGB", (8, 8), (10, 20, 30))
    return Example(key=key, caption=caption, meta={"attributes": {"subject": subject}}, frames=clip(T),
                   contexts=[("a photo of a cat", img), ("a photo of a dog", img)], references=list(refs),
                   rng=sample_rng(0, 0, key))


# ---------------------------------------------------------------------------- plain-list stages


def test_consumer_split_covers_all_shards_once():
    urls = [f"s{i}" for i in range(7)]
    parts = [consumer_split(urls, c, 3) for c in range(3)]
    assert all(stride == 1 for _, stride in parts)
    assert sorted(u for p, _ in parts for u in p) == urls
    # fewer shards than consumers: everyone reads everything, keeps one sample in n
    few, stride = consumer_split(["a"], 1, 4)
    assert few == ["a"] and stride == 4
    items = list(range(10))
    assert sorted(x for c in range(4) for x in every_nth(items, 4, c)) == items
    with pytest.raises(DataError):
        consumer_split(urls, 3, 3)


def test_shuffle_is_seeded_and_a_permutation():
    a = list(shuffle(range(50), 8, np.random.default_rng(1)))
    b = list(shuffle(range(50), 8, np.random.default_rng(1)))
    c = list(shuffle(range(50), 8, np.random.default_rng(2)))
    assert a == b and a != c and sorted(a) == list(range(50)) and a != list(range(50))


def test_clip_start_fits_and_lands_on_frames():
    rng = np.random.default_rng(0)
    starts = {clip_start({"fps": 30, "frames": 90}, 8, 8.0, rng) for _ in range(200)}
    assert min(starts) == 0.0 and max(starts) <= 3.0 - 1.0 + 1e-9   # 8 frames at 8 fps = 1 s of a 3 s clip
    assert all(abs(s * 30 - round(s * 30)) < 1e-9 for s in starts)
    assert clip_start({"fps": 8, "frames": 8}, 8, 8.0, rng) == 0.0  # exact fit
    assert clip_start({"fps": 8, "frames": 4}, 8, 8.0, rng) == 0.0  # too short: decoder reports it


def test_pretrain_format_puts_retrieved_pairs_before_caption_without_instruction():
    (te,) = format_tasks([example()], TaskFormat(stage="pretrain"))
    roles = [s.role for s in te.prompt]
    assert te.task == "pretrain" and te.given_frames == 0
    assert roles == ["context_text", "context_image", "context_text", "context_image", "caption"]
    (te1,) = format_tasks([example()], TaskFormat(stage="pretrain", max_contexts=1))
    assert [s.role for s in te1.prompt] == ["context_text", "context_image", "caption"]


def test_instruct_mix_follows_weights_and_templates():
    fmt = TaskFormat(stage="instruct", tasks={"t2v": 2.0, "prediction": 1.0, "subject": 1.0}, given_frames=2)
    out = list(format_tasks((example(key=f"k{i}") for i in range(400)), fmt))
    share = {t: sum(o.task == t for o in out) / len(out) for t in ("t2v", "prediction", "subject")}
    assert abs(share["t2v"] - 0.5) < 0.08 and abs(share["prediction"] - 0.25) < 0.08
    for o in out:
        first = o.prompt[0]
        assert first.role == "instruction"
        if o.task == "prediction":
            assert o.given_frames == 2 and [s.role for s in o.prompt][-2:] == ["task_image", "task_image"]
            np.testing.assert_array_equal(np.asarray(o.prompt[-2].image), o.frames[0])
        elif o.task == "t2v":
            assert o.given_frames == 0 and "context_image" in [s.role for s in o.prompt]
        else:
            assert "caption_image" in [s.role for s in o.prompt]
    only = list(format_tasks([example()], TaskFormat(stage="instruct", tasks={"prediction": 1.0})))
    assert only[0].task == "prediction"
    # the same sample key gives the same task and prompt (per-sample generator)
    again = list(format_tasks((example(key=f"k{i}") for i in range(400)), fmt))
    assert [o.task for o in again] == [o.task for o in out]


def test_subject_uses_reference_when_present_else_a_crop_of_another_frame():
    fmt = TaskFormat(stage="instruct", tasks={"subject": 1.0})
    ref = Image.new("RGB", (14, 14), (1, 2, 3))
    (with_ref,) = format_tasks([example(caption="Kiki moves up on grass", refs=[ref], subject="Kiki")], fmt)
    texts = [s.text for s in with_ref.prompt if s.text]
    assert texts[1:] == ["A", "moves up on grass"]
    assert np.asarray(with_ref.prompt[2].image).tolist() == np.asarray(ref).tolist()
    (no_ref,) = format_tasks([example()], fmt)
    img = np.asarray(no_ref.prompt[-1].image)
    assert 8 <= img.shape[0] <= 15 and img.shape[0] == img.shape[1]
    assert subject_caption("a red ball rolls", {}, fmt) == "a red ball rolls, with <image>"
    frames = np.repeat((np.arange(8, dtype=np.uint8) * 20 + 10)[:, None, None, None], 16, 1).repeat(16, 2).repeat(3, 3)
    for seed in range(20):   # frame t is flat colour 20 t + 10: the crop says which frame it came from
        crop = frame_crop(frames, np.random.default_rng(seed), 0.5, 0.5)
        assert crop.shape == (8, 8, 3) and crop[0, 0, 0] != 10


def test_decode_skips_and_counts_bad_samples():
    counter = SkipCounter()
    good = {"__key__": "a", "json": b'{"id": "a", "fps": 8, "frames": 8, "context": []}', "mp4": b"x", "txt": b"cap"}
    no_mp4 = {k: v for k, v in good.items() if k != "mp4"} | {"__key__": "b"}
    bad_json = good | {"__key__": "c", "json": b"{nope"}
    short = good | {"__key__": "d"}

    def read_clip(data, num_frames, fps, size, start):
        return clip(num_frames if data == b"x" else 3)

    short["mp4"] = b"y"
    out = list(decode([good, no_mp4, bad_json, short], frames=8, size=(16, 16), fps=8.0, seed=0,
                      counter=counter, read_clip=read_clip))
    assert [e.key for e in out] == ["a"]
    assert counter.ok == 1 and counter.skipped == {"format": 2, "ValueError": 1}
    with pytest.raises(ValueError):  # json's JSONDecodeError, not swallowed
        list(decode([bad_json], frames=8, size=(16, 16), fps=8.0, seed=0, counter=SkipCounter(), reraise=True,
                    read_clip=read_clip))


def test_collate_shapes_and_range():
    tes = list(format_tasks([example(key="a"), example(key="b")], TaskFormat(stage="pretrain")))
    (b,) = list(batched(tes, 2))
    out = collate(b)
    assert out["video"].shape == (2, 3, 8, 16, 16)
    assert float(out["video"].min()) >= -1 and float(out["video"].max()) <= 1
    assert out["given_frames"].tolist() == [0, 0] and out["keys"] == ["a", "b"]


# ---------------------------------------------------------------------------- real shards


def stream(urls, resume=None, workers=0, rank=0, world=1, fmt=None, bs=2):
    return ShardStream(shard_urls(urls), fmt or TaskFormat(stage="instruct"), VideoSpec(8, (16, 16), 8.0),
                       batch_size=bs, shuffle_buffer=4, seed=0, rank=rank, world_size=world, num_workers=workers,
                       resume=resume)


def keys_of(feed, n):
    return [next(feed)["keys"] for _ in range(n)]


def test_shard_urls_takes_folders_globs_and_remote_urls(shards):
    local = shard_urls(shards)
    assert [Path(u).name for u in local] == ["shard-000000.tar", "shard-000001.tar"]
    assert shard_urls([str(Path(shards[0]) / "shard-*.tar")]) == local
    remote = shard_urls(["pipe:curl -s https://host/s-{000..002}.tar"])
    assert remote == [f"pipe:curl -s https://host/s-00{i}.tar" for i in range(3)]


def test_shard_urls_errors_clearly(tmp_path):
    with pytest.raises(DataError, match="matches no shard"):
        shard_urls([str(tmp_path / "nope-*.tar")])
    with pytest.raises(DataError, match="empty"):
        shard_urls([])


def test_stream_decodes_real_shards_and_ranks_are_disjoint(shards):
    a = keys_of(DataFeed(stream(shards, rank=0, world=2)), 3)
    b = keys_of(DataFeed(stream(shards, rank=1, world=2)), 3)
    ka, kb = {k for ks in a for k in ks}, {k for ks in b for k in ks}
    assert len(ka) == 6 and len(kb) == 6 and not ka & kb   # one epoch each, disjoint halves


def test_stream_resumes_exactly_with_workers(shards):
    full = DataFeed(stream(shards, workers=2))
    ref = [next(full) for _ in range(9)]                 # crosses an epoch boundary (12 samples / 2 workers)
    first = DataFeed(stream(shards, workers=2))
    for _ in range(4):
        next(first)
    state = StreamState.from_dict(first.state_dict())
    resumed = DataFeed(stream(shards, workers=2, resume=state))
    rest = [next(resumed) for _ in range(5)]
    for r, b in zip(ref[4:], rest):
        assert r["keys"] == b["keys"] and r["tasks"] == b["tasks"]
        assert np.array_equal(r["video"].numpy(), b["video"].numpy())
    with pytest.raises(DataError, match="world_size"):
        stream(shards, workers=2, world=2, resume=state)


def test_corrupt_and_truncated_shards_are_skipped_and_counted(tmp_path):
    write_shard(tmp_path / "shard-000000.tar", 6, 0, corrupt={1, 4})
    good = write_shard(tmp_path / "g" / "shard-000001.tar", 6, 10)
    data = good.read_bytes()
    (tmp_path / "shard-000001.tar").write_bytes(data[: int(len(data) * 0.6)])  # cut mid-member
    feed = DataFeed(stream([str(tmp_path)], fmt=TaskFormat(stage="pretrain")))
    seen = {k for ks in keys_of(feed, 4) for k in ks}
    counts = feed.counts()
    assert counts["ok"] >= 8 and not any("00000001_" in k or "00000004_" in k for k in seen)
    skipped = {k: v for k, v in counts.items() if k.startswith("skipped/")}
    assert sum(skipped.values()) >= 3 and any("video_" in k for k in skipped) and "skipped/tar" in skipped


def test_resumed_epoch_whose_tail_is_all_bad_moves_on_to_the_next_epoch(tmp_path):
    # Regression: resuming mid-epoch skips (does not decode) the replayed samples, so a tail holding
    # only corrupt samples is not "a whole epoch with nothing decodable" and must not raise.
    fmt = TaskFormat(stage="pretrain")
    write_shard(tmp_path / "probe" / "shard-000000.tar", 4, 0)
    raw = stream([str(tmp_path / "probe")])._raw(0, 1, SkipCounter())  # bytes only: order is content-blind
    order = [r["__key__"] for r in islice(raw, 4)]                       # epoch 0's sample order
    last = int(order[-1].split("_")[0])
    write_shard(tmp_path / "data" / "shard-000000.tar", 4, 0, corrupt={last})
    state = StreamState(world_size=1, num_workers=0, workers={0: [0, 3]})  # resume before the last sample
    batch = next(DataFeed(stream([str(tmp_path / "data")], fmt=fmt, resume=state)))
    assert batch["pos"][0] == 1 and len(batch["keys"]) == 2           # batches from the next epoch
    assert batch["counts"]["skipped/video_corrupt"] >= 1 and order[-1] not in batch["keys"]


def test_stream_where_nothing_decodes_raises(tmp_path):
    write_shard(tmp_path / "shard-000000.tar", 3, 0, corrupt={0, 1, 2})
    with pytest.raises(DataError, match="nothing decodable"):
        next(DataFeed(stream([str(tmp_path)], fmt=TaskFormat(stage="pretrain"))))
    # resumed mid-epoch: the partial epoch is let go, the next (whole) one still errors, no endless loop
    state = StreamState(world_size=1, num_workers=0, workers={0: [0, 1]})
    with pytest.raises(DataError, match="a whole epoch of 3 samples had nothing decodable"):
        next(DataFeed(stream([str(tmp_path)], fmt=TaskFormat(stage="pretrain"), resume=state)))
