"""Write a ShapeWorld dataset folder (layout: docs/formats.md; world: docs/shapeworld.md).

    OUT/videos/{id}.mp4, OUT/videos.parquet (+ .jsonl)     training videos (lossless H.264)
    OUT/memory/{id}.png, OUT/memory.parquet (+ .jsonl)     image-text memory
    OUT/references/{Name}_{j}.png                          subject reference pictures
    OUT/videos/l{i}.mp4, OUT/references/looks/l{i}.png     made-up subjects (--looks): videos.parquet rows
    OUT/memory/n{i}_{j}.png, OUT/made_up_memory.parquet    after the others, and their memory pictures in a
                                                           table of their own (docs/shapeworld.md)
    OUT/eval/{split}.jsonl, eval/gt/{id}.npy, eval/cond/   eval inputs and exact ground truth
    OUT/world.json                                         what was generated (written last)

Items are rendered and encoded by a process pool in chunks; the tables and world.json are
written only after every file they name exists (each to a temporary name, then renamed), so a
killed run never leaves a table pointing at missing files. Paths inside a table are relative to
the table's folder (`data_pipelines.tables.resolve`): eval records name `gt/...`, `cond/...` and
`../references/...`.
"""
from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from base.config import to_dict
from base.io import atomic_path, write_json_atomic
from data_pipelines.video_io import write_video

from . import sampling, spec
from .captions import memory_caption, subject_prompt, video_caption
from .render import ClipParams, ShapeWorldError, render_clip, render_image
from .world import (
    EVAL_SPLITS,
    SUBJECT_NAMES,
    VERSION,
    WorldConfig,
    eval_params,
    is_novel,
    look_params,
    memory_params,
    reference_params,
    train_video_params,
)

CHUNK = 250  # items per pool task: large enough to amortise pickling, small enough for a smooth bar
MARKER = ".shapeworld"  # written first: marks a folder this generator may clean and rewrite

_STR = pa.string()
_ATTRS = [("kind", _STR), ("scene", _STR), ("color", _STR), ("shape", _STR), ("size", _STR), ("subject", _STR),
          ("look", _STR)]
_CLIP = [
    ("motion", _STR),
    ("cx0", pa.float64()),
    ("cy0", pa.float64()),
    ("frames", pa.int64()),
    ("size_px", pa.int64()),
]
VIDEO_SCHEMA = pa.schema(
    [("id", _STR), ("caption", _STR), ("path", _STR), ("split", _STR)]
    + _ATTRS
    + _CLIP
    + [("references", pa.list_(_STR))]
)
MEMORY_SCHEMA = pa.schema(
    [("id", _STR), ("caption", _STR), ("image", _STR)]
    + _ATTRS
    + [("cx0", pa.float64()), ("cy0", pa.float64()), ("size_px", pa.int64())]
)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

# Item files are written in place (a rename each would double the file-system work of 70,000
# tiny files): the folders are emptied before a run and no table names a file until all exist.
def save_png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path, format="PNG", compress_level=1)


def save_npy(path: Path, frames: np.ndarray) -> None:
    np.save(path, frames, allow_pickle=False)


def _write_table(rows: list[dict], schema: pa.Schema, path: Path) -> None:
    """`path` (.parquet) and its JSONL twin, each written atomically: a reader never sees half a table."""
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    _write_jsonl(rows, path.with_suffix(".jsonl"))


