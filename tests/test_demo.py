"""The demo's step runner: a finished step is skipped on resume, and steps run side by side all finish."""
import sys
import time

import pytest

from vimi.demo import run_step, side_by_side


def test_run_step_writes_its_log_and_is_skipped_once_done(tmp_path):
    done, log = tmp_path / "done.txt", {}
    cmd = [sys.executable, "-c", f"print('hello'); open({str(done)!r}, 'w').write('x')"]
    run_step("hello", cmd, done, log, output=tmp_path / "logs" / "hello.log")
    assert (tmp_path / "logs" / "hello.log").read_text().strip() == "hello"
    assert "seconds" in log["hello"]
    run_step("hello", [sys.executable, "-c", "raise SystemExit(3)"], done, log)   # would fail if it ran
    assert log["hello"] == {"skipped": True}


def test_side_by_side_finishes_every_branch_before_raising(tmp_path):
    finished = []

    def fails():
        raise RuntimeError("branch one failed")

    def slow():
        time.sleep(0.2)
        finished.append("slow")

    with pytest.raises(RuntimeError, match="branch one failed"):
        side_by_side(fails, slow)
    assert finished == ["slow"]
