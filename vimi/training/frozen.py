"""Keep frozen submodules (VIMI's frozen MLLM) out of DeepSpeed's optimizer and ZeRO-3 partitioning.

DeepSpeed's ZeRO-3 partitions *every* parameter of the module it wraps, trainable or not, and
its checkpoints store every parameter too. A frozen 7B MLLM must stay whole on each rank (it only
runs forward, under no_grad) and must not be written into every checkpoint. So before the engine
is built, each maximal submodule whose parameters are all frozen is taken out of the module tree
(``_modules``) and kept as a plain attribute: ``model.encoder.llava`` still works, but
``parameters()``, ``state_dict()``, ``.to()`` and DeepSpeed no longer see it. :func:`restore`
puts it back (for export).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Hidden:
    parent: nn.Module
    name: str
    module: nn.Module

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


def freeze_all_but(model: nn.Module, trainable: list[nn.Parameter]) -> tuple[int, int]:
    """requires_grad=True exactly on ``trainable``; returns (trainable, frozen) parameter counts."""
    keep = {id(p) for p in trainable}
    n_t = n_f = 0
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
        if id(p) in keep:
            n_t += p.numel()
        else:
            n_f += p.numel()
    missing = keep - {id(p) for p in model.parameters()}
    if missing:
        raise ValueError(f"{len(missing)} trainable parameter(s) are not part of the model")
    return n_t, n_f


def frozen_modules(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """Maximal submodules with parameters, all of them frozen, that are not entries of a container:
    (parent, attribute name, module)."""
    found: list[tuple[nn.Module, str, nn.Module]] = []

    def visit(parent: nn.Module) -> None:
        # A container's forward iterates its _modules: hiding one entry would skip it (a frozen U-Net
        # level beside a tuned one), so inside containers the search goes one level deeper.
        container = isinstance(parent, (nn.ModuleList, nn.Sequential, nn.ModuleDict))
        for name, child in parent.named_children():
            params = list(child.parameters())
            if params and not any(p.requires_grad for p in params) and not container:
                found.append((parent, name, child))
            else:
                visit(child)

    visit(model)
    return found


def hide_frozen(model: nn.Module, device: torch.device | str | None = None) -> list[Hidden]:
    """Detach every maximal frozen submodule from the module tree (see module doc); optionally move
    them to ``device`` since the engine will not. Returns what :func:`restore` needs."""
    hidden = []
    for parent, name, child in frozen_modules(model):
        del parent._modules[name]
        object.__setattr__(parent, name, child)  # plain attribute: attribute access keeps working
        child.eval()
        if device is not None:
            child.to(device)
        hidden.append(Hidden(parent, name, child))
    return hidden


def restore(hidden: list[Hidden]) -> None:
    """Put hidden modules back into their parents' module trees."""
    for h in hidden:
        if h.name in h.parent.__dict__:
            del h.parent.__dict__[h.name]
        h.parent._modules[h.name] = h.module
