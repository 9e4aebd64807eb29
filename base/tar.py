"""The project's one tar layer: every shard and img2dataset tar is listed, read and written here.

Samples follow WebDataset's convention: the members of one sample are consecutive in the tar and
share a *key*, the member's path up to the first dot of its file name (``a/b/000123.ctx0.jpg`` ->
key ``a/b/000123``, extension ``ctx0.jpg``). ``split_key`` is that one rule; readers group by it,
writers must therefore keep dots out of keys.

Reading is a hand-written streaming parser rather than ``tarfile``: ``tarfile``'s pure-Python
header code managed ~3k img2dataset samples/s here, this ~25k/s. It also treats a stream that stops
where a header should start as damage (a complete tar ends with a zero block), so a cut shard is
never taken for a short one. Writing fixes every header field that could vary (mtime, owner,
mode), so the same samples give byte-identical tars, and commits by renaming (``base.io``).
"""
from __future__ import annotations

import bz2
import glob
import gzip
import lzma
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from base.io import temp_name

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
REMOTE_PREFIXES = ("pipe:", "http://", "https://")  # opened by webdataset's gopen, not listed here
BLOCK = 512  # tar header and padding unit
RECORD = 20 * BLOCK  # archives are padded to whole records, like GNU tar and Python's tarfile
_ZERO_BLOCK = bytes(BLOCK)


class TarError(ValueError):
    """No shard matches a spec, or a tar is damaged (bad header, cut member, no end block)."""


# ---------------------------------------------------------------------------- listing


