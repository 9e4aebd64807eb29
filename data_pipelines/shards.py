"""The prompt-shard format (docs/formats.md): one place that writes, reads and decodes it.

VIMI's stage-1 pretraining pairs every video with the top-K (image, caption) pairs that BM25
retrieves for its caption (Fang et al. 2024, Sec. 3.1). `data_pipelines.build_shards` writes
those pairs next to the video as WebDataset tars; training reads them back with this module.

One sample = consecutive tar members sharing a key (``{key}.{ext}``):

=============  ==============================================================================
``mp4``        the source video's bytes, as is (a folder of frames is encoded losslessly)
``txt``        the video caption, UTF-8
``json``       ``{"id", "caption", "source", "fps", "frames", "size": [height, width],
               "context": [{"id", "caption", "score", "rank"}, ...],
               "attributes": {source row columns other than id/caption/path/references}}``
``ctx{i}.jpg`` context image i (i < number of contexts; rank order, best first)
``ctx{i}.txt`` context caption i
``ref{i}.png`` subject reference image i, when the source row has ``references``
=============  ==============================================================================

The source row's attributes sit under ``attributes`` rather than at the top level because
source columns collide with ours (ShapeWorld's ``size`` is "small"/"large", ours is the
frame size). Keys use ``[A-Za-z0-9_-]`` only: WebDataset splits a member name at its first
dot, so a dot in a key would corrupt the sample. ``{row:09d}_{id}`` keeps keys unique even
when the source table repeats an id.

Shards are written with ``base.tar.AtomicTarWriter`` (``writer.add(encode_sample(s))``) and read
with ``base.tar.iter_samples`` (or the training stream), whose grouping rule is WebDataset's.
Only safe decoders are used (PIL, PyAV through video_io, json, UTF-8); never decode these shards
with ``webdataset``'s ``.decode()`` defaults, which unpickle ``.pyd``/``.pickle`` members.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

FORMAT_NAME = "vimi-prompt-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".tar"
_SHARD_RE = re.compile(r"^shard-(\d{6,})\.tar$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_ID_CHARS = 64


class ShardFormatError(ValueError):
    """A shard member or sample does not follow the prompt-shard format."""


class ImageDataError(ValueError):
    """Image bytes that PIL cannot decode (truncated, not an image)."""


# ---------------------------------------------------------------------------- names


def shard_name(index: int) -> str:
    """Global shard index -> file name; the index is what decides which worker owns it."""
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    return f"{SHARD_PREFIX}{index:06d}{SHARD_SUFFIX}"


def shard_index(name: str) -> int | None:
    """File name -> global shard index, or None for anything that is not a finished shard."""
    m = _SHARD_RE.match(Path(name).name)
    return int(m.group(1)) if m else None


def list_shards(folder: str | Path) -> list[Path]:
    """Finished shards of an output folder in index order (temp files are never listed)."""
    folder = Path(folder)
    found = [(shard_index(p.name), p) for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    return [p for i, p in sorted((i, p) for i, p in found if i is not None)]


def sample_key(row: int, video_id: str) -> str:
    """Unique, WebDataset-safe key for the video at table row ``row``."""
    safe = _UNSAFE.sub("_", str(video_id)).strip("_")[:_MAX_ID_CHARS]
    if safe != str(video_id):
        # Sanitising can map two ids to one string; a short hash of the original keeps them apart.
        safe = f"{safe}_{hashlib.sha1(str(video_id).encode('utf-8')).hexdigest()[:8]}".lstrip("_")
    return f"{row:09d}_{safe}"


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ShardFormatError(f"{folder}: no {MANIFEST_NAME} (not a prompt-shard folder, or never finished)")
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------- images


def to_jpeg(data: bytes, quality: int = 95) -> bytes:
    """Context image bytes -> JPEG bytes. JPEG input is passed through untouched (after a check)."""
    img = _open_image(data)
    if img.format == "JPEG":
        return data
    # 4:4:4 chroma: ShapeWorld's flat colours and hard edges bleed under 4:2:0 subsampling.
    return _encode(img, "JPEG", quality=quality, subsampling=0)


def to_png(data: bytes) -> bytes:
    """Reference image bytes -> PNG bytes (PNG input passed through after a check)."""
    img = _open_image(data)
    return data if img.format == "PNG" else _encode(img, "PNG")


def _open_image(data: bytes) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises several unrelated types for bad data
        raise ImageDataError(f"undecodable image ({type(e).__name__}: {e})") from None
    return img


def _encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


# ---------------------------------------------------------------------------- writing


@dataclass
class ContextEntry:
    """One retrieved in-context pair as stored in a sample."""

    id: str
    caption: str
    score: float
    rank: int  # 0-based position in the retriever's ranking for this query, before filtering
    image: bytes  # JPEG


@dataclass
class ShardSample:
    """Everything `encode_sample` needs to write one sample."""

    key: str
    video_id: str
    caption: str
    source: str
    mp4: bytes
    fps: float
    frames: int
    size: tuple[int, int]  # (height, width)
    contexts: list[ContextEntry] = field(default_factory=list)
    references: list[bytes] = field(default_factory=list)  # PNG
    attributes: dict[str, Any] = field(default_factory=dict)


def sample_meta(s: ShardSample) -> dict:
    return {
        "id": s.video_id,
        "caption": s.caption,
        "source": s.source,
        "fps": s.fps,
        "frames": s.frames,
        "size": [s.size[0], s.size[1]],
        "context": [{"id": c.id, "caption": c.caption, "score": c.score, "rank": c.rank} for c in s.contexts],
        "attributes": s.attributes,
    }


def encode_sample(s: ShardSample) -> list[tuple[str, bytes]]:
    """Sample -> ordered (member name, bytes) list; the order is fixed so tars are reproducible."""
    if _UNSAFE.search(s.key):
        raise ShardFormatError(f"unsafe sample key {s.key!r}")
    meta = json.dumps(sample_meta(s), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    members = [("json", meta.encode("utf-8")), ("mp4", s.mp4), ("txt", s.caption.encode("utf-8"))]
    for i, c in enumerate(s.contexts):
        members += [(f"ctx{i}.jpg", c.image), (f"ctx{i}.txt", c.caption.encode("utf-8"))]
    members += [(f"ref{i}.png", r) for i, r in enumerate(s.references)]
    return [(f"{s.key}.{ext}", data) for ext, data in members]


def decode_mp4(data: bytes, **read_kwargs: Any) -> np.ndarray:
    """mp4 bytes -> uint8 (T, H, W, 3), decoded in memory by video_io.read_video."""
    from data_pipelines.video_io import read_video  # PyAV; imported late so format-only users skip it

    return read_video(data, **read_kwargs)


@dataclass
class ContextPair:
    """A decoded in-context (image, caption) pair."""

    id: str
    caption: str
    score: float
    rank: int
    image: Image.Image  # RGB


@dataclass
class PromptSample:
    """A decoded sample, ready for prompt building (vimi.mllm) and the diffusion loss."""

    key: str
    id: str
    caption: str
    meta: dict  # the sample's json
    video: np.ndarray | bytes  # uint8 (T, H, W, 3), or the mp4 bytes when decode_video=False
    contexts: list[ContextPair]
    references: list[Image.Image]  # RGB subject references (empty for most sources)


def decode_sample(raw: dict[str, Any], decode_video: bool = True) -> PromptSample:
    """Raw sample (WebDataset's dict of bytes) -> `PromptSample`, with safe decoders only.

    Members other than the format's (e.g. a hostile ``.pyd``) are ignored, never decoded.
    """
    for need in ("json", "mp4", "txt"):
        if need not in raw:
            raise ShardFormatError(f"sample {raw.get('__key__')!r} lacks its .{need} member")
    meta = json.loads(raw["json"].decode("utf-8"))
    contexts = []
    for i, c in enumerate(meta.get("context", [])):
        img_key = f"ctx{i}.jpg"
        if img_key not in raw:
            raise ShardFormatError(f"sample {raw.get('__key__')!r}: json lists context {i} but {img_key} is missing")
        contexts.append(
            ContextPair(id=c["id"], caption=c["caption"], score=float(c["score"]), rank=int(c["rank"]),
                        image=_open_image(raw[img_key]).convert("RGB"))
        )
    refs = []
    while f"ref{len(refs)}.png" in raw:
        refs.append(_open_image(raw[f"ref{len(refs)}.png"]).convert("RGB"))
    video: np.ndarray | bytes = decode_mp4(raw["mp4"]) if decode_video else raw["mp4"]
    return PromptSample(key=raw.get("__key__", ""), id=meta["id"], caption=raw["txt"].decode("utf-8"),
                        meta=meta, video=video, contexts=contexts, references=refs)
