"""Rank-0 run logging: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard, loss curve.

``metrics.jsonl`` is the source of truth; TensorBoard mirrors it, and the loss-curve PNG is drawn
from it. On resume, lines after the resumed step (written by the killed run after its last
checkpoint) are dropped so the curve has one value per step.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
LOSS_CURVE = "loss_curve.png"


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


class MetricsLog:
    """Appends to metrics.jsonl and TensorBoard; a no-op object on ranks other than 0."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int = 0, tensorboard: bool = True):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.path = self.run_dir / METRICS
        self.tb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.run_dir) if r.get("step", 0) <= resume_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(
                    str(self.run_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None
                )
            except ImportError:  # tensorboard is a declared dependency; keep training if it is absent
                self.tb = None

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        # NaN/inf are not JSON: they are written as null.
        row = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def image(self, tag: str, img_hwc, step: int) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_image(tag, img_hwc, step, dataformats="HWC")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def plot_loss_curve(run_dir: Path, out: Path | None = None, title: str | None = None) -> Path | None:
    """loss (and its per-task parts) against step from metrics.jsonl -> PNG; None if nothing logged."""
    rows = [r for r in read_metrics(run_dir) if "loss" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out) if out is not None else Path(run_dir) / LOSS_CURVE
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["loss"] for r in rows], label="loss", color="black", linewidth=1.5)
    for key in sorted({k for r in rows for k in r if k.startswith("loss/")}):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key.split("/", 1)[1], linewidth=0.8, alpha=0.8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("EDM loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or Path(run_dir).name, fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
