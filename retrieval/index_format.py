"""Index folders: the versioned ``index.json``, atomic creation, and the completeness check.

An index is built inside ``<OUT>.tmp-<pid>-<rand>`` beside ``OUT`` (``base.io.make_temp_dir``) and
renamed to ``OUT`` only after every file is closed and ``index.json`` (written last) lists them with their sizes. So a
build killed at any point leaves either the previous index or a temp folder that ``open_index``
refuses (no ``index.json``, or files that do not match it); the next build removes temp folders
whose builder process is gone.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

from base.io import replace_dir
from base.tar import expand_shards

FORMAT = "vimi-retrieval-index"
FORMAT_VERSION = 1
INDEX_JSON = "index.json"


class IndexFormatError(ValueError):
    """The folder is not a complete index of a format version this code reads."""


class IndexBuildError(ValueError):
    """The memory cannot be indexed (empty, duplicate ids, ...)."""


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def source_fingerprint(memory: str | os.PathLike) -> dict:
    """Identify the memory an index was built from: its files' names, sizes and mtimes.

    Cheap at any scale (no content hashing); enough to tell that a memory changed since.
    """
    path = os.fspath(memory)
    if os.path.isdir(path):
        files = sorted(str(p) for p in Path(path).rglob("*") if p.is_file())
    elif os.path.exists(path):
        files = [path]
    else:  # a glob / brace pattern of tar shards
        files = expand_shards(path)
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        name = os.path.relpath(f, path) if os.path.isdir(path) else os.path.basename(f)
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"path": os.path.abspath(path), "files": len(files), "sha256": h.hexdigest()}


def finalize(tmp: Path, out: Path, meta: dict, overwrite: bool) -> Path:
    """Write ``index.json`` (with the file manifest) last, then move ``tmp`` into place."""
    tmp, out = Path(tmp), Path(out)
    files = {}
    for p in sorted(tmp.rglob("*")):
        if p.is_file():
            files[str(p.relative_to(tmp))] = p.stat().st_size
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "created": now_iso(), "files": files}
    with open(tmp / INDEX_JSON, "w") as fh:
        json.dump(meta, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    if out.exists() and not overwrite:
        raise IndexBuildError(f"{out} exists; pass --overwrite to replace it")
    return replace_dir(tmp, out)


def read_meta(path: str | os.PathLike) -> dict:
    """``index.json`` of a complete index, or ``IndexFormatError`` saying what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise IndexFormatError(f"{path}: not an index folder")
    meta_path = path / INDEX_JSON
    if not meta_path.is_file():
        raise IndexFormatError(f"{path}: no {INDEX_JSON}; not an index, or a build that did not finish")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexFormatError(f"{meta_path}: unreadable ({e})") from None
    if meta.get("format") != FORMAT:
        raise IndexFormatError(f"{meta_path}: not a {FORMAT} (format={meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(f"{meta_path}: format version {meta.get('format_version')} "
                               f"(this code reads version {FORMAT_VERSION}); rebuild the index")
    for name, size in meta.get("files", {}).items():
        f = path / name
        if not f.is_file() or f.stat().st_size != size:
            raise IndexFormatError(f"{path}: {name} is missing or has the wrong size; the index is incomplete")
    return meta
