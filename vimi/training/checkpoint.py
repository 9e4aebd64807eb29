"""Training checkpoints: DeepSpeed state + EMA + per-rank RNG and data position, committed atomically.

Layout (``RUN/checkpoints``)::

    step_000200/            DeepSpeed's files (module, optimizer/ZeRO partitions, LR scheduler)
                            ema.safetensors          rank 0: the float32 EMA of the trained weights
                            rank_00000.json          every rank: RNG states, data stream position
                            train_state.json         rank 0, written last: step, config, world size
    latest                  the tag of the newest *complete* checkpoint, replaced atomically

A checkpoint counts only once ``train_state.json`` exists and ``latest`` names it. A save that
fails midway (a full disk) leaves ``latest`` on the previous checkpoint, which stays loadable;
the half-written folder is removed by the next successful save. Nothing here runs code from a
checkpoint: our files are JSON and safetensors, and DeepSpeed's pickles are read only through
PyTorch's restricted unpickler with a short allow-list (safe_load.py), checked before the model is built.
"""
from __future__ import annotations

import base64
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from base.config import ConfigError, from_dict, to_dict
from base.io import write_text_atomic
from vimi.training.config import TrainConfig
from vimi.training.safe_load import CheckpointError, check_checkpoint_files, guard_engine

LATEST = "latest"
TRAIN_STATE = "train_state.json"
EMA_FILE = "ema.safetensors"
# Settings that decide what the saved tensors and data positions mean: a resume with any of them
# changed would fail deep inside DeepSpeed or silently train something else.
MUST_MATCH = ("model", "data.shards", "data.tasks", "data.workers", "data.shuffle_buffer", "data.max_contexts",
              "optim.micro_batch", "optim.accumulation", "run.seed", "run.stage")


class ConfigMismatchError(CheckpointError):
    """A checkpoint was written by a run with a different configuration."""


def tag_for(step: int) -> str:
    return f"step_{step:06d}"


def step_of(tag: str) -> int:
    return int(tag.rsplit("_", 1)[1])


# ---------------------------------------------------------------------------- RNG states


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) global RNG states as JSON-safe values."""
    py = random.getstate()
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    out = {"python": [py[0], list(py[1]), py[2]],
           "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
           "torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available():
        out["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    v, keys, gauss = state["python"]
    random.setstate((v, tuple(keys), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch global RNGs (dropout and anything else not seeded per sample)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------- config check


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def with_defaults(cls: type, saved: dict) -> dict:
    """A saved config dict as ``cls`` loads it now: a setting added after it was written takes its default, which
    is how that run ran; if it holds a setting this version does not know, it stays as written, so the
    comparison names it."""
    try:
        return to_dict(from_dict(cls, saved, "saved config"))
    except ConfigError:
        return saved


def config_differences(saved: dict, current: dict, saved_label: str = "checkpoint") -> tuple[list[str], list[str]]:
    """(blocking, harmless) differences between two config dicts, as 'key: saved != current'."""
    a, b = flatten(saved), flatten(current)
    blocking, harmless = [], []
    for k in sorted(set(a) | set(b)):
        if a.get(k, "<absent>") == b.get(k, "<absent>"):
            continue
        line = f"{k}: {a.get(k, '<absent>')!r} ({saved_label}) != {b.get(k, '<absent>')!r} (this run)"
        (blocking if any(k == m or k.startswith(m + ".") for m in MUST_MATCH) else harmless).append(line)
    return blocking, harmless


# ---------------------------------------------------------------------------- find / save / load


def find_latest(root: Path) -> Path | None:
    """The newest complete checkpoint folder under ``root`` (``latest`` pointer), or None."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if not (path / TRAIN_STATE).is_file():
        raise CheckpointError(f"{pointer} names {path.name}, which is not a complete checkpoint")
    return path


def resolve_resume(spec: str, root: Path) -> Path | None:
    """run.resume -> checkpoint folder: "auto" (this run's latest, if any), "never", or a path."""
    if spec == "never":
        return None
    if spec == "auto":
        return find_latest(root)
    p = Path(spec).expanduser()
    if (p / TRAIN_STATE).is_file():
        return p
    found = find_latest(p) if p.is_dir() else None
    if found is None:
        raise CheckpointError(f"run.resume={spec!r}: no complete checkpoint there (no {TRAIN_STATE} or {LATEST})")
    return found