def _write_jsonl(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------------------------------
# Rows: one function per part of the world, each writing its files and returning its table row
# ---------------------------------------------------------------------------------------------

def _attributes(p: ClipParams) -> dict:
    return {"kind": p.kind, "scene": p.scene, "color": p.color, "shape": p.shape, "size": p.size, "subject": p.subject,
            "look": p.look}


def _clip_fields(p: ClipParams) -> dict:
    return {"motion": p.motion, "cx0": p.cx0, "cy0": p.cy0, "frames": p.frames, "size_px": p.size_px}


def reference_paths(cfg: WorldConfig, name: str) -> list[str]:
    """A subject's reference pictures, relative to OUT."""
    return [f"references/{name}_{j}.png" for j in range(cfg.references_per_subject)]


def _video_row(cfg: WorldConfig, i: int) -> dict:
    p = train_video_params(cfg, i)
    refs = reference_paths(cfg, p.subject) if p.subject else []
    return _train_row(cfg, f"v{i:07d}", p, refs)


def _look_row(cfg: WorldConfig, i: int) -> dict:
    """A made-up subject's video, with its own reference picture (its memory pictures: _look_memory_rows)."""
    p, ref, _ = look_params(cfg, i)
    vid = f"l{i:07d}"
    save_png(cfg.out / "references" / "looks" / f"{vid}.png", render_image(ref))
    return _train_row(cfg, vid, p, [f"references/looks/{vid}.png"])


def _train_row(cfg: WorldConfig, vid: str, p: ClipParams, refs: list[str]) -> dict:
    write_video(cfg.out / "videos" / f"{vid}.mp4", render_clip(p), fps=spec.FPS, lossless=True)
    return {"id": vid, "caption": video_caption(p), "path": f"videos/{vid}.mp4", "split": "train",
            **_attributes(p), **_clip_fields(p), "references": refs}


def _memory_row(cfg: WorldConfig, i: int) -> dict:
    return _picture_row(cfg, f"m{i:07d}", memory_params(cfg, i))


def _look_memory_rows(cfg: WorldConfig, i: int) -> list[dict]:
    return [_picture_row(cfg, f"n{i:07d}_{j}", p) for j, p in enumerate(look_params(cfg, i)[2])]


def _picture_row(cfg: WorldConfig, mid: str, p: ClipParams) -> dict:
    save_png(cfg.out / "memory" / f"{mid}.png", render_image(p))
    return {"id": mid, "caption": memory_caption(p), "image": f"memory/{mid}.png", **_attributes(p),
            "cx0": p.cx0, "cy0": p.cy0, "size_px": p.size_px}


def _reference_row(cfg: WorldConfig, i: int) -> dict:
    name, j = SUBJECT_NAMES[i // cfg.references_per_subject], i % cfg.references_per_subject
    p = reference_params(cfg, name, j)
    save_png(cfg.out / "references" / f"{name}_{j}.png", render_image(p))
    return {"subject": name, "path": f"references/{name}_{j}.png"}


def _eval_row(cfg: WorldConfig, split: str, i: int) -> dict:
    p = eval_params(cfg, split, i)
    eid = f"{split}-{i:04d}"
    clip = render_clip(p)
    save_npy(cfg.out / "eval" / "gt" / f"{eid}.npy", clip)
    caption = video_caption(p)
    row = {"id": eid, "task": "t2v", "split": split, "prompt": caption, "caption": caption,
           **_attributes(p), **_clip_fields(p), "novel": is_novel(p), "images": [], "gt": f"gt/{eid}.npy"}
    if split == "prediction":
        row["task"], row["num_cond_frames"] = "prediction", cfg.num_cond_frames
        for f in range(cfg.num_cond_frames):
            save_png(cfg.out / "eval" / "cond" / f"{eid}_{f}.png", clip[f])
            row["images"].append(f"cond/{eid}_{f}.png")
    elif split == "subject":
        j = (i // len(SUBJECT_NAMES)) % cfg.references_per_subject  # rotate through the references
        row["task"], row["prompt"] = "subject", subject_prompt(p)
        row["images"] = [f"../{reference_paths(cfg, p.subject)[j]}"]
    return row


def _rows(cfg: WorldConfig, part: str, start: int, stop: int) -> list[dict]:
    """Rows of items start..stop-1 of one part ('videos', 'looks', 'memory', 'look pictures', 'references' or an
    eval split); a look's pictures are one item."""
    if part == "videos":
        return [_video_row(cfg, i) for i in range(start, stop)]
    if part == "looks":
        return [_look_row(cfg, i) for i in range(start, stop)]
    if part == "look pictures":
        return [row for i in range(start, stop) for row in _look_memory_rows(cfg, i)]
    if part == "memory":
        return [_memory_row(cfg, i) for i in range(start, stop)]
    if part == "references":
        return [_reference_row(cfg, i) for i in range(start, stop)]
    return [_eval_row(cfg, part, i) for i in range(start, stop)]


def _rows_job(job: tuple[WorldConfig, str, int, int]) -> tuple[str, int, list[dict]]:
    cfg, part, start, stop = job
    return part, stop - start, _rows(cfg, part, start, stop)


# ---------------------------------------------------------------------------------------------
# The whole world
# ---------------------------------------------------------------------------------------------

def _prepare_out(cfg: WorldConfig) -> None:
    """Make `out` ready: empty, or ours (marker) to clean, or replaced on --overwrite."""
    out = cfg.out
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        if not cfg.overwrite:
            raise ShapeWorldError(
                f"{out} is not empty and holds no ShapeWorld world; pass --overwrite to write into it"
            )
    if (out / "world.json").exists() and not cfg.overwrite:
        raise ShapeWorldError(f"{out} already holds a world; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    # Tables first: from here on no table exists that could point at a file being replaced.
    for name in ("world.json", "videos.parquet", "videos.jsonl", "memory.parquet", "memory.jsonl",
                 "made_up_memory.parquet", "made_up_memory.jsonl"):
        (out / name).unlink(missing_ok=True)
    for folder in ("videos", "memory", "references", "eval"):
        shutil.rmtree(out / folder, ignore_errors=True)
    for folder in ("videos", "memory", "references/looks", "eval/gt", "eval/cond"):
        (out / folder).mkdir(parents=True, exist_ok=True)


def _jobs(cfg: WorldConfig) -> Iterator[tuple[WorldConfig, str, int, int]]:
    counts = {"references": len(SUBJECT_NAMES) * cfg.references_per_subject, "videos": cfg.videos,
              "looks": cfg.looks, "memory": cfg.memory, "look pictures": cfg.looks}
    counts |= {split: cfg.eval_per_split for split in EVAL_SPLITS}
    for part, n in counts.items():
        for start in range(0, n, CHUNK):
            yield cfg, part, start, min(n, start + CHUNK)


def generate_world(cfg: WorldConfig) -> dict:
    """Render and write a whole world; returns the contents of world.json."""
    _prepare_out(cfg)
    jobs = list(_jobs(cfg))
    rows: dict[str, list[dict]] = {}
    t0 = time.perf_counter()
    bar = tqdm(total=sum(stop - start for _, _, start, stop in jobs), desc="shapeworld", unit="item")
    with bar:
        if cfg.workers == 1:
            results = map(_rows_job, jobs)
            for part, n, part_rows in results:
                rows.setdefault(part, []).extend(part_rows)
                bar.update(n)
        else:
            # forkserver, not fork: the caller may hold threads (torch, tqdm) that fork would copy mid-lock.
            with ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
                # map keeps job order, so tables come out in index order whatever the scheduling.
                for part, n, part_rows in pool.map(_rows_job, jobs):
                    rows.setdefault(part, []).extend(part_rows)
                    bar.update(n)
    out = cfg.out
    _write_table(rows.get("videos", []) + rows.get("looks", []), VIDEO_SCHEMA, out / "videos.parquet")
    _write_table(rows.get("memory", []), MEMORY_SCHEMA, out / "memory.parquet")
    _write_table(rows.get("look pictures", []), MEMORY_SCHEMA, out / "made_up_memory.parquet")
    for split in EVAL_SPLITS:
        _write_jsonl(rows.get(split, []), out / "eval" / f"{split}.jsonl")
    world = {
        "version": VERSION,
        "seed": cfg.seed,
        "size": cfg.size,
        "frames": cfg.frames,
        "fps": spec.FPS,
        "counts": {
            "videos": cfg.videos,
            "looks": cfg.looks,
            "memory": cfg.memory,
            "look_pictures": cfg.looks * cfg.look_pictures,   # made_up_memory.parquet
            "references": len(rows.get("references", [])),
            "eval": {split: cfg.eval_per_split for split in EVAL_SPLITS},
        },
        # Motions whose trajectory fits T frames of this canvas (all of them at the default 8 x 32 px).
        "object_motions": sorted(
            {m for m, _ in sampling.object_choices(cfg.frames, cfg.size)}, key=list(spec.MOTIONS).index
        ),
        "subject_motions": list(sampling.subject_motions(cfg.frames, cfg.size)),
        "novel_subjects": sorted(spec.NOVEL_SUBJECTS),
        "novel_compositions": [" ".join(cs) for cs in sorted(spec.NOVEL_COMPOSITIONS)],
        "references": {name: reference_paths(cfg, name) for name in SUBJECT_NAMES},
        "config": {k: v for k, v in to_dict(cfg).items() if k not in ("out", "workers", "overwrite")},
    }
    write_json_atomic(out / "world.json", world)
    world["seconds"] = time.perf_counter() - t0  # returned, not stored: world.json depends on the seed only
    return world
