"""Map real-world dataset formats onto the two tables of docs/formats.md, streaming in batches.

- Image-text memory -> rows ``{"id": str, "caption": str, "image": bytes | str | None}`` from
  (a) our memory table (Parquet / JSONL / CSV, or a ``datasets`` save_to_disk folder, with id,
      caption, image path or bytes),
  (b) img2dataset Parquet (``key``, ``caption``, ``jpg`` bytes, or only ``url``; LAION's
      upper-case ``SAMPLE_ID``/``TEXT``/``URL`` too), Hugging Face ``{"bytes", "path"}`` image cells,
  (c) img2dataset WebDataset shards (``{key}.jpg`` + ``{key}.txt`` and/or ``{key}.json``) given as
      a .tar, a folder of .tar files, or a glob / brace pattern (``shards/{00000..00009}.tar``).
- Video dataset -> rows ``{"id", "caption", "path", **extra columns}`` from our table or a
  WebVid CSV (``videoid, name, page_dir, ...``: path ``<videos_root>/<page_dir>/<videoid>.mp4``).

Nothing is read whole: tables stream through pyarrow batches, tar shards through a small
streaming tar reader (``base.tar``, one sample in memory at a time). Image paths come back absolute (resolved against
the table's folder); an image that is only a URL comes back as ``None`` (nothing is downloaded).

Rows are never dropped here. Empty captions, rows without an image / video path and (when asked)
duplicate ids pass through and are counted in an optional :class:`IngestStats`, so each caller
decides: the retrieval index may keep text-only rows, the shard builder may skip them.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from base import tar
from base.images import URL
from data_pipelines.tables import TableError, is_datasets_folder, iter_columns, table_columns, table_dir, table_files

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# Candidate column names, in order of preference; matched case-insensitively.
MEMORY_COLUMNS = {
    "id": ("id", "key", "__key__", "sample_id", "uid"),
    "caption": ("caption", "text", "txt", "prompt"),
    "image": ("image", "jpg", "jpeg", "png", "webp", "image_bytes", "image_path"),
    "url": ("url", "image_url"),
}
VIDEO_COLUMNS = {
    "id": ("id", "videoid", "video_id", "key"),
    "caption": ("caption", "name", "text"),
    "path": ("path", "video_path"),
    "page_dir": ("page_dir",),  # WebVid; stays in the row as an extra column
}


@dataclass
class IngestStats:
    """What a caller may want to act on, counted while rows stream by (nothing is dropped).

    ``track_ids=True`` also counts repeated ids; it keeps every id in a set, so leave it off for
    memories of hundreds of millions of rows.
    """

    track_ids: bool = False
    rows: int = 0
    empty_caption: int = 0
    no_media: int = 0  # memory rows without a local image / video rows without a path
    duplicate_ids: int = 0
    examples: dict[str, str] = field(default_factory=dict)  # problem -> first id seen
    _seen: set = field(default_factory=set, repr=False)

    def add(self, row: dict, media_key: str) -> None:
        self.rows += 1
        if not row["caption"]:
            self.empty_caption += 1
            self.examples.setdefault("empty_caption", row["id"])
        if row.get(media_key) is None:
            self.no_media += 1
            self.examples.setdefault("no_media", row["id"])
        if self.track_ids:
            if row["id"] in self._seen:
                self.duplicate_ids += 1
                self.examples.setdefault("duplicate_id", row["id"])
            else:
                self._seen.add(row["id"])

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("rows", "empty_caption", "no_media", "duplicate_ids")}
        return {**out, "examples": dict(self.examples)}


# --------------------------------------------------------------------------- helpers


def _rebatch(chunks: Iterable[list[dict]], batch_size: int) -> Iterator[list[dict]]:
    """Uniform batches across files, row groups and CSV blocks: all full except the last."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    buf: list[dict] = []
    for chunk in chunks:
        if not buf and len(chunk) == batch_size:
            yield chunk  # the common case: the reader already cut a full batch
            continue
        buf.extend(chunk)
        while len(buf) >= batch_size:
            yield buf[:batch_size]
            buf = buf[batch_size:]
    if buf:
        yield buf


def _map_columns(
    source: Path, names: list[str], wanted: dict[str, tuple[str, ...]], override: dict[str, str] | None
) -> dict[str, str | None]:
    """Pick the source column for each role: an explicit override, else the first candidate present."""
    lower = {n.lower(): n for n in names}
    out: dict[str, str | None] = {}
    for role, candidates in wanted.items():
        if override and role in override:
            if override[role] not in names:
                raise TableError(f"{source}: missing column {override[role]!r} (given for {role!r}); has {names}")
            out[role] = override[role]
            continue
        out[role] = next((n for c in candidates if (n := c if c in names else lower.get(c)) is not None), None)
    return out


