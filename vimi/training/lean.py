"""A lean trainer for recipe studies: ShapeWorld clips rendered on the fly, one process, no shards.

The full pipeline (shards → MLLM → DeepSpeed) is the product; this module is the instrument that
finds out *whether and how fast a recipe learns*. It trains the project's own pieces — a backbone
from ``vimi.models``, ``EDMPrecond``, ``EDMLoss``, the Heun sampler with classifier-free guidance —
on an endless stream of freshly rendered training clips, and scores samples on fresh eval clips
with the project's ShapeWorld scorer at fixed budgets of clips seen. ``benchmarks/learning.py``
compares named recipes with it, and a CI test uses it to guard that the default recipe learns.

Conditioning is either ``words`` (each caption word → a learned embedding: isolates the diffusion
recipe from the MLLM) or ``mllm`` (the project's MLLM encoder, frozen, over the task's
interleaved prompt; subject references with ``subject_task``, no retrieved pictures: ``MLLMConditioner``).
With ``autoencoder`` set (latent mode, vimi.models.autoencoder) the diffusion runs on the latents of
the clips and samples are decoded before scoring.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from base.io import atomic_path
from base.pixels import to_model_video, to_uint8_video
from data_pipelines.shapeworld import sampling, spec
from data_pipelines.shapeworld.captions import subject_prompt, video_caption
from data_pipelines.shapeworld.render import ClipParams, render_clip, render_image
from data_pipelines.shapeworld.world import (
    SUBJECT_NAMES,
    WorldConfig,
    eval_params,
    is_novel,
    reference_params,
    train_video_params,
)
from vimi.diffusion import EDMConfig, EDMLoss, EDMPrecond, GuidedDenoiser, SamplerConfig, edm_sampler
from vimi.diffusion.loss import foreground_mask, off_median_mask
from vimi.diffusion.rng import share_across_frames
from vimi.eval.shapeworld import analyze, score
from vimi.models import backbone_config, build_backbone, frame_condition
from vimi.models.autoencoder import load_autoencoder
from vimi.training.optim import WarmupCosine
from vimi.weights import load_safetensors


@dataclass
class LeanConfig:
    """One recipe: backbone, EDM settings, optimisation, and how it is sampled for scoring."""

    backbone: str = "unet-s"                                   # a named size of vimi.models
    backbone_args: dict[str, Any] = field(default_factory=dict)
    edm: EDMConfig = field(default_factory=lambda: EDMConfig(sigma_data=0.5, sigma_in=1.0))
    lr: float = 1e-3                  # Adam learning rate after warm-up
    warmup_clips: int = 1000          # linear warm-up, in clips
    # Cosine decay to min_lr_ratio·lr at this many clips, as the pipeline's stages decay over their run
    # (vimi.training.optim.WarmupCosine); 0 keeps the rate constant after warm-up.
    decay_clips: int = 0
    min_lr_ratio: float = 0.1
    batch: int = 16                   # clips per optimizer step
    ema_halflife_clips: int = 2000    # EMA half-life in clips (EDM's ema_halflife_kimg, scaled down)
    ema_rampup: float = 0.1           # ... at most this share of the clips seen so far (EDM's ema_rampup_ratio)
    grad_clip: float = 1.0
    pred_fraction: float = 0.25       # share of training clips given their first frame (prediction task)
    given_frames: int = 1             # frames given to the prediction task
    frames: int = 8
    size: int = 32
    # How samples are drawn for scoring: 12 Heun steps as in the demo's eval; guidance 2 (docs/learning.md).
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(num_steps=12, guidance_scale=2.0))
    seed: int = 0
    hold_given_frame: bool = True     # frames after the given ones see the last given frame (vimi.models)
    conditioning: str = "words"       # "words" (text-only instrument) | "mllm" (the project's encoder, frozen)
    mllm: str = ""                    # MLLM folder for conditioning="mllm" ("" = the untrained tiny default)
    mllm_args: dict[str, Any] = field(default_factory=dict)   # MLLMConfig overrides (layer, refiner_layers, ...)
    autoencoder: str = ""             # latent mode: a trained vimi.models.autoencoder folder ("" = pixels)
    # A narrowed world for ablations: when set, every training and t2v-seen/prediction eval clip is an object
    # of one of these "colour shape" pairs (no subjects), motion, size, place and scene drawn as usual. With
    # one pair, only the motion word (and size, scene) is left to learn: "cannot learn motion" or "learns it
    # last"? (docs/learning.md, "Motion words").
    compositions: tuple[str, ...] = ()
    # VIMI's subject-driven task (sec. 3.2): this share of the training clips of a seen subject that are not given
    # frames are prompted "A <image> moves left on sand" with one of the subject's reference pictures, and
    # the eval adds the "subject" split (every subject, seen and novel, from its reference). The picture is
    # read by the MLLM only: it needs conditioning "mllm".
    subject_task: float = 0.0


# ----------------------------------------------------------------------------------------------
# Conditioning: caption words -> tokens (the text-only instrument)
# ----------------------------------------------------------------------------------------------

def shapeworld_vocabulary() -> list[str]:
    words = {"a", "<null>", "<unk>"}
    for phrase in [*spec.SCENES, *spec.MOTIONS, *spec.COLORS, *spec.SHAPES, *spec.SIZES, *spec.SUBJECTS]:
        words.update(phrase.lower().split())
    return sorted(words)


class WordConditioner(nn.Module):
    """Caption -> (C (B, L, D), mask (B, L)): a learned embedding per word plus a learned position."""

    def __init__(self, dim: int, max_words: int = 12):
        super().__init__()
        self.vocab = {w: i for i, w in enumerate(shapeworld_vocabulary())}
        self.embed = nn.Embedding(len(self.vocab), dim)
        self.pos = nn.Parameter(torch.zeros(max_words, dim))
        self.max_words = max_words
        nn.init.normal_(self.embed.weight, std=1.0)

    def forward(self, captions: list[str | None], first_frames: list | None = None,
                references: list | None = None) -> tuple[Tensor, Tensor]:
        """None = the null condition (classifier-free guidance); words only, so given frames are ignored."""
        if references and any(r is not None for r in references):
            raise ValueError("caption words cannot read a subject's reference picture: the subject task needs "
                             "conditioning 'mllm'")
        ids = [[self.vocab.get(w, self.vocab["<unk>"]) for w in (c or "<null>").lower().split()][: self.max_words]
               for c in captions]
        L = max(len(i) for i in ids)
        tok = torch.full((len(ids), L), self.vocab["<null>"], dtype=torch.long)
        mask = torch.zeros((len(ids), L), dtype=torch.bool)
        for b, row in enumerate(ids):
            tok[b, : len(row)] = torch.tensor(row)
            mask[b, : len(row)] = True
        return self.embed(tok) + self.pos[:L], mask


class MLLMConditioner(nn.Module):
    """The project's MLLM encoder (frozen; states cached per distinct prompt) over the task's instruction.

    t2v reads "Generate a video with the retrieved text-image pairs." + caption with no retrieved
    pairs (K = 0: the lean trainer has no memory); prediction reads its caption and first frame; the
    subject task its caption with the reference picture in place of ``<image>``.
    """

    def __init__(self, path: str, dim: int, **overrides):
        super().__init__()
        from vimi.mllm import MLLMConfig, MLLMEncoder

        self.encoder = MLLMEncoder(MLLMConfig(path=path, **overrides), out_dim=dim)

    def forward(self, captions: list[str | None], first_frames: list | None = None,
                references: list | None = None) -> tuple[Tensor, Tensor]:
        from vimi.mllm import task_prompt

        def prompt(c: str | None, first, reference):
            if reference is not None and c is not None:
                return task_prompt("subject", c, images=[reference])
            if first is not None:
                return task_prompt("prediction", c or "a", images=[first])
            return task_prompt("t2v", c or "a")   # a null row's prompt is replaced by the null condition below

        firsts = first_frames or [None] * len(captions)
        refs = references or [None] * len(captions)
        prompts = [prompt(c, f, r) for c, f, r in zip(captions, firsts, refs)]
        c, mask = self.encoder.encode(prompts)
        return self.encoder.drop_condition(c, mask, torch.tensor([cap is None for cap in captions]))


# ----------------------------------------------------------------------------------------------
# Data: clips rendered on the fly
# ----------------------------------------------------------------------------------------------

def first_frames(video: Tensor, k: Tensor) -> list[np.ndarray | None]:
    """Frame 0 (uint8) of the clips that are given frames, None for the others (the MLLM's prompt image)."""
    return [to_uint8_video(v[:, :1])[0] if int(n) > 0 else None for v, n in zip(video, k)]


def record_of(p: ClipParams, split: str, task: str, k: int) -> dict:
    return {"split": split, "task": task, "scene": p.scene, "color": p.color, "shape": p.shape, "size": p.size,
            "subject": p.subject, "motion": p.motion, "num_cond_frames": k}


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------

class LeanTrainer:
    """Trains one recipe in memory; :meth:`train_to` advances to a budget of clips, :meth:`evaluate` scores."""

    def __init__(self, cfg: LeanConfig, conditioner: nn.Module | None = None):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        # Latent mode: diffusion runs on the autoencoder's latents, frame by frame (B, c, T, H/f, W/f).
        self.ae = load_autoencoder(cfg.autoencoder) if cfg.autoencoder else None
        derived = {}
        side = cfg.size
        if self.ae is not None:
            c = self.ae.config.latent_channels
            derived = {"in_channels": c, "frame_cond_channels": c + 1}
            side = cfg.size // self.ae.config.factor
        if cfg.conditioning == "mllm" and cfg.mllm_args.get("picture_token"):
            derived["summary_tokens"] = 2    # the picture's own FiLM token, derived as VimiConfig.backbone_config does
        bb = backbone_config(cfg.backbone, **{**cfg.backbone_args, **derived})
        if conditioner is None and cfg.conditioning not in ("words", "mllm"):
            raise ValueError(f"LeanConfig.conditioning must be 'words' or 'mllm', got {cfg.conditioning!r}")
        if cfg.subject_task and (cfg.conditioning != "mllm" or not 0 < cfg.subject_task <= 1):
            raise ValueError(f"LeanConfig.subject_task must be in [0, 1] and needs conditioning 'mllm' (only the MLLM "
                             f"reads a reference picture), got {cfg.subject_task} with {cfg.conditioning!r}")
        self.cond = conditioner or (WordConditioner(bb.cond_dim) if cfg.conditioning == "words"
                                    else MLLMConditioner(cfg.mllm, bb.cond_dim, **cfg.mllm_args))
        self.net = EDMPrecond.from_config(build_backbone(cfg.backbone, bb), cfg.edm,
                                          cfg.edm.input_scale(cfg.frames, side, side))
        self.loss = EDMLoss.from_config(cfg.edm, self.net.sigma_in)
        self.params = [p for m in (self.net, self.cond) for p in m.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr, betas=(0.9, 0.99))
        if cfg.decay_clips < 0 or not 0 <= cfg.min_lr_ratio <= 1:
            raise ValueError(f"LeanConfig.decay_clips must be >= 0 and min_lr_ratio in [0, 1], got {cfg.decay_clips} "
                             f"and {cfg.min_lr_ratio}")
        self.schedule = WarmupCosine(cfg.warmup_clips, cfg.decay_clips, cfg.min_lr_ratio, cosine=cfg.decay_clips > 0)
        self.ema = [copy.deepcopy(self.net).requires_grad_(False), copy.deepcopy(self.cond).requires_grad_(False)]
        self.world = WorldConfig(out="unused", videos=10**9, memory=0, frames=cfg.frames, size=cfg.size,
                                 seed=cfg.seed, num_cond_frames=cfg.given_frames)
        self.rng = np.random.default_rng(cfg.seed)
        self.compositions = [tuple(pair.split()) for pair in cfg.compositions]
        for pair in self.compositions:
            if len(pair) != 2 or pair[0] not in spec.COLORS or pair[1] not in spec.SHAPES:
                raise ValueError(f"LeanConfig.compositions: {' '.join(pair)!r} is not 'colour shape' "
                                 f"(colours {sorted(spec.COLORS)}, shapes {sorted(spec.SHAPES)})")
        self._references: dict[tuple[str, int], np.ndarray] = {}
        self.clips = 0            # clips seen
        self.cpu_seconds = 0.0    # process CPU time spent training (not scoring)
        self.losses: list[tuple[int, float]] = []

    def clip_params(self, stream: str, i: int) -> ClipParams:
        """Clip i of a stream ("videos" = training, or an eval split), from the narrowed world when one is set."""
        if self.compositions and stream in ("videos", "t2v-seen", "prediction"):
            # a stream of its own (len(STREAMS) as a tag), apart from the world's item_rng streams
            rng = np.random.default_rng([self.cfg.seed, len(sampling.STREAMS), sampling.STREAMS.index(stream), i])
            return sampling.sample_object_clip(rng, self.compositions, self.cfg.frames, self.cfg.size)
        return train_video_params(self.world, i) if stream == "videos" else eval_params(self.world, stream, i)

    def reference(self, name: str, j: int) -> np.ndarray:
        """Reference picture j of a subject (uint8 (H, W, 3)), as the world writes it for the subject task."""
        if (name, j) not in self._references:
            self._references[name, j] = render_image(reference_params(self.world, name, j))
        return self._references[name, j]

    def batch(self) -> tuple[Tensor, list[str], Tensor, list[np.ndarray | None]]:
        """Clips, their captions, frames given, and per clip the subject task's reference picture (or None)."""
        cfg = self.cfg
        params = [self.clip_params("videos", self.clips + i) for i in range(cfg.batch)]
        video = to_model_video(np.stack([render_clip(p) for p in params]))                # (B, 3, T, H, W)
        k = torch.from_numpy((self.rng.random(cfg.batch) < cfg.pred_fraction) * cfg.given_frames)
        captions, refs = [video_caption(p) for p in params], [None] * cfg.batch
        for i, p in enumerate(params):   # subject_task first: recipes without it keep their random stream
            if cfg.subject_task and p.subject and int(k[i]) == 0 and self.rng.random() < cfg.subject_task:
                j = int(self.rng.integers(self.world.references_per_subject))
                captions[i], refs[i] = subject_prompt(p), self.reference(p.subject, j)
        return video, captions, k, refs

    @torch.no_grad()
    def to_latent(self, video: Tensor) -> Tensor:
        """Pixels (B, 3, T, H, W) -> what the diffusion runs on: latents in latent mode, else the pixels."""
        return video if self.ae is None else self.ae.encode_video(video)

    def step(self) -> float:
        cfg = self.cfg
        video, captions, k, refs = self.batch()
        drop = self.rng.random(len(captions)) < cfg.edm.cond_drop_prob
        c, mask = self.cond([None if d else t for t, d in zip(captions, drop)], first_frames(video, k), refs)
        x = self.to_latent(video)
        frame_cond = frame_condition(x, k, cfg.hold_given_frame)
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * self.schedule(self.clips + cfg.batch - 1)   # indexed by the batch's last clip
        loss = self.loss(self.net, x, given=k > 0, pixels=video, cond=c, cond_mask=mask, frame_cond=frame_cond).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.opt.step()
        self.clips += cfg.batch
        # EMA with a half-life in clips, so recipes with different batch sizes average alike; the ramp-up
        # keeps early averages from dragging the (zero-initialised) start along (EDM, training_loop.py).
        halflife = min(cfg.ema_halflife_clips, self.clips * cfg.ema_rampup)
        beta = 0.5 ** (cfg.batch / max(halflife, 1e-8))
        with torch.no_grad():
            for avg, live in zip(self.ema, (self.net, self.cond)):
                for a, p in zip(avg.parameters(), live.parameters()):
                    if p.requires_grad:   # a frozen MLLM's millions of weights never move
                        a.lerp_(p.detach(), 1 - beta)
        return loss.item()

    def train_to(self, clips: int, progress: Callable[[int, float], None] | None = None) -> None:
        t0 = time.process_time()
        while self.clips < clips:
            loss = self.step()
            self.losses.append((self.clips, loss))
            if progress:
                progress(self.clips, loss)
        self.cpu_seconds += time.process_time() - t0

    def _trained_names(self) -> list[set[str]]:
        """Per EMA part, the state keys that training changes (a frozen MLLM's weights are not ours to save)."""
        return [{n for n, p in live.named_parameters() if p.requires_grad} for live in (self.net, self.cond)]

    def save_ema(self, path) -> None:
        """The EMA weights (net + conditioner, trained parts) as one safetensors file, to look at a point again."""
        parts = zip(("net", "cond"), self.ema, self._trained_names())
        state = {f"{part}.{k}": v.contiguous() for part, m, names in parts for k, v in m.state_dict().items()
                 if k in names}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={"clips": str(self.clips)})

    def load_ema(self, path) -> None:
        state = load_safetensors(path)
        for part, m, names in zip(("net", "cond"), self.ema, self._trained_names()):
            mine = {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + ".")}
            if set(mine) != names:
                missing, unexpected = sorted(names - set(mine))[:3], sorted(set(mine) - names)[:3]
                raise ValueError(f"{path}: the {part} weights do not match this recipe "
                                 f"(missing {missing}, unexpected {unexpected})")
            m.load_state_dict(mine, strict=False)

    # ------------------------------------------------------------------------------ scoring
    @torch.no_grad()
    def sample(self, captions: list[str], given: Tensor, k: Tensor, seeds: list[int],
               sampler: SamplerConfig | None = None, references: list | None = None) -> Tensor:
        """Pixel clips (B, 3, T, H, W): the first k[i] frames of ``given`` kept, the rest drawn; rows with a
        reference picture are the subject task."""
        sampler = sampler or self.cfg.sampler
        out = self._draw(captions, given, k, seeds, sampler, references)
        refs = references or [None] * len(captions)
        t2v = torch.tensor([i for i in range(len(captions)) if int(k[i]) == 0 and refs[i] is None], dtype=torch.long)
        if sampler.factorized and len(t2v):   # Emu Video: the t2v clips again, predicted from their frame 0
            out[t2v] = self._draw([captions[i] for i in t2v], out[t2v], torch.ones(len(t2v), dtype=k.dtype),
                                  [seeds[i] for i in t2v], sampler)
        return out

    def _draw(self, captions: list[str], given: Tensor, k: Tensor, seeds: list[int], sampler: SamplerConfig,
              references: list | None = None) -> Tensor:
        cfg = self.cfg
        net, cond = self.ema
        c, mask = cond(captions, first_frames(given, k), references)
        null_c, null_mask = cond([None] * len(captions), first_frames(given, k))
        x_given = self.to_latent(given)
        frame_cond = frame_condition(x_given, k, cfg.hold_given_frame)
        den = GuidedDenoiser(net, {"cond": c, "cond_mask": mask, "frame_cond": frame_cond},
                             {"cond": null_c, "cond_mask": null_mask, "frame_cond": frame_cond},
                             sampler.guidance_scale, sampler.dynamic_threshold, sampler.threshold_floor,
                             sampler.guidance_interval)
        out = edm_sampler(den, shape=tuple(x_given.shape), seeds=seeds, sigma_in=net.sigma_in,
                          frame_noise_share=cfg.edm.frame_noise_share,
                          **sampler.step_kwargs()).samples.float()
        if self.ae is not None:
            out = self.ae.decode_video(out).clamp(-1, 1)
        known = (torch.arange(given.shape[2])[None] < k[:, None])[:, None, :, None, None]
        return torch.where(known, given, out)

    def eval_splits(self) -> tuple[str, ...]:
        return ("t2v-seen", "t2v-novel-composition", "prediction") + (("subject",) if self.cfg.subject_task else ())

    def subject_row(self, i: int) -> tuple[ClipParams, str, np.ndarray]:
        """Row i of the "subject" eval split: its clip, prompt and reference picture, the references rotating as in
        the world's eval file (every subject, seen and novel, in turn)."""
        p = self.clip_params("subject", i)
        j = (i // len(SUBJECT_NAMES)) % self.world.references_per_subject
        return p, subject_prompt(p), self.reference(p.subject, j)

    def evaluate(self, splits: tuple[str, ...] | None = None,
                 rows: int = 20, batch: int = 10, sampler: SamplerConfig | None = None,
                 readings: dict[str, dict[str, float]] | None = None) -> dict[str, dict[str, float]]:
        """Per split (default :meth:`eval_splits`): mean of every scorer attribute (+ PSNR for prediction) over
        ``rows`` fresh eval clips, drawn with ``sampler`` (default: the recipe's), and the denoiser's readings
        (:meth:`readings`; pass them when scoring the same weights with another sampler: they do not depend on
        it). The subject split adds ``seen_subject`` / ``novel_subject``: the subject drawn, over each part."""
        cfg = self.cfg
        report: dict[str, dict[str, float]] = {}
        self.last_videos: dict[str, list[np.ndarray]] = {}   # split -> generated (T, H, W, 3) uint8 clips
        for split in splits or self.eval_splits():
            results = []
            self.last_videos[split] = []
            task = {"prediction": "prediction", "subject": "subject"}.get(split, "t2v")
            k = cfg.given_frames if task == "prediction" else 0
            for start in range(0, rows, batch):
                index = range(start, min(start + batch, rows))
                if task == "subject":
                    params, captions, refs = (list(x) for x in zip(*(self.subject_row(i) for i in index)))
                else:
                    params = [self.clip_params(split, i) for i in index]
                    captions, refs = [video_caption(p) for p in params], None
                gts = [render_clip(p) for p in params]
                given = to_model_video(np.stack(gts))
                videos = self.sample(captions, given, torch.full((len(params),), k),
                                     seeds=[10_000 + i for i in index], sampler=sampler, references=refs)
                clips = list(to_uint8_video(videos))
                self.last_videos[split] += clips
                for v, p, gt in zip(clips, params, gts):
                    result = score(v, record_of(p, split, task, k), gt) | object_reading(v)
                    if task == "subject":
                        novel = is_novel(p)
                        result |= {"seen_subject": None if novel else result["subject"],
                                   "novel_subject": result["subject"] if novel else None}
                    results.append(result)
            keys = sorted({key for r in results for key in r})
            report[split] = {key: float(np.mean([r[key] for r in results if r.get(key) is not None]))
                             for key in keys if any(r.get(key) is not None for r in results)}
            report[split]["rows"] = len(results)
        report["motion_words"] = self.motion_words(sampler=sampler)
        return report | (readings or self.readings(rows))

    def readings(self, rows: int = 20) -> dict[str, dict[str, float]]:
        """The sampler-free readings of the EMA denoiser: held-out loss, motion- and shape-word gains, and in pixel
        space its noise removal."""
        out = {"heldout": self.heldout_loss(), "word_gain": self.motion_word_gain(),
               "shape_gain": self.shape_word_gain()}
        if self.ae is None:
            out["denoising"] = self.denoising_gain(rows=rows)
        if self.cfg.subject_task:
            out["picture_gain"] = self.picture_gain()
        return out

    def _fixed_t2v_clips(self, rows: int) -> tuple[list[str], Tensor, Tensor]:
        """The first ``rows`` t2v-seen eval clips: captions, clips in the diffusion's space, frame condition."""
        params = [self.clip_params("t2v-seen", i) for i in range(rows)]
        x = self.to_latent(to_model_video(np.stack([render_clip(p) for p in params])))
        zeros = torch.zeros(rows, dtype=torch.long)                                      # t2v: no given frame
        return [video_caption(p) for p in params], x, frame_condition(x, zeros, self.cfg.hold_given_frame)

    @torch.no_grad()
    def heldout_loss(self, sigmas: tuple[float, ...] = (1.0, 3.0, 10.0), rows: int = 64) -> dict[str, float]:
        """The EMA denoiser's error on fixed t2v-seen eval clips noised to each σ (fixed noise), given the
        caption and given the null condition.

        Scores move a clip at a time (1/16 per clip at 16 rows); this reading is paired across recipes
        (the same clips and noise for every one) and reads the conditioning directly: ``gain@σ`` =
        null / caption error is how much the caption helps denoise (1 = not at all). Only at high σ,
        where the clip's content is still to be decided, can it be well above 1. σ = 10 is where the
        sampler's first steps decide an object's place and path: a denoiser never trained there draws
        its objects where the noise suggests, whatever the caption says (docs/learning.md).
        """
        net, cond = self.ema
        captions, x, frame_cond = self._fixed_t2v_clips(rows)
        conds = {"caption": cond(captions), "null": cond([None] * rows)}
        noise = share_across_frames(torch.randn(x.shape, generator=torch.Generator().manual_seed(5_000)),
                                    self.cfg.edm.frame_noise_share)
        out = {}
        for sigma in sigmas:
            err = {}
            for name, (c, mask) in conds.items():
                D = net(x / net.sigma_in + sigma * noise, torch.full((rows,), sigma), cond=c, cond_mask=mask,
                        frame_cond=frame_cond)
                err[name] = float((D - x).square().mean())
            out[f"mse@{sigma:g}"] = err["caption"]
            out[f"gain@{sigma:g}"] = err["null"] / err["caption"]
        return out

    DIRECTIONS = {"moves left": (-1.0, 0.0), "moves right": (1.0, 0.0), "moves up": (0.0, -1.0),
                  "moves down": (0.0, 1.0)}

    @torch.no_grad()
    def motion_word_gain(self, sigmas: tuple[float, ...] = (2.0, 10.0), rows: int = 24) -> dict[str, float]:
        """Does the denoiser read the motion word? On fixed t2v-seen clips that translate, noised to each σ (fixed
        noise): its error on the frames it is not given under a wrong direction word / under the right one, as
        t2v (no frame given) and as prediction (frame 0 given). 1 = the word is not read.

        Paired and cheap, it moves long before a sample's path does: trained on prediction at σ = 10 alone the
        prediction reading passes 8 by 2,000 clips, where the scorer still reads chance (docs/learning.md)."""
        words = list(self.DIRECTIONS)
        params = [p for p in (self.clip_params("t2v-seen", i) for i in range(20 * rows)) if p.motion in words][:rows]
        wrong = [replace(p, motion=words[(words.index(p.motion) + 1 + i % 3) % 4]) for i, p in enumerate(params)]
        return {f"{task}@{sigma:g}": gain for task, k in (("t2v", 0), ("prediction", 1))
                for sigma, gain in self._word_gain(params, wrong, k, sigmas).items()}

    @torch.no_grad()
    def shape_word_gain(self, sigmas: tuple[float, ...] = (1.0, 2.0), rows: int = 24) -> dict[str, float]:
        """The same paired reading for the shape word, as t2v, on the cells the object touches: the shape word is
        read thousands of clips after the colour word, and the scorer's shape at 16 rows moves a clip at a time
        long before and after (docs/learning.md, "The shape word")."""
        shapes = list(spec.SHAPES)
        params = [p for p in (self.clip_params("t2v-seen", i) for i in range(4 * rows)) if p.shape][:rows]
        wrong = [replace(p, shape=shapes[(shapes.index(p.shape) + 1 + i % 5) % 6]) for i, p in enumerate(params)]
        return {f"t2v@{sigma:g}": gain for sigma, gain in self._word_gain(params, wrong, 0, sigmas, True).items()}

    @torch.no_grad()
    def picture_gain(self, sigmas: tuple[float, ...] = (1.0, 2.0), rows: int = 24) -> dict[str, float]:
        """The same paired reading for the subject task's reference picture, on the object's cells: the error under
        another subject's first reference picture (same prompt) / under its own, over the subject split's
        rows of seen and of novel subjects apart. A novel subject's ratio above 1 is a look copied from its
        picture, which no name could carry; a seen one's may be the name recalled from its picture."""
        out = {}
        rows_of = [self.subject_row(i) for i in range(rows)]
        for part in ("seen", "novel"):
            chosen = [r for r in rows_of if is_novel(r[0]) == (part == "novel")]
            params, captions, refs = (list(x) for x in zip(*chosen))
            others = [(i + 1 + n % (len(SUBJECT_NAMES) - 1)) % len(SUBJECT_NAMES)
                      for n, i in enumerate(SUBJECT_NAMES.index(p.subject) for p in params)]
            wrong = [self.reference(SUBJECT_NAMES[o], 0) for o in others]
            video = to_model_video(np.stack([render_clip(p) for p in params]))
            gains = self._gain(video, [(captions, None, refs), (captions, None, wrong)], 0, sigmas, True)
            out |= {f"{part}@{sigma:g}": g for sigma, g in gains.items()}
        return out

    def _word_gain(self, params: list[ClipParams], wrong: list[ClipParams], k: int, sigmas: tuple[float, ...],
                   on_object: bool = False) -> dict[float, float]:
        """σ -> the EMA denoiser's error under the ``wrong`` captions / under the right ones, on ``params``' clips
        (see :meth:`_gain`)."""
        video = to_model_video(np.stack([render_clip(p) for p in params]))
        firsts = first_frames(video, torch.full((len(params),), k))
        return self._gain(video, [([video_caption(p) for p in ps], firsts, None) for ps in (params, wrong)], k, sigmas,
                          on_object)

    def _gain(self, video: Tensor, prompts: list[tuple], k: int, sigmas: tuple[float, ...],
              on_object: bool) -> dict[float, float]:
        """σ -> the EMA denoiser's error under the second of two (captions, first frames, references) conditions
        / under the first, on ``video`` noised to σ (fixed noise), over the frames not given (the first ``k`` are)
        and, ``on_object``, only where the object is (in latent mode: the latent cells it touches)."""
        net, cond = self.ema
        x, n = self.to_latent(video), len(video)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7_000))
        where = (foreground_mask(x, video) if on_object else torch.ones_like(x[:, :1]))[:, :, k:]
        frame_cond = frame_condition(x, torch.full((n,), k), self.cfg.hold_given_frame)
        conds = [cond(*prompt) for prompt in prompts]
        out = {}
        for sigma in sigmas:
            right, bad = (float(((net(x / net.sigma_in + sigma * noise, torch.full((n,), sigma), cond=c,
                                      cond_mask=mask, frame_cond=frame_cond) - x)[:, :, k:].square() * where).sum())
                          for c, mask in conds)
            out[sigma] = bad / right
        return out

    @torch.no_grad()
    def motion_words(self, rows: int = 6, sampler: SamplerConfig | None = None,
                     prior_sigma: float = 10.0, prior_noises: int = 4) -> dict[str, float]:
        """Does the motion word steer the sample? Paired: each of ``rows`` t2v-seen object captions is drawn
        with each of the four directions from the same seed, so only the word differs.

        ``along``: the mean centroid velocity along the asked direction, px/frame (the data move 2; a
        model that ignores the word gets ~0, its paths cancelling over opposite words); ``follow``: the
        share the scorer reads as the asked motion. The t2v ``motion`` score at 16 rows cannot tell a
        model that ignores the word from one that moves objects badly; this can.

        ``prior``: the same along-velocity of the denoiser's mean at σ = ``prior_sigma`` (decoded, averaged
        over ``prior_noises`` noises), where the sampler's first steps place the object. There D should be
        E[clip | caption], whose object smear moves 2 px/frame with the word (a start is drawn so the whole
        path stays inside); ~0 means the caption's layout is not learned where the path is decided.
        """
        params = [p for p in (self.clip_params("t2v-seen", i) for i in range(4 * rows)) if not p.subject][:rows]
        words = list(self.DIRECTIONS)
        captions = [video_caption(replace(p, motion=m)) for m in words for p in params]
        n = len(captions)
        given = torch.zeros((n, 3, self.cfg.frames, self.cfg.size, self.cfg.size))
        videos = to_uint8_video(self.sample(captions, given, torch.zeros(n, dtype=torch.long),
                                            seeds=[20_000 + i for _ in words for i in range(len(params))],
                                            sampler=sampler))
        found = [analyze(v) for v in videos]
        asked = [m for m in words for _ in params]
        along = [np.dot(f["velocity"], self.DIRECTIONS[m]) if f["velocity"] else 0.0 for f, m in zip(found, asked)]
        follow = [f["motion"] == m for f, m in zip(found, asked)]
        # each row's scene colour in [-1, 1]: a (T=1, H=rows, W=1) video -> (3, rows)
        scene_rgb = to_model_video(np.array([[[spec.SCENES[p.scene]] for p in params]], np.uint8))[:, 0, :, 0]
        mean = self._mean_denoised(captions, prior_sigma, prior_noises)                   # (n, 3, T, H, W)
        prior = [np.dot(_centroid_velocity(v, scene_rgb[:, i % len(params)]), self.DIRECTIONS[m])
                 for i, (v, m) in enumerate(zip(mean, asked))]
        return {"along": float(np.mean(along)), "follow": float(np.mean(follow)), "prior": float(np.mean(prior))}

    @torch.no_grad()
    def _mean_denoised(self, captions: list[str], sigma: float, noises: int) -> Tensor:
        """The EMA denoiser's output at ``sigma`` on pure noise, decoded to pixels, averaged over ``noises`` draws."""
        net, cond = self.ema
        c, mask = cond(captions)
        n = len(captions)
        shape = self.to_latent(torch.zeros((1, 3, self.cfg.frames, self.cfg.size, self.cfg.size))).shape[1:]
        shape = (n, *shape)                                                         # the diffusion's space
        frame_cond = frame_condition(torch.zeros(shape), torch.zeros(n, dtype=torch.long), self.cfg.hold_given_frame)
        gen = torch.Generator().manual_seed(30_000)
        total = 0.0
        for _ in range(noises):
            D = net(sigma * torch.randn(shape, generator=gen), torch.full((n,), sigma), cond=c, cond_mask=mask,
                    frame_cond=frame_cond)
            total = total + (D if self.ae is None else self.ae.decode_video(D)).clamp(-1, 1)
        return total / noises

    @torch.no_grad()
    def denoising_gain(self, sigmas: tuple[float, ...] = (0.1, 0.3, 1.0), rows: int = 16) -> dict[str, float]:
        """How much noise one call of the EMA denoiser removes, on object and on background pixels.

        On real t2v-seen eval clips noised to each σ: mse(input) / mse(D) against the clean clip, over
        the pixels that differ from their frame's median colour (the object) and over the rest. 1 means
        D copies its input. The samples' speckle was objects left at ~1 below σ ≈ 0.2 while the
        background reached ~20 (docs/learning.md), so this reads a recipe's progress directly.
        """
        net, cond = self.ema
        captions, y, frame_cond = self._fixed_t2v_clips(rows)                          # pixels: (B, 3, T, H, W)
        obj = off_median_mask(y).expand_as(y)                                           # the object's pixels
        c, mask = cond(captions)
        gen = torch.Generator().manual_seed(1234)
        out = {}
        for sigma in sigmas:
            noise = sigma * torch.randn(y.shape, generator=gen)
            D = net(y / net.sigma_in + noise, torch.full((rows,), sigma), cond=c, cond_mask=mask, frame_cond=frame_cond)
            err_in, err_out = (noise * net.sigma_in) ** 2, (D - y) ** 2     # the input's error in clean-x units
            for name, where in (("object", obj), ("background", ~obj)):
                out[f"{name}@{sigma:g}"] = float(err_in[where].mean() / err_out[where].mean().clamp(min=1e-12))
        return out


