"""Streaming readers for the project's tables (docs/formats.md).

Tables are read in batches of plain dicts (``iter_table``) or columns (``iter_columns``), never
whole into RAM: a memory of hundreds of millions of rows streams through the same code as
ShapeWorld's 50,000. A table is a Parquet / JSONL / CSV file, a folder of them, or a Hugging Face
``datasets`` folder written by ``save_to_disk`` (memory-mapped Arrow, read batch by batch; image
cells come as ``{"bytes", "path"}``). Relative paths inside a table (``path`` of a video,
``image`` of a memory row) are resolved against the table's folder.

The mapping of real formats onto the memory / video tables (img2dataset Parquet and tar shards,
WebVid CSVs) lives one level up, in ``data_pipelines/ingest.py``, which reads through this module.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds


class TableError(ValueError):
    """A table is missing, of an unknown format, or lacks a required column."""


TABLE_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")


def is_datasets_folder(path: Path) -> bool:
    """A ``datasets`` ``save_to_disk`` folder: a Dataset (state.json) or a DatasetDict (dataset_dict.json)."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def _open_datasets_folder(path: Path):
    """The folder's Dataset in Arrow format (a DatasetDict must hold one split, or a "train" one)."""
    import datasets

    try:
        hf = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as e:
        raise TableError(f"{path}: unreadable datasets folder ({e})") from None
    if isinstance(hf, datasets.DatasetDict):
        if len(hf) != 1 and "train" not in hf:
            raise TableError(f"{path}: a DatasetDict with splits {sorted(hf)}; point at one split's folder")
        hf = hf["train"] if "train" in hf else next(iter(hf.values()))
    return hf.with_format("arrow")  # no decoding: image cells stay {"bytes", "path"}


def _table_files(path: Path) -> list[Path]:
    if is_datasets_folder(path):
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in TABLE_SUFFIXES)
        if not files:
            raise TableError(f"{path}: folder holds no .parquet/.jsonl/.csv table")
        # One format per folder: parquet wins when a JSONL twin sits beside it.
        kinds = {p.suffix for p in files}
        for pref in TABLE_SUFFIXES:
            if pref in kinds:
                return [p for p in files if p.suffix == pref]
    if not path.exists():
        raise TableError(f"table not found: {path}")
    if path.suffix not in TABLE_SUFFIXES:
        raise TableError(f"{path}: unknown table format (expected one of {TABLE_SUFFIXES})")
    return [path]


def table_files(path: str | Path) -> list[Path]:
    """The table files a path stands for: itself, or a folder's files of one format (Parquet first)."""
    return _table_files(Path(path))


def iter_table(
    path: str | Path, batch_size: int = 4096, columns: list[str] | None = None, *, string_columns: Sequence[str] = ()
) -> Iterator[list[dict]]:
    """Yield batches (lists of row dicts) from a Parquet / JSONL / CSV table or folder of them.

    ``string_columns``: CSV columns read as text, not type-inferred (ids such as ``000123`` would
    otherwise lose their zeros; a caption column that is empty in the first block would be null).
    """
    for f in _table_files(Path(path)):
        for batch in _file_batches(f, batch_size, columns, string_columns):
            yield batch if isinstance(batch, list) else batch.to_pylist()


def iter_columns(
    path: str | Path, batch_size: int = 4096, columns: list[str] | None = None, *, string_columns: Sequence[str] = ()
) -> Iterator[dict[str, list]]:
    """Like :func:`iter_table`, column-major: ``{column: [values]}`` per batch.

    Several times faster than row dicts on Parquet/CSV (no per-row dict from Arrow). ``columns``
    projects Parquet and is checked (not projected) for CSV / JSONL; a JSONL row lacking a key
    that others in its batch have gives None there.
    """
    for f in _table_files(Path(path)):
        for batch in _file_batches(f, batch_size, columns, string_columns):
            if isinstance(batch, list):  # JSONL: every key seen in the batch, as CSV gives every column
                names = list(dict.fromkeys(k for row in batch for k in row))
                yield {c: [row.get(c) for row in batch] for c in names}
            else:
                yield {name: col.to_pylist() for name, col in zip(batch.schema.names, batch.columns)}


