"""Bad input, as a new user gives it, to every entry point: one line naming the problem, exit 2, no traceback.

Each case builds a damaged input in a temp folder and runs an entry point's ``main`` exactly as
its ``__main__`` does (through ``base.cli_guard.guarded``). A new entry point or a new way to
get input wrong is one more row in ``CASES``. The expected fragments are what a user needs in
the message: the file, the key, the value, what was wanted.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from base.cli_guard import guarded

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "shapeworld" / "tiny_ci.yaml")


def _train(argv: list[str]) -> int:
    from vimi.training.cli import main

    return main("pretrain", argv)


def _generate(argv: list[str]) -> int:
    from vimi.__main__ import main

    return main(argv)


def _build_index(argv: list[str]) -> int:
    from data_pipelines.build_index import main

    return main(argv)


def _align(argv: list[str]) -> int:
    from vimi.mllm.align import main

    return main(argv)


def _yaml(tmp: Path, text: str) -> Path:
    p = tmp / "bad.yaml"
    p.write_text(f"# a user's config\n{text}")
    return p


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory) -> Path:
    """A pipeline of tiny_ci.yaml's model (so --init passes the config check and reaches the weights)."""
    from vimi.pipeline import VimiPipeline
    from vimi.training.config import load_train_config

    out = tmp_path_factory.mktemp("pipe") / "pipeline"
    VimiPipeline.from_config(load_train_config(TINY).model).save_pretrained(out)
    return out


def _damaged_copy(src: Path, tmp: Path, rel: str, damage: Callable[[Path], None]) -> Path:
    import shutil

    dst = tmp / "copy"
    shutil.copytree(src, dst)
    damage(dst / rel)
    return dst


def _shards(tmp: Path, n: int = 1) -> Path:
    from vimi.training.synthetic import write_synthetic_shard

    d = tmp / "shards"
    d.mkdir()
    for i in range(n):
        write_synthetic_shard(d / f"shard-{i:06d}.tar", 2, 2 * i)
    return d


def _killed_build(tmp: Path) -> Path:
    d = _shards(tmp, 2)
    (d / "build.json").write_text("{}")     # build_shards writes this first and manifest.json last
    return d


def _manifest_incomplete(tmp: Path) -> Path:
    d = _shards(tmp, 2)
    (d / "manifest.json").write_text(json.dumps({"finished_shards": 2, "num_shards": 10, "complete": False}))
    return d


def _random_shard(tmp: Path) -> Path:
    d = tmp / "shards"
    d.mkdir()
    (d / "shard-000000.tar").write_bytes(os.urandom(4096))
    return d


def _corrupt_parquet(tmp: Path) -> Path:
    p = tmp / "memory.parquet"
    p.write_bytes(b"PAR1" + os.urandom(2000) + b"PAR1")
    return p


def _missing_images(tmp: Path) -> Path:
    p = tmp / "memory.jsonl"
    p.write_text("".join(json.dumps({"id": f"m{i}", "caption": f"a red circle {i}", "image": f"img/{i}.png"}) + "\n"
                         for i in range(4)))
    return p


