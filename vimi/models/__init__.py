"""Backbones by name: every F(x; c_noise, C, cond_mask, frame_cond) that EDMPrecond can wrap.

A backbone family is (config dataclass, module class, named sizes). A model config names a size
(``backbone: unet-s``) and field overrides (``backbone_args: {channels: [32, 64, 128]}``);
:func:`build_backbone` resolves both, as EDM's ``model_type`` does. Adding a backbone means one new
module and one line in ``FAMILIES``.

Families are imported lazily so that ``python -m vimi.models.fit`` runs its module only once.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import torch
from torch import nn

# family -> (module, config class, model class, named-size table)
FAMILIES: dict[str, tuple[str, str, str, str]] = {
    "fit": ("vimi.models.fit", "FITConfig", "FIT", "FIT_CONFIGS"),     # Snap Video's FIT (transformer)
    "unet": ("vimi.models.unet", "UNetConfig", "UNet", "UNET_CONFIGS"),  # factorised space-time U-Net
}


class BackboneError(ValueError):
    """An unknown backbone name or an override its config does not have."""


def _family(name: str) -> tuple[Any, type, type, dict]:
    family = name.split("-", 1)[0]
    if family not in FAMILIES:
        raise BackboneError(f"unknown backbone {name!r}: the name must start with one of {sorted(FAMILIES)} "
                            f"(known sizes: {backbone_names()})")
    module, cfg_cls, model_cls, sizes = FAMILIES[family]
    mod = importlib.import_module(module)
    return mod, getattr(mod, cfg_cls), getattr(mod, model_cls), getattr(mod, sizes)


def backbone_names() -> list[str]:
    """Every named size of every family (the config's and CLI's choices)."""
    return sorted(n for fam in FAMILIES.values() for n in getattr(importlib.import_module(fam[0]), fam[3]))


def backbone_config(name: str, **overrides) -> Any:
    """The named size's config with field overrides (e.g. ``cond_dim=4096``), validated."""
    _, cfg_cls, _, sizes = _family(name)
    if name not in sizes:
        raise BackboneError(f"unknown backbone size {name!r}; known: {backbone_names()}")
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise BackboneError(f"backbone {name!r} has no setting(s) {unknown}; known: {sorted(fields)}")
    try:
        return dataclasses.replace(sizes[name], **overrides)
    except (TypeError, ValueError) as e:
        raise BackboneError(f"backbone {name!r}: {e}") from None


def build_backbone(name: str, config: Any | None = None, device: torch.device | str | None = None,
                   **overrides) -> nn.Module:
    """A backbone module from a name (+ overrides) or an explicit config; ``device="meta"`` allocates nothing."""
    _, _, model_cls, _ = _family(name)
    config = config if config is not None else backbone_config(name, **overrides)
    if device is None:
        return model_cls(config)
    with torch.device(device):
        return model_cls(config)


def frame_condition(video: torch.Tensor, k: torch.Tensor | int, hold: bool = True) -> torch.Tensor:
    """Every backbone's ``frame_cond`` input for prediction: clean given frames and a mask channel.

    video (B, C, T, H, W) in [-1, 1], k scalar or (B,) -> (B, C+1, T, H, W): the first k frames as
    they are and a mask channel that is 1 on them. After frame k-1 the RGB channels hold the last
    given frame (``hold``) rather than zeros, so every frame's own input shows what it continues:
    Stable Video Diffusion concatenates its conditioning frame to every frame for the same reason,
    and per-frame layers then need no temporal path to copy it (docs/learning.md). k = 0 (t2v,
    subject) gives all zeros.
    """
    B, C, T, H, W = video.shape
    k = torch.as_tensor(k, device=video.device).reshape(-1).expand(B)
    known = (torch.arange(T, device=video.device)[None] < k[:, None]).to(video.dtype)  # (B, T)
    known = known[:, None, :, None, None]                                                # (B, 1, T, 1, 1)
    frames = video * known
    if hold:
        last = video[torch.arange(B, device=video.device), :, (k - 1).clamp(min=0)]      # (B, C, H, W)
        given = (k > 0).to(video.dtype)[:, None, None, None, None]                       # (B, 1, 1, 1, 1)
        frames = frames + (1 - known) * given * last[:, :, None]
    return torch.cat([frames, known.expand(B, 1, T, H, W)], dim=1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_table(names: list[str] | None = None) -> str:
    """Parameter counts of named sizes (built on the meta device: no memory)."""
    rows = [("name", "params")]
    for name in names or backbone_names():
        rows.append((name, f"{count_parameters(build_backbone(name, device='meta')) / 1e6:.2f}M"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a.ljust(width)}  {b}" for a, b in rows)


def __getattr__(name: str):
    # Backwards-compatible names of the FIT module (tests, scripts).
    if name in {"FIT", "FITConfig", "FIT_CONFIGS", "FITInputError", "fit_config"}:
        return getattr(importlib.import_module("vimi.models.fit"), name)
    raise AttributeError(f"module 'vimi.models' has no attribute {name!r}")
