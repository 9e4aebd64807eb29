"""The demo report: contact sheets per task, loss curves, score tables and a one-page report.html.

    python -m vimi.eval.report --videos DIR --eval EVAL_DIR [--scores report.json] [--gt-scores gt.json] \
        [--metrics metrics.json] [--run-dirs RUN ...] --out outputs/demo

Writes into --out: ``contact_{t2v,prediction,subject}.png`` (one row per sample: the reference
image or given first frame at the left, then the generated frames left to right, the prompt and
what the scorer reads back underneath; prediction rows also show the exact continuation),
``loss_{run}.png`` per run folder, ``videos/`` (the few mp4s the page plays), ``scores.json``
when the videos had to be scored here, and ``report.html`` (no scripts, no external assets; every
image is a relative link). Numbers are printed as scored, low or not.
"""
from __future__ import annotations

import argparse
import html
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from base.tasks import TASK_NAMES, TASKS
from vimi.eval.shapeworld import ATTRIBUTE_ORDER, EVAL_SPLITS, analyze, applicable_attributes, eval_files, score

LEFT_LABEL = {t.name: t.image_label for t in TASKS.values() if t.image_label}  # the image shown at the left
SCALE = 3          # nearest-neighbour upscaling of the 32-px frames so they are visible
GAP, MARGIN = 2, 8  # px between frames / around blocks
BG, FG, DIM = (255, 255, 255), (20, 20, 20), (110, 110, 110)


class ReportError(ValueError):
    """Missing or unreadable inputs of the report (videos folder, eval folder, JSON files)."""


# ---------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------

@dataclass
class Sample:
    record: dict
    base: Path                  # the eval file's folder (image and gt paths are relative to it)
    frames: np.ndarray          # generated (T, H, W, 3) uint8
    mp4: Path | None

    @property
    def task(self) -> str:
        return self.record.get("task", "t2v")

    def left_image(self) -> np.ndarray | None:
        """The task image shown at the left: the given first frame (prediction) or the reference (subject)."""
        images = self.record.get("images") or []
        if self.task not in LEFT_LABEL or not images:
            return None
        with Image.open(self.base / images[0]) as im:
            return np.asarray(im.convert("RGB"))

    def ground_truth(self) -> np.ndarray | None:
        gt = self.record.get("gt")
        path = self.base / gt if gt else None
        return np.load(path, allow_pickle=False) if path is not None and path.is_file() else None


def load_generated(videos_dir: Path, vid: str) -> tuple[np.ndarray | None, Path | None]:
    """Generated frames for eval id ``vid``: the exact {vid}.npy when present, else decoded {vid}.mp4."""
    npy, mp4 = videos_dir / f"{vid}.npy", videos_dir / f"{vid}.mp4"
    mp4 = mp4 if mp4.is_file() else None
    if npy.is_file():
        return np.load(npy, allow_pickle=False), mp4
    if mp4 is not None:
        from data_pipelines.video_io import VideoDecodeError, read_video

        try:
            return read_video(mp4), mp4
        except VideoDecodeError:
            return None, mp4
    return None, None


