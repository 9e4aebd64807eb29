"""FIT backbone (vimi.models.fit): shapes, masking, determinism, checkpointing, save/load, registry sizes."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from vimi.models import FIT, FIT_CONFIGS, FITConfig, FITInputError, build_backbone, count_parameters

MICRO = FITConfig(patch_size=2, group_size=(2, 2), patch_dim=16, latents_per_group=2, latent_dim=16,
                  num_blocks=2, latent_layers=1, num_heads=2, cond_dim=8, frame_cond_channels=4)


def make(cfg: FITConfig = MICRO, seed: int = 0) -> FIT:
    """A FIT whose zero-initialised output layer is randomised, so outputs carry the whole network."""
    torch.manual_seed(seed)
    net = FIT(cfg)
    nn.init.normal_(net.out_proj.weight, std=0.2)
    return net.eval()


def inputs(B=2, T=2, H=8, W=8, L=3, seed=1, cfg: FITConfig = MICRO):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, cfg.in_channels, T, H, W, generator=g)
    c_noise = torch.randn(B, generator=g)
    cond = torch.randn(B, L, cfg.cond_dim, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    return x, c_noise, cond, mask


@pytest.mark.parametrize("T,H,W", [(1, 4, 4), (2, 8, 8), (3, 8, 12), (5, 12, 8)])
def test_output_shape_matches_input(T, H, W):
    net = make()
    x, c, cond, mask = inputs(T=T, H=H, W=W)
    extra = torch.randn(2, 4, T, H, W)
    with torch.no_grad():
        out = net(x, c, cond, mask, extra)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_temporal_groups_and_frame_count_check():
    net = make(dataclasses.replace(MICRO, group_frames=2))
    x, c, cond, mask = inputs(T=4)
    with torch.no_grad():
        assert net(x, c, cond, mask).shape == x.shape
    with pytest.raises(FITInputError, match="tile"):
        net(*inputs(T=3))


def test_bad_inputs_raise_clear_errors():
    net = make()
    x, c, cond, mask = inputs()
    with pytest.raises(FITInputError, match="tile"):
        net(torch.randn(2, 3, 2, 6, 8), c, cond, mask)          # 6 px is not a multiple of p·group = 4
    with pytest.raises(FITInputError, match="x must be"):
        net(torch.randn(2, 4, 2, 8, 8), c, cond, mask)          # wrong channel count
    with pytest.raises(FITInputError, match="cond_mask"):
        net(x, c, cond, mask.float())
    with pytest.raises(FITInputError, match="cond must be"):
        net(x, c, torch.randn(2, 3, 5), mask)
    with pytest.raises(FITInputError, match="frame_cond"):
        net(x, c, cond, mask, torch.randn(2, 3, 2, 8, 8))
    with pytest.raises(FITInputError, match="c_noise"):
        net(x, c[:1], cond, mask)


def test_zero_initialised_output_gives_F_zero():
    torch.manual_seed(0)
    net = FIT(MICRO)
    x, c, cond, mask = inputs()
    with torch.no_grad():
        assert net(x, c, cond, mask).abs().max() == 0
    nn.init.normal_(net.out_proj.weight)
    net.initialize_weights()
    with torch.no_grad():
        assert net(x, c, cond, mask).abs().max() == 0


def test_deterministic_build_and_forward():
    a, b = make(seed=5), make(seed=5)
    x, c, cond, mask = inputs()
    with torch.no_grad():
        out = a(x, c, cond, mask)
        assert torch.equal(out, a(x, c, cond, mask))
        assert torch.equal(out, b(x, c, cond, mask))
        assert not torch.equal(out, make(seed=6)(x, c, cond, mask))


def test_samples_are_independent_of_their_batch():
    net = make()
    x, c, cond, mask = inputs(B=3)
    mask[1, 2] = False
    with torch.no_grad():
        full = net(x, c, cond, mask)
        one = net(x[1:2], c[1:2], cond[1:2], mask[1:2])
    torch.testing.assert_close(full[1:2], one, rtol=1e-5, atol=1e-6)


def test_masked_condition_tokens_do_not_affect_output():
    net = make()
    x, c, cond, mask = inputs(L=4)
    mask[:, 2:] = False
    changed = cond.clone()
    changed[:, 2:] = torch.randn_like(changed[:, 2:]) * 100
    with torch.no_grad():
        out = net(x, c, cond, mask)
        torch.testing.assert_close(net(x, c, changed, mask), out, rtol=0, atol=1e-6)
        torch.testing.assert_close(net(x, c, cond[:, :2], mask[:, :2]), out, rtol=1e-5, atol=1e-6)  # = unpadded
        # The valid tokens do matter (the test above could not pass by ignoring cond altogether).
        assert not torch.allclose(net(x, c, cond[:, :1], mask[:, :1]), out, atol=1e-4)
        # L = 0 and an all-masked row are the same null condition, and finite (the σ token is always there).
        empty = net(x, c, cond[:, :0], mask[:, :0])
        none = net(x, c)
        all_masked = net(x, c, cond, torch.zeros_like(mask))
    assert torch.isfinite(empty).all()
    torch.testing.assert_close(all_masked, empty, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(none, empty)


def test_noise_level_and_frame_cond_channels_reach_the_output():
    net = make()
    x, c, cond, mask = inputs()
    with torch.no_grad():
        out = net(x, c, cond, mask)
        assert not torch.allclose(net(x, c + 0.5, cond, mask), out, atol=1e-4)
        zeros = torch.zeros(2, 4, *x.shape[2:])
        torch.testing.assert_close(net(x, c, cond, mask, zeros), out)            # extra=None means zeros
        assert not torch.allclose(net(x, c, cond, mask, zeros + 1), out, atol=1e-4)


def test_gradient_checkpointing_gives_equal_gradients():
    x, c, cond, mask = inputs()
    weight = torch.randn_like(x)
    grads = []
    for flag in (False, True):
        net = make(dataclasses.replace(MICRO, gradient_checkpointing=flag)).train()
        (net(x, c, cond, mask) * weight).sum().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)
    assert any(g.abs().sum() > 0 for n, g in grads[0].items() if n.startswith("blocks.0"))


def test_registry_sizes():
    assert set(FIT_CONFIGS) >= {"fit-tiny", "fit-s", "fit-b", "fit-500m"}
    counts = {name: count_parameters(build_backbone(name, device="meta")) for name in FIT_CONFIGS}
    assert 2e6 <= counts["fit-tiny"] <= 8e6
    assert 450e6 <= counts["fit-500m"] <= 550e6          # Snap Video's ~500M model
    assert counts["fit-tiny"] < counts["fit-s"] < counts["fit-b"] < counts["fit-500m"]


def test_fit_tiny_runs_on_the_cpu_world_clip():
    net = build_backbone("fit-tiny")
    cfg = net.config
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        out = net(x, torch.zeros(1), torch.randn(1, 5, cfg.cond_dim), torch.ones(1, 5, dtype=torch.bool))
    assert out.shape == x.shape