def _text(value: Any) -> str:
    if type(value) is str:
        return value.strip()
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return str(value).strip()


def _local_path(ref: str, base: str) -> str:
    """``ref`` made absolute against ``base`` (itself absolute and normalised).

    Plain string work, not pathlib: this runs once per row of a memory of 10^8+ rows.
    """
    p = ref if ref.startswith("/") else f"{base}/{ref}"
    return os.path.normpath(p) if ("/." in p or "//" in p) else p


def _image_ref(value: Any, base: str) -> bytes | str | None:
    """A table cell -> bytes, an absolute path, or None (empty, URL-only)."""
    if type(value) is str:
        ref = value.strip()
        return None if not ref or ("://" in ref and URL.match(ref)) else _local_path(ref, base)
    if isinstance(value, dict):  # Hugging Face Image feature: {"bytes": ..., "path": ...}
        return _image_ref(value.get("bytes") or value.get("path"), base)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value) or None
    return None if value is None else _image_ref(str(value), base)


# --------------------------------------------------------------------------- WebDataset tars


def iter_tar_samples(shards: str | os.PathLike) -> Iterator[dict]:
    """WebDataset samples ``{"__key__", "__url__", ext: bytes, ...}`` of img2dataset-style tars
    (plain, .gz, .bz2 or .xz), streamed by the one tar layer (``base.tar``). A missing, damaged or
    cut shard raises TableError after the samples before the damage."""
    try:
        yield from tar.iter_samples(shards)
    except tar.TarError as e:
        raise TableError(str(e)) from None