# (id, entry point, argv builder (tmp, fixtures) -> argv, fragments the one error line must contain)
CASES = [
    ("yaml-wrong-type", _train, lambda t, f: ["--config", str(_yaml(t, "run:\n  steps: four\n")), "--dry-run"],
     ["bad.yaml", "run.steps", "'four'", "expected an int"]),
    ("set-wrong-type", _train, lambda t, f: ["--config", TINY, "--set", "optim.micro_batch=two", "--dry-run"],
     ["--set optim.micro_batch=two", "optim.micro_batch", "'two'", "expected an int"]),
    ("yaml-syntax", _train, lambda t, f: ["--config", str(_yaml(t, "run:\n  steps: [1\n")), "--dry-run"],
     ["bad.yaml", "invalid YAML", "line"]),
    ("yaml-unknown-key", _train, lambda t, f: ["--config", str(_yaml(t, "optim:\n  learning_rate: 1\n")), "--dry-run"],
     ["bad.yaml", "learning_rate", "known:"]),
    ("yaml-out-of-range", _train, lambda t, f: ["--config", str(_yaml(t, "optim:\n  lr: -1\n")), "--dry-run"],
     ["bad.yaml", "optim.lr", "-1", "> 0"]),
    ("set-bad-literal", _train, lambda t, f: ["--config", TINY, "--set", "run.precision=fp8", "--dry-run"],
     ["run.precision", "'fp8'", "one of"]),
    ("dry-run-missing-mllm", _train, lambda t, f: ["--config", TINY, "--set", f"model.mllm.path={t / 'nomllm'}",
                                                   "--dry-run"],
     ["model.mllm.path", "nomllm", "no config.json there"]),
    ("init-truncated-weights", _train,
     lambda t, f: ["--config", TINY, "--set", f"data.shards=[{_shards(t)}]", f"run.out={t / 'run'}", "--init",
                   str(_damaged_copy(f["pipeline"], t, "model.safetensors", _truncate))],
     ["copy/model.safetensors", "unreadable weights"]),
    ("mllm-truncated-weights", _train,
     lambda t, f: ["--config", TINY, "--set", f"data.shards=[{_shards(t)}]", f"run.out={t / 'run'}",
                   f"model.mllm.path={_damaged_copy(f['pipeline'] / 'mllm', t, 'model.safetensors', _truncate)}"],
     ["copy/model.safetensors", "unreadable weights"]),
    ("shards-killed-build", _train,
     lambda t, f: ["--config", TINY, "--set", f"data.shards=[{_killed_build(t)}]", f"run.out={t / 'run'}"],
     ["shards", "never finished", "data.allow_incomplete"]),
    ("shards-incomplete-manifest", _train,
     lambda t, f: ["--config", TINY, "--set", f"data.shards=[{_manifest_incomplete(t)}]", f"run.out={t / 'run'}"],
     ["manifest.json", "2 of 10 shards", "data.allow_incomplete"]),
    ("shard-random-bytes", _train,
     lambda t, f: ["--config", TINY, "--set", f"data.shards=[{_random_shard(t)}]", f"run.out={t / 'run'}"],
     ["shard-000000.tar", "not a tar file"]),
    ("generate-truncated-pipeline", _generate,
     lambda t, f: ["generate", "--task", "t2v", "--prompt", "a red circle", "--out", str(t / "v.mp4"), "--pipeline",
                   str(_damaged_copy(f["pipeline"], t, "model.safetensors", _truncate))],
     ["copy/model.safetensors", "unreadable weights"]),
    ("generate-truncated-mllm", _generate,
     lambda t, f: ["generate", "--task", "t2v", "--prompt", "a red circle", "--out", str(t / "v.mp4"), "--pipeline",
                   str(_damaged_copy(f["pipeline"], t, "mllm/model.safetensors", _truncate))],
     ["copy/mllm/model.safetensors", "unreadable weights"]),
    ("generate-config-not-json", _generate,
     lambda t, f: ["generate", "--task", "t2v", "--prompt", "a red circle", "--out", str(t / "v.mp4"), "--pipeline",
                   str(_damaged_copy(f["pipeline"], t, "config.json", lambda p: p.write_text("{not json")))],
     ["copy/config.json", "JSON"]),
    ("index-corrupt-parquet", _build_index,
     lambda t, f: ["--memory", str(_corrupt_parquet(t)), "--out", str(t / "index"), "--quiet"],
     ["memory.parquet", "not a readable Parquet table"]),
    ("align-corrupt-parquet", _align,
     lambda t, f: ["--memory", str(_corrupt_parquet(t)), "--out", str(t / "mllm")],
     ["memory.parquet", "not a readable Parquet table"]),
    ("align-negative-word-weight", _align,
     lambda t, f: ["--memory", str(_corrupt_parquet(t)), "--out", str(t / "mllm"), "--word-weight", "-1"],
     ["--word-weight must be >= 0, got -1.0"]),
    ("align-negative-stem", _align,
     lambda t, f: ["--memory", str(_corrupt_parquet(t)), "--out", str(t / "mllm"), "--tiny-stem-layers", "-1"],
     ["stem_layers must be >= 0"]),
]


@pytest.mark.parametrize("name, entry, argv, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(name, entry, argv, fragments, tmp_path, pipeline_folder, capsys):
    args = argv(tmp_path, {"pipeline": pipeline_folder})
    capsys.readouterr()
    assert guarded(entry, args, prog="vimi-test") == 2
    stderr = capsys.readouterr().err
    err = [ln for ln in stderr.splitlines() if "error" in ln.lower()]   # progress bars and log lines aside
    assert len(err) == 1 and "Traceback" not in stderr, stderr[-3000:]
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])


def test_index_counts_rows_whose_image_file_is_missing(tmp_path, capsys):
    assert guarded(_build_index, ["--memory", str(_missing_images(tmp_path)), "--out", str(tmp_path / "i"),
                                  "--quiet"]) == 0
    meta = json.loads((tmp_path / "i" / "index.json").read_text())
    assert meta["rows"]["image_missing"] == 4 and meta["rows"]["without_image"] == 0
    assert "4 of 4 memory rows name an image file that does not exist" in capsys.readouterr().err


def test_allow_incomplete_trains_on_a_killed_build_with_a_warning(tmp_path, caplog):
    from vimi.training.data import shard_urls
    from vimi.training.shard_check import check_shards

    d = _killed_build(tmp_path)
    with caplog.at_level("WARNING", logger="vimi.training"):
        check_shards([str(d)], shard_urls([str(d)]), allow_incomplete=True)
    assert "never finished" in caplog.text


def test_python_m_vimi_generate_prints_the_error_not_a_traceback(tmp_path, pipeline_folder):
    """The real command line: the ``__main__`` wiring, exit status and stderr of a subprocess."""
    bad = _damaged_copy(pipeline_folder, tmp_path, "model.safetensors", _truncate)
    cmd = [sys.executable, "-m", "vimi", "generate", "--task", "t2v", "--prompt", "a red circle", "--pipeline",
           str(bad), "--out", str(tmp_path / "v.mp4")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "model.safetensors: unreadable weights" in p.stderr
