"""Analytic ShapeWorld scores (docs/shapeworld.md, Scores): read a video back into words, compare with its prompt.

No learned metric: the background, object mask, colour, motion, shape and subject of a video are
measured directly from its pixels, so the renderer's own videos score 100% and noise scores 0.

Choices the spec leaves open (kept here, in one place):
- the background is the median border pixel over all frames;
- shape templates are placed so that *their own* area centroid sits on the mask centroid (this
  only moves the triangle, whose centroid lies 0.2 r below its centre), radii searched on a
  0.25-px grid; a shape's score is its best IoU averaged over the frames;
- a mask that fits no template well (best IoU < MIN_SHAPE_IOU), or that is empty in the first or
  last frame, is "no object": colour, shape, motion and subject are None (noise and blank videos);
- a missing or unreadable video counts as wrong on every attribute; PSNR is averaged over the
  prediction videos that could be read, and capped at PSNR_CAP dB for identical frames;
- beside the exact subject (shape, pattern colours), a graded reading: the share of the subject's two
  colours that the drawn object shows. Subject-driven papers report a similarity (DINO, CLIP-I) rather
  than an identity; this is ShapeWorld's analytic stand-in, and it does not enter all_correct.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from data_pipelines.shapeworld import spec
from data_pipelines.shapeworld.render import pixel_centres, shape_mask
from data_pipelines.video_io import VideoDecodeError, read_video

OBJECT_THRESHOLD = 40.0      # RGB distance from the background beyond which a pixel is object
MOVE_PX_PER_FRAME = 0.8      # centroid speed (32-px scale) that counts as translation
GROW_PX_PER_FRAME = 0.25     # sqrt(area) change per frame (32-px scale) that counts as growing/shrinking
RADIUS_MIN, RADIUS_MAX, RADIUS_STEP = 2.5, 10.0, 0.25  # template radii searched (32-px scale)
MIN_SHAPE_IOU = 0.5          # below this the mask is not an object
SUBJECT_MIN_SHARE = 0.10     # each of a subject's two colours covers more than this share of the mask
PSNR_CAP = 100.0             # dB reported for identical frames (JSON has no inf)

# A template's centroid relative to its centre, in units of r (only the triangle is off-centre:
# apex at -r, base at +0.8 r, centroid at two thirds of the height from the apex).
_CENTROID_OFFSET_Y = {shape: 0.0 for shape in spec.SHAPES} | {"triangle": 0.2}

_SCENE_NAMES = list(spec.SCENES)
_SCENE_RGB = np.array(list(spec.SCENES.values()), dtype=np.float64)   # (4, 3)
_COLOR_NAMES = list(spec.COLORS)
_COLOR_RGB = np.array(list(spec.COLORS.values()), dtype=np.float64)   # (9, 3)


class ScoreError(ValueError):
    """An input that cannot be analysed (wrong array shape or dtype) or an unreadable eval file."""


# ---------------------------------------------------------------------------------------------
# Analysis of one video
# ---------------------------------------------------------------------------------------------

def _nearest(rgb: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Index of the nearest table row for each RGB in `rgb` (..., 3)."""
    return np.argmin(((rgb[..., None, :] - table) ** 2).sum(-1), axis=-1)


def _scene_of(frames: np.ndarray) -> int:
    border = np.concatenate(
        [frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], axis=1
    ).reshape(-1, 3)                                                     # (N, 3)
    return int(_nearest(np.median(border, axis=0), _SCENE_RGB))