def _tar_row(sample: dict) -> dict:
    where = f"{sample['__url__']}: sample {sample['__key__']!r}"
    meta: dict = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TableError(f"{where}: .json is not valid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise TableError(f"{where}: .json must be an object")
    if "txt" in sample:
        caption = _text(sample["txt"])
    elif "caption" in meta or "text" in meta:
        caption = _text(meta.get("caption", meta.get("text")))
    else:
        exts = sorted(k for k in sample if not k.startswith("__"))
        raise TableError(f"{where}: missing caption (no .txt, no 'caption' in .json); has {exts}")
    image = next((sample[e] for e in IMAGE_EXTS if sample.get(e)), None)
    key = meta.get("key")
    return {"id": str(key) if key not in (None, "") else sample["__key__"], "caption": caption, "image": image}


# --------------------------------------------------------------------------- memory


def _is_shard_spec(path: str | os.PathLike) -> bool:
    text, p = str(path), Path(path)
    if p.is_dir():  # img2dataset folders hold .tar plus metadata .parquet: the tars have the images
        return any(q.name.endswith(tar.TAR_SUFFIXES) for q in p.iterdir())
    if p.exists():
        return p.name.endswith(tar.TAR_SUFFIXES)
    return any(ch in text for ch in "*?[{")


def _table_batches(
    path: Path,
    batch_size: int,
    wanted: dict[str, tuple[str, ...]],
    columns: dict[str, str] | None,
    project: tuple[str, ...] | None,
) -> Iterator[tuple[Path, dict[str, str | None], dict[str, list], list[str]]]:
    """Column-major batches of each table file, with that file's column mapping (formats may
    differ per file) and its ids as strings.

    ``project``: roles whose columns are read from Parquet (None: all columns, for extras).
    Raises TableError naming the file when the id or caption column is missing or an id is empty.
    """
    for f in table_files(path):
        names = table_columns(f)
        mapping = _map_columns(f, names, wanted, columns)
        for role in ("id", "caption"):
            if mapping[role] is None:
                raise TableError(f"{f}: missing {role} column (one of {list(wanted[role])}); has {names}")
        _check_media(f, names, mapping)
        required = [mapping["id"], mapping["caption"]]
        proj = required
        if f.suffix == ".parquet" or is_datasets_folder(f):
            # Read only the mapped columns: an img2dataset Parquet also carries exif, hashes, sizes.
            proj = [c for c in dict.fromkeys(mapping[r] for r in project) if c] if project else None
        for cols in iter_columns(f, batch_size, proj, string_columns=required):
            ids = [v if type(v) is str else ("" if v is None else str(v)) for v in cols[mapping["id"]]]
            if "" in ids:
                raise TableError(f"{f}: a row has an empty id (column {mapping['id']!r})")
            yield f, mapping, cols, ids


def _check_media(f: Path, names: list[str], mapping: dict[str, str | None]) -> None:
    if "image" in mapping and mapping["image"] is None and mapping["url"] is None:
        raise TableError(
            f"{f}: missing image column (one of {list(MEMORY_COLUMNS['image'])}, or a url column); has {names}"
        )
    if "path" in mapping and mapping["path"] is None and mapping["page_dir"] is None:
        raise TableError(f"{f}: missing path column ('path', or WebVid's 'videoid' + 'page_dir'); has {names}")


def iter_memory(
    path: str | os.PathLike,
    batch_size: int = 4096,
    *,
    columns: dict[str, str] | None = None,
    stats: IngestStats | None = None,
) -> Iterator[list[dict]]:
    """Stream an image-text memory as batches of ``{"id", "caption", "image"}``.

    ``image`` is encoded bytes, an absolute path, or None (row without a local image). ``path``:
    a table file or folder, or img2dataset tar shards (.tar, folder of .tar, glob/brace
    pattern). ``columns`` overrides the mapping, e.g. ``{"id": "SAMPLE_ID", "image": "URL"}``.
    A table without an id or caption column, or without any image/url column, raises TableError.
    """
    if _is_shard_spec(path):
        chunks: Iterable[list[dict]] = ([_tar_row(s)] for s in iter_tar_samples(path))
    else:
        chunks = _memory_table_chunks(Path(path), batch_size, columns)
    for batch in _rebatch(chunks, batch_size):
        if stats is not None:
            for row in batch:
                stats.add(row, "image")
        yield batch


def _memory_table_chunks(path: Path, batch_size: int, columns: dict[str, str] | None) -> Iterator[list[dict]]:
    for f, m, cols, ids in _table_batches(path, batch_size, MEMORY_COLUMNS, columns, ("id", "caption", "image")):
        base = os.path.abspath(table_dir(f))
        captions = [_text(c) for c in cols[m["caption"]]]
        cells = cols.get(m["image"]) if m["image"] else None  # a JSONL batch may lack the key
        images = [_image_ref(v, base) for v in cells] if cells else [None] * len(ids)
        yield [{"id": i, "caption": c, "image": im} for i, c, im in zip(ids, captions, images)]


# --------------------------------------------------------------------------- videos


def iter_videos(
    path: str | os.PathLike,
    batch_size: int = 4096,
    *,
    videos_root: str | os.PathLike | None = None,
    columns: dict[str, str] | None = None,
    stats: IngestStats | None = None,
) -> Iterator[list[dict]]:
    """Stream a video dataset as batches of ``{"id", "caption", "path", **extra}``.

    Our table: ``id, caption, path`` (relative paths resolved against ``videos_root``, default the
    table's folder). WebVid CSV: ``videoid`` -> id, ``name`` -> caption, path
    ``<videos_root>/<page_dir>/<videoid>.mp4`` (or its ``path`` column when it has one). All other
    columns pass through as extras. ``path`` is absolute, or None when a row has none.
    """
    path = Path(path)
    root = Path(videos_root) if videos_root is not None else None
    for batch in _rebatch(_video_chunks(path, batch_size, root, columns), batch_size):
        if stats is not None:
            for row in batch:
                stats.add(row, "path")
        yield batch


def _video_chunks(
    path: Path, batch_size: int, root: Path | None, columns: dict[str, str] | None
) -> Iterator[list[dict]]:
    for f, m, cols, ids in _table_batches(path, batch_size, VIDEO_COLUMNS, columns, None):
        base = os.path.abspath(root if root is not None else table_dir(f))
        none = [None] * len(ids)
        if m["path"] is not None:
            refs = cols.get(m["path"], none)
            paths = [None if ref in (None, "") else _local_path(str(ref), base) for ref in refs]
        else:  # WebVid layout: <videos_root>/<page_dir>/<videoid>.mp4
            pages = cols.get(m["page_dir"], none)
            paths = [_local_path(f"{page or ''}/{vid}.mp4", base) for page, vid in zip(pages, ids)]
        captions = [_text(c) for c in cols[m["caption"]]]
        mapped = {m["id"], m["caption"], m["path"], "id", "caption", "path"}
        extra = [c for c in cols if c not in mapped]
        yield [
            {"id": vid, "caption": caption, "path": video, **{c: cols[c][i] for c in extra}}
            for i, (vid, caption, video) in enumerate(zip(ids, captions, paths))
        ]
