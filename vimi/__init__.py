"""vimi: multimodal-instruction video generation (VIMI, Fang et al., EMNLP 2024).

    import vimi
    video = vimi.generate(task="t2v", inputs={"prompt": "a big red circle moves left on sand"},
                          pipeline="outputs/demo/pipeline", output="video.mp4")

Heavy modules (torch, transformers) load on first use, so ``import base.config`` stays light.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
_LAZY = {"generate": "vimi.pipeline", "VimiPipeline": "vimi.pipeline", "VimiModel": "vimi.model",
         "VimiConfig": "vimi.model"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vimi' has no attribute {name!r}")
