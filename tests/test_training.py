"""Two-stage training: configs, dry runs, 1- and 2-rank runs, exact resume, and the fault paths.

One-rank runs happen in this process (``train`` sets the distributed environment itself); two-rank
runs go through the real launchers (``deepspeed --num_gpus 2``, ``torchrun``) as subprocesses.
Everything uses configs/shapeworld/tiny_ci.yaml: a very small FIT on 16x16x4 clips.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from base.config import ConfigError, save_config
from vimi.training.build import InitError
from vimi.training.checkpoint import CheckpointError, ConfigMismatchError, find_latest
from vimi.training.cli import main as cli_main
from vimi.training.config import load_train_config
from vimi.training.metrics import read_metrics
from vimi.training.synthetic import write_synthetic_shard as write_shard

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "shapeworld" / "tiny_ci.yaml")
REAL = str(ROOT / "configs" / "real" / "pretrain_fitb_llava7b.yaml")
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR")


@pytest.fixture(scope="module", autouse=True)
def one_process_group():
    """In-process runs set the one-rank environment and a gloo group; undo both afterwards."""
    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    yield
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Two good shards and one with two corrupt videos (skipped and counted by training)."""
    d = tmp_path_factory.mktemp("train_shards")
    write_shard(d / "shard-000000.tar", 6, 0)
    write_shard(d / "shard-000001.tar", 6, 6)
    write_shard(d / "shard-000002.tar", 4, 12, corrupt={13, 14})
    return d


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


def overrides(shards: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.shards=[{shards}]", "data.workers=2", "optim.accumulation=2", f"run.out={out}", *extra]


def run(shards: Path, out: Path, *extra: str, stage: str = "pretrain"):
    from vimi.training.loop import train

    cfg = load_train_config(TINY, overrides(shards, out, f"run.stage={stage}", *extra))
    return train(cfg)


@pytest.fixture(scope="module")
def full(shards, work):
    """The uninterrupted reference run: 4 steps, checkpoints and samples at 2 and 4, EMA pipeline exported."""
    return run(shards, work / "full", "sample.every=2")


# ---------------------------------------------------------------------------- configs and dry runs


def test_config_load_override_save_roundtrip(tmp_path):
    cfg = load_train_config(TINY, ["optim.lr=3e-4", "model.backbone_args.latent_dim=64", "data.tasks.t2v=2"])
    assert cfg.optim.lr == 3e-4 and cfg.model.backbone_args["latent_dim"] == 64 and cfg.data.tasks["t2v"] == 2.0
    save_config(cfg, tmp_path / "config.yaml")
    assert load_train_config(tmp_path / "config.yaml") == cfg
    with pytest.raises(ConfigError, match="unknown key"):
        load_train_config(TINY, ["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match="stop_at"):
        load_train_config(TINY, ["run.stop_at=99"])
    with pytest.raises(ConfigError, match="unknown task"):
        load_train_config(TINY, ["data.tasks.dance=1"])
    with pytest.raises(ConfigError, match="instruct_tune.py"):
        load_train_config(str(ROOT / "configs/shapeworld/instruct.yaml"), stage="pretrain")
    with pytest.raises(ConfigError, match=r"cond_pool: got 'first'.*caption_summary"):
        load_train_config(str(ROOT / "configs/shapeworld/pretrain.yaml"), ["model.mllm.caption_summary=false"])
    with pytest.raises(ConfigError, match=r"summary_images: got 'in_caption'.*caption_summary"):
        load_train_config(str(ROOT / "configs/shapeworld/pretrain.yaml"), [
            "model.mllm.caption_summary=false", "model.backbone_args.cond_pool=mean",
            "model.mllm.summary_images=in_caption"])
    with pytest.raises(ConfigError, match=r"picture_token: got True.*summary_images"):
        load_train_config(str(ROOT / "configs/shapeworld/pretrain.yaml"), ["model.mllm.summary_images=none"])
    with pytest.raises(ConfigError, match=r"summary_tokens: got 1.*picture_token"):
        load_train_config(str(ROOT / "configs/shapeworld/pretrain.yaml"), ["model.backbone_args.summary_tokens=1"])
    # the picture's token is read by a second FiLM projection, which the backbone config gets without being told
    pixels = 'model.autoencoder=""'
    two = load_train_config(str(ROOT / "configs/shapeworld/pretrain.yaml"), [pixels])
    one = load_train_config(str(ROOT / "configs/shapeworld/pretrain.yaml"), [pixels, "model.mllm.picture_token=false"])
    assert (two.model.backbone_config().summary_tokens, one.model.backbone_config().summary_tokens) == (2, 1)


def test_shipped_configs_load():
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        cfg = load_train_config(path)
        assert Path(ROOT / cfg.run.deepspeed).is_file() or Path(cfg.run.deepspeed).is_file(), path


def test_deepspeed_json_may_not_own_training_settings(tmp_path):
    from vimi.training.optim import deepspeed_config

    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 2}, "optimizer": {"type": "Adam"}}))
    cfg = load_train_config(TINY, [f"run.deepspeed={bad}"])
    with pytest.raises(ConfigError, match="optimizer"):
        deepspeed_config(cfg, 1, torch.device("cpu"))
    ds = deepspeed_config(
        load_train_config(TINY, ["optim.micro_batch=3", "optim.accumulation=2"]), 4, torch.device("cpu")
    )
    assert ds["train_batch_size"] == 24 and ds["bf16"]["enabled"] is False  # CPU: fp32 unless the JSON asks


