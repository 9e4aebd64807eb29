"""Before training: is every shard folder complete, and is every local shard a tar at all?

A shard build that was killed leaves a folder with some of its tars, ``build.json`` (written
first) and no ``manifest.json`` (written when a worker finishes); training on it would silently
see a fraction of the data. Such a folder, or one whose manifest says it is not complete, is
refused unless ``data.allow_incomplete`` is set (then it is a warning). A folder without either
file was not written by ``data_pipelines.build_shards``: nothing to check against, so a warning.
A local shard that is not a tar (random bytes, a truncated copy) is refused by name here, rather
than becoming an empty stream and a puzzling "no samples" much later.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from base import tar
from data_pipelines.shards import MANIFEST_NAME as MANIFEST
from vimi.training.data import DataError

log = logging.getLogger("vimi.training")
BUILD = "build.json"   # written first by data_pipelines.build_shards


def folder_problem(folder: Path) -> str | None:
    """Why ``folder`` does not hold a finished shard build, or None when its manifest says complete."""
    tars = len([f for f in folder.glob("*.tar") if not f.name.startswith(".")])
    manifest = folder / MANIFEST
    if not manifest.is_file():
        if (folder / BUILD).is_file():
            return (f"{folder}: the shard build started ({BUILD}) but never finished (no {MANIFEST}); "
                    f"{tars} tar(s) there")
        return None
    try:
        m = json.loads(manifest.read_text(encoding="utf-8"))
        finished, total, complete = int(m["finished_shards"]), int(m["num_shards"]), bool(m["complete"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{manifest}: unreadable manifest ({type(e).__name__}: {e})"
    if not complete or finished < total or tars < total:
        return (f"{manifest}: {finished} of {total} shards finished, {tars} tar(s) present (complete: "
                f"{str(complete).lower()})")
    return None


def check_shards(specs: Sequence[str], urls: Sequence[str], allow_incomplete: bool) -> None:
    """Refuse incomplete shard folders (warn with ``allow_incomplete``) and local non-tar shards."""
    for spec in specs:
        folder = Path(spec).expanduser()
        if spec.startswith(tar.REMOTE_PREFIXES) or not folder.is_dir():
            continue
        problem = folder_problem(folder)
        if problem is None and not (folder / MANIFEST).is_file():
            log.warning("data.shards: %s has no %s (not built by data_pipelines.build_shards?): cannot check that "
                        "it holds every shard", folder, MANIFEST)
        elif problem is not None and allow_incomplete:
            log.warning("data.shards: %s; training on what is there (data.allow_incomplete=true)", problem)
        elif problem is not None:
            raise DataError(f"data.shards: {problem}. Finish the build (re-run the same build_shards command) "
                            "or pass --set data.allow_incomplete=true to train on the shards that exist")
    for url in urls:
        p = Path(url)
        if not url.startswith(tar.REMOTE_PREFIXES) and p.is_file() and not tar.is_tar_file(p):
            raise DataError(f"data.shards: {p} is not a tar file (damaged, truncated, or not a prompt shard); "
                            "rebuild it with python -m data_pipelines.build_shards or remove it")