def save(engine, root: Path, step: int, *, rank: int, world_size: int, config: dict, rank_state: dict,
         ema=None, keep: int = 2, barrier=None, layout: dict | None = None) -> Path:
    """Write checkpoint ``step`` on every rank (collective); commit it on rank 0. Raises
    CheckpointError when any file cannot be written (the previous checkpoint stays the latest)."""
    tag = tag_for(step)
    path = root / tag
    try:
        if rank == 0 and path.exists():
            shutil.rmtree(path)  # a leftover of a failed save of the same step
        engine.save_checkpoint(str(root), tag=tag, save_latest=False)
        write_text_atomic(path / f"rank_{rank:05d}.json", json.dumps({"rng": rng_state(), **rank_state}))
        if rank == 0 and ema is not None and ema.average is not None:
            from safetensors.torch import save_file

            save_file(ema.state_dict(), str(path / EMA_FILE), metadata={"updates": str(ema.updates)})
        if barrier is not None:
            barrier()  # every rank's files are on disk before rank 0 commits
        if rank == 0:
            write_text_atomic(path / TRAIN_STATE, json.dumps(
                {"step": step, "world_size": world_size, "ema_updates": ema.updates if ema is not None else 0,
                 "layout": layout or {}, "config": config}, indent=1))
            write_text_atomic(root / LATEST, tag)  # the commit point
            prune(root, keep)
    except OSError as e:
        raise CheckpointError(f"writing checkpoint {path} failed ({e}); {find_latest(root) or 'no earlier checkpoint'} "
                              "is still the latest, resume from it once there is space") from e
    return path


def prune(root: Path, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints; drop older ones and failed partial saves."""
    latest = find_latest(root)
    dirs = sorted((p for p in root.glob("step_*") if p.is_dir()), key=lambda p: step_of(p.name))
    complete = [
        p for p in dirs if (p / TRAIN_STATE).is_file() and (latest is None or step_of(p.name) <= step_of(latest.name))
    ]
    keep_set = set(complete[-keep:]) | ({latest} if latest else set())
    for p in dirs:
        if p not in keep_set:
            shutil.rmtree(p, ignore_errors=True)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint file ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_train_state(path: Path, config: dict, world_size: int, layout: dict | None = None) -> dict:
    """train_state.json of a checkpoint, after checking it belongs to a run with this config, world
    size and DeepSpeed layout (``{"zero_stage", "precision"}``: how the optimizer state is sharded)."""
    state = _read_json(path / TRAIN_STATE)
    check_checkpoint_files(path)
    blocking, harmless = config_differences(with_defaults(TrainConfig, state["config"]), config)
    if state["world_size"] != world_size:
        blocking.insert(0, f"world_size: {state['world_size']} (checkpoint) != {world_size} (this run)")
    for key, value in (layout or {}).items():
        saved = state.get("layout", {}).get(key, value)
        if saved != value:
            blocking.insert(0, f"deepspeed {key}: {saved!r} (checkpoint) != {value!r} (this run)")
    if blocking:
        raise ConfigMismatchError(
            f"checkpoint {path} was written by a run with a different config:\n  " + "\n  ".join(blocking)
            + "\nuse the same config, or start fresh with --set run.resume=never (or another run.out)")
    state["harmless_differences"] = harmless
    return state


def load(engine, path: Path, *, rank: int, ema=None, ema_updates: int = 0) -> dict:
    """Restore engine (module, optimizer, scheduler), EMA (rank 0) and this rank's RNG; returns the
    rank's saved state (data position)."""
    guard_engine(engine)
    load_path, _ = engine.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=True,
                                          load_optimizer_states=True, load_lr_scheduler_states=True)
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load {path}")
    rank_file = path / f"rank_{rank:05d}.json"
    if not rank_file.is_file():
        raise CheckpointError(f"{rank_file} is missing (was the checkpoint written with fewer ranks?)")
    rank_state = _read_json(rank_file)
    if ema is not None:
        from vimi.weights import load_safetensors

        ema.load_state_dict(load_safetensors(path / EMA_FILE, CheckpointError) if ema.average is not None else {},
                            ema_updates)
    set_rng_state(rank_state.pop("rng"))
    return rank_state
