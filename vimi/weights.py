"""Read safetensors weight files with one clear error naming the damaged file.

safetensors raises its own ``SafetensorError`` (or a bare OSError) for a truncated or corrupt file,
with a message that names no file; every weight file this project reads goes through here so a
damaged one is reported as ``<file>: unreadable weights (...)`` in the caller's error type.
"""
from __future__ import annotations

from pathlib import Path

import torch


def _unreadable(path: Path, e: Exception, error: type[Exception]) -> Exception:
    first = (str(e).splitlines() or [type(e).__name__])[0]
    return error(f"{path}: unreadable weights, truncated or corrupt? ({first})")


def check_safetensors(path: str | Path, error: type[Exception] = ValueError) -> None:
    """Validate a file's header and size (no tensor is read): safetensors refuses a header whose
    offsets do not cover exactly the bytes that follow it, which is what truncation looks like."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as e:  # SafetensorError is not exported as a stable type; any failure means unreadable
        raise _unreadable(path, e, error) from None


def load_safetensors(path: str | Path, error: type[Exception] = ValueError) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` raising ``error("<file>: unreadable weights ...")`` on a damaged file."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        return load_file(str(path))
    except Exception as e:  # see check_safetensors
        raise _unreadable(path, e, error) from None


def read_metadata(path: str | Path, error: type[Exception] = ValueError) -> dict[str, str]:
    """The string metadata of a safetensors header ({} when it has none)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # see check_safetensors
        raise _unreadable(path, e, error) from None
