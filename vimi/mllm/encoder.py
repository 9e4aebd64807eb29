"""MLLM encoder: interleaved prompt -> conditioning tokens C for the video backbone.

VIMI (Fang et al., EMNLP 2024, sec. 3) feeds the multimodal instruction through a frozen MLLM
and conditions the diffusion model on its hidden states over the *whole* interleaved sequence.
Here the MLLM is any LLaVA-family ``transformers`` folder (vision tower + projector + causal LM,
with its processor), loaded from a local path with ``from_pretrained``. C = hidden states of
``cfg.layer``, normalised and projected by a trainable Linear to the backbone width, with a
padding mask (True = valid). Frozen is the default (as in VIMI); LoRA (peft) and full tuning are
options. A learned null sequence stands in for C when conditioning is dropped for
classifier-free guidance.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import nn

from vimi.diffusion.guidance import drop_conditions
from vimi.mllm.prompt import Prompt
from vimi.mllm.sequence import PromptTokenizer, TokenizedPrompt
from vimi.mllm.tiny import TinyLlavaConfig, build_tiny_llava, save_llava
from vimi.models.layers import Attention, FeedForward

log = logging.getLogger(__name__)

TUNINGS = ("frozen", "lora", "full")


class MLLMLoadError(ValueError):
    """The MLLM folder is missing, not local, or not a LLaVA-family model."""


@dataclass
class MLLMConfig:
    path: str = ""               # local LLaVA folder (llava-hf layout); "" = built-in tiny default (untrained)
    layer: int = -2              # hidden_states index of the LM (0 = embeddings, -1 = last); negative ok
    max_length: int = 256        # longest token sequence; retrieved pairs are dropped first (sequence.py)
    tuning: str = "frozen"       # "frozen" (VIMI) | "lora" (peft) | "full"
    lora_r: int = 8              # LoRA rank
    lora_alpha: int = 16         # LoRA scale numerator (scale = alpha / r)
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])  # LM modules only
    image_size: int = 32  # vision input of the built-in tiny default (path=""); a real folder's processor decides
    seed: int = 0                # weights of the built-in tiny default; the token codes
    null_tokens: int = 1         # length of the learned null condition (classifier-free guidance)
    normalize: bool = True       # LayerNorm (no affine) before the projection; LLM states have outlier channels
    dtype: str = "float32"       # MLLM weights: float32 | bfloat16 | float16 (the projection stays float32)
    cache_prompts: int = 8192    # frozen MLLM: hidden states of this many distinct prompts kept in memory (0 = off)
    refiner_layers: int = 0      # trainable bidirectional transformer layers over the projected states (0 = off)
    refiner_heads: int = 4
    # C opens with one extra token, the mean of the caption's C tokens, for a backbone's pooled summary
    # (UNetConfig.cond_pool = "first"): a plain mean over a VIMI prompt is mostly instruction and
    # retrieved pictures, and diluting it costs half the learning (docs/learning.md).
    caption_summary: bool = False
    # ... plus the mean of the prompt's pictures, each mean at full weight: a subject prompt names its subject only
    # in its picture ("A <image> moves left"), and with the caption's mean alone FiLM never sees it (the long
    # run's subject task: seen subjects 0.94 -> 0.13). "in_caption": the pictures standing inside the caption
    # (the subject's reference); "all": prediction's given frames too. docs/learning.md, "The long run".
    summary_images: Literal["none", "in_caption", "all"] = "none"
    # ... in a token of its own (C's second, masked where a prompt has no such picture) instead of added to the
    # caption's: the backbone norms each token, so a picture added at full weight shrinks the caption's share,
    # motion word included (docs/learning.md, "The long run"). The U-Net then reads it (UNetConfig.summary_tokens).
    picture_token: bool = False
    # Beside each text token's state, a fixed random code of its id (no state at all: the generator's
    # own "word embedding"), for a frozen MLLM whose word states are hard to tell apart (docs/learning.md).
    token_codes: bool = False


def load_llava(path: str | Path, dtype: str = "float32"):
    """Local LLaVA folder -> (LlavaForConditionalGeneration, processor). Never touches a hub."""
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    import vimi.mllm.conv_stem  # noqa: F401  registers the tiny tower's model type before a folder names it
    from vimi.weights import check_safetensors

    p = Path(path).expanduser()
    if not p.is_dir() or not (p / "config.json").is_file():
        raise MLLMLoadError(
            f"MLLM path {str(path)!r} is not a local folder with a config.json (hub names are not loaded)"
        )
    try:
        config = AutoConfig.from_pretrained(p, local_files_only=True)
    except (OSError, ValueError) as e:  # unparsable config.json, unknown model type
        raise MLLMLoadError(f"{p / 'config.json'}: not a readable model config ({str(e).splitlines()[0]})") from None
    if getattr(config, "model_type", None) != "llava":
        raise MLLMLoadError(
            f"{p}: model_type {getattr(config, 'model_type', None)!r} is not 'llava' (LlavaForConditionalGeneration)"
        )
    if dtype not in ("float32", "bfloat16", "float16"):
        raise MLLMLoadError(f"unknown MLLM dtype {dtype!r}")
    for f in sorted(p.glob("*.safetensors")):  # transformers would report a damaged file without its name
        check_safetensors(f, MLLMLoadError)
    model = LlavaForConditionalGeneration.from_pretrained(p, dtype=getattr(torch, dtype), local_files_only=True)
    processor = AutoProcessor.from_pretrained(p, local_files_only=True)
    return model, processor


@torch.no_grad()
def count_image_tokens(llava, processor) -> int:
    """Features per image as LLaVA computes them (tower patches, CLS kept or dropped by strategy)."""
    from PIL import Image

    pixels = processor.image_processor(images=[Image.new("RGB", (8, 8))], return_tensors="pt")["pixel_values"]
    device = next(llava.parameters()).device
    out = llava.model.get_image_features(pixel_values=pixels.to(device, llava.dtype), return_dict=True)
    feats = out.pooler_output if hasattr(out, "pooler_output") else out  # transformers 5 | 4
    return int(feats[0].shape[0])


_TINY_DEFAULTS: dict[tuple[int, int], tempfile.TemporaryDirectory] = {}


def _tiny_default(seed: int, image_size: int) -> Path:
    """Folder of the built-in tiny LLaVA, built once per process and removed at exit.

    Built to disk and loaded back so the default takes exactly a user's llava-1.5 path.
    """
    key = (seed, image_size)
    if key not in _TINY_DEFAULTS:
        tmp = tempfile.TemporaryDirectory(prefix="vimi-tiny-llava-")
        build_tiny_llava(tmp.name, seed, TinyLlavaConfig(image_size=image_size))
        _TINY_DEFAULTS[key] = tmp
    return Path(_TINY_DEFAULTS[key].name)


def prompt_key(prompt: Prompt) -> str:
    """A digest of everything the MLLM reads from a prompt: segment roles, texts and image pixels."""
    h = hashlib.blake2b(digest_size=16)
    for seg in prompt:
        h.update(seg.role.encode())
        if seg.image is not None:
            h.update(f"{seg.image.mode}{seg.image.size}".encode())
            h.update(seg.image.tobytes())
        else:
            h.update(b"\0" + seg.text.encode() + b"\0")
    return h.hexdigest()


def _pad_hidden(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(L_i, H)] -> (H (B, L, H) zero-padded on the right, mask (B, L) bool True=valid)."""
    if not rows:
        raise ValueError("_pad_hidden needs at least one row")
    L = max(r.shape[0] for r in rows)
    out = rows[0].new_zeros(len(rows), L, rows[0].shape[-1])
    mask = torch.zeros(len(rows), L, dtype=torch.bool, device=rows[0].device)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = True
    return out, mask