def _template_iou(shape: str, mask: np.ndarray, centroids: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """IoU of `mask` (T, H, W) with `shape` templates of radii (T, R) canvas px centred on centroids (T, 2)."""
    t, h, w = mask.shape
    # float32 is plenty for a fit (exact ties do not matter here) and halves the memory traffic.
    r = radii.astype(np.float32)[:, :, None, None]                        # (T, R, 1, 1)
    x = pixel_centres(w).astype(np.float32)[None, None, None, :]         # (1, 1, 1, W)
    y = pixel_centres(h).astype(np.float32)[None, None, :, None]         # (1, 1, H, 1)
    cx = centroids[:, 0, None, None, None].astype(np.float32)            # (T, 1, 1, 1)
    cy = centroids[:, 1, None, None, None].astype(np.float32)
    tmpl = shape_mask(shape, x, y, cx, cy - _CENTROID_OFFSET_Y[shape] * r, r)  # (T, R, H, W)
    tmpl = tmpl.reshape(t, -1, h * w).astype(np.float32)                 # (T, R, HW)
    m = mask.reshape(t, h * w, 1).astype(np.float32)                      # (T, HW, 1)
    inter = (tmpl @ m)[..., 0]                                            # (T, R)
    return inter / (tmpl.sum(-1) + m.sum((1, 2))[:, None] - inter)


def _shape_scores(mask: np.ndarray, centroids: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Best IoU over radii RADII_MIN..RADII_MAX of each shape template per frame, and that radius.

    mask (T, H, W) bool; centroids (T, 2) as (x, y) canvas pixels. Returns ((T, S), (T, S)) with
    radii at the 32-px scale. Coarse-to-fine: every RADIUS_STEP * 4, then every RADIUS_STEP
    around the best coarse radius (IoU is unimodal in r for a fixed centre).
    """
    t = len(mask)
    coarse = np.append(np.arange(RADIUS_MIN, RADIUS_MAX, 4 * RADIUS_STEP), RADIUS_MAX)  # (Rc,)
    fine_offsets = np.arange(-3, 4) * RADIUS_STEP                                        # (Rf,)
    ious, radii = [], []
    for shape in spec.SHAPES:
        iou = _template_iou(shape, mask, centroids, np.broadcast_to(coarse * scale, (t, len(coarse))))
        fine = np.clip(coarse[iou.argmax(1)][:, None] + fine_offsets, RADIUS_MIN, RADIUS_MAX)  # (T, Rf)
        iou = _template_iou(shape, mask, centroids, fine * scale)
        best = iou.argmax(1)                                                                 # (T,)
        ious.append(iou[np.arange(t), best])
        radii.append(fine[np.arange(t), best])
    return np.stack(ious, 1), np.stack(radii, 1)


def _motion_of(centroids: np.ndarray, areas: np.ndarray, scale: float) -> str:
    steps = len(areas) - 1
    if steps < 1:
        return "stays still"
    shift = (centroids[-1] - centroids[0]) / steps / scale                 # (2,) px/frame at 32-px scale
    axis = int(np.argmax(np.abs(shift)))
    if abs(shift[axis]) >= MOVE_PX_PER_FRAME:
        if axis == 0:
            return "moves right" if shift[0] > 0 else "moves left"
        return "moves down" if shift[1] > 0 else "moves up"
    growth = (math.sqrt(areas[-1]) - math.sqrt(areas[0])) / steps / scale
    if growth >= GROW_PX_PER_FRAME:
        return "grows"
    if growth <= -GROW_PX_PER_FRAME:
        return "shrinks"
    return "stays still"


def analyze(frames: np.ndarray) -> dict:
    """Read a video back into ShapeWorld words.

    frames: uint8 (T, H, W, 3). Returns {scene, object (bool), color, shape, motion, subject,
    colors (palette names over SUBJECT_MIN_SHARE of the mask, most frequent first), radius
    (32-px scale), shape_iou, velocity: the centroid's (dx, dy) per frame from the first frame to the
    last, 32-px scale}; the object fields are None when no object is found.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or 0 in frames.shape:
        raise ScoreError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    scale = frames.shape[2] / spec.BASE_SIZE
    scene = _scene_of(frames)
    out = {"scene": _SCENE_NAMES[scene], "object": False, "color": None, "shape": None, "motion": None,
           "subject": None, "colors": [], "radius": None, "shape_iou": 0.0, "velocity": None}

    pix = frames.astype(np.float64)
    mask = np.sqrt(((pix - _SCENE_RGB[scene]) ** 2).sum(-1)) > OBJECT_THRESHOLD  # (T, H, W)
    areas = mask.sum((1, 2))                                                     # (T,)
    if areas[0] == 0 or areas[-1] == 0:
        return out
    lit = areas > 0
    ys, xs = pixel_centres(frames.shape[1]), pixel_centres(frames.shape[2])
    cx = (mask.sum(1) * xs).sum(1)[lit] / areas[lit]
    cy = (mask.sum(2) * ys).sum(1)[lit] / areas[lit]
    centroids = np.stack([cx, cy], 1)                                            # (T_lit, 2)

    ious, radii = _shape_scores(mask[lit], centroids, scale)                     # (T_lit, S)
    mean_iou = ious.mean(0)                                                      # (S,)
    best = int(mean_iou.argmax())
    out["shape_iou"] = float(mean_iou[best])
    if mean_iou[best] < MIN_SHAPE_IOU:
        return out

    obj_pix = pix[mask]                                                          # (N, 3)
    nearest = _nearest(obj_pix, _COLOR_RGB)                                      # (N,)
    share = np.bincount(nearest, minlength=len(_COLOR_NAMES)) / len(nearest)
    order = [int(i) for i in np.argsort(-share, kind="stable") if share[i] > SUBJECT_MIN_SHARE]
    shape = spec.SHAPES[best]
    out.update(
        object=True,
        shape=shape,
        color=_COLOR_NAMES[int(_nearest(obj_pix.mean(0), _COLOR_RGB))],
        motion=_motion_of(centroids, areas[lit], scale),
        colors=[_COLOR_NAMES[i] for i in order],
        radius=float(radii[0, best]),
        velocity=[float(v) for v in (centroids[-1] - centroids[0]) / max(len(centroids) - 1, 1) / scale],
    )
    if len(order) >= 2:
        out["subject"] = spec.SUBJECT_BY_LOOK.get((shape, frozenset(out["colors"][:2])))
    return out


# ---------------------------------------------------------------------------------------------
# Scoring against a prompt
# ---------------------------------------------------------------------------------------------

ATTRIBUTE_ORDER = ("scene", "color", "shape", "motion", "subject", "all_correct")


def applicable_attributes(record: dict) -> tuple[str, ...]:
    """The attributes a record's video is judged on: object videos by scene/colour/shape/motion,
    subject videos by scene/motion/subject (the subject fixes shape and colours)."""
    if record.get("subject"):
        return ("scene", "motion", "subject")
    return ("scene", "color", "shape", "motion")


def psnr(frames: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB of uint8 videos of equal shape, capped at PSNR_CAP."""
    mse = float(np.mean((frames.astype(np.float64) - target.astype(np.float64)) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0**2 / mse))


def held_frame_psnr(gt: np.ndarray, k: int) -> float:
    """PSNR of repeating the last given frame over the continuation: the reading a predictor must beat.

    The mean over clips is high (30.6 dB on 50 default prediction clips), because every clip that
    stays still scores PSNR_CAP, so a split's PSNR says little without it beside.
    """
    return psnr(np.repeat(gt[k - 1:k], len(gt) - k, axis=0), gt[k:])


def score(frames: np.ndarray, record: dict, gt: np.ndarray | None = None) -> dict:
    """Score one video against its eval record.

    Returns {attribute: bool for each applicable attribute, "all_correct": bool}; for a subject
    record "subject_colors" (0, 0.5 or 1: how many of the subject's two colours each cover more than
    SUBJECT_MIN_SHARE of the drawn object); for a prediction record with `gt` (uint8 T,H,W,3) given,
    "psnr" over frames k..T-1 (k = record["num_cond_frames"]), None when the shapes differ.
    """
    found = analyze(frames)
    result: dict = {a: found[a] is not None and found[a] == record.get(a) for a in applicable_attributes(record)}
    result["all_correct"] = all(result.values())
    subject = spec.SUBJECTS.get(record.get("subject") or "")
    if subject is not None:
        result["subject_colors"] = len({subject.color_a, subject.color_b} & set(found["colors"])) / 2
    if record.get("task") == "prediction" and gt is not None:
        k = int(record.get("num_cond_frames", 1))
        frames = np.asarray(frames)
        result["psnr"] = psnr(frames[k:], gt[k:]) if frames.shape == gt.shape else None
    return result


# ---------------------------------------------------------------------------------------------
# Folders of generated videos
# ---------------------------------------------------------------------------------------------

EVAL_SPLITS = ("t2v-seen", "t2v-novel-composition", "t2v-novel-subject", "prediction", "subject")


def read_records(eval_file: Path) -> list[dict]:
    """The records of one eval JSONL; ScoreError if it cannot be read."""
    try:
        with open(eval_file, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise ScoreError(f"{eval_file}: cannot read eval records ({e})") from None


def _load_video(videos_dir: Path, vid: str) -> np.ndarray | None:
    """The generated video for eval id `vid` ({vid}.npy or {vid}.mp4), or None if there is none."""
    npy, mp4 = videos_dir / f"{vid}.npy", videos_dir / f"{vid}.mp4"
    if npy.exists():
        return np.load(npy, allow_pickle=False)
    if mp4.exists():
        return read_video(mp4)
    return None


def score_folder(videos_dir: str | Path, eval_file: str | Path) -> dict:
    """Score DIR/{id}.mp4 (or .npy) for every record of one eval JSONL; a per-split report.

    Accuracies are over all records (a missing or unreadable video is wrong on everything);
    `psnr` is the mean over the prediction videos that were read; `psnr_held_frame` the same mean for
    repeating each record's last given frame (:func:`held_frame_psnr`), the reference beside it;
    `subject_colors` the mean of :func:`score`'s graded subject reading over the subject records (a
    missing video reads 0), None in splits without subjects. A split that holds both seen and novel
    records (the subject task's) adds `by_novelty`: the same accuracies over each part, since a model
    can learn the seen subjects' looks by heart and still fail to copy a novel one.
    """
    videos_dir, eval_file = Path(videos_dir), Path(eval_file)
    records = read_records(eval_file)
    base = eval_file.parent
    results: list[dict | None] = []   # per record; None where the video is missing or unreadable
    psnrs: list[float] = []
    held: list[float] = []
    missing = unreadable = 0
    for rec in tqdm(records, desc=f"score {eval_file.stem}", unit="video", leave=False):
        results.append(None)
        try:
            frames = _load_video(videos_dir, rec["id"])
        except (VideoDecodeError, ValueError, OSError):
            frames, unreadable = None, unreadable + 1
        else:
            missing += frames is None
        if frames is None:
            continue
        gt = None
        if rec.get("task") == "prediction" and rec.get("gt"):
            gt = np.load(base / rec["gt"], allow_pickle=False)
        try:
            results[-1] = score(frames, rec, gt)
        except ScoreError:
            unreadable += 1
            continue
        if results[-1].get("psnr") is not None:
            psnrs.append(results[-1]["psnr"])
            held.append(held_frame_psnr(gt, int(rec.get("num_cond_frames", 1))))
    report = {
        "eval": str(eval_file),
        "videos": str(videos_dir),
        "count": len(records),
        "missing": missing,
        "unreadable": unreadable,
        **_accuracies(records, results),
        "psnr": float(np.mean(psnrs)) if psnrs else None,
        "psnr_count": len(psnrs),
        "psnr_held_frame": float(np.mean(held)) if held else None,
    }
    novel = [bool(r.get("novel")) for r in records]
    if any(novel) and not all(novel):
        report["by_novelty"] = {}
        for part, flag in (("seen", False), ("novel", True)):
            pick = [i for i, n in enumerate(novel) if n == flag]
            report["by_novelty"][part] = {"count": len(pick), **_accuracies([records[i] for i in pick],
                                                                            [results[i] for i in pick])}
    return report


def _accuracies(records: Sequence[dict], results: Sequence[dict | None]) -> dict:
    """accuracy / attribute_count / subject_colors over some records (a None result is wrong on everything)."""
    totals: dict[str, int] = {}
    counts: dict[str, int] = {}
    subject_colors = 0.0
    for rec, result in zip(records, results):
        for a in applicable_attributes(rec) + ("all_correct",):
            totals[a] = totals.get(a, 0) + 1
            counts[a] = counts.get(a, 0) + bool(result and result[a])
        subject_colors += (result or {}).get("subject_colors", 0.0)
    return {
        "accuracy": {a: counts[a] / totals[a] for a in ATTRIBUTE_ORDER if a in totals},
        "attribute_count": {a: totals[a] for a in ATTRIBUTE_ORDER if a in totals},
        "subject_colors": subject_colors / totals["subject"] if "subject" in totals else None,
    }


def eval_files(path: str | Path) -> list[Path]:
    """One eval JSONL, or every split's JSONL in an eval folder (the five known splits first)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ScoreError(f"eval file or folder not found: {path}")
    files = sorted(
        path.glob("*.jsonl"), key=lambda p: (EVAL_SPLITS.index(p.stem) if p.stem in EVAL_SPLITS else 99, p.name)
    )
    if not files:
        raise ScoreError(f"{path}: no eval .jsonl files")
    return files


def score_all(videos_dir: str | Path, eval_path: str | Path) -> dict[str, dict]:
    """Per-split reports for one eval file or an eval folder, keyed by split name."""
    return {f.stem: score_folder(videos_dir, f) for f in eval_files(eval_path)}


# ---------------------------------------------------------------------------------------------
# CLI: python -m vimi.eval.shapeworld --videos DIR --eval FILE_OR_DIR --out report.json
# ---------------------------------------------------------------------------------------------

def _format(reports: dict[str, dict]) -> str:
    def accuracies(rep: dict) -> str:
        acc = "  ".join(f"{a} {v:6.1%}" for a, v in rep["accuracy"].items())
        if rep.get("subject_colors") is not None:
            acc += f"  subject_colors {rep['subject_colors']:6.1%}"
        return acc

    lines = []
    for split, rep in reports.items():
        extra = "" if rep["psnr"] is None else (f"  psnr {rep['psnr']:.2f} dB (given frame held: "
                                                f"{rep['psnr_held_frame']:.2f} dB)")
        lines.append(f"{split:<22} n={rep['count']:<5} missing={rep['missing']} unreadable={rep['unreadable']}  "
                     f"{accuracies(rep)}{extra}")
        for part, sub in rep.get("by_novelty", {}).items():
            lines.append(f"  {part:<20} n={sub['count']:<5} {'':<24}{accuracies(sub)}")
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(
        prog="python -m vimi.eval.shapeworld",
        description="Score generated ShapeWorld videos (docs/shapeworld.md, Scores).",
    )
    ap.add_argument("--videos", required=True, help="folder of generated videos named {id}.mp4 (or {id}.npy)")
    ap.add_argument("--eval", required=True, help="an eval .jsonl, or the eval folder for every split")
    ap.add_argument("--out", help="report.json to write")
    args = ap.parse_args(list(argv) if argv is not None else None)
    if not Path(args.videos).is_dir():
        print(f"error: videos folder not found: {args.videos}", file=sys.stderr)
        return 2
    try:
        reports = score_all(args.videos, args.eval)
    except ScoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(_format(reports))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"splits": reports}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    from base.cli_guard import guarded

    raise SystemExit(guarded(main, prog="python -m vimi.eval.shapeworld"))
