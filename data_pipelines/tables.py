"""Streaming readers for the project's tables (DESIGN.md, Formats).

Tables are read in batches of plain dicts, never whole into RAM: a memory of hundreds of
millions of rows streams through the same code as ShapeWorld's 50,000. Relative paths inside a
table (``path`` of a video, ``image`` of a memory row) are resolved against the table's folder.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds


class TableError(ValueError):
    """A table is missing, of an unknown format, or lacks a required column."""


TABLE_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")


def _table_files(path: Path) -> list[Path]:
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


def iter_table(path: str | Path, batch_size: int = 4096, columns: list[str] | None = None) -> Iterator[list[dict]]:
    """Yield batches (lists of row dicts) from a Parquet / JSONL / CSV table or folder of them."""
    path = Path(path)
    for f in _table_files(path):
        if f.suffix == ".parquet":
            dataset = ds.dataset(f, format="parquet")
            missing = [c for c in columns or [] if c not in dataset.schema.names]
            if missing:
                raise TableError(f"{f}: missing column(s) {missing}; has {dataset.schema.names}")
            for rb in dataset.to_batches(columns=columns, batch_size=batch_size):
                yield rb.to_pylist()
        elif f.suffix == ".csv":
            reader = pacsv.open_csv(f, read_options=pacsv.ReadOptions(block_size=1 << 22))
            for rb in reader:
                tbl = pa.Table.from_batches([rb])
                missing = [c for c in columns or [] if c not in tbl.column_names]
                if missing:
                    raise TableError(f"{f}: missing column(s) {missing}; has {tbl.column_names}")
                rows = tbl.to_pylist()
                for i in range(0, len(rows), batch_size):
                    yield rows[i : i + batch_size]
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


def resolve(base: Path, ref: str | None) -> str | None:
    """Resolve a path stored in a table relative to the table's folder."""
    if ref is None or ref == "":
        return None
    p = Path(ref)
    return str(p if p.is_absolute() else (base / p))


def table_dir(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_dir() else path.parent