def pick_samples(videos_dir: Path, eval_path: Path, per_task: int) -> dict[str, list[Sample]]:
    """Up to ``per_task`` samples per task with a video, taken round-robin over the task's splits
    (t2v has three: seen, novel composition, novel subject)."""
    queues: dict[str, list[list[tuple[dict, Path]]]] = {t: [] for t in TASK_NAMES}
    for f in eval_files(eval_path):
        with open(f, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        by_task: dict[str, list[tuple[dict, Path]]] = {}
        for r in rows:
            by_task.setdefault(r.get("task", "t2v"), []).append((r, f.parent))
        for task, rs in by_task.items():
            queues.setdefault(task, []).append(rs)
    out: dict[str, list[Sample]] = {}
    for task, splits in queues.items():
        picked: list[Sample] = []
        iters = [iter(s) for s in splits]
        while iters and len(picked) < per_task:
            for it in list(iters):
                for rec, base in it:
                    frames, mp4 = load_generated(videos_dir, rec["id"])
                    if frames is not None:
                        picked.append(Sample(rec, base, frames, mp4))
                        break
                else:
                    iters.remove(it)
                if len(picked) >= per_task:
                    break
        if picked:
            out[task] = picked
    return out


def read_back(sample: Sample) -> str:
    """What the scorer sees in the generated video, and whether it matches the prompt."""
    found = analyze(sample.frames)
    result = score(sample.frames, sample.record, sample.ground_truth())
    if not found["object"]:
        seen = f"{found['scene']}, no object found"
    else:
        name = found["subject"] or f"{found['color']} {found['shape']}"
        seen = f"{name} {found['motion']} {found['scene']}"
    wrong = [a for a in applicable_attributes(sample.record) if not result[a]]
    verdict = "all correct" if result["all_correct"] else "wrong: " + ", ".join(wrong)
    if result.get("psnr") is not None:
        verdict += f"; PSNR {result['psnr']:.1f} dB"
    return f"read back: {seen} ({verdict})"


# ---------------------------------------------------------------------------------------------
# Contact sheets
# ---------------------------------------------------------------------------------------------

def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        return ImageFont.load_default()


def _up(img: np.ndarray, scale: int) -> Image.Image:
    return Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST)


def _strip(frames: np.ndarray, scale: int) -> Image.Image:
    t, h, w, _ = frames.shape
    fw, fh = w * scale, h * scale
    strip = Image.new("RGB", (t * fw + (t - 1) * GAP, fh), BG)
    for i, f in enumerate(frames):
        strip.paste(_up(f, scale), (i * (fw + GAP), 0))
    return strip


