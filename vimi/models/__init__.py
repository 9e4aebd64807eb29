"""Backbones. ``FIT`` is Snap Video's far-reaching interleaved transformer (see :mod:`vimi.models.fit`).

Names are resolved lazily so that ``python -m vimi.models.fit`` runs the module only once.
"""
import importlib

_EXPORTS = {"FIT", "FITConfig", "FIT_CONFIGS", "FITInputError", "build_fit", "fit_config", "count_parameters"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module("vimi.models.fit"), name)
    raise AttributeError(f"module 'vimi.models' has no attribute {name!r}")