class _Stop(Exception):
    """Raised by ``_stop_before``'s hook once the wanted state is in hand."""


@contextlib.contextmanager
def _stop_before(layer: nn.Module | None):
    """Within the block, a forward that reaches ``layer`` stops there; the layer's input lands in the yielded list.

    The layers after the state C is read from change nothing in C (nor its gradients), so they need not run."""
    caught: list[torch.Tensor] = []
    if layer is None:
        yield caught
        return

    def hook(module, args, kwargs):
        caught.append(args[0] if args else kwargs["hidden_states"])
        raise _Stop

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield caught
    except _Stop:
        pass
    finally:
        handle.remove()


class RefinerBlock(nn.Module):
    """A pre-norm transformer layer over the projected states, trained while the MLLM stays frozen.

    LLM-conditioned image generators put a few such trainable layers between a frozen decoder-only
    LM and the denoiser (LI-DiT's refiner, Lumina-Next's): a causal LM's states at a word are mostly
    its prediction of the next word, and a bidirectional layer can gather what each word is from
    the whole prompt. Output projections start at zero, so a new refiner passes C through unchanged.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, dim, dim, heads, qk_norm=True)
        self.ff = FeedForward(dim, 2.0)
        for last in (self.attn.proj, self.ff[-1]):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, c: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(c)
        c = c + self.attn(h, h, mask)
        return c + self.ff(self.norm2(c))


class MLLMEncoder(nn.Module):
    """Wraps a LLaVA model: ``encode(prompts) -> (C (B, L, out_dim), mask (B, L) bool)``."""

    def __init__(self, cfg: MLLMConfig, out_dim: int):
        super().__init__()
        if cfg.tuning not in TUNINGS:
            raise ValueError(f"MLLMConfig.tuning must be one of {TUNINGS}, got {cfg.tuning!r}")
        if cfg.null_tokens < 1:
            raise ValueError(f"MLLMConfig.null_tokens must be >= 1, got {cfg.null_tokens}")
        if cfg.refiner_layers < 0 or (cfg.refiner_layers and out_dim % cfg.refiner_heads):
            raise ValueError(f"MLLMConfig: refiner_layers must be >= 0 and out_dim {out_dim} divisible by "
                             f"refiner_heads {cfg.refiner_heads}")
        self.cfg = cfg
        if cfg.path:
            self.source = Path(cfg.path).expanduser()
        else:
            log.warning("MLLMConfig.path is empty: using an untrained tiny LLaVA (seed %d); "
                        "align one with `python -m vimi.mllm.align` for a meaningful frozen encoder", cfg.seed)
            self.source = _tiny_default(cfg.seed, cfg.image_size)
        self.llava, self.processor = load_llava(self.source, cfg.dtype)
        text_cfg = self.llava.config.text_config
        n_states = text_cfg.num_hidden_layers + 1  # hidden_states = embeddings + one per layer
        if not -n_states <= cfg.layer < n_states:
            raise ValueError(f"MLLMConfig.layer={cfg.layer} out of range for {n_states} hidden states")

        # hidden_states[n] below the last is the input of decoder layer n, so the layers from n on are not run (the
        # ShapeWorld default reads n = 0). Kept as an index: a module attribute would register its weights twice.
        self._exit_index = cfg.layer % n_states
        self.hidden_size = text_cfg.hidden_size
        self.out_dim = out_dim
        self.norm = nn.LayerNorm(self.hidden_size, elementwise_affine=False) if cfg.normalize else nn.Identity()
        self.proj = nn.Linear(self.hidden_size, out_dim)  # always trained, even with a frozen MLLM
        self.null = nn.Parameter(torch.randn(cfg.null_tokens, out_dim) * 0.02)  # (N_null, D)
        self.refiner = nn.ModuleList(RefinerBlock(out_dim, cfg.refiner_heads) for _ in range(cfg.refiner_layers))
        self._setup_tuning()

        tok = self.processor.tokenizer
        self.sequencer = PromptTokenizer(
            tok, image_token_id=self.llava.config.image_token_id,
            n_image_tokens=count_image_tokens(self.llava, self.processor),
            max_length=cfg.max_length, bos_token_id=tok.bos_token_id,
        )
        self.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # prompt key -> (L, H) states (frozen only)
        self._codes: dict[int, torch.Tensor] = {}   # token id -> its fixed random code (cfg.token_codes)

    # ------------------------------------------------------------------ setup
    def _setup_tuning(self) -> None:
        cfg = self.cfg
        self.llava.requires_grad_(cfg.tuning == "full")
        if cfg.tuning == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            # LoRA on the language model only: the vision tower has q/k/v projections of the same names.
            targets = "|".join(cfg.lora_targets)
            lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=rf".*language_model.*\.({targets})")
            inject_adapter_in_model(lora, self.llava)
        if cfg.tuning == "frozen":
            self.llava.eval()

    def train(self, mode: bool = True) -> "MLLMEncoder":
        super().train(mode)
        if self.cfg.tuning == "frozen":
            self.llava.eval()  # a frozen MLLM stays in eval mode (no dropout) inside a training model
        return self

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return self.proj.weight.device

    @property
    def n_image_tokens(self) -> int:
        return self.sequencer.n_image_tokens

    def _pixels(self, images) -> torch.Tensor:
        pv = self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        return pv.to(self.device, self.llava.dtype)  # (N, 3, S, S)

    def _exit_layer(self) -> nn.Module | None:
        layers = getattr(getattr(self.llava.model, "language_model", None), "layers", None)
        return layers[self._exit_index] if layers is not None and self._exit_index < len(layers) else None

    def tokenize(self, prompts: Sequence[Prompt]) -> list[TokenizedPrompt]:
        return [self.sequencer(p) for p in prompts]

    # ------------------------------------------------------------------ encoding
    def hidden(self, prompts: Sequence[Prompt]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (MLLM hidden states of cfg.layer (B, L, H), mask (B, L) bool).

        A frozen MLLM maps a prompt to the same states every time, so they are computed once per
        distinct prompt and kept (LRU, ``cfg.cache_prompts`` entries): a training step then costs
        the backbone and the projection only, however often a caption and its retrieved pairs recur.
        """
        if not prompts:
            raise ValueError("encode needs at least one prompt")
        if self.cfg.tuning != "frozen" or self.cfg.cache_prompts <= 0:
            return self._hidden(prompts)
        keys = [prompt_key(p) for p in prompts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if missing:
            first = {k: p for k, p in zip(keys, prompts)}
            h, m = self._hidden([first[k] for k in missing])
            for i, k in enumerate(missing):
                self._cache[k] = h[i, m[i]].detach()
        rows = []
        for k in keys:
            self._cache.move_to_end(k)
            rows.append(self._cache[k])
        while len(self._cache) > self.cfg.cache_prompts:
            self._cache.popitem(last=False)
        return _pad_hidden(rows)

    def _hidden(self, prompts: Sequence[Prompt]) -> tuple[torch.Tensor, torch.Tensor]:
        toks = self.tokenize(prompts)
        B, L = len(toks), max(len(t.ids) for t in toks)
        ids = torch.full((B, L), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(B, L, dtype=torch.bool)
        for i, t in enumerate(toks):  # right padding: causal attention never lets valid tokens see pads
            ids[i, : len(t.ids)] = torch.tensor(t.ids)
            mask[i, : len(t.ids)] = True
        ids, mask = ids.to(self.device), mask.to(self.device)
        images = [im for t in toks for im in t.images]  # LLaVA scatters features in row-major token order
        pixels = self._pixels(images) if images else None
        grad = contextlib.nullcontext() if self.cfg.tuning != "frozen" else torch.no_grad()
        with grad, _stop_before(self._exit_layer()) as caught:
            out = self.llava.model(
                input_ids=ids, pixel_values=pixels, attention_mask=mask.long(), output_hidden_states=True
            )
        if caught:
            return caught[0], mask
        return out.hidden_states[self.cfg.layer], mask  # (B, L, H), (B, L)

    def project(self, hidden: torch.Tensor, mask: torch.Tensor,
                toks: Sequence[TokenizedPrompt] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, H) hidden states (+ the prompts' tokens, for token codes and the caption summary)
        -> (C (B, L(+1), out_dim) float32, zero at padding, mask)."""
        c = self.proj(self.norm(hidden.to(self.proj.weight.dtype)))
        if self.cfg.token_codes:
            c = c + self._token_codes(toks, c.shape[1])
        for block in self.refiner:
            c = block(c, mask)
        c = c * mask.unsqueeze(-1).to(c.dtype)
        if self.cfg.caption_summary:
            summary, _ = self._role_mean(c, toks, ("caption",))                               # (B, 1, D)
            heads, head_mask = [summary], [mask[:, :1]]
            if self.cfg.summary_images != "none":
                roles = ("caption_image", "task_image") if self.cfg.summary_images == "all" else ("caption_image",)
                pictures, has = self._role_mean(c, toks, roles)
                if self.cfg.picture_token:
                    heads, head_mask = heads + [pictures], head_mask + [has]
                else:
                    heads[0] = summary + pictures
            c, mask = torch.cat([*heads, c], 1), torch.cat([*head_mask, mask], 1)
        return c, mask

    @staticmethod
    def _role_mean(c: torch.Tensor, toks: Sequence[TokenizedPrompt],
                   roles: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, D): the mean of each prompt's C tokens of ``roles`` (zero where it has none); (B, 1): has any."""
        w = c.new_zeros(c.shape[0], c.shape[1], 1)
        for i, t in enumerate(toks):
            w[i, : len(t.roles), 0] = torch.tensor([r in roles for r in t.roles], dtype=c.dtype)
        n = w.sum(1, keepdim=True)
        return (c * w).sum(1, keepdim=True) / n.clamp(min=1.0), n[:, :, 0] > 0

    def encode(self, prompts: Sequence[Prompt]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (C (B, L, out_dim), mask (B, L) bool True=valid)."""
        toks = self.tokenize(prompts) if (self.cfg.token_codes or self.cfg.caption_summary) else ()
        return self.project(*self.hidden(prompts), toks)

    def _token_codes(self, toks: Sequence[TokenizedPrompt], length: int) -> torch.Tensor:
        """(B, length, out_dim): each text token's fixed random code, zero at image tokens and padding.

        Codes are drawn from (seed, token id) when a token is first seen, so nothing is stored and a
        real LLaVA's 32k-word vocabulary costs only the tokens its prompts use."""
        image = self.llava.config.image_token_id
        out = torch.zeros(len(toks), length, self.out_dim, device=self.device)
        for i, t in enumerate(toks):
            text = [j for j, tid in enumerate(t.ids) if tid != image]
            for tid in {t.ids[j] for j in text} - self._codes.keys():
                g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + tid)
                self._codes[tid] = torch.randn(self.out_dim, generator=g).to(self.device)
            if text:
                out[i, text] = torch.stack([self._codes[t.ids[j]] for j in text])
        return out

    forward = encode

    # ------------------------------------------------------------------ classifier-free guidance
    def null_condition(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Learned null condition -> (C (B, N_null, out_dim), mask (B, N_null) all True)."""
        c = self.null.unsqueeze(0).expand(batch, -1, -1)
        return c, torch.ones(batch, self.null.shape[0], dtype=torch.bool, device=self.null.device)

    def drop_condition(
        self, c: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Classifier-free dropout: rows where ``drop`` (B,) bool is True get the null condition
        (``vimi.diffusion.drop_conditions``; the shorter of the two sequences is padded, mask False)."""
        null_c, null_mask = self.null_condition(c.shape[0])
        out = drop_conditions({"cond": c, "cond_mask": mask}, {"cond": null_c.to(c.dtype), "cond_mask": null_mask},
                              keep=~drop.to(c.device).bool())
        return out["cond"], out["cond_mask"]

    # ------------------------------------------------------------------ parameters and saving
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Projection + null tokens, plus LoRA weights (tuning=lora) or the whole MLLM (tuning=full)."""
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must store beside the MLLM folder (which stays as loaded unless tuning=full)."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        expected = {n for n, p in own.items() if p.requires_grad}
        if set(state) != expected:
            raise KeyError(f"trainable state mismatch: missing {sorted(expected - set(state))[:5]}, "
                           f"unexpected {sorted(set(state) - expected)[:5]}")
        with torch.no_grad():
            for n, v in state.items():
                own[n].copy_(v)

    def save_mllm(self, out: str | Path) -> Path:
        """Write the MLLM folder this encoder needs (frozen/LoRA: the source unchanged; full: tuned weights)."""
        out = Path(out)
        if self.cfg.tuning == "full":
            return save_llava(self.llava, self.processor, out)
        shutil.copytree(self.source, out, dirs_exist_ok=True)
        return out
