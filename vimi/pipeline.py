"""Inference: ``VimiPipeline`` (config.json + safetensors) and ``vimi.generate``.

A pipeline folder (docs/formats.md, The pipeline folder) holds everything a generation needs:

    config.json          every model, diffusion, sampler and MLLM setting (``VimiConfig``)
    model.safetensors    the trained weights (EMA weights when exported by training); after
                         parameter-efficient tuning only the tuned ones (adapters, LoRA, frame-wise
                         conditioning), with what they were made for in the file's metadata
    base.safetensors     tuned models only: the frozen backbone + encoder head they run on
    mllm/                the MLLM folder (LLaVA layout), unless config points at an external one
    index/               optional bundled retrieval index for t2v

``__call__`` reads as numbered steps, as diffusers pipelines do: check inputs → retrieve (t2v) →
build prompt → encode → sample → decode → write. Beyond the training length, tasks given first
frames are extended chunk by chunk (docs/architecture.md, The model: long videos).
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from base.config import from_dict, to_dict
from base.errors import MissingImageError
from base.images import load_image
from base.io import atomic_dir
from base.pixels import to_model_video, to_uint8_video
from base.tasks import TASKS, get_task
from vimi.diffusion import GuidedDenoiser, edm_sampler
from vimi.mllm import PromptError, task_prompt
from vimi.mllm.encoder import MLLMLoadError
from vimi.mllm.prompt import as_image
from vimi.model import VimiConfig, VimiModel
from vimi.weights import load_safetensors, read_metadata

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
BASE_WEIGHTS = "base.safetensors"
CHUNK_SEED_STRIDE = 1_000_003  # long videos: chunk c of a sample seeded s draws its noise with s + c·stride
BUNDLE_MAX_BYTES = 512 * 2**20  # small MLLMs (the tiny default) and indexes travel inside the folder


class InputError(ValueError):
    """A generation request is malformed: unknown task, missing/extra inputs, bad images."""


class PipelineLoadError(ValueError):
    """A pipeline folder is missing, incomplete or was written by an incompatible version."""


@dataclass
class Request:
    """One checked generation request (step 1's output)."""

    task: str
    prompt: str
    images: list[Image.Image]          # task images: subject references or the first frame(s)
    first_frames: np.ndarray | None    # tasks given frames (prediction): (k, H, W, 3) uint8, clean

    @classmethod
    def given(cls, task: str, prompt: str, frames: np.ndarray) -> "Request":
        """A request of a task given first frames: the frames are both its prompt images and its clean frames."""
        return cls(task, prompt, [Image.fromarray(f) for f in frames], frames)


# ---------------------------------------------------------------------------------------------
# Input checking (step 1)
# ---------------------------------------------------------------------------------------------

def _load_image(x: Any, what: str) -> Image.Image:
    """A task image given as a path, a PIL image or a uint8 (H, W, 3) array -> RGB, or one InputError."""
    try:
        if isinstance(x, np.ndarray):
            return as_image(x, what)
        if isinstance(x, (str, Path, Image.Image)):
            return load_image(x, name=what if isinstance(x, Image.Image) else f"{what} {x}")
    except (PromptError, MissingImageError) as e:
        raise InputError(str(e)) from None
    raise InputError(f"{what}: expected an image path, PIL image or uint8 (H, W, 3) array, got {type(x).__name__}")


def _first_frames(frames: Any, size: int, max_k: int) -> np.ndarray:
    """Prediction's given frames -> (k, size, size, 3) uint8: an mp4 path keeps its first max_k frames."""
    if isinstance(frames, (str, Path)) and Path(frames).suffix.lower() in (".mp4", ".mov", ".mkv", ".webm", ".avi"):
        from data_pipelines.video_io import VideoDecodeError, read_video

        try:
            arr = read_video(frames)[:max_k]
        except VideoDecodeError as e:
            raise InputError(f"prediction frames: {e}") from None
    else:
        items = frames if isinstance(frames, (list, tuple)) else [frames]
        if not items:
            raise InputError("prediction needs at least one first frame in inputs['frames']")
        if len(items) > max_k:
            raise InputError(f"prediction takes at most {max_k} first frame(s), got {len(items)}")
        arr = np.stack([np.asarray(_load_image(f, f"frames[{i}]")) for i, f in enumerate(items)])
    if arr.shape[1:3] != (size, size):
        raise InputError(f"prediction frames are {arr.shape[2]}x{arr.shape[1]}, the model generates {size}x{size}")
    return arr


def check_inputs(task: str, inputs: dict, size: int, max_given_frames: int) -> Request:
    """Validate one request against the task's input contract (``base.tasks``; README, `vimi.generate`)."""
    spec = get_task(task, InputError)
    if not isinstance(inputs, dict):
        raise InputError(f"inputs must be a dict, got {type(inputs).__name__}")
    allowed = set(spec.inputs)
    missing, unexpected = sorted(allowed - set(inputs)), sorted(set(inputs) - allowed)
    if missing or unexpected:
        raise InputError(f"task {task!r} takes inputs {sorted(allowed)}: missing {missing}, unexpected {unexpected}")
    prompt = inputs["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("inputs['prompt'] must be a non-empty string")
    if spec.given_frames:
        frames = _first_frames(inputs[spec.image_input], size, max_given_frames)
        spec.check(prompt, len(frames), InputError)
        return Request.given(task, prompt, frames)
    if spec.image_input is None:
        spec.check(prompt, 0, InputError)
        return Request(task, prompt, [], None)
    imgs = inputs[spec.image_input]
    imgs = list(imgs) if isinstance(imgs, (list, tuple)) else [imgs]
    spec.check(prompt, len(imgs), InputError)
    name = spec.image_input
    return Request(task, prompt, [_load_image(x, f"{name}[{i}]") for i, x in enumerate(imgs)], None)


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------

class VimiPipeline:
    """A trained (or freshly built) VIMI generator plus its retriever, ready to sample."""

    def __init__(self, model: VimiModel, retriever: Any | None = None, index_path: str | None = None):
        self.model = model.eval()
        self.cfg: VimiConfig = model.cfg
        self.retriever = retriever
        self.index_path = index_path
        self._warned_no_index = False
        self.last_nfe: int | None = None  # denoiser forwards of the last generate_batch (benchmarks)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: VimiConfig | None = None, index: str | None = None) -> "VimiPipeline":
        """An untrained pipeline (random backbone, the configured MLLM)."""
        model = VimiModel(cfg or VimiConfig())
        return cls(model, open_retriever(index), index)

    def save_pretrained(self, folder: str | Path, state: dict[str, torch.Tensor] | None = None,
                        bundle_index: bool | None = None) -> Path:
        """Write config.json + model.safetensors (``state`` overrides, e.g. EMA weights) + mllm/ (+ index/).

        Small MLLM and index folders are copied in so the folder travels alone; large ones (a 7B
        LLaVA, a 500M-caption index) are referenced by absolute path. ``bundle_index`` forces either.

        Written into a temporary sibling folder and renamed, so a crash never leaves a half pipeline.
        """
        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            cfg = from_dict(VimiConfig, to_dict(self.cfg))
            src = self.model.encoder.source
            if _folder_bytes(src) <= BUNDLE_MAX_BYTES or self.cfg.mllm.tuning == "full":
                self.model.encoder.save_mllm(tmp / "mllm")
                cfg.mllm.path = "mllm"  # relative to the pipeline folder
            else:
                cfg.mllm.path = str(Path(src).resolve())
            index = None
            if self.index_path and self.index_path.startswith(("http://", "https://")):
                index = self.index_path
            elif self.index_path:
                if bundle_index is None:
                    bundle_index = _folder_bytes(self.index_path) <= BUNDLE_MAX_BYTES
                if bundle_index:
                    shutil.copytree(self.index_path, tmp / "index")
                    index = "index"
                else:
                    index = str(Path(self.index_path).resolve())
            if self.cfg.autoencoder:   # small: always travels with the pipeline
                shutil.copytree(self.cfg.autoencoder, tmp / "autoencoder")
                cfg.autoencoder = "autoencoder"
            state = state or self.model.trainable_state_dict()
            weights = {k: v.detach().contiguous().cpu() for k, v in state.items()}
            save_file(weights, str(tmp / WEIGHTS), metadata=self.model.tuning_signature())
            base = {k: v.contiguous().cpu() for k, v in self.model.base_state_dict(weights).items()}
            if base:
                save_file(base, str(tmp / BASE_WEIGHTS))
            meta = {"format_version": FORMAT_VERSION, "model": to_dict(cfg), "index": index,
                    "backbone_resolved": to_dict(self.cfg.backbone_config())}
            (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu",
                        index: str | None = None) -> "VimiPipeline":
        """Load a pipeline folder; ``index`` (a folder or a retrieval service URL) replaces its own index."""
        folder = Path(folder)
        cfg_path = folder / "config.json"
        if not cfg_path.is_file() or not (folder / WEIGHTS).is_file():
            raise PipelineLoadError(f"{folder} is not a pipeline folder (needs config.json and {WEIGHTS})")
        try:
            meta = json.loads(cfg_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PipelineLoadError(f"{cfg_path}: not readable JSON ({e})") from None
        if not isinstance(meta, dict) or "model" not in meta:
            raise PipelineLoadError(f"{cfg_path}: expected a JSON object with 'format_version' and 'model'")
        if meta.get("format_version") != FORMAT_VERSION:
            raise PipelineLoadError(f"{folder}: format_version {meta.get('format_version')} != {FORMAT_VERSION}")
        cfg = from_dict(VimiConfig, meta["model"])
        if cfg.mllm.path and not Path(cfg.mllm.path).is_absolute():
            cfg.mllm.path = str(folder / cfg.mllm.path)
        if cfg.autoencoder and not Path(cfg.autoencoder).is_absolute():
            cfg.autoencoder = str(folder / cfg.autoencoder)
        state = load_safetensors(folder / WEIGHTS, PipelineLoadError)  # before minutes of building
        base = None
        if cfg.tuning != "full":
            if not (folder / BASE_WEIGHTS).is_file():
                raise PipelineLoadError(f"{folder}: tuning={cfg.tuning!r} needs {BASE_WEIGHTS} "
                                        "(the frozen base weights)")
            base = load_safetensors(folder / BASE_WEIGHTS, PipelineLoadError)
        try:
            model = VimiModel(cfg)
        except (MLLMLoadError, ValueError) as e:  # includes a tuning option the backbone cannot take
            raise PipelineLoadError(f"{folder}: {e}") from None
        _load_tuned(model, folder / WEIGHTS, state, base)
        if index is None:
            index = meta.get("index")
            if index and not index.startswith(("http://", "https://")) and not Path(index).is_absolute():
                index = str(folder / index)
        return cls(model.to(device), open_retriever(index), index)

    def load_tuned(self, source: str | Path) -> "VimiPipeline":
        """Swap in the tuned weights (adapters, LoRA, frame-wise conditioning) of another pipeline folder
        or weight file made from the same base: one base, many small tuned files. Weights made for
        another backbone, size or tuning are refused with one line naming each difference."""
        path = Path(source)
        path = path / WEIGHTS if path.is_dir() else path
        if not path.is_file():
            raise PipelineLoadError(f"{source}: no tuned weights there (expected a pipeline folder or {WEIGHTS})")
        if self.cfg.tuning == "full":
            raise PipelineLoadError(f"{source}: this pipeline is fully tuned (tuning=full); tuned weights load "
                                    "into a pipeline of the same tuning mode")
        _load_tuned(self.model, path, load_safetensors(path, PipelineLoadError), self.model.base_state_dict())
        return self

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(self, task: str, inputs: dict, **kwargs) -> np.ndarray:
        """One video (T, H, W, 3) uint8; see :meth:`generate_batch` for the keyword arguments."""
        return self.generate_batch([(task, inputs)], **kwargs)[0]

    @torch.no_grad()
    def generate_batch(self, requests: Sequence[tuple[str, dict]], seeds: Sequence[int] | int = 0,
                       steps: int | None = None, guidance: float | None = None,
                       num_frames: int | None = None, progress: bool = False) -> list[np.ndarray]:
        """Sample a batch of (task, inputs) requests. Sample i uses seed ``seeds[i]`` (or seeds + i), so a
        video does not depend on the batch it was drawn in."""
        cfg = self.cfg
        T0 = cfg.video.frames
        T = num_frames or T0
        if T < 2:
            raise InputError(f"num_frames must be >= 2, got {T}")
        seeds = list(seeds) if isinstance(seeds, (list, tuple)) else [int(seeds) + i for i in range(len(requests))]
        if len(seeds) != len(requests):
            raise InputError(f"{len(seeds)} seeds for {len(requests)} requests")
        # 1. Check inputs.
        reqs = [check_inputs(t, inp, cfg.video.size, cfg.max_cond_frames) for t, inp in requests]
        for r in reqs:
            if r.first_frames is not None and len(r.first_frames) > T:
                raise InputError(f"num_frames {T} is shorter than the {len(r.first_frames)} first frame(s) given")
        if T > T0 and any(TASKS[r.task].given_frames for r in reqs):
            return self._extend(reqs, seeds, T, steps, guidance, progress)
        videos = self._sample(reqs, seeds, T, steps, guidance, progress)
        t2v = [i for i, r in enumerate(reqs) if r.task == "t2v"]
        if cfg.sampler.factorized and t2v:
            # Emu Video's factorisation (SamplerConfig.factorized): each t2v clip again, as the prediction task
            # from its own first frame, so the path is drawn by the task that learned the motion words.
            nfe = self.last_nfe or 0
            again = [Request.given("prediction", reqs[i].prompt, videos[i][:1].copy()) for i in t2v]
            for i, v in zip(t2v, self._sample(again, [seeds[i] for i in t2v], T, steps, guidance, progress)):
                videos[i] = v
            self.last_nfe = nfe + (self.last_nfe or 0)
        return videos

    def _extend(self, reqs: list[Request], seeds: list[int], N: int, steps, guidance, progress) -> list[np.ndarray]:
        """Long videos by autoregressive extension (AID; Open-Sora's video extension): a chunk of the
        training length, then chunks conditioned on the last k = max_cond_frames frames so far, each adding
        T0 - k frames, until N. Chunk c samples with seed + c·CHUNK_SEED_STRIDE. The carried frames are
        pasted back exactly (step 6), so every boundary frame is shared by the two chunks it joins."""
        T0, k = self.cfg.video.frames, self.cfg.max_cond_frames
        if not all(TASKS[r.task].given_frames for r in reqs):
            given = ", ".join(t.name for t in TASKS.values() if t.given_frames)
            raise InputError(f"num_frames {N} > the training length {T0} extends only tasks given first frames "
                             f"({given}); this batch mixes in other tasks")
        stride = T0 - k
        if stride < 1 or (N - T0) % stride:
            reachable = ", ".join(str(T0 + i * stride) for i in range(4)) if stride >= 1 else str(T0)
            raise InputError(f"num_frames {N} is not reachable by whole chunks: chunks of {T0} frames overlapping "
                             f"by {k} give {reachable}, ...")
        videos = self._sample(reqs, seeds, T0, steps, guidance, progress)
        nfe = self.last_nfe or 0
        for chunk in range(1, (N - T0) // stride + 1):
            carried = [Request.given(r.task, r.prompt, v[-k:].copy()) for r, v in zip(reqs, videos)]
            new = self._sample(carried, [s + chunk * CHUNK_SEED_STRIDE for s in seeds], T0, steps, guidance, progress)
            nfe += self.last_nfe or 0
            videos = [np.concatenate([v, n[k:]]) for v, n in zip(videos, new)]
        self.last_nfe = nfe
        return videos

    def _sample(self, reqs: list[Request], seeds: list[int], T: int, steps, guidance, progress) -> list[np.ndarray]:
        """Steps 2-6 for checked requests: one chunk of T frames."""
        cfg, model = self.cfg, self.model
        sc = cfg.sampler
        steps = steps or sc.num_steps
        guidance = sc.guidance_scale if guidance is None else guidance
        device = next(model.net.parameters()).device
        # 2. Retrieve image-text pairs for t2v (VIMI conditions t2v on its retrieved context).
        contexts = self._retrieve([r.prompt if TASKS[r.task].retrieves else None for r in reqs])
        # 3. Build the multimodal instruction prompts.
        try:
            prompts = [task_prompt(r.task, r.prompt, images=r.images, context=c) for r, c in zip(reqs, contexts)]
        except PromptError as e:
            raise InputError(str(e)) from None
        # 4. Encode: C for the prompts, the null condition for classifier-free guidance.
        B = len(reqs)
        c, mask = model.condition(prompts)
        null_c, null_mask = model.null_condition(B)
        # 5. Sample with EDM's Heun sampler; prediction gets its clean first frames as extra channels.
        given = torch.zeros((B, cfg.video.channels, T, cfg.video.size, cfg.video.size))
        k = torch.zeros(B, dtype=torch.long)
        for i, r in enumerate(reqs):
            if r.first_frames is not None:
                n = min(len(r.first_frames), T)
                given[i, :, :n] = to_model_video(r.first_frames[:n])
                k[i] = n
        x_given = model.to_latent(given.to(device))                    # latent mode: (B, c, T, h, w)
        shape = tuple(x_given.shape)
        frame_cond = model.given_frame_condition(x_given, k.to(device))                  # (B, c + 1, T, h, w)
        cond = {"cond": c, "cond_mask": mask, "frame_cond": frame_cond}
        uncond = {"cond": null_c, "cond_mask": null_mask, "frame_cond": frame_cond}
        denoiser = GuidedDenoiser(model, cond, uncond, guidance, sc.dynamic_threshold, sc.threshold_floor,
                                  sc.guidance_interval)
        sigma_in = cfg.input_scale(T)
        kw = sc.step_kwargs() | {"num_steps": steps}
        out = edm_sampler(denoiser, shape=shape, seeds=seeds, sigma_in=sigma_in, device=device,
                          frame_noise_share=cfg.edm.frame_noise_share,
                          progress=progress, **kw)
        # 6. Decode: given frames are known exactly, so they are pasted back.
        video = model.from_latent(out.samples.float()).cpu()
        known = torch.arange(T)[None] < k[:, None]                              # (B, T)
        video = torch.where(known[:, None, :, None, None], given, video)
        self.last_nfe = out.nfe
        return list(to_uint8_video(video))

    def _retrieve(self, queries: list[str | None]) -> list[list[tuple[str, Image.Image]]]:
        k = self.cfg.retrieval_k
        out: list[list[tuple[str, Image.Image]]] = [[] for _ in queries]
        wanted = [i for i, q in enumerate(queries) if q is not None]
        if not wanted or k == 0:
            return out
        if self.retriever is None:
            if not self._warned_no_index:
                log.warning("no retrieval index in this pipeline: t2v prompts carry no retrieved pairs")
                self._warned_no_index = True
            return out
        hits = self.retriever.search([queries[i] for i in wanted], k)
        for i, row in zip(wanted, hits):
            for h in row:
                if h.image is None:
                    continue
                out[i].append((h.caption, Image.open(io.BytesIO(self.retriever.image(h))).convert("RGB")))
        return out


def _load_tuned(model: VimiModel, path: Path, state: dict, base: dict | None) -> None:
    """Check the weights' signature (backbone, size, tuning), then load them; one line on a mismatch."""
    try:
        model.check_tuning_signature(read_metadata(path, PipelineLoadError), str(path))
        model.load_trainable_state_dict(state, base)
    except (KeyError, ValueError) as e:
        raise PipelineLoadError(e.args[0] if isinstance(e, KeyError) else str(e)) from None


def open_retriever(index: str | None):
    """An index folder or a retrieval service URL -> an object with ``search`` and ``image``; None -> None."""
    if not index:
        return None
    if index.startswith(("http://", "https://")):
        from retrieval import RetrieverClient

        return RetrieverClient(index)
    from retrieval import open_index

    return open_index(index)


def _folder_bytes(path: str | Path) -> int:
    p = Path(path)
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0


# ---------------------------------------------------------------------------------------------
# vimi.generate
# ---------------------------------------------------------------------------------------------

_DEFAULT: VimiPipeline | None = None


def default_pipeline() -> VimiPipeline:
    """$VIMI_PIPELINE if set; otherwise the default config, untrained (with a warning saying so)."""
    global _DEFAULT
    if _DEFAULT is None:
        path = os.environ.get("VIMI_PIPELINE")
        if path:
            _DEFAULT = VimiPipeline.from_pretrained(path)
        else:
            warnings.warn("no trained pipeline given (pipeline=PATH or $VIMI_PIPELINE): using the default "
                          "config UNTRAINED, so the video is noise-like; train one with `make demo`",
                          stacklevel=3)
            _DEFAULT = VimiPipeline.from_config()
    return _DEFAULT


def generate(task: str, inputs: dict, pipeline: str | Path | VimiPipeline | None = None, *,
             steps: int | None = None, guidance: float | None = None, seed: int = 0,
             num_frames: int | None = None, output: str | Path | None = None) -> np.ndarray:
    """Generate one video for a registered ``task`` (``base.tasks.TASK_NAMES``: t2v, prediction, subject).

    inputs: t2v ``{"prompt": str}``; prediction ``{"prompt": str, "frames": first frame(s) as a list of
    uint8 arrays / PIL images / image paths, or an mp4 path}``; subject ``{"prompt": "A <image> moves
    left on sand", "images": [one reference per <image>]}``. Returns (T, H, W, 3) uint8 frames and
    writes an mp4 to ``output`` when given.
    """
    if pipeline is None:
        pipe = default_pipeline()
    elif isinstance(pipeline, VimiPipeline):
        pipe = pipeline
    else:
        pipe = VimiPipeline.from_pretrained(pipeline)
    video = pipe(task, inputs, seeds=[seed], steps=steps, guidance=guidance, num_frames=num_frames)
    if output is not None:
        from data_pipelines.video_io import write_video

        write_video(output, video, fps=pipe.cfg.video.fps)
    return video