def _centroid_velocity(video: Tensor, background: Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> the least-squares velocity (dx, dy) in px/frame of the centroid of each frame's
    weight ||pixel - background||: for a mean clip, how its smear of objects travels."""
    w = (video - background[:, None, None, None]).square().sum(0).sqrt().numpy()     # (T, H, W)
    coords = np.arange(video.shape[-1]) + 0.5
    mass = w.sum((1, 2)).clip(min=1e-8)
    cx, cy = (w.sum(1) * coords).sum(1) / mass, (w.sum(2) * coords).sum(1) / mass
    t = np.arange(len(cx)) - (len(cx) - 1) / 2
    return np.array([np.dot(t, cx), np.dot(t, cy)]) / max(float(np.dot(t, t)), 1e-8)


def object_reading(video: np.ndarray) -> dict[str, float]:
    """Graded readings under the scorer's all-or-nothing words: was an object found (best template IoU
    >= the scorer's 0.5), and that IoU. They move long before a colour or shape is read right."""
    found = analyze(video)
    return {"object": float(found["object"]), "shape_iou": found["shape_iou"]}


def loss_ema(losses: list[tuple[int, float]], window: int = 50) -> float:
    tail = [v for _, v in losses[-window:]]
    return float(np.mean(tail)) if tail else math.nan