def test_dry_run_counts_parameters_and_estimates_memory(shards, capsys):
    from vimi.model import VimiModel
    from vimi.training.dry_run import dry_run

    cfg = load_train_config(TINY, [f"data.shards=[{shards}]"])
    real, meta = dry_run(cfg), dry_run(cfg, meta=True)
    model = VimiModel(cfg.model)
    trainable = sum(p.numel() for p in model.trainable_parameters())
    assert real.trainable == meta.trainable == trainable
    assert real.frozen == meta.frozen == sum(p.numel() for p in model.parameters()) - trainable
    assert "first batch video (2, 3, 4, 16, 16)" in real.data
    assert cli_main("pretrain", ["--config", TINY, "--set", f"data.shards=[{shards}]", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "trainable" in out and "memory per rank estimate" in out and f"{trainable:,}" in out


def test_real_scale_dry_run_builds_on_meta_without_weights():
    from vimi.training.dry_run import dry_run

    t0 = time.time()
    r = dry_run(load_train_config(REAL), world_size=16)
    assert r.meta and r.precision == "bf16" and r.zero_stage == 2
    assert r.frozen == 7_063_427_072                     # llava-1.5-7b, frozen (VIMI)
    assert 100e6 < r.trainable < 200e6                   # FIT-B + the projection head
    assert 12 < r.memory["frozen MLLM"] < 14             # GiB of bf16 weights on every rank
    assert r.memory["AdamW state (+ fp32 master)"] < 0.2  # ZeRO-2 over 16 ranks
    assert "not checked" in r.data and time.time() - t0 < 60


# ---------------------------------------------------------------------------- pieces


def test_frozen_mllm_is_hidden_from_the_engine_but_still_runs():
    from vimi.mllm.prompt import pretrain_prompt
    from vimi.model import VimiModel
    from vimi.training.frozen import freeze_all_but, hide_frozen, restore

    model = VimiModel(load_train_config(TINY).model)
    n_t, n_f = freeze_all_but(model, model.trainable_parameters())
    llava = {id(p) for p in model.encoder.llava.parameters()}
    hidden = hide_frozen(model)
    assert [h.module for h in hidden] == [model.encoder.llava] and sum(h.numel for h in hidden) == n_f
    assert not llava & {id(p) for p in model.parameters()}          # DeepSpeed sees only what trains
    assert not any(k.startswith("encoder.llava.") for k in model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == n_t
    c, mask = model.condition([pretrain_prompt("a red circle")])    # the frozen MLLM still encodes
    assert c.shape[0] == 1 and mask.any()
    restore(hidden)
    assert llava <= {id(p) for p in model.parameters()}


def test_ema_average_and_warmup():
    from torch import nn

    from vimi.training.ema import EMA, shared_copy

    live = nn.Linear(2, 2)
    frozen = nn.Linear(2, 2)
    holder = nn.ModuleDict({"live": live, "frozen": frozen})
    twin = shared_copy(holder, [frozen])
    assert twin["frozen"] is frozen and twin["live"] is not live
    names = ["live.weight", "live.bias"]
    ema = EMA(names, twin, decay=0.5, warmup=False)
    start = live.weight.detach().clone()
    with torch.no_grad():
        live.weight.add_(1.0)
    ema.update(dict(holder.named_parameters()))
    assert torch.allclose(twin["live"].weight, start + 0.5)
    assert EMA(names, None, decay=0.999, warmup=True).beta() == pytest.approx(0.1)  # (1+0)/(10+0)


def test_warmup_cosine_schedule():
    from vimi.training.optim import WarmupCosine

    f = WarmupCosine(warmup=10, total=110, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert WarmupCosine(0, 100, 0.1, cosine=False)(50) == 1.0


# ---------------------------------------------------------------------------- one rank


def test_one_rank_run_logs_exports_and_counts_skips(full):
    rows = read_metrics(full.run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["loss"] > 0 for r in rows)
    assert {"lr", "grad_norm", "samples_per_s", "peak_rss_mb"} <= set(rows[-1])
    assert rows[0]["lr"] == pytest.approx(5e-4) and rows[-1]["grad_norm"] > 0   # warmup of 2 steps
    # the corrupt shard's two bad videos were skipped and counted, never fatal
    assert full.counts.get("skipped/video_corrupt", 0) + full.counts.get("skipped/video_truncated", 0) >= 1
    assert any(k.startswith("data/skipped/") for k in rows[-1])
    run_dir = full.run_dir
    assert (run_dir / "loss_curve.png").stat().st_size > 1000 and (run_dir / "config.yaml").is_file()
    assert list((run_dir / "tensorboard").glob("events.*"))
    for step in ("step_000002", "step_000004"):                          # fixed-prompt videos, EMA weights
        assert (run_dir / "samples" / step / "00.mp4").stat().st_size > 0
        assert (run_dir / "samples" / step / "sheet.png").is_file()
    # the export holds the EMA weights of the last checkpoint and loads as a pipeline
    ema = load_file(str(find_latest(run_dir / "checkpoints") / "ema.safetensors"))
    exported = load_file(str(full.pipeline / "model.safetensors"))
    assert ema.keys() == exported.keys() and all(torch.equal(ema[k], exported[k]) for k in ema)
    from vimi.pipeline import VimiPipeline

    video = VimiPipeline.from_pretrained(full.pipeline)("t2v", {"prompt": "a red circle"}, steps=2)
    assert video.shape == (4, 16, 16, 3) and video.dtype.name == "uint8"


def test_resume_after_stop_gives_the_same_losses(full, shards, work):
    first = run(shards, work / "part", "run.stop_at=3")
    assert first.interrupted and first.step == 3 and find_latest(work / "part" / "checkpoints").name == "step_000003"
    rest = run(shards, work / "part")
    assert rest.step == 4 and set(rest.losses) == {4}
    for s in (1, 2, 3):
        assert first.losses[s] == full.losses[s]
    assert rest.losses[4] == full.losses[4]              # bitwise: data, noise, optimizer, EMA all restored
    assert [r["step"] for r in read_metrics(work / "part")] == [1, 2, 3, 4]
    a = load_file(str(work / "part" / "pipeline" / "model.safetensors"))
    b = load_file(str(full.pipeline / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_of_another_config_is_refused(full, shards, work):
    out = work / "mismatch"
    shutil.copytree(full.run_dir / "checkpoints", out / "checkpoints")
    with pytest.raises(ConfigMismatchError, match=r"model\.backbone_args\.latent_dim: 32 \(checkpoint\) != 64"):
        run(shards, out, "model.backbone_args.latent_dim=64")
    with pytest.raises(ConfigMismatchError, match="optim.micro_batch"):
        run(shards, out, "optim.micro_batch=1")
    with pytest.raises(ConfigMismatchError, match="zero_stage: 0 \\(checkpoint\\) != 2"):
        run(shards, out, "run.deepspeed=configs/deepspeed/zero2.json")


class _Payload:
    """Unpickling this calls open(marker, "w"): the file appears iff the checkpoint's code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_resume_refuses_a_checkpoint_that_holds_code(full, shards, work, zipped):
    out = work / f"crafted_{zipped}"
    shutil.copytree(full.run_dir / "checkpoints", out / "checkpoints")
    marker = work / f"pwned_{zipped}"
    target = find_latest(out / "checkpoints") / "mp_rank_00_model_states.pt"
    torch.save({"module": {}, "x": _Payload(marker)}, target, _use_new_zipfile_serialization=zipped)
    with pytest.raises(CheckpointError, match=r"mp_rank_00_model_states\.pt: refusing to load: it is not plain "
                                              r"tensor data \(refers to io\.open\)"):
        run(shards, out)
    assert not marker.exists()                   # nothing from the file ran
    assert not (out / "config.yaml").exists()    # refused before the run folder was touched


def test_deepspeed_zero_files_load_through_the_allow_list(shards, work):
    from vimi.training.safe_load import check_checkpoint_files, safe_torch_load

    r = run(shards, work / "zero2", "run.steps=1", "run.deepspeed=configs/deepspeed/zero2_bf16.json",
            "run.export=false")
    folder = r.checkpoint
    files = sorted(folder.glob("*.pt"))
    assert any("optim_states" in f.name for f in files)   # the ZeRO file with DeepSpeed's own classes
    check_checkpoint_files(folder)
    for f in files:
        assert isinstance(safe_torch_load(f, "cpu"), dict)


def test_full_disk_while_checkpointing_keeps_the_previous_one(full, shards, work, monkeypatch):
    import safetensors.torch

    out = work / "disk"
    real_save = safetensors.torch.save_file
    calls = {"n": 0}

    def failing_save(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:                             # the third checkpoint (step 3): disk full midway
            Path(filename).write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(CheckpointError, match="step_000002 is still the latest"):
        run(shards, out, "run.save_every=1", "run.steps=4", "run.export=false")  # same schedule as `full`
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    assert find_latest(out / "checkpoints").name == "step_000002"
    rest = run(shards, out, "run.save_every=1", "run.steps=4", "run.export=false")
    assert rest.losses == {3: full.losses[3], 4: full.losses[4]}
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000003", "step_000004"]


def test_stage_two_needs_an_init_and_the_same_model(full, shards, work, capsys):
    base = ["--config", TINY, "--set", f"data.shards=[{shards}]", "run.stage=instruct", f"run.out={work / 's2x'}"]
    assert cli_main("instruct", base) == 2
    assert "--init" in capsys.readouterr().err
    assert cli_main("instruct", base + ["--init", str(work / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    with pytest.raises(InitError, match=r"model\.backbone_args\.num_heads: 2 \(export\) != 4"):
        run(shards, work / "s2y", "model.backbone_args.num_heads=4", f"run.init={full.pipeline}", stage="instruct")


def test_an_export_older_than_a_setting_inits_a_run_that_keeps_its_default(full, shards, work, tmp_path):
    """A stage-1 export written before a model setting existed ran with that setting's default: stage 2 may
    start from it at the default, not at another value."""
    import json
    import shutil

    from vimi.model import VimiModel
    from vimi.training.build import load_init

    old = tmp_path / "pipeline"
    shutil.copytree(full.pipeline, old)
    saved = json.loads((old / "config.json").read_text())
    del saved.get("model", saved)["mllm"]["summary_images"]
    (old / "config.json").write_text(json.dumps(saved))
    cfg = load_train_config(TINY, overrides(shards, work / "s2old", "run.stage=instruct"))
    load_init(VimiModel(cfg.model), str(old), cfg)
    cfg = load_train_config(TINY, overrides(shards, work / "s2old", "run.stage=instruct", "model.edm.P_std=2.0"))
    with pytest.raises(InitError, match=r"model\.edm\.P_std"):
        load_init(VimiModel(cfg.model), str(old), cfg)


def test_stage_two_mixes_tasks_from_the_stage_one_export(full, shards, work):
    from vimi.model import VimiModel
    from vimi.training.build import load_init

    cfg = load_train_config(TINY, overrides(shards, work / "s2", "run.stage=instruct"))
    model = VimiModel(cfg.model)
    load_init(model, str(full.pipeline), cfg)             # stage 2 starts from exactly the stage-1 EMA weights
    exported = load_file(str(full.pipeline / "model.safetensors"))
    own = dict(model.named_parameters())
    assert exported and all(torch.equal(own[k], v) for k, v in exported.items())

    r = run(shards, work / "s2", f"run.init={full.pipeline}", "run.steps=3", stage="instruct")
    seen = {k for row in read_metrics(work / "s2") for k in row if k.startswith("loss/")}
    assert seen == {"loss/t2v", "loss/prediction", "loss/subject"} and r.pipeline is not None


def test_bf16_zero2_on_one_rank(shards, work):
    r = run(shards, work / "bf16", "run.steps=2", "run.deepspeed=configs/deepspeed/zero2_bf16.json", "run.export=false")
    assert r.step == 2 and all(v == v for v in r.losses.values())
    assert json.loads((work / "bf16" / "deepspeed.json").read_text())["bf16"]["enabled"] is True


# ---------------------------------------------------------------------------- launchers (subprocesses)


def clean_env() -> dict[str, str]:
    """This process's environment without the one-rank variables the in-process runs set."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    env["PYTHONPATH"] = str(ROOT)
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    return env


def launch(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = clean_env()
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_ranks_both_stages_zero3_then_zero2(shards, work):
    """deepspeed --num_gpus 2 (ZeRO-3) for stage 1, torchrun (ZeRO-2) for stage 2: two CPU ranks on gloo.

    With ema.decay=0 the EMA equals the live weights, so the export must equal the ZeRO-3
    checkpoint's consolidated weights: the EMA gathered the partitioned parameters correctly.
    """
    bindir = Path(sys.executable).parent
    s1, s2 = work / "r2s1", work / "r2s2"
    from vimi.training.distributed import free_port

    p = launch(
        [
            str(bindir / "deepspeed"),
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            "launch/pretrain.py",
            "--config",
            TINY,
            "--set",
            f"data.shards=[{shards}]",
            "run.steps=2",
            "ema.decay=0",
            "ema.warmup=false",
            "--deepspeed_config",
            "configs/deepspeed/zero3.json",
            "--out",
            str(s1),
        ]
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    state = json.loads((s1 / "checkpoints" / "step_000002" / "train_state.json").read_text())
    assert state["world_size"] == 2 and (s1 / "checkpoints" / "step_000002" / "rank_00001.json").is_file()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    live = get_fp32_state_dict_from_zero_checkpoint(str(s1 / "checkpoints"), tag="step_000002")
    exported = load_file(str(s1 / "pipeline" / "model.safetensors"))
    assert all(torch.equal(live["model." + k], v) for k, v in exported.items())

    p = launch([str(bindir / "torchrun"), "--standalone", "--nproc_per_node", "2", "launch/instruct_tune.py",
                "--config", TINY, "--set", f"data.shards=[{shards}]", "run.steps=2", "run.stage=instruct",
                "--deepspeed_config", "configs/deepspeed/zero2.json", "--out", str(s2), "--init", str(s1 / "pipeline")])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert [r["step"] for r in read_metrics(s2)] == [1, 2] and (s2 / "pipeline" / "model.safetensors").is_file()


def test_sigterm_checkpoints_then_resume_continues(shards, work):
    out = work / "killed"
    env = clean_env()
    cmd = [sys.executable, "launch/pretrain.py", "--config", TINY, "--set", *overrides(shards, out),
           "run.steps=200", "run.save_every=1000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while not read_metrics_safe(out) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout[-3000:]
    assert "stopped at step" in stdout
    step = json.loads((find_latest(out / "checkpoints") / "train_state.json").read_text())["step"]
    assert 1 <= step < 200
    r = run(shards, out, "run.steps=200", "run.save_every=1000", f"run.stop_at={step + 1}")
    assert r.step == step + 1 and set(r.losses) == {step + 1}


def read_metrics_safe(run_dir: Path) -> list[dict]:
    try:
        return read_metrics(run_dir)
    except (json.JSONDecodeError, OSError):
        return []
