"""MLLM side of VIMI: multimodal instruction prompts, the LLaVA encoder, the tiny offline default.

- ``prompt``: Segment lists and the instruction templates (pretrain / t2v / prediction / subject);
- ``sequence``: prompt -> LLaVA token ids, truncation by role;
- ``encoder``: ``MLLMConfig``, ``MLLMEncoder`` (C, mask), null condition for guidance;
- ``tiny``: the tiny LLaVA built from config; ``align``: its captioning alignment CLI.
"""
from vimi.mllm.encoder import MLLMConfig, MLLMEncoder, MLLMLoadError, load_llava, prompt_key
from vimi.mllm.prompt import (
    IMAGE_TOKEN,
    Prompt,
    PromptError,
    Segment,
    pretrain_prompt,
    render_text,
    task_prompt,
)
from vimi.mllm.sequence import PromptTokenizer, PromptTooLongError
from vimi.mllm.tiny import TinyLlavaConfig, build_tiny_llava, tiny_llava

__all__ = [
    "IMAGE_TOKEN", "MLLMConfig", "MLLMEncoder", "MLLMLoadError", "Prompt", "PromptError",
    "PromptTokenizer", "PromptTooLongError", "Segment", "TinyLlavaConfig", "build_tiny_llava", "load_llava",
    "pretrain_prompt", "prompt_key", "render_text", "task_prompt", "tiny_llava",
]
