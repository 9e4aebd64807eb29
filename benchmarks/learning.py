"""Learning curves: how fast does each recipe learn ShapeWorld? One table, every recipe side by side.

Each named configuration trains with ``vimi.training.lean`` (clips rendered on the fly, the
project's backbone, EDMPrecond, EDMLoss, Heun sampler) and is scored with the project's scorer on
fresh eval clips at fixed budgets of clips seen. Conditioning is text-only (caption words →
learned embeddings), so the table measures the diffusion recipe and the backbone, not the MLLM;
``NAME+mllm`` runs the same recipe through the project's frozen MLLM encoder (``--mllm FOLDER``);
``NAME+mllm@L`` reads the MLLM's hidden state L instead of the default -2 (0 = the input embeddings).

    python benchmarks/learning.py --configs fit-tiny,unet-s --budgets 2000,5000,10000 --rows 20
    python benchmarks/learning.py --list

Rows go to OUT/results.jsonl as they are measured (a rerun skips what is there), the curves to
OUT/curves.png. CPU-seconds are process CPU time of training only (scoring excluded).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import fields, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's packages, not an installed copy

from base.io import atomic_path  # noqa: E402
from vimi.diffusion import EDMConfig, SamplerConfig  # noqa: E402
from vimi.training.lean import LeanConfig, LeanTrainer, loss_ema  # noqa: E402

PLAIN = EDMConfig(sigma_data=0.5, sigma_in=1.0)  # EDM's own settings (σ_in = 1: no Snap Video scaling)
EDM2 = replace(PLAIN, P_mean=-0.4, P_std=1.0)     # ... with EDM2's training σ for latents (configs/shapeworld)
LAT_EDM2 = LeanConfig(backbone="unet-lat", edm=EDM2, lr=2e-3, batch=4, autoencoder="outputs/ae")   # the default recipe
ONE = replace(LAT_EDM2, compositions=("red square",))   # ... in a world of one object (LeanConfig.compositions)
HIGH = replace(EDM2, P_high_share=1.0, P_high_given_only=True)   # clips given frames train around σ = 10
LAT_HIGH = replace(LAT_EDM2, edm=HIGH, pred_fraction=0.5)   # ... with half the clips given a frame
# The subject task (LeanConfig.subject_task; NAME+mllm only) beside t2v and prediction, FiLM reading the caption's
# mean as in configs/shapeworld: "A <image> moves left on sand" names its subject only in its picture.
SUBJ = replace(LAT_HIGH, subject_task=1.0, backbone_args={"cond_pool": "first"},
               mllm_args={"caption_summary": True})

# name -> recipe. Every row of the closing note's table is one of these; losing rows stay listed.
CONFIGS: dict[str, LeanConfig] = {
    # The pre-issue default: fit-tiny with Snap Video's σ_d = 1 and σ_in = √T, lr 3e-4.
    "fit-tiny-snap": LeanConfig(backbone="fit-tiny", edm=EDMConfig(), lr=3e-4),
    "fit-tiny": LeanConfig(backbone="fit-tiny", edm=PLAIN, lr=1e-3),
    "fit-tiny-b4": LeanConfig(backbone="fit-tiny", edm=PLAIN, lr=1e-3, batch=4),
    "unet-xs": LeanConfig(backbone="unet-xs", edm=PLAIN, lr=2e-3),
    "unet-xs-b4": LeanConfig(backbone="unet-xs", edm=PLAIN, lr=2e-3, batch=4),
    "unet-s": LeanConfig(backbone="unet-s", edm=PLAIN),
    "unet-s-b4": LeanConfig(backbone="unet-s", edm=PLAIN, batch=4),
    "unet-xs-b4-snap": LeanConfig(backbone="unet-xs", edm=EDMConfig(), lr=2e-3, batch=4),          # σ_d 1, σ_in √8
    "unet-xs-b4-sin": LeanConfig(backbone="unet-xs", edm=replace(PLAIN, sigma_in=None), lr=2e-3, batch=4),
    "unet-xs-b4-sd0.25": LeanConfig(backbone="unet-xs", edm=replace(PLAIN, sigma_data=0.25), lr=2e-3, batch=4),
    "unet-xs-b4-pmean": LeanConfig(backbone="unet-xs", edm=replace(PLAIN, P_mean=-0.6), lr=2e-3, batch=4),
    # Wider training σ: where an 8-frame object's existence and place are decided (σ ≈ 2–15, docs/learning.md)
    # the default ln σ ~ N(-1.2, 1.2²) draws 6% of its samples, N(-0.4, 1.8²) 23%.
    "unet-xs-b4-wide": LeanConfig(backbone="unet-xs", edm=replace(PLAIN, P_mean=-0.4, P_std=1.8), lr=2e-3, batch=4),
    "unet-xs-b4-sin-wide": LeanConfig(backbone="unet-xs", edm=replace(PLAIN, sigma_in=None, P_std=1.8), lr=2e-3,
                                      batch=4),
    # Objects cover 7.6% of the pixels and are the last thing learned (docs/learning.md): weight them up.
    "unet-xs-b4-fg4": LeanConfig(backbone="unet-xs", edm=replace(PLAIN, foreground_weight=4.0), lr=2e-3, batch=4),
    "unet-xs-b4-fg12": LeanConfig(backbone="unet-xs", edm=replace(PLAIN, foreground_weight=12.0), lr=2e-3, batch=4),
    "unet-p4-b4": LeanConfig(backbone="unet-p4", edm=PLAIN, lr=2e-3, batch=4),
    "unet-p2-b4": LeanConfig(backbone="unet-p2", edm=PLAIN, lr=2e-3, batch=4),
    # Latent mode: 8×8×8 latents of a per-frame autoencoder (python -m vimi.training.autoencoder; --autoencoder).
    "unet-lat-b4": LeanConfig(backbone="unet-lat", edm=PLAIN, lr=2e-3, batch=4, autoencoder="outputs/ae"),
    # Through the MLLM (NAME+mllm): two trainable refiner layers over its projected states.
    "unet-lat-b4-ref2": LeanConfig(backbone="unet-lat", edm=PLAIN, lr=2e-3, batch=4, autoencoder="outputs/ae",
                                   mllm_args={"refiner_layers": 2}),
    # Through the MLLM: FiLM reads the mean of the caption's states alone, not of the whole prompt. The
    # words recipe with the 11 instruction words before every caption read colour 0.31 at 8,000 clips
    # against 0.62 without; pooling over its caption only (cross-attention still seeing all) gave 0.77.
    "unet-lat-b4-cap": LeanConfig(backbone="unet-lat", edm=PLAIN, lr=2e-3, batch=4, autoencoder="outputs/ae",
                                  backbone_args={"cond_pool": "first"}, mllm_args={"caption_summary": True}),
    # ... and a fixed random code of each text token's id beside its state (MLLMConfig.token_codes): the words
    # instrument's frozen random embeddings (colour 0.62) through the MLLM path, whose own layer-0 word
    # embeddings gave colour 0.08 in the words recipe (docs/learning.md, "From words to the MLLM").
    "unet-lat-b4-codes": LeanConfig(backbone="unet-lat", edm=PLAIN, lr=2e-3, batch=4, autoencoder="outputs/ae",
                                    mllm_args={"token_codes": True}),
    "unet-lat-b4-codes-cap": LeanConfig(backbone="unet-lat", edm=PLAIN, lr=2e-3, batch=4, autoencoder="outputs/ae",
                                        backbone_args={"cond_pool": "first"},
                                        mllm_args={"token_codes": True, "caption_summary": True}),
    # Training σ for latent mode: where an object's place, shape and path are decided (σ ≳ 1 at σ_d 0.5),
    # EDM's ln σ ~ N(-1.2, 1.2²) draws 16% of its samples; EDM2's latent setting N(-0.4, 1.0²) draws 34%,
    # N(0.2, 1.2²) 57%. The latent decoder draws the fine detail that low σ is for in pixel space.
    "unet-lat-b4-edm2": LeanConfig(backbone="unet-lat", edm=EDM2, lr=2e-3, batch=4, autoencoder="outputs/ae"),
    "unet-lat-b4-hi": LeanConfig(backbone="unet-lat", edm=replace(PLAIN, P_mean=0.2, P_std=1.2), lr=2e-3,
                                 batch=4, autoencoder="outputs/ae"),
    # ... and PYoCo's mixed noise (EDMConfig.frame_noise_share): frames share half their noise's variance
    # (α = 1 in Ge et al. 2023), so an object's place and look are noised alike in every frame.
    "unet-lat-b4-edm2-fn5": LeanConfig(backbone="unet-lat", edm=replace(EDM2, frame_noise_share=0.5), lr=2e-3,
                                       batch=4, autoencoder="outputs/ae"),
    # Frame-aware caption reading (UNetConfig.frame_embedding / cross_attention_positions): at 8,000 clips
    # unet-lat-b4-edm2 draws the same path from a seed whatever the motion word (motion_words along -0.01).
    "unet-lat-b4-edm2-temb": LeanConfig(backbone="unet-lat", edm=EDM2, lr=2e-3, batch=4, autoencoder="outputs/ae",
                                        backbone_args={"frame_embedding": True}),
    "unet-lat-b4-edm2-xpos": LeanConfig(backbone="unet-lat", edm=EDM2, lr=2e-3, batch=4, autoencoder="outputs/ae",
                                        backbone_args={"cross_attention_positions": True}),
    # Space-time temporal convolutions (UNetConfig.temporal_spatial_kernel = 3: 3×3×3, direction-selective
    # in one layer) against the factorised 3×1×1, for the motion word that no recipe above reads.
    "unet-lat-b4-edm2-st3": replace(LAT_EDM2, backbone_args={"temporal_spatial_kernel": 3}),
    # One object ("a ... red square ..."): only motion, size and scene are left to learn. Reads whether the
    # motion word is out of the recipe's reach or merely learned last in the full world.
    "unet-lat-b4-edm2-one": ONE,
    # The one-object world's samples follow the noise, not the motion word, and its denoiser at σ = 3–10
    # draws a blob per frame wherever the noise suggests (benchmarks/diag: docs/learning.md, "Motion words"):
    # EDM2's N(-0.4, 1.0²) puts 4% of its samples above σ = 3, where the sampler's first half of steps run and
    # the path is decided. A wider N(0, 1.6²) puts 30% in σ ∈ [2, 20].
    "unet-lat-b4-wide-one": replace(ONE, edm=replace(PLAIN, P_mean=0.0, P_std=1.6)),
    "unet-lat-b4-wide": replace(LAT_EDM2, edm=replace(PLAIN, P_mean=0.0, P_std=1.6)),
    # Every motion-oriented option at once, in the one-object world: direction-selective 3×3×3 temporal
    # convolutions, steered by the caption (temporal_film), the frame index in FiLM and in cross-attention.
    "unet-lat-b4-edm2-motion-one": replace(ONE, backbone_args={"temporal_spatial_kernel": 3, "temporal_film": True,
                                                               "frame_embedding": True,
                                                               "cross_attention_positions": True}),
    # Coordinate channels (UNetConfig.coordinate_channels) in the one-object world: at high σ the mean clip of
    # "moves right" has its object on the left in frame 0 and on the right in frame 7; neither recipe above
    # draws any word-dependent layout there (docs/learning.md, "Motion words").
    "unet-lat-b4-edm2-coord-one": replace(ONE, backbone_args={"coordinate_channels": True}),
    # ... trained on the prediction task alone: the first frame is given, so where the object goes next is
    # all that is left, and the word decides it at every σ.
    "unet-lat-b4-edm2-one-pred": replace(ONE, pred_fraction=1.0),
    # A caption-chosen velocity in space-time self-attention (UNetConfig.velocity_attention): the word can make
    # attention look along leftward paths directly, where no recipe above reads the direction at all.
    "unet-lat-b4-edm2-vel-one": replace(ONE, backbone_args={"velocity_attention": "embedding"}),
    "unet-lat-b4-edm2-vel": replace(LAT_EDM2, backbone_args={"velocity_attention": "embedding"}),
    # ... each head reading the caption's tokens through its own query: the embedding version learned one
    # velocity for every motion word (a direction word is an eighth of the pooled mean, beside a larger σ token).
    "unet-lat-b4-edm2-velt-one": replace(ONE, backbone_args={"velocity_attention": "tokens"}),
    # Half the clips given their first frame, and those trained around σ = 10 (EDMConfig.P_high_share,
    # P_high_given_only). Trained on prediction at σ = 10 alone the motion word cuts the error 35× by 4,000
    # clips; under EDM2's σ alone, 1.00× (docs/learning.md, "Where the word can be learned").
    "unet-lat-b4-edm2-high-one": replace(ONE, edm=HIGH, pred_fraction=0.5),
    "unet-lat-b4-edm2-high": LAT_HIGH,
    # Optimisation for a short budget (the lever "learning rate, batch and EMA"), measured in pixel space
    # only at 75 steps before: the rate doubled or halved, twice the clips per step (CPU-s per clip is what it
    # saves), an EMA half-life of 500 clips (the pipeline's 0.995 per step at batch 4; the live weights are -high's
    # to the digit), and space-time attention at the 4×4 level only (the 8×8 level's 512 tokens: most of the ~20%
    # of a step that attention takes). At 4,000 and 8,000 clips (docs/learning.md, "Optimisation for a short
    # budget"): the EMA's ramp-up sets the average at these budgets (the same rows); lr 4e-3 and attention at 4×4
    # only lose; batch 8 is even per CPU-second; lr 1e-3 learns colour sooner and fits best.
    "unet-lat-b4-edm2-high-lr4": replace(LAT_HIGH, lr=4e-3),
    "unet-lat-b4-edm2-high-lr1": replace(LAT_HIGH, lr=1e-3),
    "unet-lat-b8-edm2-high": replace(LAT_HIGH, batch=8),
    "unet-lat-b4-edm2-high-ema500": replace(LAT_HIGH, ema_halflife_clips=500),
    "unet-lat-b4-edm2-high-att1": replace(LAT_HIGH, backbone_args={"attention_levels": [1]}),
    # ... the rate halved again (the loss still fell from 2e-3 to 1e-3), and 1e-3 decayed by a cosine to a tenth at
    # 8,000 clips, as the pipeline's stages decay over their run (LeanConfig.decay_clips): the lean rows above
    # keep the rate constant, so they did not say what the demo's schedule does at the new rate. At 8,000 clips both
    # fit a little better (loss 0.325 and 0.329 against 0.336) and read no more: 5e-4 reads shape and prediction less.
    "unet-lat-b4-edm2-high-lr05": replace(LAT_HIGH, lr=5e-4),
    "unet-lat-b4-edm2-high-lr1-cos8k": replace(LAT_HIGH, lr=1e-3, decay_clips=8000),
    # ... with the latent cells the object touches weighted up (EDMConfig.foreground_weight; mask from the pixels,
    # loss.foreground_mask): they are 17% of the cells, and the shape word, which only they carry, is read some
    # 8,000 clips after the colour word. α = 2 gives them 38% of the loss, α = 4 51%.
    "unet-lat-b4-edm2-high-fg2": replace(LAT_HIGH, edm=replace(HIGH, foreground_weight=2.0)),
    "unet-lat-b4-edm2-high-fg4": replace(LAT_HIGH, edm=replace(HIGH, foreground_weight=4.0)),
    # ... through the MLLM with FiLM reading the caption's mean (as unet-lat-b4-cap): prediction prompts hold the
    # given frame's 64 picture tokens, so the prompt's plain mean carries the motion word at 1/80 of its weight.
    "unet-lat-b4-edm2-high-cap": replace(LAT_HIGH, backbone_args={"cond_pool": "first"},
                                         mllm_args={"caption_summary": True}),
    # ... with the subject task: FiLM sees no picture (-subj), the picture's mean added to the caption's (-subj-add,
    # MLLMConfig.summary_images), or in a FiLM token of its own (-subj-tok, MLLMConfig.picture_token: the
    # ShapeWorld default, chosen on the long run's stage 2; docs/learning.md, "The long run").
    "unet-lat-b4-edm2-high-subj": SUBJ,
    "unet-lat-b4-edm2-high-subj-add": replace(SUBJ, mllm_args={**SUBJ.mllm_args, "summary_images": "in_caption"}),
    "unet-lat-b4-edm2-high-subj-tok": replace(SUBJ, mllm_args={**SUBJ.mllm_args, "summary_images": "in_caption",
                                                               "picture_token": True}),
    # -high-cap and each text token's fixed random code beside its state: the words instrument's frozen random
    # embeddings (which read colour as well as learned ones), in the caption's mean that FiLM reads.
    "unet-lat-b4-edm2-high-codes-cap": replace(LAT_HIGH,
                                               backbone_args={"cond_pool": "first"},
                                               mllm_args={"caption_summary": True, "token_codes": True}),
    # ... with half the given clips at EDM2's σ instead: trained at σ ≈ 10 only, the prediction task never
    # sees its given frame at the low σ where the sampler's last steps draw the object's outline, and the
    # demo's prediction samples redraw the object as a blob from frame 1 on.
    "unet-lat-b4-edm2-half": replace(LAT_HIGH, edm=replace(HIGH, P_high_share=0.5)),
    # ... or denoised as their difference from the given frame (EDMConfig.given_residual): the samples above
    # redraw a still object as a blob from frame 1 on, where holding the given frame reads 30+ dB.
    "unet-lat-b4-edm2-high-res": replace(LAT_HIGH, edm=replace(HIGH, given_residual=True)),
    # ... and half the given clips at EDM2's σ: trained at σ ≈ 10 alone, the residual is never denoised at the
    # low σ where the sampler ends, and -high-res's samples end in speckle there.
    "unet-lat-b4-edm2-half-res": replace(LAT_HIGH, edm=replace(HIGH, P_high_share=0.5, given_residual=True)),
    # ... with as many given clips at σ ≈ 10 as -high (half of all clips, where the motion word is learned) and a
    # sixth at EDM2's σ, taken from t2v: -half-res read the word at 1.30 against -high's 2.92 (8,000 clips).
    "unet-lat-b4-edm2-p67-res": replace(LAT_EDM2, edm=replace(HIGH, P_high_share=0.75, given_residual=True),
                                        pred_fraction=2 / 3),
    # ... the same mix without the residual: what the mix does alone.
    "unet-lat-b4-edm2-p67": replace(LAT_EDM2, edm=replace(HIGH, P_high_share=0.75), pred_fraction=2 / 3),
    # ... on f = 2 latents (16×16, an autoencoder trained with --channels 16): a 2-px step is a whole latent cell.
    "unet-lat2-b4-edm2-high": replace(LAT_EDM2, backbone="unet-lat2", edm=HIGH, pred_fraction=0.5),
    # The one-object world in pixel space, where a 2-px step is a whole-pixel shift (at f = 4 it is half a latent).
    "unet-xs-b4-one": LeanConfig(backbone="unet-xs", edm=PLAIN, lr=2e-3, batch=4, compositions=("red square",)),
    "unet-lat-b4-apool": LeanConfig(backbone="unet-lat", edm=PLAIN, lr=2e-3, batch=4, autoencoder="outputs/ae",
                                    backbone_args={"cond_pool": "attention"}),
    "unet-xs-b4-zeros": LeanConfig(backbone="unet-xs", edm=PLAIN, lr=2e-3, batch=4, hold_given_frame=False),
    "unet-xs-b2": LeanConfig(backbone="unet-xs", edm=PLAIN, lr=2e-3, batch=2),
    "unet-xs-b4-attn12": LeanConfig(backbone="unet-xs", edm=PLAIN, lr=2e-3, batch=4,
                                    backbone_args={"attention_levels": [1, 2]}),
    "unet-xs-b4-noattn": LeanConfig(backbone="unet-xs", edm=PLAIN, lr=2e-3, batch=4,
                                    backbone_args={"attention_levels": []}),
}


def config_of(name: str, mllm: str | None, autoencoder: str | None = None) -> LeanConfig:
    """A CONFIGS entry; NAME+mllm is the same recipe conditioned through the MLLM folder given by --mllm;
    latent recipes read the autoencoder folder given by --autoencoder."""
    base, _, suffix = name.partition("+")
    cfg = CONFIGS[base]
    if cfg.autoencoder and autoencoder:
        cfg = replace(cfg, autoencoder=autoencoder)
    if suffix.startswith("mllm"):
        layer = int(suffix.partition("@")[2] or -2)
        cfg = replace(cfg, conditioning="mllm", mllm=mllm or "", mllm_args={**cfg.mllm_args, "layer": layer})
    return cfg


def run(names: list[str], budgets: list[int], rows: int, out: Path, threads: int,
        mllm: str | None = None, samplers: list[str] | None = None, autoencoder: str | None = None,
        reuse_ema: bool = False) -> list[dict]:
    """Train each recipe through ``budgets``; at each, score once per sampler variant (default: the recipe's).
    ``reuse_ema``: load each point's saved EMA weights instead of training (to score new sampler variants)."""
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.jsonl"
    earlier = read_results(results_file)
    done = {(r["config"], r["clips"], r["rows"], sampler_of(r)) for r in earlier}
    variants = samplers or [DEFAULT_SAMPLER]
    torch.set_num_threads(threads)
    for name in names:
        cfg = config_of(name, mllm, autoencoder)
        if all((name, b, rows, v) in done for b in budgets for v in variants):
            continue
        trainer = LeanTrainer(cfg)
        n_params = sum(p.numel() for p in trainer.net.parameters())
        for budget in budgets:
            saved = out / f"ema_{name}_{budget}.safetensors"
            if reuse_ema:   # score the saved point again (other samplers), no training
                if not saved.exists():
                    raise ValueError(f"--reuse-ema: {saved} does not exist (train that point without --reuse-ema)")
                trainer.load_ema(saved)
                trainer.clips = budget
                trainer.cpu_seconds = next((r["cpu_s"] for r in earlier
                                            if r["config"] == name and r["clips"] == budget), float("nan"))
            else:
                trainer.train_to(budget, progress=_progress(name, budget))
            readings = None   # the denoiser's sampler-free readings: once per point
            for v in variants:
                if (name, budget, rows, v) in done:
                    continue
                readings = readings or trainer.readings(rows)
                report = trainer.evaluate(rows=rows, sampler=sampler_variant(cfg.sampler, v), readings=readings)
                suffix = "" if v == DEFAULT_SAMPLER else "_" + v.replace(",", "_")
                save_contact_sheet(trainer.last_videos, out / f"samples_{name}_{trainer.clips}{suffix}.png")
                row = {"config": name, "clips": trainer.clips, "budget": budget, "rows": rows, "sampler": v,
                       "params": n_params, "cpu_s": round(trainer.cpu_seconds, 1),
                       "loss": round(loss_ema(trainer.losses), 4), "scores": report}
                with open(results_file, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(f"\r{format_row(row)}", flush=True)
            if not reuse_ema:
                trainer.save_ema(out / f"ema_{name}_{trainer.clips}.safetensors")   # after the rows: kept first
    return read_results(results_file)


DEFAULT_SAMPLER = "recipe"   # the recipe's own sampler settings


def sampler_variant(base: SamplerConfig, variant: str) -> SamplerConfig:
    """'recipe' -> ``base``; 'guidance_scale=1,S_churn=20' -> ``base`` with those SamplerConfig fields replaced."""
    if variant == DEFAULT_SAMPLER:
        return base
    known = {f.name: f.type for f in fields(SamplerConfig)}
    changes = {}
    for item in variant.split(","):
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise ValueError(f"--samplers: {item!r} is not KEY=VALUE with KEY a SamplerConfig field {sorted(known)}")
        kind = str(known[key])   # the annotation, a string under postponed evaluation
        if kind == "bool" and value.lower() not in ("true", "false"):
            raise ValueError(f"--samplers: {item!r}: {key} is true or false")
        changes[key] = value.lower() == "true" if kind == "bool" else int(value) if kind == "int" else float(value)
    return replace(base, **changes)


def sampler_of(row: dict) -> str:
    return row.get("sampler", DEFAULT_SAMPLER)   # rows written before the sweep used the recipe's sampler


def save_contact_sheet(videos: dict[str, list], path: Path, per_split: int = 6) -> None:
    """One row per eval clip (first ``per_split`` of each split), all frames left to right, 2× upscaled."""
    import numpy as np
    from PIL import Image

    rows = [np.concatenate(list(v), axis=1) for split in videos for v in videos[split][:per_split]]
    if rows:
        sheet = np.concatenate(rows, axis=0)
        with atomic_path(path) as tmp:
            Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(tmp, "PNG")


def _progress(name: str, budget: int):
    def show(clips: int, loss: float) -> None:
        if clips % 400 < 16:
            print(f"\r  {name}: {clips}/{budget} clips, loss {loss:.3f}   ", end="", file=sys.stderr, flush=True)
    return show


def read_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# obj and iou are graded readings (vimi.training.lean.object_reading); dO/dB are the denoiser's noise
# removal on object / background pixels at σ = 0.1 and 0.3 (LeanTrainer.denoising_gain); mse1 is the
# denoiser's error on fixed held-out clips at σ = 1, gn1 / gn3 / gn10 the null / caption ratio of it at σ = 1,
# 3 and 10 (LeanTrainer.heldout_loss); wgt2 / wgp2 / wgp10 the wrong / right motion word ratio of the denoiser's
# error as t2v at σ = 2 and as prediction at σ = 2 and 10 (LeanTrainer.motion_word_gain); sg1 / sg2 the same ratio
# for the shape word as t2v at σ = 1 and 2, on the object's latent cells (LeanTrainer.shape_word_gain). With the
# subject task: sub its all_correct, sbS / sbN the subject drawn over seen / novel subjects, pgS / pgN the wrong /
# right reference picture ratio on the object's cells at σ = 1 over them (LeanTrainer.picture_gain).
COLUMNS = [("t2v-seen", "object", "obj"), ("t2v-seen", "shape_iou", "iou"), ("t2v-seen", "all_correct", "seen"),
           ("t2v-seen", "color", "col"), ("t2v-seen", "shape", "shp"), ("t2v-seen", "motion", "mot"),
           ("t2v-seen", "scene", "scn"), ("t2v-seen", "subject", "subj"),
           ("t2v-novel-composition", "all_correct", "novel"), ("prediction", "all_correct", "pred"),
           ("prediction", "psnr", "psnr"), ("heldout", "mse@1", "mse1"), ("heldout", "gain@1", "gn1"),
           ("heldout", "gain@3", "gn3"), ("heldout", "gain@10", "gn10"), ("motion_words", "along", "mw"),
           ("motion_words", "follow", "mwf"), ("motion_words", "prior", "mwp"), ("prediction", "motion", "pmot"),
           ("word_gain", "t2v@2", "wgt2"), ("word_gain", "prediction@2", "wgp2"),
           ("word_gain", "prediction@10", "wgp10"), ("shape_gain", "t2v@1", "sg1"), ("shape_gain", "t2v@2", "sg2"),
           ("denoising", "object@0.1", "dO.1"), ("denoising", "object@0.3", "dO.3"),
           ("denoising", "background@0.1", "dB.1"), ("subject", "all_correct", "sub"),
           ("subject", "seen_subject", "sbS"), ("subject", "novel_subject", "sbN"), ("picture_gain", "seen@1", "pgS"),
           ("picture_gain", "novel@1", "pgN")]


def format_row(r: dict) -> str:
    cells = [f"{r['config']:<16}", f"{sampler_of(r):<24}", f"{r['clips']:>6}", f"{r['cpu_s']:>7.0f}",
             f"{r['loss']:>6.3f}"]
    for split, key, _ in COLUMNS:
        v = r["scores"].get(split, {}).get(key)
        digits = 1 if key in ("psnr", "along", "prior") or split == "denoising" else 3 if split == "heldout" else 2
        cells.append(f"{'-' if v is None else f'{v:.{digits}f}':>5}")
    return " ".join(cells)


def table(results: list[dict]) -> str:
    head = " ".join([f"{'config':<16}", f"{'sampler':<24}", f"{'clips':>6}", f"{'cpu_s':>7}", f"{'loss':>6}",
                     *(f"{label:>5}" for _, _, label in COLUMNS)])
    ordered = sorted(results, key=lambda r: (r["config"], sampler_of(r), r["clips"]))
    return "\n".join([head, *(format_row(r) for r in ordered)])


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("t2v-seen", "all_correct"), ("t2v-seen", "color"), ("t2v-seen", "shape"), ("t2v-seen", "motion"),
              ("t2v-novel-composition", "all_correct"), ("prediction", "psnr")]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (split, key) in zip(axes.flat, panels):
        for name, v in sorted({(r["config"], sampler_of(r)) for r in results}):
            rs = sorted((r for r in results if r["config"] == name and sampler_of(r) == v), key=lambda r: r["clips"])
            ax.plot([r["clips"] for r in rs], [r["scores"].get(split, {}).get(key, float("nan")) for r in rs],
                    marker="o", label=name if v == DEFAULT_SAMPLER else f"{name} {v}")
        ax.set_title(f"{split}: {key}")
        ax.set_xlabel("clips seen")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format=Path(path).suffix.lstrip(".") or "png")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="fit-tiny-snap,fit-tiny,unet-s", help="comma-separated CONFIGS names")
    ap.add_argument("--budgets", default="2000,5000,10000", help="clips seen at each evaluation")
    ap.add_argument("--rows", type=int, default=20, help="eval clips per split")
    ap.add_argument("--out", type=Path, default=Path("outputs/learning"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mllm", default=None, help="MLLM folder for NAME+mllm configurations (vimi.mllm.align output)")
    ap.add_argument("--samplers", default="", help="sampler variants scored at every point, ';'-separated: "
                    "'recipe' or SamplerConfig overrides 'KEY=V,KEY=V' (e.g. 'recipe;guidance_scale=1')")
    ap.add_argument("--autoencoder", default=None, help="autoencoder folder for latent recipes "
                    "(python -m vimi.training.autoencoder; default outputs/ae)")
    ap.add_argument("--reuse-ema", action="store_true", help="score the EMA weights saved in OUT at each budget "
                    "instead of training (e.g. new --samplers on an earlier run)")
    ap.add_argument("--list", action="store_true", help="print the configuration names and exit")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(CONFIGS))
        return 0
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n.partition("+")[0] not in CONFIGS
               or not re.fullmatch(r"(mllm(@-?\d+)?)?", n.partition("+")[2])]
    if unknown:
        print(f"error: unknown configuration(s) {unknown}; known: {list(CONFIGS)}, each optionally "
              "+mllm or +mllm@LAYER", file=sys.stderr)
        return 2
    pictures = [n for n in names if CONFIGS[n.partition("+")[0]].subject_task and "+mllm" not in n]
    if pictures:
        print(f"error: {pictures} train the subject task, whose reference pictures only the MLLM reads: "
              "name them NAME+mllm", file=sys.stderr)
        return 2
    budgets = sorted(int(b) for b in args.budgets.split(","))
    samplers = [v.strip() for v in args.samplers.split(";") if v.strip()] or None
    try:
        for v in samplers or []:
            sampler_variant(SamplerConfig(), v)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = [r for r in run(names, budgets, args.rows, args.out, args.threads, args.mllm, samplers, args.autoencoder,
                              args.reuse_ema) if r["config"] in names]
    print("\nlearning benchmark (NAME: caption words → embeddings; NAME+mllm: the frozen MLLM; "
          "cpu_s = training CPU-seconds)")
    print(table(results))
    plot(results, args.out / "curves.png")
    print(f"curves: {args.out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    from base.cli_guard import guarded

    sys.exit(guarded(main, prog="benchmarks/learning.py"))
