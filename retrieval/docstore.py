"""The index's own copy of the memory rows it can return: id, caption and image reference.

Layout inside an index folder:

- ``docs.arrow``: an uncompressed Arrow IPC file, columns ``id``, ``caption``, ``image``
  (string or null), written batch by batch while the memory streams in and memory-mapped when
  searching, so captions are never held twice in RAM and a hit's row is a cheap ``take``.
  Row ``r`` of this file is document ``r`` of every backend.
- ``images.bin`` + ``images.offsets.npy``: image bytes of memory rows that carried bytes rather
  than a path (Parquet memories, img2dataset tars). Their ``image`` column holds
  ``images.bin#j``, and hits carry ``<index>/images.bin#j``.

Image references handed out in hits (``Hit.image``) are therefore always one of:
an absolute path to an image file (memory rows that named a file), ``<index dir>/images.bin#j``
(bytes copied into the index), or ``None`` (the memory row had no image; shard builders skip
such hits). ``read_image(ref)`` turns either kind into bytes.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from base.errors import MissingImageError

IMAGES_BIN = "images.bin"
IMAGES_OFFSETS = "images.offsets.npy"
DOCS_FILE = "docs.arrow"

SCHEMA = pa.schema([("id", pa.string()), ("caption", pa.string()), ("image", pa.string())])


class DocStoreWriter:
    """Append rows batch by batch; ``close()`` finishes the files."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._sink = pa.OSFile(str(self.folder / DOCS_FILE), "wb")
        self._writer = pa.ipc.new_file(self._sink, SCHEMA)
        self._images = open(self.folder / IMAGES_BIN, "wb")
        self._offsets = [0]
        self.rows = 0
        self.rows_without_image = 0
        self.rows_image_missing = 0  # an image path that names no file (yet): kept, but worth knowing

    def add(self, ids: list[str], captions: list[str], images: list[object]) -> None:
        refs: list[str | None] = []
        for img in images:
            if img is None or (isinstance(img, (str, bytes)) and len(img) == 0):
                refs.append(None)
                self.rows_without_image += 1
            elif isinstance(img, (bytes, bytearray, memoryview)):
                refs.append(f"{IMAGES_BIN}#{len(self._offsets) - 1}")
                self._images.write(img)
                self._offsets.append(self._offsets[-1] + len(img))
            else:
                refs.append(os.fspath(img))
                if not os.path.isfile(refs[-1]):
                    self.rows_image_missing += 1
        batch = pa.record_batch([pa.array(ids, pa.string()), pa.array(captions, pa.string()),
                                 pa.array(refs, pa.string())], schema=SCHEMA)
        self._writer.write_batch(batch)
        self.rows += len(ids)

    def close(self) -> None:
        self._writer.close()
        self._sink.close()
        self._images.close()
        np.save(self.folder / IMAGES_OFFSETS, np.asarray(self._offsets, dtype=np.int64))


class DocStore:
    """Read side: memory-mapped, random access by row."""

    def __init__(self, folder: Path):
        self.folder = Path(folder).resolve()
        self._table = pa.ipc.open_file(pa.memory_map(str(self.folder / DOCS_FILE), "r")).read_all()
        self._batches = self._table.to_batches()  # zero-copy views of the file's record batches
        self._starts = np.cumsum([0] + [b.num_rows for b in self._batches])
        self.captions = self._table.column("caption")

    def __len__(self) -> int:
        return self._table.num_rows

    def rows(self, rows: np.ndarray) -> tuple[list[str], list[str], list[str | None]]:
        """(ids, captions, image refs) of the given rows; refs resolved as the module doc says."""
        rows = np.asarray(rows, dtype=np.int64)
        # take batch by batch: a take on the whole (chunked) table would first concatenate it
        which = np.searchsorted(self._starts, rows, side="right") - 1
        order = np.argsort(which, kind="stable")
        cols: list[list] = [[], [], []]
        bounds = np.flatnonzero(np.diff(which[order])) + 1
        for part in np.split(order, bounds) if rows.size else []:
            b = int(which[part[0]])
            got = self._batches[b].take(pa.array(rows[part] - self._starts[b]))
            for c in range(3):
                cols[c].extend(got.column(c).to_pylist())
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        ids, caps, imgs = ([col[i] for i in inverse.tolist()] for col in cols)
        prefix = IMAGES_BIN + "#"
        base = str(self.folder)
        imgs = [f"{base}/{r}" if r is not None and r.startswith(prefix) else r for r in imgs]
        return ids, caps, imgs

    def iter_captions(self, batch_size: int = 65536):
        """Captions in row order, in batches (for backends that rebuild from the store)."""
        for start in range(0, len(self), batch_size):
            yield self.captions.slice(start, batch_size).to_pylist()


_OFFSETS_CACHE: dict[str, np.ndarray] = {}


def read_image(ref: str | None) -> bytes:
    """Image bytes of a hit's ``image`` reference (a file path or ``<index>/images.bin#j``)."""
    if ref is None:
        raise MissingImageError("this memory row has no image")
    ref = os.fspath(ref)
    if os.path.isfile(ref):
        return Path(ref).read_bytes()
    head, sep, tail = ref.rpartition("#")
    if sep and head.endswith(IMAGES_BIN) and tail.isascii() and tail.isdigit() and os.path.isfile(head):
        offsets_path = os.path.join(os.path.dirname(head), IMAGES_OFFSETS)
        st = os.stat(offsets_path)
        key = f"{offsets_path}:{st.st_ino}:{st.st_mtime_ns}"  # a rebuilt index must not reuse old offsets
        offsets = _OFFSETS_CACHE.get(key)
        if offsets is None:
            offsets = _OFFSETS_CACHE[key] = np.load(offsets_path, mmap_mode="r", allow_pickle=False)
        j = int(tail)
        if j + 1 >= len(offsets):
            raise MissingImageError(f"{ref}: image {j} is not in {head}")
        start, end = int(offsets[j]), int(offsets[j + 1])
        with open(head, "rb") as fh:
            fh.seek(start)
            return fh.read(end - start)
    raise MissingImageError(f"image not found: {ref}")