def _file_batches(
    f: Path, batch_size: int, columns: list[str] | None, string_columns: Sequence[str]
) -> Iterator[pa.RecordBatch | list[dict]]:
    """Batches of one table file; a damaged file is a TableError naming it (not Arrow's bare ArrowInvalid)."""
    with _reading(f):
        yield from _raw_file_batches(f, batch_size, columns, string_columns)


@contextlib.contextmanager
def _reading(f: Path) -> Iterator[None]:
    """Turn Arrow / decoding / OS errors while reading ``f`` into one TableError naming the file."""
    try:
        yield
    except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
        kind = "datasets" if is_datasets_folder(f) else {".parquet": "Parquet", ".csv": "CSV"}.get(f.suffix, "JSONL")
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TableError(f"{f}: not a readable {kind} table, damaged or truncated? ({first})") from None


def _raw_file_batches(
    f: Path, batch_size: int, columns: list[str] | None, string_columns: Sequence[str]
) -> Iterator[pa.RecordBatch | list[dict]]:
    """Batches of one table file: Arrow record batches (Parquet, CSV, datasets) or lists of dicts (JSONL)."""
    if is_datasets_folder(f):
        hf = _open_datasets_folder(f)
        missing = [c for c in columns or [] if c not in hf.column_names]
        if missing:
            raise TableError(f"{f}: missing column(s) {missing}; has {hf.column_names}")
        if columns:
            hf = hf.select_columns(columns)
        for table in hf.iter(batch_size=batch_size):
            yield from table.to_batches()
    elif f.suffix == ".parquet":
        dataset = ds.dataset(f, format="parquet")
        missing = [c for c in columns or [] if c not in dataset.schema.names]
        if missing:
            raise TableError(f"{f}: missing column(s) {missing}; has {dataset.schema.names}")
        yield from dataset.to_batches(columns=columns, batch_size=batch_size)
    elif f.suffix == ".csv":
        reader = pacsv.open_csv(
            f,
            read_options=pacsv.ReadOptions(block_size=1 << 22),
            # Captions may hold quoted newlines; without this a block boundary can split a row.
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in string_columns}),
        )
        missing = [c for c in columns or [] if c not in reader.schema.names]
        if missing:
            raise TableError(f"{f}: missing column(s) {missing}; has {reader.schema.names}")
        for rb in reader:
            for i in range(0, rb.num_rows, batch_size):
                yield rb.slice(i, batch_size)
    else:  # JSONL, one object per line, read line by line
        batch: list[dict] = []
        with open(f, encoding="utf-8", errors="strict") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TableError(f"{f}:{lineno}: not valid JSON ({e.msg})") from None
                if columns:
                    missing = [c for c in columns if c not in row]
                    if missing:
                        raise TableError(f"{f}:{lineno}: missing column(s) {missing}")
                batch.append(row)
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch


def table_columns(path: str | Path) -> list[str]:
    """Column names of a table file (first file of a folder), reading only its header/first row."""
    f = _table_files(Path(path))[0]
    with _reading(f):
        return _header_columns(f)


def _header_columns(f: Path) -> list[str]:
    if is_datasets_folder(f):
        return list(_open_datasets_folder(f).column_names)
    if f.suffix == ".parquet":
        return list(ds.dataset(f, format="parquet").schema.names)
    if f.suffix == ".csv":
        reader = pacsv.open_csv(f, parse_options=pacsv.ParseOptions(newlines_in_values=True))
        return list(reader.schema.names)
    with open(f, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    return list(json.loads(line))
                except json.JSONDecodeError as e:
                    raise TableError(f"{f}:{lineno}: not valid JSON ({e.msg})") from None
    return []


def resolve(base: Path, ref: str | None) -> str | None:
    """Resolve a path stored in a table relative to the table's folder."""
    if ref is None or ref == "":
        return None
    p = Path(ref)
    return str(p if p.is_absolute() else (base / p))


def table_dir(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_dir() else path.parent

