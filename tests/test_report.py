"""python -m vimi.eval.report: contact sheets per task and a self-contained report.html."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipelines.video_io import write_video
from vimi.eval.report import main, write_report
from vimi.eval.shapeworld import score_all


@pytest.fixture(scope="module")
def world(eval_world) -> Path:
    return eval_world


@pytest.fixture(scope="module")
def videos(world, tmp_path_factory) -> Path:
    """'Generated' videos that are the ground truth itself: {id}.npy + a playable {id}.mp4, as
    vimi.eval.generate writes them, so every read-back is known to be right."""
    out = tmp_path_factory.mktemp("videos")
    for gt in (world / "eval" / "gt").glob("*.npy"):
        shutil.copyfile(gt, out / gt.name)
        write_video(out / f"{gt.stem}.mp4", np.load(gt))
    return out


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "stage1"
    run.mkdir()
    run.joinpath("metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6))
    )
    return run


def _links(page: str) -> list[str]:
    return re.findall(r"(?:src|href)='([^']+)'", page)


def test_report_writes_sheets_and_html_that_reference_existing_files(world, videos, tmp_path):
    out = tmp_path / "demo"
    png_run = tmp_path / "other_curve.png"
    Image.new("RGB", (40, 30), (200, 0, 0)).save(png_run)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"wall_seconds": 61.5, "steps": {"world": {"seconds": 2.5},
                                                                   "stage 1": {"skipped": True}}}))
    page_path = write_report(videos, world / "eval", out, metrics=metrics, run_dirs=[_run_dir(tmp_path), png_run],
                             per_task=3)
    page = page_path.read_text()
    for task in ("t2v", "prediction", "subject"):
        sheet = Image.open(out / f"contact_{task}.png")
        # 3 samples of 8 frames upscaled x3 (96 px): wide and tall enough to hold them.
        assert sheet.width >= 8 * 96 and sheet.height >= 3 * 96
        assert f"contact_{task}.png" in page
    assert (out / "loss_stage1.png").is_file() and (out / "loss_other_curve.png").is_file()
    links = _links(page)
    assert links and all((out / link).is_file() for link in links)
    assert sum(link.endswith(".mp4") for link in links) == 6  # two players per task
    assert "http" not in page and "<script" not in page
    # The scores were computed here from the exact frames: the ground truth reads 100%.
    scores = json.loads((out / "scores.json").read_text())["splits"]
    assert all(rep["accuracy"]["all_correct"] == 1.0 for rep in scores.values())
    assert "stage 1" in page and "skipped" in page and "61.5" in page and "5 steps, final loss 0.2" in page


def test_contact_sheet_shows_task_image_at_the_left(world, videos, tmp_path):
    write_report(videos, world / "eval", tmp_path, per_task=1)
    ref = json.loads((world / "eval" / "subject.jsonl").read_text().splitlines()[0])["images"][0]
    ref_img = np.asarray(Image.open(world / "eval" / ref).convert("RGB"))
    sheet = np.asarray(Image.open(tmp_path / "contact_subject.png").convert("RGB"))
    big = ref_img.repeat(3, 0).repeat(3, 1)  # nearest-neighbour x3
    hits = [(y, x) for y in range(sheet.shape[0] - 95) for x in range(0, 20)
            if np.array_equal(sheet[y:y + 96, x:x + 96], big)]
    assert hits, "the subject's reference image is not at the left of its row"


def test_scores_are_shown_exactly_as_given(world, videos, tmp_path):
    real = score_all(videos, world / "eval")
    real["prediction"]["accuracy"]["all_correct"] = 0.123
    real["prediction"]["psnr"] = 7.891
    subject = real["subject"]
    subject["by_novelty"] = {part: {"count": 1, "accuracy": dict(subject["accuracy"], subject=v), "subject_colors": v}
                             for part, v in (("seen", 1.0), ("novel", 0.0456))}
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"splits": real}))
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"splits": score_all(world / "eval" / "gt", world / "eval")}))
    assert main(["--videos", str(videos), "--eval", str(world / "eval"), "--scores", str(scores),
                 "--gt-scores", str(gt), "--out", str(tmp_path / "r"), "--per-task", "1"]) == 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert "12.3%" in page and "7.89" in page and "ground truth" in page
    assert "<td>subject: seen</td>" in page and "<td>subject: novel</td>" in page and "4.6%" in page
    assert not (tmp_path / "r" / "scores.json").exists()  # given scores are not recomputed
    assert "Retrieval on / off" not in page  # no retrieval-off scores in this report


def test_retrieval_off_scores_sit_beside_the_same_split(world, videos, tmp_path):
    real = score_all(videos, world / "eval")
    off = {"t2v-novel-subject": json.loads(json.dumps(real["t2v-novel-subject"]))}
    off["t2v-novel-subject"]["accuracy"]["all_correct"] = 0.042
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"retrieval_off": {"splits": off}}))
    page = write_report(videos, world / "eval", tmp_path / "r", metrics=metrics, per_task=1).read_text()
    section = page[page.index("Retrieval on / off"):]
    assert "retrieval off (K = 0)" in section and "4.2%" in section
    assert section.count("<td>t2v-novel-subject</td>") == 2 and "<td>t2v-seen</td>" not in section


def test_missing_inputs_are_clear_errors(world, tmp_path, capsys):
    assert main(["--videos", str(tmp_path / "none"), "--eval", str(world / "eval"), "--out", str(tmp_path / "r")]) == 2
    assert "videos folder not found" in capsys.readouterr().err
    assert main(["--videos", str(tmp_path), "--eval", str(world / "eval"), "--out", str(tmp_path / "r"),
                 "--run-dirs", str(tmp_path / "no_run")]) == 2
    assert "no_run" in capsys.readouterr().err