def expand_shards(specs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard specs -> sorted, de-duplicated shard list.

    A spec is a tar file, a folder (its non-hidden ``.tar``/``.tar.gz`` files), a glob, a brace
    pattern (``s-{000..009}.tar``), or a remote WebDataset URL (``pipe:...``, ``http(s)://...``),
    which is brace-expanded and kept as is: it is checked when it is opened.
    """
    from braceexpand import braceexpand  # installed with webdataset

    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    if not specs:
        raise TarError("no shards given")
    out: list[str] = []
    for spec in map(os.fspath, specs):
        if spec.startswith(REMOTE_PREFIXES):
            out.extend(braceexpand(spec))
            continue
        found: list[str] = []
        for pattern in braceexpand(str(Path(spec).expanduser())):
            p = Path(pattern)
            if p.is_dir():
                found += [str(f) for f in p.iterdir() if _is_tar(f.name) and not f.name.startswith(".")]
            elif any(ch in pattern for ch in "*?["):
                found += [m for m in glob.glob(pattern) if _is_tar(m)]
            elif p.is_file():
                found.append(pattern)
            else:
                raise TarError(f"shard not found: {pattern}" + (f" (from {spec})" if pattern != spec else ""))
        if not found:
            raise TarError(f"{spec}: matches no shard (.tar) file")
        out.extend(found)
    return sorted(dict.fromkeys(out))


def _is_tar(name: str) -> bool:
    return name.endswith(TAR_SUFFIXES)


def split_key(name: str) -> tuple[str, str]:
    """Member name -> (sample key, extension): WebDataset's rule, the extension lower-cased."""
    folder, _, base = name.removeprefix("./").rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


# ---------------------------------------------------------------------------- reading


def _number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 (members of 8 GiB and more)
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_records(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):  # records are "<length> <key>=<value>\n"
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _decompressed(fh: IO[bytes]) -> IO[bytes]:
    """``fh`` itself, or a decompressing view of it (gzip, bzip2, xz) chosen by its magic bytes."""
    if not hasattr(fh, "peek"):  # a pipe from webdataset's gopen: plain tars only
        return fh
    magic = fh.peek(6)[:6]
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=fh)
    if magic[:3] == b"BZh":
        return bz2.BZ2File(fh)
    if magic[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(fh)
    return fh


def _checksum_ok(header: bytes) -> bool:
    """The header's checksum matches; it counts its own 8-byte field as spaces (8 * 32)."""
    try:
        return _number(header[148:156]) == sum(header) - sum(header[148:156]) + 256
    except ValueError:  # not octal digits: not a tar header at all
        return False


def is_tar_file(path: str | os.PathLike) -> bool:
    """Whether a local file starts as a tar (plain or compressed): an end block or a valid first header.

    A cheap check before training (random bytes, a non-tar renamed ``.tar``); damage further in is
    found when the shard is read.
    """
    try:
        with open(path, "rb") as fh:
            header = _decompressed(fh).read(BLOCK)
    except (OSError, EOFError, lzma.LZMAError):
        return False
    return len(header) == BLOCK and (header == _ZERO_BLOCK or _checksum_ok(header))


def iter_members(fh: IO[bytes]) -> Iterator[tuple[str, bytes]]:
    """``(name, data)`` of the regular files of a tar stream (ustar, GNU and pax headers)."""
    offset, long_name, pax = 0, None, {}
    while True:
        header = fh.read(BLOCK)
        if len(header) < BLOCK:
            raise TarError(f"ends at byte {offset + len(header)} without an end-of-archive block")
        if header == _ZERO_BLOCK:
            return
        if not _checksum_ok(header):
            raise TarError(f"bad header checksum at byte {offset}")
        kind = header[156:157]
        size = int(pax["size"]) if "size" in pax else _number(header[124:136])
        data, pad = fh.read(size), -size % BLOCK
        if len(data) < size or len(fh.read(pad)) < pad:
            raise TarError(f"member at byte {offset} is cut ({len(data)} of {size} bytes)")
        offset += BLOCK + size + pad
        if kind == b"L":  # GNU: the next member's long name
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        if kind == b"x":  # pax: the next member's path/size
            pax = _pax_records(data)
            continue
        if kind in (b"g", b"K"):  # pax global header, GNU long link name
            continue
        if kind in (b"0", b"\0", b"7"):  # regular files; directories and links are skipped
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if header[257:263] == b"ustar\0" and header[345]:
                name = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape") + "/" + name
            yield long_name or pax.get("path") or name, data
        long_name, pax = None, {}


def stream_samples(fh: IO[bytes], url: str) -> Iterator[dict[str, Any]]:
    """Samples ``{"__key__", "__url__", ext: bytes, ...}`` of one tar stream, one at a time.

    Members without an extension and hidden files are skipped (webdataset does the same). Damage
    raises ``TarError`` naming ``url``, after the samples before it.
    """
    sample: dict[str, Any] | None = None
    try:
        for name, data in iter_members(_decompressed(fh)):
            key, ext = split_key(name)
            if not ext or name.rpartition("/")[2].startswith("."):
                continue
            if sample is not None and sample["__key__"] != key:
                yield sample
                sample = None
            if sample is None:
                sample = {"__key__": key, "__url__": url}
            sample[ext] = data
    except (ValueError, OSError, EOFError, lzma.LZMAError) as e:
        raise TarError(f"{url}: damaged tar shard ({e})") from None
    if sample is not None:
        yield sample


def iter_samples(specs: str | os.PathLike | Sequence[str | os.PathLike]) -> Iterator[dict[str, Any]]:
    """Samples of every local shard ``specs`` expands to, streamed (one sample's bytes held)."""
    for shard in expand_shards(specs):
        with open(shard, "rb", buffering=1 << 20) as fh:
            yield from stream_samples(fh, shard)


# ---------------------------------------------------------------------------- writing


def ustar_header(name: str, size: int) -> bytes:
    """A POSIX ustar header for a regular file, every variable field fixed (mtime 0, root, 0644).

    By hand rather than with ``tarfile``: its per-member header code costs as much as the rest of
    sample writing, and here every field is fixed anyway. Names must stay under 100 bytes.
    """
    raw = name.encode("ascii")
    if len(raw) >= 100:
        raise TarError(f"member name {name!r} is too long for a ustar header")
    header = b"".join([
        raw.ljust(100, b"\0"),
        b"0000644\0", b"0000000\0", b"0000000\0",   # mode, uid, gid
        b"%011o\0" % size, b"00000000000\0",        # size, mtime
        b" " * 8,                                    # checksum, computed over these spaces
        b"0", b"\0" * 100,                           # regular file, no link
        b"ustar\x0000", b"\0" * 64,                  # POSIX magic + version, no user/group names
        b"\0" * 183,                                  # devmajor/minor (unused), prefix, padding
    ])
    return header[:148] + b"%06o\0 " % sum(header) + header[156:]


class AtomicTarWriter:
    """Writes one reproducible tar under a temporary name; ``commit`` renames it into place.

    The rename is the commit point: a tar with its final name is always complete, so a re-run may
    skip it, and a crash or an error (inside ``with``) leaves only a hidden temporary file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp = temp_name(self.path)
        self._file = open(self.tmp, "wb")
        self._size = 0

    def add(self, members: Iterable[tuple[str, bytes]]) -> None:
        """Append members ``(name, data)``; a sample's members must be added together."""
        for name, data in members:
            pad = -len(data) % BLOCK
            self._file.write(ustar_header(name, len(data)) + data + b"\0" * pad)
            self._size += BLOCK + len(data) + pad

    def commit(self) -> Path:
        end = self._size + 2 * BLOCK  # two zero blocks end the archive
        self._file.write(b"\0" * (2 * BLOCK + (-end % RECORD)))
        self._file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicTarWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

