"""Table readers and real-format ingestion: our tables, img2dataset Parquet and tars, WebVid CSVs."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from base.errors import MissingImageError
from base.images import load_image
from data_pipelines.ingest import IngestStats, iter_memory, iter_videos
from data_pipelines.tables import TableError, iter_table
from data_pipelines.video_io import read_video, write_video

COLOURS = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (250, 200, 10), (90, 90, 90), (10, 250, 250), (255, 255, 255)]


def _png(colour, size=(6, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def _jpg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _flatten(batches) -> list[dict]:
    return [row for batch in batches for row in batch]


@pytest.fixture()
def memory_dir(tmp_path) -> Path:
    """Our memory format: images on disk, table with relative paths, as ShapeWorld writes it."""
    (tmp_path / "memory").mkdir()
    rows = []
    for i, c in enumerate(COLOURS):
        rel = f"memory/{i:06d}.png"
        (tmp_path / rel).write_bytes(_png(c))
        rows.append({"id": f"{i:06d}", "caption": f"a {c} square", "image": rel, "kind": "object"})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "memory.parquet")
    with open(tmp_path / "memory.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    lines = ["id,caption,image"] + [f'{r["id"]},"{r["caption"]}",{r["image"]}' for r in rows]
    (tmp_path / "memory.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


# --------------------------------------------------------------------------- memory tables


@pytest.mark.parametrize("name", ["memory.parquet", "memory.jsonl", "memory.csv"])
def test_memory_table_formats_map_the_same(memory_dir, name):
    batches = list(iter_memory(memory_dir / name, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 1]
    rows = _flatten(batches)
    assert [r["id"] for r in rows] == [f"{i:06d}" for i in range(7)]  # CSV keeps leading zeros
    for r, c in zip(rows, COLOURS):
        assert set(r) == {"id", "caption", "image"}
        assert os.path.isabs(r["image"]) and r["image"] == str(memory_dir / "memory" / f"{r['id']}.png")
        assert r["caption"] == f"a {c} square"
        assert load_image(r["image"]).getpixel((0, 0)) == c


def test_memory_folder_of_tables_batches_evenly(tmp_path):
    for part, ids in (("a", range(0, 5)), ("b", range(5, 11))):
        rows = [{"id": str(i), "caption": f"c{i}", "image": _png(COLOURS[i % 7])} for i in ids]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / f"part-{part}.parquet", row_group_size=2)
    batches = list(iter_memory(tmp_path, batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 3]  # across files and row groups
    rows = _flatten(batches)
    assert [r["id"] for r in rows] == [str(i) for i in range(11)]
    assert isinstance(rows[3]["image"], bytes) and load_image(rows[3]["image"]).getpixel((0, 0)) == COLOURS[3]


def test_img2dataset_parquet(tmp_path):
    rows = [
        {"key": "000000000", "caption": "red", "url": "http://x/0.jpg", "status": "success", "jpg": _jpg(COLOURS[0]),
         "width": 8, "exif": "{}"},
        {"key": "000000001", "caption": "fail", "url": "http://x/1.jpg", "status": "failed_to_download", "jpg": None,
         "width": None, "exif": None},
        {"key": "000000002", "caption": "blue", "url": "http://x/2.jpg", "status": "success", "jpg": _jpg(COLOURS[2]),
         "width": 8, "exif": "{}"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "00000.parquet")
    stats = IngestStats()
    out = _flatten(iter_memory(tmp_path / "00000.parquet", stats=stats))
    assert [r["id"] for r in out] == ["000000000", "000000001", "000000002"]
    assert out[1]["image"] is None  # failed download: kept, no image
    im = load_image(out[2]["image"])
    assert im.mode == "RGB" and np.abs(np.asarray(im, int) - COLOURS[2]).max() < 8
    assert stats.no_media == 1 and stats.rows == 3


def test_laion_style_url_only_parquet_and_overrides(tmp_path):
    rows = [{"SAMPLE_ID": 7, "URL": "https://x/7.jpg", "TEXT": "a cat"},
            {"SAMPLE_ID": 8, "URL": "https://x/8.jpg", "TEXT": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "laion.parquet")
    stats = IngestStats()
    out = _flatten(iter_memory(tmp_path / "laion.parquet", stats=stats))
    assert out == [{"id": "7", "caption": "a cat", "image": None}, {"id": "8", "caption": "", "image": None}]
    assert stats.empty_caption == 1 and stats.no_media == 2
    # Explicit mapping for unusual names.
    pq.write_table(pa.Table.from_pylist([{"uid_x": "q", "alt": "hi", "pic": "p.png"}]), tmp_path / "odd.parquet")
    out = _flatten(iter_memory(tmp_path / "odd.parquet", columns={"id": "uid_x", "caption": "alt", "image": "pic"}))
    assert out == [{"id": "q", "caption": "hi", "image": str(tmp_path / "p.png")}]


def test_hugging_face_image_struct(tmp_path):
    cell = {"bytes": _png(COLOURS[1]), "path": None}
    pq.write_table(pa.Table.from_pylist([{"id": "h", "text": "green", "image": cell}]), tmp_path / "hf.parquet")
    (row,) = _flatten(iter_memory(tmp_path / "hf.parquet"))
    assert row["caption"] == "green" and load_image(row["image"]).getpixel((0, 0)) == COLOURS[1]


MAPPING_ERRORS = [  # (reader, file, content, message): each error names the file and the column
    (iter_memory, "nocap.jsonl", '{"id": "1", "image": "a.png"}\n', r"nocap\.jsonl: missing caption column"),
    (iter_memory, "noimg.jsonl", '{"id": "1", "caption": "x"}\n', r"noimg\.jsonl: missing image column"),
    (iter_memory, "noid.csv", "caption,image\nx,a.png\n", r"noid\.csv: missing id column"),
    (iter_memory, "emptyid.jsonl", '{"id": "", "caption": "x", "image": "a.png"}\n',
     r"emptyid\.jsonl: a row has an empty id"),
    (iter_videos, "nopath.csv", "videoid,name,duration\n1,x,PT1S\n", r"nopath\.csv: missing path column"),
    (iter_videos, "nocap.jsonl", '{"id": "1", "path": "a.mp4"}\n', r"nocap\.jsonl: missing caption column"),
]


@pytest.mark.parametrize("reader, name, content, message", MAPPING_ERRORS)
def test_mapping_errors_name_file_and_column(tmp_path, reader, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(TableError, match=message):
        list(reader(tmp_path / name))


def test_parquet_mapping_errors(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"id": "1", "image": "a.png"}]), tmp_path / "nocap.parquet")
    with pytest.raises(TableError, match=r"nocap\.parquet: missing caption column"):
        list(iter_memory(tmp_path / "nocap.parquet"))
    with pytest.raises(TableError, match="missing column 'nope'"):
        list(iter_memory(tmp_path / "nocap.parquet", columns={"caption": "nope"}))
    with pytest.raises(TableError, match="not found"):
        list(iter_memory(tmp_path / "absent.parquet"))


def test_duplicates_and_empty_captions_are_kept_and_counted(tmp_path):
    rows = [{"id": "a", "caption": "x", "image": "1.png"}, {"id": "a", "caption": "  ", "image": "2.png"},
            {"id": "b", "caption": "", "image": ""}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    stats = IngestStats(track_ids=True)
    out = _flatten(iter_memory(tmp_path / "m.parquet", stats=stats))
    assert [r["id"] for r in out] == ["a", "a", "b"]  # nothing dropped
    assert [r["caption"] for r in out] == ["x", "", ""]
    assert out[2]["image"] is None
    assert stats.as_dict() == {"rows": 3, "empty_caption": 2, "no_media": 1, "duplicate_ids": 1,
                               "examples": {"empty_caption": "a", "no_media": "b", "duplicate_id": "a"}}


# --------------------------------------------------------------------------- img2dataset tars


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _write_shard(path: Path, start: int, n: int) -> None:
    with tarfile.open(path, "w") as tf:
        for i in range(start, start + n):
            key = f"{i:09d}"
            _add(tf, f"{key}.jpg", _jpg(COLOURS[i % 7]))
            if i % 3 != 1:  # some samples carry the caption only in .json, as img2dataset may
                _add(tf, f"{key}.txt", f"caption {i}".encode())
            _add(tf, f"{key}.json", json.dumps({"key": key, "caption": f"caption {i}", "url": "http://x"}).encode())


@pytest.fixture()
def shards(tmp_path) -> Path:
    folder = tmp_path / "shards"
    folder.mkdir()
    _write_shard(folder / "00000.tar", 0, 5)
    _write_shard(folder / "00001.tar", 5, 4)
    # img2dataset writes metadata Parquet beside its tars; the tars (with images) win.
    meta = [{"key": "x", "caption": "meta only", "status": "success"}]
    pq.write_table(pa.Table.from_pylist(meta), folder / "00000.parquet")
    return folder


@pytest.mark.parametrize("spec", ["folder", "glob", "brace"])
def test_webdataset_shards(shards, spec):
    path = {"folder": str(shards), "glob": str(shards / "*.tar"), "brace": str(shards / "{00000..00001}.tar")}[spec]
    batches = list(iter_memory(path, batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 1]
    rows = _flatten(batches)
    assert [r["id"] for r in rows] == [f"{i:09d}" for i in range(9)]
    assert [r["caption"] for r in rows] == [f"caption {i}" for i in range(9)]
    for i, r in enumerate(rows):
        assert np.abs(np.asarray(load_image(r["image"], name=r["id"]), int) - COLOURS[i % 7]).max() < 8


def test_single_tar_and_txt_only_samples(tmp_path):
    shard = tmp_path / "one.tar"
    with tarfile.open(shard, "w") as tf:
        _add(tf, "./a.png", _png(COLOURS[0]))
        _add(tf, "./a.txt", b"  padded caption \n")
        _add(tf, "b.txt", b"text only")  # no image: kept, image None
        _add(tf, "._b.txt", b"macOS junk")
    rows = _flatten(iter_memory(shard))
    assert [(r["id"], r["caption"]) for r in rows] == [("a", "padded caption"), ("b", "text only")]
    assert rows[1]["image"] is None and load_image(rows[0]["image"]).getpixel((0, 0)) == COLOURS[0]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("suffix, mode", [(".tar", "w"), (".tar.gz", "w:gz")])
def test_tar_header_formats(tmp_path, fmt, suffix, mode):
    # Long keys take the ustar prefix field, GNU 'L' records or pax 'path' records.
    keys = ["short", "d" * 60 + "/" + "k" * 80, "ünïcode"]
    shard = tmp_path / f"s{suffix}"
    with tarfile.open(shard, mode, format=fmt) as tf:
        dir_info = tarfile.TarInfo("folder")
        dir_info.type = tarfile.DIRTYPE
        tf.addfile(dir_info)  # directories are skipped
        for i, key in enumerate(keys):
            _add(tf, f"{key}.png", _png(COLOURS[i]))
            _add(tf, f"{key}.txt", f"caption of {key}".encode())
    rows = _flatten(iter_memory(shard))
    assert [(r["id"], r["caption"]) for r in rows] == [(k, f"caption of {k}") for k in keys]
    assert [load_image(r["image"]).getpixel((0, 0)) for r in rows] == COLOURS[:3]


def test_tar_errors_name_shard(tmp_path, shards):
    nocap = tmp_path / "nocap.tar"
    with tarfile.open(nocap, "w") as tf:
        _add(tf, "k1.jpg", _jpg(COLOURS[0]))
        _add(tf, "k1.json", b'{"url": "http://x"}')
    with pytest.raises(TableError, match=r"nocap\.tar: sample 'k1': missing caption"):
        list(iter_memory(nocap))
    # A cut shard: samples before the damage stream out first (never a whole shard in RAM),
    # then a TableError names the shard.
    data = (shards / "00000.tar").read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) * 2 // 3])
    got = []
    with pytest.raises(TableError, match=r"cut\.tar: damaged tar shard"):
        for batch in iter_memory(cut, batch_size=1):
            got += batch
    assert 1 <= len(got) < 5
    # Cut exactly where a header should start: tarfile itself would end quietly there.
    with tarfile.open(shards / "00000.tar") as tf:
        boundary = tf.getmembers()[6].offset  # header of sample 2's .txt
    cut.write_bytes(data[:boundary])
    with pytest.raises(TableError, match=r"cut\.tar: damaged tar shard.*end-of-archive"):
        list(iter_memory(cut))
    with pytest.raises(TableError, match="shard not found"):
        list(iter_memory(str(tmp_path / "{00000..00003}.tar")))


# --------------------------------------------------------------------------- images


def test_load_image_errors_and_modes(tmp_path):
    with pytest.raises(MissingImageError, match="gone.png"):
        load_image(str(tmp_path / "gone.png"))
    with pytest.raises(MissingImageError, match="row-17"):
        load_image(b"not an image", name="row-17")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(_jpg(COLOURS[0])[:200])
    with pytest.raises(MissingImageError, match="cut.jpg"):
        load_image(cut)
    with pytest.raises(MissingImageError):
        load_image(None)
    with pytest.raises(MissingImageError, match="URL"):
        load_image("https://example.com/a.jpg")
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent -> white
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    im = load_image(buf.getvalue())
    assert im.mode == "RGB" and im.getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.new("L", (2, 2), 77)).getpixel((1, 1)) == (77, 77, 77)


# --------------------------------------------------------------------------- videos


def _clip(colour, T=4) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (T, 16, 16, 3)).copy()


def test_webvid_csv_points_at_real_videos(tmp_path):
    root = tmp_path / "webvid"
    rows = [("1066676002", "Aerial shot, of a forest", "001201_001250", COLOURS[0]),
            ("21179416", 'Cat "plays" piano', "001201_001250", COLOURS[2]),
            ("1056939602", "", "005551_005600", COLOURS[3])]
    lines = ["videoid,contentUrl,duration,page_dir,name"]
    for vid, name, page, colour in rows:
        write_video(root / page / f"{vid}.mp4", _clip(colour), fps=8, lossless=True)
        quoted = '"' + name.replace('"', '""') + '"'
        lines.append(f"{vid},https://x/{vid}.mp4,PT00H00M11S,{page},{quoted}")
    csv = root / "results_2M_train.csv"
    csv.write_text("\n".join(lines) + "\n")
    stats = IngestStats()
    batches = list(iter_videos(csv, batch_size=2, stats=stats))
    assert [len(b) for b in batches] == [2, 1]
    out = _flatten(batches)
    assert [r["id"] for r in out] == [r[0] for r in rows]
    assert [r["caption"] for r in out] == ["Aerial shot, of a forest", 'Cat "plays" piano', ""]
    assert out[0]["page_dir"] == "001201_001250" and out[0]["duration"] == "PT00H00M11S"
    assert "name" not in out[0] and "videoid" not in out[0]
    for r, (_, _, page, colour) in zip(out, rows):
        assert r["path"] == str(root / page / f"{r['id']}.mp4")
        frames = read_video(r["path"])
        assert frames.shape == (4, 16, 16, 3) and np.abs(frames.astype(int) - colour).max() <= 1
    assert stats.empty_caption == 1
    # The CSV may live apart from the videos.
    moved = tmp_path / "meta.csv"
    moved.write_text(csv.read_text())
    (first,) = next(iter_videos(moved, batch_size=1, videos_root=root))
    assert first["path"] == str(root / "001201_001250" / "1066676002.mp4")


def test_our_video_table_keeps_extras(tmp_path):
    write_video(tmp_path / "videos" / "v0.mp4", _clip(COLOURS[5]), lossless=True)
    rows = [{"id": "v0", "caption": "a cyan square", "path": "videos/v0.mp4", "split": "train", "frames": 4},
            {"id": "v1", "caption": "missing file", "path": "videos/v1.mp4", "split": "train", "frames": 4}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "videos.parquet")
    out = _flatten(iter_videos(tmp_path / "videos.parquet"))
    assert out[0] == {"id": "v0", "caption": "a cyan square", "path": str(tmp_path / "videos" / "v0.mp4"),
                      "split": "train", "frames": 4}
    assert read_video(out[0]["path"]).shape == (4, 16, 16, 3)
    assert out[1]["path"] == str(tmp_path / "videos" / "v1.mp4")  # existence is the reader's business


def test_iter_table_csv_string_columns(tmp_path):
    (tmp_path / "t.csv").write_text('id,caption,n\n007,"two\nlines",3\n')
    (row,) = _flatten(iter_table(tmp_path / "t.csv", string_columns=["id"]))
    assert row == {"id": "007", "caption": "two\nlines", "n": 3}


def test_datasets_folders_are_memories_and_video_tables(tmp_path):
    """A ``datasets`` save_to_disk folder is read wherever a table is, batch by batch, images undecoded."""
    import datasets

    n = 5
    memory = datasets.Dataset.from_dict(
        {"id": [f"{i:03d}" for i in range(n)], "caption": [f"a {c} square" for c in COLOURS[:n]],
         "image": [{"bytes": _png(c), "path": None} for c in COLOURS[:n]]},
        features=datasets.Features({"id": datasets.Value("string"), "caption": datasets.Value("string"),
                                    "image": datasets.Image()}),
    )
    memory.save_to_disk(str(tmp_path / "memory"), max_shard_size="1KB")  # several Arrow files
    batches = list(iter_memory(tmp_path / "memory", batch_size=2))
    assert [len(b) for b in batches] == [2, 2, 1]
    rows = _flatten(batches)
    assert [r["id"] for r in rows] == ["000", "001", "002", "003", "004"]
    assert [load_image(r["image"]).getpixel((0, 0)) for r in rows] == COLOURS[:n]

    write_video(tmp_path / "videos" / "clips" / "v0.mp4", _clip(COLOURS[0]), fps=4, lossless=True)
    videos = datasets.Dataset.from_dict({"id": ["v0"], "caption": ["red"], "path": ["clips/v0.mp4"], "scene": ["sand"]})
    videos.save_to_disk(str(tmp_path / "videos"))
    (row,) = _flatten(iter_videos(tmp_path / "videos"))
    assert row["path"] == str(tmp_path / "videos" / "clips" / "v0.mp4") and row["scene"] == "sand"
    with pytest.raises(TableError, match="missing caption column"):
        datasets.Dataset.from_dict({"id": ["x"], "path": ["a.mp4"]}).save_to_disk(str(tmp_path / "bad"))
        list(iter_videos(tmp_path / "bad"))
