"""Atomic writes: a reader sees the old file (or folder) or the new one, never half of one.

Everything is written under a temporary name beside its target, in the same folder so the final
``os.replace`` / ``os.rename`` stays on one file system and is atomic, then moved into place. A
temporary name is ``.<name>.tmp-<pid>-<random>`` for files and ``<name>.tmp-<pid>-<random>`` for
folders: the pid lets a later run tell a dead writer's leftovers (``remove_stale``) from a live
writer's, the random part keeps two writers in one process apart.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"


def temp_name(path: str | os.PathLike, hidden: bool = True) -> Path:
    """A fresh temporary sibling of ``path`` (hidden for files, so globs over a folder skip it)."""
    path = Path(path)
    return path.with_name(f"{'.' if hidden else ''}{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale(path: str | os.PathLike, hidden: bool = True) -> None:
    """Remove the temporary siblings of ``path`` whose writer process is gone."""
    path = Path(path)
    for stale in path.parent.glob(f"{'.' if hidden else ''}{path.name}{TMP_MARK}*"):
        try:
            pid = int(stale.name.rsplit(TMP_MARK, 1)[1].split("-")[0])
        except (IndexError, ValueError):
            continue
        if not _pid_alive(pid):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; renamed onto ``path`` on success,
    removed if the block raises (a crash mid-write leaves at most a hidden temporary file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


def make_temp_dir(out: str | os.PathLike) -> Path:
    """A fresh temporary folder beside ``out`` to build it in; dead builders' leftovers go first."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out, hidden=False)
    tmp = temp_name(out, hidden=False)
    tmp.mkdir()
    return tmp


def replace_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Move the finished folder ``tmp`` to ``out``, replacing what is there.

    A folder cannot be renamed over a non-empty one, so the old folder is renamed aside first and
    removed after; between the two renames ``out`` is briefly absent, never half written.
    """
    tmp, out = Path(tmp), Path(out)
    if out.exists():
        old = temp_name(out.with_name(out.name + ".old"), hidden=False)
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
    return out


@contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder to fill; it replaces ``out`` on success and is removed if
    the block raises."""
    tmp = make_temp_dir(out)
    try:
        yield tmp
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
