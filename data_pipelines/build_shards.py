"""Build retrieval-augmented prompt shards (VIMI stage 1 data; docs/formats.md).

    python -m data_pipelines.build_shards --videos TABLE (--index INDEX | --retriever URL) \
        --out DIR [-k 4] [--shard-size 1000] [--worker-rank r --num-workers n] [--seed 0]

For every video of the table: its caption is the BM25 query (VIMI Sec. 3.1); the top k + extra
hits are fetched in batches, the video's own item and exact-duplicate captions are dropped, ties
are broken by a per-sample seeded shuffle, and the first K hits whose images load become the
sample's context (see data_pipelines/contexts.py). The sample is written in the format of
data_pipelines/shards.py.

Work split and restarts:
- Shard i holds table rows [i * shard_size, (i + 1) * shard_size) and belongs to worker
  ``i % num_workers``: any number of independent workers cover the table with no overlap and no
  gap, and the file name (``shard-{i:06d}.tar``) encodes the global index.
- A shard is written to a temp name and renamed when complete, after its stats file
  (``stats/shard-{i:06d}.json``); a re-run skips shards whose tar exists. An error (a dead
  retrieval service, say) removes the temp file: no half shard is ever visible.
- Bad inputs are skipped and counted, never fatal: unreadable videos (by
  video_io's kind: missing, empty, corrupt, truncated), empty captions, missing subject
  references. Hits without a loadable image are passed over (counted). A sample that ends with
  fewer than K contexts is kept and counted as ``short_context`` (training handles a variable
  number of pairs), unless it has fewer than ``--min-contexts``, then it is skipped.
- ``manifest.json`` sums the stats of all finished shards; every worker rewrites it when done,
  so after the last one it covers the whole folder (``complete`` says whether it does).
- Same inputs, settings and seed give byte-identical shards.
"""
from __future__ import annotations

import argparse
import functools
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from base.config import from_dict
from base.io import write_json_atomic
from base.rng import sample_rng
from base.tar import AtomicTarWriter
from data_pipelines import shards as fmt
from data_pipelines.contexts import HitImages, candidate_hits, pick_contexts, shuffle_ties
from data_pipelines.ingest import iter_videos
from data_pipelines.tables import resolve, table_dir
from data_pipelines.video_io import VideoDecodeError, probe_video, read_video, write_video

# Columns that the sample stores elsewhere (or that only make sense on the building machine).
_NOT_ATTRIBUTES = {"id", "caption", "path", "references"}


@dataclass
class ShardBuildConfig:
    videos: str = ""                 # video table (Parquet/JSONL/CSV, or WebVid-style CSV)
    out: str = ""                    # output folder for shard-*.tar, stats/, manifest.json
    index: str | None = None         # in-process retrieval: index folder from data_pipelines.build_index
    retriever: str | None = None     # or a retrieval service URL (python -m retrieval.serve)
    k: int = 4                       # in-context pairs per video (VIMI uses K retrieved pairs)
    shard_size: int = 1000           # table rows per shard (a shard holds at most this many samples)
    worker_rank: int = 0             # this worker builds shards i with i % num_workers == worker_rank
    num_workers: int = 1
    seed: int = 0                    # seeds the per-sample tie-breaking among equal BM25 scores
    batch_size: int = 256            # videos per retrieval request
    extra_hits: int = 8              # retrieve k + extra_hits so that filtering still leaves k
    min_contexts: int = 0            # skip (and count) samples left with fewer contexts than this
    verify: str = "decode"           # "decode": full decode catches truncated files; "header": probe only
    source: str | None = None        # dataset name stored in each sample (default: the table's folder name)
    timeout: float = 30.0            # retrieval service: seconds per attempt
    retries: int = 3                 # retrieval service: retries with exponential backoff
    progress: bool = True

    def check(self) -> None:
        if not self.videos or not self.out:
            raise ValueError("--videos and --out are required")
        if (self.index is None) == (self.retriever is None):
            raise ValueError("give exactly one of --index INDEX or --retriever URL")
        if self.k < 0 or self.extra_hits < 0 or self.shard_size < 1 or self.batch_size < 1:
            raise ValueError("k and extra_hits must be >= 0, shard_size and batch_size >= 1")
        if not 0 <= self.worker_rank < self.num_workers:
            raise ValueError(f"worker rank {self.worker_rank} out of range for {self.num_workers} worker(s)")
        if self.verify not in ("decode", "header"):
            raise ValueError(f"verify must be 'decode' or 'header', got {self.verify!r}")


