"""Build what a run trains on: the model (from scratch or a stage-1 export), its EMA twin, the data stream."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from base.config import to_dict
from vimi.diffusion import EDMLoss
from vimi.models.adapters import is_tuning_param, untuned_name
from vimi.training.config import TrainConfig
from vimi.training.data import TaskFormat, shard_urls
from vimi.training.ema import shared_copy
from vimi.training.frozen import Hidden, freeze_all_but, frozen_modules, hide_frozen
from vimi.training.loader import ShardStream, StreamState, VideoSpec

# Model settings a tuning run may set differently from the untuned export it starts from.
TUNING_KEYS = ("tuning", "adapters", "lora", "latent_shift", "frame_cond")


class InitError(ValueError):
    """``run.init`` is missing, unreadable, or a pipeline of a different model."""


@dataclass
class Built:
    model: nn.Module                 # VimiModel with its frozen submodules hidden from the module tree
    ema_model: nn.Module | None      # rank 0: a copy whose trained weights hold the EMA (frozen parts shared)
    loss: EDMLoss
    sigma_in: float                  # Snap Video's input scale for the training clip size
    trainable_names: list[str]
    n_trainable: int
    n_frozen: int
    hidden: list[Hidden]

    @property
    def n_hidden(self) -> int:
        return sum(h.numel for h in self.hidden)


def video_spec(cfg: TrainConfig) -> VideoSpec:
    v = cfg.model.video
    size = v.size if isinstance(v.size, (list, tuple)) else (v.size, v.size)
    return VideoSpec(frames=int(v.frames), size=(int(size[0]), int(size[1])), fps=float(v.fps) if v.fps else None)


def build_training_model(cfg: TrainConfig, device: torch.device, init: str | None, with_ema: bool) -> Built:
    """VimiModel (+ stage-1 weights), frozen all but its trainable parameters, frozen modules hidden
    and moved to ``device`` (DeepSpeed moves the rest), EMA twin on rank 0."""
    from vimi.model import VimiModel

    model = VimiModel(cfg.model)
    if init is not None:
        load_init(model, init, cfg)
    trainable = list(model.trainable_parameters())
    if not trainable:
        raise InitError(f"model.tuning={cfg.model.tuning!r} leaves nothing to train: enable model.frame_cond, "
                        "set model.mllm.tuning=lora, or choose model.tuning adapters / lora / full")
    n_trainable, n_frozen = freeze_all_but(model, trainable)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    ema_model = None
    if with_ema:
        ema_model = shared_copy(model, [m for _, _, m in frozen_modules(model)]).to(device).eval()
        ema_model.requires_grad_(False)
    hidden = hide_frozen(model, device)
    spec = video_spec(cfg)
    sigma_in = cfg.model.input_scale(spec.frames)
    return Built(model=model, ema_model=ema_model, loss=EDMLoss.from_config(cfg.model.edm, sigma_in),
                 sigma_in=sigma_in, trainable_names=names, n_trainable=n_trainable, n_frozen=n_frozen, hidden=hidden)


def check_init(cfg: TrainConfig, resuming: bool) -> None:
    """Fail fast (before any heavy import) on a missing or absent ``run.init``."""
    init = cfg.run.init
    if init is not None and not Path(init).expanduser().is_dir():
        raise InitError(f"--init {init}: no such folder (expected a pipeline export, e.g. runs/.../pipeline)")
    if cfg.model.tuning != "full" and init is None:
        raise InitError(f"model.tuning={cfg.model.tuning!r} tunes a trained generator: pass --init RUN/pipeline "
                        "(its frozen base weights come from there)")
    if cfg.run.stage == "instruct" and init is None and not resuming:
        raise InitError("stage 2 (instruct) starts from a stage-1 export: pass --init RUN/pipeline "
                        "(the `pipeline` folder that launch/pretrain.py writes at the end)")


def load_init(model: nn.Module, path: str, cfg: TrainConfig) -> None:
    """Load a stage-1 pipeline export (config.json + *.safetensors) into ``model``.

    The export's model config must equal this run's (the MLLM path aside: an export carries its
    own copy); a difference is an InitError naming each setting.
    """
    from vimi.training.checkpoint import config_differences, with_defaults
    from vimi.weights import load_safetensors

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise InitError(f"--init {path}: no such folder (expected a pipeline export, e.g. runs/.../pipeline)")
    cfg_file = folder / "config.json"
    files = sorted(folder.glob("*.safetensors"))
    if not cfg_file.is_file() or not files:
        raise InitError(f"--init {path}: not a pipeline export (needs config.json and *.safetensors)")
    try:
        saved = json.loads(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InitError(f"--init {path}: {cfg_file} is not readable JSON ({e})") from None
    saved_model = saved.get("model", saved)
    saved_model = with_defaults(type(cfg.model), saved_model)
    mine = to_dict(cfg.model)
    # Parameter-efficient tuning starts from an untuned export (SimDA, AID: adapt a trained model):
    # the tuning options may then differ; a tuned export must match them as everything else.
    untuned_export = saved_model.get("tuning", "full") == "full"
    ignore = TUNING_KEYS if untuned_export else ()
    blocking, _ = config_differences({"model": _without_paths(saved_model, ignore)},
                                     {"model": _without_paths(mine, ignore)}, saved_label="export")
    if blocking:
        raise InitError(f"--init {path} holds a different model than this config: " + "; ".join(blocking))
    _check_same_autoencoder(folder, saved_model.get("autoencoder", ""), cfg.model.autoencoder, path)
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_safetensors(f, InitError))
    own = model.state_dict()
    # Trainable weights must come from the export, and so must a tuned model's frozen base; frozen MLLM
    # weights come from the MLLM folder.
    base = model.base_state_dict()
    needed = [n for n, p in model.named_parameters() if p.requires_grad or n in base]
    if untuned_export:
        # The base under its untuned names (peft adds ``base_layer``); modules that tuning adds now
        # keep their (zero) initialisation.
        state = {n: state[untuned_name(n)] for n in own if untuned_name(n) in state}
        needed = [n for n in needed if not is_tuning_param(n)]
    missing = sorted(n for n in needed if n not in state)
    if missing:
        raise InitError(f"--init {path}: weights missing for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    bad = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise InitError(f"--init {path}: shape mismatch for {bad[:5]}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def _check_same_autoencoder(export: Path, saved: str, mine: str, path: str) -> None:
    """Latent mode: the export's own copy of the autoencoder and this run's must be the same one (same
    config, latent scale included); the backbone's weights mean nothing on another's latents."""
    from dataclasses import asdict

    from vimi.models.autoencoder import autoencoder_config

    if bool(saved) != bool(mine):
        raise InitError(f"--init {path}: model.autoencoder is {saved or 'unset'!r} in the export but "
                        f"{mine or 'unset'!r} here (latent and pixel models do not mix)")
    if saved:
        theirs = asdict(autoencoder_config(saved if Path(saved).is_absolute() else export / saved))
        ours = asdict(autoencoder_config(mine))
        if theirs != ours:
            raise InitError(f"--init {path}: model.autoencoder {mine} is not the autoencoder the export was "
                            f"trained with ({theirs} vs {ours})")


def _without_paths(d: dict, ignore: tuple[str, ...] = ()) -> dict:
    d = json.loads(json.dumps(d))
    d.get("mllm", {}).pop("path", None)
    d.pop("autoencoder", None)   # an export carries its own copy (checked by _check_same_autoencoder)
    for key in ignore:
        d.pop(key, None)
    return d


def build_stream(cfg: TrainConfig, rank: int, world: int, state: StreamState | None) -> ShardStream:
    d = cfg.data
    fmt = TaskFormat(stage=cfg.run.stage, tasks=dict(d.tasks), max_contexts=d.max_contexts,
                     given_frames=cfg.model.max_cond_frames, subject_field=d.subject_field,
                     subject_phrase=d.subject_phrase, subject_fallback=d.subject_fallback,
                     subject_crop=tuple(d.subject_crop))
    return ShardStream(shard_urls(d.shards), fmt, video_spec(cfg), batch_size=cfg.optim.micro_batch,
                       shuffle_buffer=d.shuffle_buffer, seed=cfg.run.seed, rank=rank, world_size=world,
                       num_workers=d.workers, reraise=d.on_error == "raise", resume=state)
