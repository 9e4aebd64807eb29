"""A linear probe: how much of a label can a multinomial logistic regression read from features?

Used to measure what a representation says plainly: the MLLM's image states (vimi.mllm.probe) and
the autoencoder's latent cells (vimi.training.autoencoder).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_probe(x: torch.Tensor, y: list, train_frac: float = 0.75, steps: int = 300, seed: int = 0,
                 test: torch.Tensor | None = None) -> float:
    """Held-out accuracy of a weight-decayed multinomial logistic regression on standardised x (N, D).

    The held-out rows are ``test`` (a bool mask, N), or a random ``1 - train_frac`` of the rows: pass
    ``test`` when rows come in correlated groups (cells of one clip) that must not straddle the split.
    """
    classes = sorted(set(y))
    target = torch.tensor([classes.index(v) for v in y])
    if test is None:
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        test = torch.zeros(len(y), dtype=torch.bool)
        test[order[int(len(y) * train_frac):]] = True
    tr, te = ~test, test
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-6
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], len(classes), requires_grad=True)
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z[tr] @ w + b, target[tr]) + 1e-3 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float(((z[te] @ w + b).argmax(1) == target[te]).float().mean())