# Settings that decide shard content: a re-run into the same folder must match them.
_CONTENT_KEYS = ("k", "shard_size", "seed", "extra_hits", "min_contexts", "verify", "source")


class SkipSample(Exception):
    """A video that cannot become a sample; ``reason`` goes into the manifest."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# ---------------------------------------------------------------------------- retriever


def open_retriever(cfg: ShardBuildConfig) -> Any:
    """In-process index or HTTP client; both have ``search(queries, k)``."""
    if cfg.retriever is not None:
        from retrieval import RetrieverClient

        client = RetrieverClient(cfg.retriever, timeout=cfg.timeout, retries=cfg.retries, batch_size=cfg.batch_size)
        client.health()  # fail before any shard is started when the URL is dead
        return client
    from retrieval import open_index

    return open_index(cfg.index)


# ---------------------------------------------------------------------------- one sample


def _json_safe(v: Any) -> Any:
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return v if v == v and abs(v) != float("inf") else None  # NaN/inf are not JSON
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if hasattr(v, "item"):  # numpy scalar
        return _json_safe(v.item())
    if isinstance(v, (bytes, bytearray)):
        return None
    return str(v)


def load_video(path: str | None, verify: str) -> tuple[bytes, float, int, tuple[int, int]]:
    """-> (mp4 bytes, fps, frames, (height, width)); raises SkipSample for unreadable videos."""
    if not path:
        raise SkipSample("video_missing", "the table row has no path")
    try:
        info = probe_video(path)
        p = Path(path)
        if p.is_dir():  # a folder of frames: the sample stores it as a lossless mp4
            frames = read_video(p)
            with tempfile.TemporaryDirectory() as tmp:
                data = write_video(Path(tmp) / "frames.mp4", frames, fps=info.fps, lossless=True).read_bytes()
            return data, info.fps, len(frames), (info.height, info.width)
        data = p.read_bytes()
        count = len(read_video(p)) if verify == "decode" else info.frames
    except VideoDecodeError as e:
        raise SkipSample(f"video_{e.kind}", str(e)) from None
    except OSError as e:
        raise SkipSample("video_missing", str(e)) from None
    return data, info.fps, count, (info.height, info.width)


def load_references(refs: Any, base: Path) -> list[bytes]:
    """Subject reference images as PNG bytes; raises SkipSample when one is missing or unreadable."""
    out = []
    for ref in refs or []:
        png = _reference_png(resolve(base, ref))
        if isinstance(png, str):
            raise SkipSample("missing_reference", f"{ref}: {png}")
        out.append(png)
    return out


@functools.lru_cache(maxsize=4096)
def _reference_png(path: str) -> bytes | str:
    """PNG bytes of a reference, or the error text (a source reuses a few references many times)."""
    try:
        return fmt.to_png(Path(path).read_bytes())
    except (OSError, fmt.ImageDataError) as e:
        return f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------------------- one shard


def retrieve_candidates(
    batch: list[tuple[int, dict]], captions: list[str], retriever: Any, cfg: ShardBuildConfig, dropped: Counter
) -> list[list[tuple[int, Any]] | None]:
    """One batched search for a batch of videos -> per video its ordered context candidates.

    None for a video with an empty caption (nothing to query). k + extra_hits are asked for so
    that dropping the video's own item, duplicate captions and imageless hits still leaves k.
    """
    live = [i for i, c in enumerate(captions) if c]
    hits = (
        retriever.search([captions[i] for i in live], cfg.k + cfg.extra_hits) if cfg.k and live else [[] for _ in live]
    )
    out: list[list[tuple[int, Any]] | None] = [None] * len(batch)
    for i, h in zip(live, hits):
        row_no, row = batch[i]
        rng = sample_rng(cfg.seed, fmt.sample_key(row_no, row["id"]))
        out[i] = shuffle_ties(candidate_hits(row["id"], captions[i], h, dropped), rng)
    return out


def build_shard(
    index: int,
    rows: list[tuple[int, dict]],
    cfg: ShardBuildConfig,
    retriever: Any,
    images: HitImages,
    base: Path,
    source: str,
    bar: tqdm,
) -> dict:
    """Write shard ``index`` from its (table row, row dict) pairs; return its stats."""
    out = Path(cfg.out)
    skipped: Counter = Counter()
    dropped: Counter = Counter()
    short = written = 0
    with AtomicTarWriter(out / fmt.shard_name(index)) as writer:
        for start in range(0, len(rows), cfg.batch_size):
            batch = rows[start : start + cfg.batch_size]
            captions = [str(r.get("caption") or "").strip() for _, r in batch]
            cands = retrieve_candidates(batch, captions, retriever, cfg, dropped)
            images.prefetch([hit for c in cands if c is not None for _, hit in c[: cfg.k]])
            for (row_no, row), caption, c in zip(batch, captions, cands):
                try:
                    if c is None:
                        raise SkipSample("empty_caption")
                    sample = _make_sample(row_no, row, caption, c, cfg, images, base, source, dropped)
                except SkipSample as e:
                    skipped[e.reason] += 1
                    continue
                short += len(sample.contexts) < cfg.k
                writer.add(fmt.encode_sample(sample))
                written += 1
            bar.update(len(batch))
        stats = {
            "shard": fmt.shard_name(index),
            "rows": len(rows),
            "samples": written,
            "skipped": dict(sorted(skipped.items())),
            "short_context": short,
            "context_dropped": dict(sorted(dropped.items())),
        }
        # Stats first, tar rename second: a finished tar always has its stats beside it.
        write_json_atomic(out / "stats" / fmt.shard_name(index).replace(fmt.SHARD_SUFFIX, ".json"), stats)
        writer.commit()
    return stats


def _make_sample(row_no, row, caption, cands, cfg, images, base, source, dropped) -> fmt.ShardSample:
    contexts = pick_contexts(cands, cfg.k, images, dropped)
    if len(contexts) < cfg.min_contexts:
        raise SkipSample("too_few_contexts", f"{len(contexts)} < {cfg.min_contexts}")
    references = load_references(row.get("references"), base)
    mp4, fps, frames, size = load_video(row.get("path"), cfg.verify)
    attributes = {k: _json_safe(v) for k, v in row.items() if k not in _NOT_ATTRIBUTES}
    return fmt.ShardSample(
        key=fmt.sample_key(row_no, row["id"]), video_id=str(row["id"]), caption=caption, source=source,
        mp4=mp4, fps=fps, frames=frames, size=size, contexts=contexts, references=references, attributes=attributes,
    )


# ---------------------------------------------------------------------------- the whole job


def _iter_rows(videos: str, batch_size: int) -> Iterator[tuple[int, dict]]:
    row_no = 0
    for batch in iter_videos(videos, batch_size=batch_size):
        for row in batch:
            yield row_no, row
            row_no += 1


def _iter_owned_shards(cfg: ShardBuildConfig, total: list[int]) -> Iterator[tuple[int, list[tuple[int, dict]]]]:
    """(shard index, rows) for this worker's unfinished shards; ``total[0]`` ends as the row count.

    Every worker streams the whole table (only the cheap columns are read per row) so that shard
    boundaries, and with them the split between workers, need no coordination.
    """
    out = Path(cfg.out)
    current, wanted, rows = -1, False, []
    for row_no, row in _iter_rows(cfg.videos, 4096):
        i = row_no // cfg.shard_size
        if i != current:
            if rows:
                yield current, rows
            current, rows = i, []
            wanted = i % cfg.num_workers == cfg.worker_rank and not (out / fmt.shard_name(i)).exists()
        if wanted:
            rows.append((row_no, row))
        total[0] = row_no + 1
    if rows:
        yield current, rows


def _check_settings(out: Path, settings: dict) -> None:
    path = out / "build.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise ValueError(f"{out} holds shards built with other settings {diff} (old, new); use a new --out")
    else:
        write_json_atomic(path, settings)


def write_manifest(out: Path, settings: dict, num_shards: int) -> dict:
    """Sum the stats of every finished shard in ``out`` into manifest.json."""
    shards, skipped, dropped = [], Counter(), Counter()
    for tar in fmt.list_shards(out):
        stats_path = out / "stats" / tar.name.replace(fmt.SHARD_SUFFIX, ".json")
        if stats_path.is_file():
            s = json.loads(stats_path.read_text(encoding="utf-8"))
            shards.append(s)
            skipped.update(s["skipped"])
            dropped.update(s["context_dropped"])
    manifest = {
        "format": fmt.FORMAT_NAME,
        "version": fmt.FORMAT_VERSION,
        **settings,
        "num_shards": num_shards,
        "finished_shards": len(shards),
        "complete": len(shards) == num_shards,
        "rows": sum(s["rows"] for s in shards),
        "samples_written": sum(s["samples"] for s in shards),
        "samples_skipped": sum(skipped.values()),
        "skipped": dict(sorted(skipped.items())),
        "short_context": sum(s["short_context"] for s in shards),
        "context_dropped": dict(sorted(dropped.items())),
        "shards": shards,
    }
    write_json_atomic(out / fmt.MANIFEST_NAME, manifest)
    return manifest


def build_shards(cfg: ShardBuildConfig) -> dict:
    """Build this worker's shards; return the folder's manifest (also written to manifest.json)."""
    cfg.check()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    source = cfg.source or table_dir(cfg.videos).resolve().name
    settings = {**{k: getattr(cfg, k) for k in _CONTENT_KEYS}, "source": source}
    _check_settings(out, settings)
    for stale in out.glob(".shard-*.tar.tmp-*"):  # left by a killed run of this worker
        i = fmt.shard_index(stale.name[1:].split(".tmp-")[0])
        if i is not None and i % cfg.num_workers == cfg.worker_rank:
            stale.unlink(missing_ok=True)
    retriever = open_retriever(cfg)
    images = HitImages(retriever)
    base = table_dir(cfg.videos)
    total = [0]
    t0 = time.perf_counter()
    written = 0
    with tqdm(desc=f"shards (worker {cfg.worker_rank}/{cfg.num_workers})", unit="sample",
              disable=not cfg.progress, file=sys.stderr, smoothing=0.1) as bar:
        for i, rows in _iter_owned_shards(cfg, total):
            written += build_shard(i, rows, cfg, retriever, images, base, source, bar)["samples"]
            bar.set_postfix(shard=i, written=written)
    num_shards = -(-total[0] // cfg.shard_size)
    manifest = write_manifest(out, settings, num_shards)
    dt = time.perf_counter() - t0
    if cfg.progress:
        print(f"worker {cfg.worker_rank}/{cfg.num_workers}: wrote {written} samples in {dt:.1f} s "
              f"({written / max(dt, 1e-9):.0f} samples/s); folder: {manifest['finished_shards']}/{num_shards} shards, "
              f"{manifest['samples_written']} samples, {manifest['samples_skipped']} skipped {manifest['skipped']}",
              file=sys.stderr)
    return manifest


def main(argv: list[str] | None = None) -> int:
    d = ShardBuildConfig()
    p = argparse.ArgumentParser(prog="python -m data_pipelines.build_shards", description=__doc__.split("\n")[0])
    p.add_argument("--videos", required=True, help="video table: id, caption, path (+ attributes, references)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--index", help="index folder (in-process retrieval)")
    src.add_argument("--retriever", help="retrieval service URL, e.g. http://127.0.0.1:8088")
    p.add_argument("--out", required=True)
    p.add_argument("-k", "--k", type=int, default=d.k, help="in-context pairs per video")
    p.add_argument("--shard-size", type=int, default=d.shard_size)
    p.add_argument("--worker-rank", type=int, default=d.worker_rank)
    p.add_argument("--num-workers", type=int, default=d.num_workers)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--extra-hits", type=int, default=d.extra_hits)
    p.add_argument("--min-contexts", type=int, default=d.min_contexts)
    p.add_argument("--verify", choices=("decode", "header"), default=d.verify)
    p.add_argument("--source", default=d.source)
    p.add_argument("--timeout", type=float, default=d.timeout)
    p.add_argument("--retries", type=int, default=d.retries)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    cfg = from_dict(ShardBuildConfig, vars(args))
    # A scheduler's SIGTERM unwinds like an exception, so the shard in progress removes its temp file.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        build_shards(cfg)
    except Exception as e:  # a clear one-line error for the CLI; the API raises
        from retrieval import RetrieverError

        if isinstance(e, (ValueError, RetrieverError, FileNotFoundError)):
            print(f"build_shards: error: {e}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    from base.cli_guard import guarded

    sys.exit(guarded(main, prog="python -m data_pipelines.build_shards"))