def contact_sheet(samples: Sequence[Sample], task: str, scale: int = SCALE) -> Image.Image:
    """One row per sample: [task image |] generated frames 0..T-1, prompt and read-back underneath;
    prediction rows add the exact continuation beneath the generated frames."""
    font = _font()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = measure.textbbox((0, 0), "Ag", font=font)[3] + 4
    blocks: list[tuple[Image.Image | None, list[tuple[str, Image.Image]], list[tuple[str, tuple]]]] = []
    for s in samples:
        left = s.left_image()
        strips = [("generated", _strip(s.frames, scale))]
        gt = s.ground_truth() if task == "prediction" else None
        if gt is not None:
            strips.append(("ground truth", _strip(gt, scale)))
        prompt, caption = s.record.get("prompt", ""), s.record.get("caption")
        shown = prompt + (f"   (caption: {caption})" if caption and caption != prompt else "")
        texts = [(f"{s.record['id']}: {shown}", FG), (read_back(s), DIM)]
        blocks.append((_up(left, scale) if left is not None else None, strips, texts))
    has_left = any(b[0] is not None for b in blocks)
    left_w = max((b[0].width for b in blocks if b[0] is not None), default=0)
    labelled = any(len(b[1]) > 1 for b in blocks)  # name the strips only when a row has several
    label_w = (
        max(measure.textbbox((0, 0), n, font=font)[2] for n in ("generated", "ground truth")) + MARGIN
        if labelled
        else 0
    )
    x0 = MARGIN + (left_w + 3 * GAP if has_left else 0) + label_w
    strip_w = max(st.width for b in blocks for _, st in b[1])
    text_w = max(measure.textbbox((0, 0), t, font=font)[2] for b in blocks for t, _ in b[2])
    width = max(x0 + strip_w, MARGIN + text_w) + MARGIN
    head = [f"{task}: " + (f"{LEFT_LABEL[task]} at the left, then " if task in LEFT_LABEL else "")
            + "generated frames left to right (upscaled x%d, nearest)" % scale]
    heights = [sum(st.height + GAP for _, st in b[1]) + len(b[2]) * line_h + 2 * MARGIN for b in blocks]
    sheet = Image.new("RGB", (width, MARGIN + len(head) * line_h + sum(heights)), BG)
    draw = ImageDraw.Draw(sheet)
    y = MARGIN
    for line in head:
        draw.text((MARGIN, y), line, fill=FG, font=font)
        y += line_h
    for left, strips, texts in blocks:
        y += MARGIN
        if left is not None:
            sheet.paste(left, (MARGIN, y))
        for name, st in strips:
            if labelled:
                draw.text((x0 - label_w, y + st.height // 2 - line_h // 2), name, fill=DIM, font=font)
            sheet.paste(st, (x0, y))
            y += st.height + GAP
        for t, colour in texts:
            draw.text((MARGIN, y), t, fill=colour, font=font)
            y += line_h
        y += MARGIN
        draw.line([(MARGIN, y - 1), (width - MARGIN, y - 1)], fill=(220, 220, 220))
    return sheet


# ---------------------------------------------------------------------------------------------
# Run folders, JSON inputs
# ---------------------------------------------------------------------------------------------

def _read_json(path: str | Path | None, what: str) -> dict | None:
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"{what} {path}: cannot read ({e})") from None


def _splits(report: dict | None) -> dict[str, dict]:
    """The per-split reports of a scorer report.json ({"splits": {...}}) or of score_all's dict."""
    if not report:
        return {}
    return report.get("splits", report)


def collect_runs(run_dirs: Sequence[str | Path], out: Path) -> list[dict]:
    """Copy each run's loss curve into ``out`` (drawn from metrics.jsonl when the PNG is missing);
    a PNG file may be given instead of a run folder."""
    from vimi.training.metrics import LOSS_CURVE, plot_loss_curve, read_metrics

    runs = []
    for rd in run_dirs:
        rd = Path(rd)
        if rd.is_file() and rd.suffix.lower() == ".png":
            png, name, rows = rd, rd.stem, []
        elif rd.is_dir():
            png, name, rows = rd / LOSS_CURVE, rd.name, read_metrics(rd)
        else:
            raise ReportError(f"run folder or loss-curve PNG not found: {rd}")
        dest = out / f"loss_{name}.png"
        if png.is_file():
            if png.resolve() != dest.resolve():
                shutil.copyfile(png, dest)
        elif rows and plot_loss_curve(rd, dest, title=name) is None:
            dest = None
        elif not rows:
            dest = None
        losses = [r for r in rows if isinstance(r.get("loss"), (int, float))]
        runs.append({"name": name, "path": str(rd), "png": dest.name if dest else None,
                     "steps": losses[-1]["step"] if losses else None,
                     "final_loss": losses[-1]["loss"] if losses else None})
    return runs


def publish_video(mp4: Path, out: Path) -> str:
    """A relative link to ``mp4`` from ``out``: as is when it lives inside ``out``, else a copy in out/videos."""
    try:
        return mp4.resolve().relative_to(out.resolve()).as_posix()
    except ValueError:
        dest = out / "videos" / mp4.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mp4, dest)
        return f"videos/{mp4.name}"


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}tr.gt td{color:#888}img.sheet{max-width:100%;border:1px solid #ddd}
figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}figcaption{font-size:85%;max-width:260px}
video{image-rendering:pixelated;width:192px;height:192px;background:#000}.note{color:#666;font-size:90%}"""


def _e(x) -> str:
    return html.escape(str(x))


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def scores_table(sources: Sequence[tuple[str, dict[str, dict], str]]) -> str:
    """Per split, one row per (label, {split: scorer report}, css class) source: the accuracy of each
    attribute, all_correct and PSNR exactly as scored (e.g. generated over a grey ground-truth row)."""
    present = set().union(*(reports for _, reports, _ in sources))
    splits = [s for s in EVAL_SPLITS if s in present] + sorted(present - set(EVAL_SPLITS))
    every = [r for _, reports, _ in sources for r in reports.values()]
    attrs = [a for a in ATTRIBUTE_ORDER if any(a in r.get("accuracy", {}) for r in every)]
    head = "".join(f"<th>{_e(a)}</th>" for a in ["split", "source", "n", "missing"] + attrs
                   + ["subject colours", "PSNR (dB)", "PSNR, given frame held (dB)"])
    body = []
    for s in splits:
        for label, reports, cls in sources:
            rep = reports.get(s)
            if rep is None:
                continue
            # A split of seen and novel subjects also shows each part (the scorer's by_novelty).
            parts = [(s, rep)] + [(f"{s}: {part}", sub) for part, sub in rep.get("by_novelty", {}).items()]
            for name, r in parts:
                acc = r.get("accuracy", {})
                cells = [name, label, r.get("count", "–"), r.get("missing", 0) + r.get("unreadable", 0)]
                cells += [_pct(acc.get(a)) for a in attrs] + [_pct(r.get("subject_colors"))]
                # the reference a predictor must beat (vimi.eval.shapeworld)
                cells += ["–" if v is None else f"{v:.2f}" for v in (r.get("psnr"), r.get("psnr_held_frame"))]
                row_cls = f' class="{cls}"' if cls else ""
                body.append(f"<tr{row_cls}>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>\n" + "\n".join(body) + "</table>"


def retrieval_section(gen: dict[str, dict], metrics: dict | None) -> str:
    """VIMI's central claim: the same model with its K retrieved pairs and with retrieval off (K = 0)."""
    off = _splits((metrics or {}).get("retrieval_off"))
    if not off:
        return ""
    on = {s: r for s, r in gen.items() if s in off}
    return ("<h2>Retrieval on / off</h2><p>The same trained model on the same rows, its t2v prompts built "
            "with the retrieved image-text pairs and with none (<code>--retrieval-k 0</code>). A novel "
            "subject is drawn only from its retrieved pictures, so this gap is what retrieval buys.</p>"
            + scores_table([("retrieval on", on, ""), ("retrieval off (K = 0)", off, "gt")]))


def timings_table(metrics: dict) -> str:
    steps = metrics.get("steps") or {}
    rows = []
    for name, v in steps.items():
        if isinstance(v, dict):
            secs = "skipped (already done)" if v.get("skipped") else f"{v.get('seconds', float('nan')):.1f} s"
        else:
            secs = f"{float(v):.1f} s"
        rows.append(f"<tr><td>{_e(name)}</td><td>{_e(secs)}</td></tr>")
    for key, v in metrics.items():
        if key != "steps" and isinstance(v, (int, float, str)) and not isinstance(v, bool):
            rows.append(f"<tr><td><b>{_e(key)}</b></td><td>{_e(v)}</td></tr>")
    return "<table><tr><th>step</th><th>wall time</th></tr>\n" + "\n".join(rows) + "</table>" if rows else ""


def render_html(*, title: str, sources: dict, gen: dict, gt: dict, sheets: dict[str, str],
                videos: list[tuple[str, str, str]], runs: list[dict], metrics: dict | None) -> str:
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        "<p class='note'>" + "<br>".join(f"{_e(k)}: <code>{_e(v)}</code>" for k, v in sources.items()) + "</p>",
        "<h2>Scores</h2>",
        "<p>ShapeWorld analytic scores (docs/shapeworld.md, Scores): the share of videos whose scene, colour, shape, "
        "motion and subject read back by analysis equal the prompt's; <i>all_correct</i> when every applicable "
        "attribute is right at once; PSNR of prediction against the exact continuation. "
        + ("Grey rows score the ground-truth clips, a check of the scorer itself. " if gt else "")
        + "Missing counts videos absent or unreadable (wrong on everything).</p>",
        scores_table([("generated", gen, ""), ("ground truth", gt, "gt")]) if (gen or gt) else "<p>No scores.</p>",
        retrieval_section(gen, metrics),
    ]
    if sheets:
        parts.append("<h2>Samples per task</h2>")
        for task, png in sheets.items():
            parts.append(f"<h3>{_e(task)}</h3><img class='sheet' src='{_e(png)}' alt='{_e(task)} contact sheet'>")
    if videos:
        parts.append("<h2>Videos</h2><div>")
        for task, src, prompt in videos:
            parts.append(f"<figure><video src='{_e(src)}' controls loop muted playsinline></video>"
                         f"<figcaption><b>{_e(task)}</b>: {_e(prompt)}</figcaption></figure>")
        parts.append("</div>")
    if runs:
        parts.append("<h2>Training</h2>")
        for r in runs:
            stat = (
                f"{r['steps']} steps, final loss {r['final_loss']:.4g}"
                if r["final_loss"] is not None
                else "no metrics.jsonl"
            )
            parts.append(f"<h3>{_e(r['name'])}</h3><p class='note'>{_e(r['path'])}: {_e(stat)}</p>")
            if r["png"]:
                parts.append(f"<img src='{_e(r['png'])}' alt='loss curve of {_e(r['name'])}'>")
    if metrics:
        table = timings_table(metrics)
        if table:
            parts.append("<h2>Pipeline wall times</h2>" + table)
    parts.append(
        f"<p class='note'>written {_e(time.strftime('%Y-%m-%d %H:%M:%S'))} "
        "by <code>python -m vimi.eval.report</code></p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------

def write_report(videos: str | Path, eval_path: str | Path, out: str | Path, *, scores: str | Path | None = None,
                 gt_scores: str | Path | None = None, metrics: str | Path | None = None,
                 run_dirs: Sequence[str | Path] = (), per_task: int = 6, videos_per_task: int = 2,
                 title: str = "VIMI on ShapeWorld: demo report") -> Path:
    """Write the contact sheets, loss curves and report.html into ``out``; returns report.html's path."""
    videos, eval_path, out = Path(videos), Path(eval_path), Path(out)
    if not videos.is_dir():
        raise ReportError(f"videos folder not found: {videos}")
    if not eval_path.exists():
        raise ReportError(f"eval file or folder not found: {eval_path}")
    out.mkdir(parents=True, exist_ok=True)
    metrics_d = _read_json(metrics, "metrics")
    gen = _splits(_read_json(scores, "scores"))
    if not gen:
        from vimi.eval.shapeworld import score_all

        gen = score_all(videos, eval_path)
        (out / "scores.json").write_text(json.dumps({"splits": gen}, indent=2) + "\n")
    gt = _splits(_read_json(gt_scores, "ground-truth scores")) or _splits((metrics_d or {}).get("ground_truth"))

    samples = pick_samples(videos, eval_path, per_task)
    sheets, shown = {}, []
    for task in TASK_NAMES:
        if task not in samples:
            continue
        contact_sheet(samples[task], task).save(out / f"contact_{task}.png")
        sheets[task] = f"contact_{task}.png"
        for s in [s for s in samples[task] if s.mp4 is not None][:videos_per_task]:
            shown.append((task, publish_video(s.mp4, out), s.record.get("prompt", "")))
    runs = collect_runs(run_dirs, out)
    sources = {"videos": videos, "eval": eval_path} | ({"scores": scores} if scores else {}) \
        | ({"ground-truth scores": gt_scores} if gt_scores else {})
    page = render_html(title=title, sources=sources, gen=gen, gt=gt, sheets=sheets, videos=shown, runs=runs,
                       metrics=metrics_d)
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vimi.eval.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", required=True, help="folder of generated {id}.mp4 (+ exact {id}.npy)")
    ap.add_argument("--eval", required=True, help="the world's eval folder (or one eval .jsonl)")
    ap.add_argument("--out", required=True, help="report folder (e.g. outputs/demo)")
    ap.add_argument("--scores", help="scorer report.json of the videos (scored here when not given)")
    ap.add_argument(
        "--gt-scores", help="scorer report.json of the ground-truth clips (default: metrics.json's ground_truth)"
    )
    ap.add_argument("--metrics", help="the demo's metrics.json (wall times of the pipeline steps)")
    ap.add_argument("--run-dirs", nargs="*", default=[], help="training run folders (or loss-curve PNGs)")
    ap.add_argument("--per-task", type=int, default=6, help="samples per contact sheet")
    ap.add_argument("--videos-per-task", type=int, default=2, help="<video> players per task on the page")
    ap.add_argument("--title", default="VIMI on ShapeWorld: demo report")
    args = ap.parse_args(list(argv) if argv is not None else None)
    from vimi.eval.shapeworld import ScoreError

    try:
        path = write_report(args.videos, args.eval, args.out, scores=args.scores, gt_scores=args.gt_scores,
                            metrics=args.metrics, run_dirs=args.run_dirs, per_task=args.per_task,
                            videos_per_task=args.videos_per_task, title=args.title)
    except (ReportError, ScoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    from base.cli_guard import guarded

    raise SystemExit(guarded(main, prog="python -m vimi.eval.report"))
