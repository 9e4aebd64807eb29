"""Load DeepSpeed's checkpoint pickles as data only: ``torch.load(weights_only=True)`` plus an allow-list.

DeepSpeed writes module, optimizer and scheduler state with ``torch.save`` and reads it back with
``torch.load(weights_only=False)``: a crafted ``*.pt`` in a run folder (run folders are copied
between machines and shared) would run arbitrary code on ``--resume``. Here every such file goes
through PyTorch's restricted unpickler, which only rebuilds tensors, containers and primitives,
plus the few plain classes DeepSpeed stores (``ALLOWED``: value holders that run no code when
rebuilt). Any other reference (``os.system``, ``builtins.eval``, a class of the attacker's choice)
is refused before a single object is built, as a CheckpointError naming the file and the reference.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

# "module.name" of every non-torch class DeepSpeed's ZeRO files hold (loss scale, ZeRO stage, fragment map).
ALLOWED = ("deepspeed.runtime.fp16.loss_scaler.LossScaler", "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
           "deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.utils.tensor_fragment.fragment_address")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read, or holds more than data (``vimi.training.checkpoint`` re-exports it)."""


def _allowed_classes() -> list[Any]:
    import importlib

    out = []
    for name in ALLOWED:
        module, attr = name.rsplit(".", 1)
        out.append(getattr(importlib.import_module(module), attr))
    return out


def _refuse(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(f"{path}: refusing to load: it is not plain tensor data ({detail}); a checkpoint "
                           "must hold no code. Resume from a trusted checkpoint (--resume PATH) or start "
                           "fresh (--resume never)")


def safe_torch_load(path: str | Path, map_location: Any = None) -> Any:
    """``torch.load`` that refuses any pickle referring to code (CheckpointError naming the file)."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_allowed_classes()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message goes on to suggest allow-listing the reference: not advice for a user here.
        ref = re.search(r"GLOBAL (\S+)", str(e))
        raise _refuse(path, f"refers to {ref.group(1)}" if ref else str(e).strip().splitlines()[0]) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else "truncated"
        raise CheckpointError(f"{path}: unreadable checkpoint file ({type(e).__name__}: {first})") from None


def check_checkpoint_files(folder: Path) -> None:
    """Refuse a checkpoint folder whose ``*.pt`` files refer to anything but tensors and ``ALLOWED``:
    a scan of the pickles' references (nothing is unpickled, no tensor read), before the model is built."""
    for f in sorted(Path(folder).glob("*.pt")):
        if not zipfile.is_zipfile(f):   # legacy torch.save format: the full restricted load checks it
            safe_torch_load(f, map_location="cpu")
            continue
        try:
            refs = torch.serialization.get_unsafe_globals_in_checkpoint(f)
        except (RuntimeError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
            raise CheckpointError(f"{f}: unreadable checkpoint file ({type(e).__name__}: {e})") from None
        bad = sorted(set(refs) - set(ALLOWED))
        if bad:
            raise _refuse(f, f"refers to {', '.join(bad)}")


def guard_engine(engine) -> None:
    """Route every load of this DeepSpeed engine through :func:`safe_torch_load` (DeepSpeed reads
    model states and ZeRO partitions, all but MoE experts, via ``engine.checkpoint_engine.load``)."""
    engine.checkpoint_engine.load = lambda path, map_location=None: safe_torch_load(path, map_location)
