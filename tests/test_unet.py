"""The space-time U-Net (vimi.models.unet) and the backbone registry (vimi.models)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from base.config import ConfigError, from_dict, load_config, to_dict
from vimi.model import VimiConfig, VimiModel
from vimi.models import BackboneError, backbone_config, backbone_names, build_backbone
from vimi.models.unet import UNet, UNetConfig, UNetInputError

MICRO = UNetConfig(channels=(8, 16), attention_levels=(1,), num_heads=2, emb_dim=16, cond_dim=8, groups=4)
FIT_MICRO = backbone_config("fit-tiny", patch_size=2, group_size=(2, 2), patch_dim=16, latents_per_group=2,
                            latent_dim=16, num_blocks=2, latent_layers=1, num_heads=2, cond_dim=8)


def make(cfg=MICRO, seed: int = 0) -> nn.Module:
    """A backbone (U-Net unless ``cfg`` says otherwise) whose zero-initialised layers are randomised,
    so outputs carry the whole network."""
    torch.manual_seed(seed)
    net = build_backbone("unet" if isinstance(cfg, UNetConfig) else "fit", cfg)
    for p in net.parameters():
        if p.ndim > 1 and not p.any():
            nn.init.normal_(p, std=0.2)
    return net.eval()


def inputs(B=2, T=3, H=8, W=8, L=3, seed=1, cfg: UNetConfig = MICRO):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, cfg.in_channels, T, H, W, generator=g), torch.randn(B, generator=g),
            torch.randn(B, L, cfg.cond_dim, generator=g), torch.ones(B, L, dtype=torch.bool))


@pytest.mark.parametrize("cfg", [MICRO, UNetConfig(patch_size=2, channels=(8, 16), attention_levels=(0, 1),
                                                   num_heads=2, emb_dim=16, cond_dim=8, groups=4)])
@pytest.mark.parametrize("T,H,W", [(1, 8, 8), (3, 8, 16), (4, 16, 8)])
def test_output_shape_matches_input(cfg, T, H, W):
    net = make(cfg)
    x, c, cond, mask = inputs(T=T, H=H, W=W, cfg=cfg)
    with torch.no_grad():
        out = net(x, c, cond, mask, torch.randn(2, 4, T, H, W))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_zero_init_output_temporal_and_attention_layers():
    torch.manual_seed(0)
    net = UNet(MICRO)
    x, c, cond, mask = inputs()
    with torch.no_grad():
        assert torch.equal(net(x, c, cond, mask), torch.zeros_like(x))   # F = 0: D starts as c_skip x
    for name, p in net.named_parameters():   # temporal layers and attention outputs start switched off
        if name.endswith(("temporal.conv.weight", "self_attn.proj.weight", "cross_attn.proj.weight")):
            assert not p.any(), name


def test_frames_are_mixed_only_by_temporal_layers_and_attention():
    """Changing frame 0 changes other frames' outputs (time is modelled), and the batch stays independent."""
    net = make()
    x, c, cond, mask = inputs(T=4)
    x2 = x.clone()
    x2[0, :, 0] += 1.0
    with torch.no_grad():
        a, b = net(x, c, cond, mask), net(x2, c, cond, mask)
    assert not torch.allclose(a[0, :, 3], b[0, :, 3])      # frame 3 of sample 0 sees frame 0
    torch.testing.assert_close(a[1], b[1])                   # sample 1 does not see sample 0


@pytest.mark.parametrize("option", ["frame_embedding", "cross_attention_positions"])
def test_frame_aware_options_let_identical_frames_differ(option):
    """A clip of one repeated frame: with self-attention and temporal layers switched off, a plain U-Net
    gives every frame the same output (nothing tells frame 0 from frame 2); each option tells them apart."""
    from dataclasses import replace

    def outputs(cfg):
        net = make(cfg)
        for name, p in net.named_parameters():   # no path across frames but the option under test
            if name.endswith(("temporal.conv.weight", "self_attn.proj.weight")):
                nn.init.zeros_(p)
        x, c, cond, mask = inputs(T=3, cfg=cfg)
        x = x[:, :, :1].expand_as(x).contiguous()
        with torch.no_grad():
            return net(x, c, cond, mask)

    plain = outputs(MICRO)
    torch.testing.assert_close(plain[:, :, 0], plain[:, :, 2])
    aware = outputs(replace(MICRO, **{option: True}))
    assert not torch.allclose(aware[:, :, 0], aware[:, :, 2], atol=1e-4)


def test_condition_and_mask_are_read():
    net = make()
    x, c, cond, mask = inputs()
    with torch.no_grad():
        base = net(x, c, cond, mask)
        other = net(x, c, cond + 1.0, mask)
        masked = mask.clone()
        masked[:, -1] = False
        changed_padding = cond.clone()
        changed_padding[:, -1] = 100.0
        assert not torch.allclose(base, other)
        torch.testing.assert_close(net(x, c, cond, masked), net(x, c, changed_padding, masked))


def test_attention_pooling_starts_as_the_mean_and_ignores_padding():
    from dataclasses import replace

    mean, attn = make(), make(replace(MICRO, cond_pool="attention"))
    attn.load_state_dict(mean.state_dict(), strict=False)          # same weights; the query stays zero
    x, c, cond, mask = inputs(L=4)
    mask[0, 2:] = False
    with torch.no_grad():
        torch.testing.assert_close(attn(x, c, cond, mask), mean(x, c, cond, mask))
        attn.pool_query.normal_()
        padded = cond.clone()
        padded[0, 2:] = 100.0
        torch.testing.assert_close(attn(x, c, padded, mask), attn(x, c, cond, mask))
        assert not torch.allclose(attn(x, c, cond, mask), mean(x, c, cond, mask))
    with pytest.raises(ValueError, match="cond_pool must be 'mean', 'attention' or 'first'"):
        replace(MICRO, cond_pool="max")


def test_first_token_pooling_reads_the_summary_token_alone():
    """cond_pool='first' (the MLLM's caption summary): FiLM ignores the other tokens' mean."""
    from dataclasses import replace

    first, mean = make(replace(MICRO, cond_pool="first")), make()
    first.load_state_dict(mean.state_dict())
    x, c, cond, mask = inputs(L=4)
    # Attention-free levels see C only through FiLM, so the output reads the pooled summary alone.
    for net in (first, mean):
        for level in [*net.down, net.mid, *net.up]:
            level.attn = None
    later = cond.clone()
    later[:, 1:] += 5.0
    with torch.no_grad():
        torch.testing.assert_close(first(x, c, later, mask), first(x, c, cond, mask))
        assert not torch.allclose(mean(x, c, later, mask), mean(x, c, cond, mask))
        assert not torch.allclose(first(x, c, cond + 5.0, mask), first(x, c, cond, mask))


def test_a_second_summary_token_starts_silent_and_then_is_read_where_unmasked():
    """summary_tokens=2 (MLLMConfig.picture_token): FiLM's projection of C's second token starts at zero, so a
    stage-1 model is unchanged by it; once learned it is read, except where the token is masked (no picture)."""
    from dataclasses import replace

    with pytest.raises(ValueError, match="summary_tokens"):
        replace(MICRO, summary_tokens=2)
    two, one = make(replace(MICRO, cond_pool="first", summary_tokens=2)), make(replace(MICRO, cond_pool="first"))
    nn.init.zeros_(two.summary_pools[0].weight)
    one.load_state_dict({k: v for k, v in two.state_dict().items() if not k.startswith("summary_pools")})
    x, c, cond, mask = inputs(L=4)
    for net in (two, one):
        for level in [*net.down, net.mid, *net.up]:
            level.attn = None        # C reaches the output through FiLM alone
    picture = cond.clone()
    picture[:, 1] += 5.0
    no_picture = mask.clone()
    no_picture[:, 1] = False
    with torch.no_grad():
        torch.testing.assert_close(two(x, c, picture, mask), one(x, c, cond, mask))
        nn.init.normal_(two.summary_pools[0].weight, std=0.2)
        assert not torch.allclose(two(x, c, picture, mask), two(x, c, cond, mask))
        torch.testing.assert_close(two(x, c, picture, no_picture), two(x, c, cond, no_picture))


def test_bad_inputs_raise_clear_errors():
    net = make()
    x, c, cond, mask = inputs()
    with pytest.raises(UNetInputError, match="divisible by 2"):
        net(torch.randn(2, 3, 2, 5, 5), c, cond, mask)
    with pytest.raises(UNetInputError, match="x must be"):
        net(torch.randn(2, 4, 2, 8, 8), c, cond, mask)
    with pytest.raises(UNetInputError, match="cond must be"):
        net(x, c, torch.randn(2, 3, 5), mask)
    with pytest.raises(ValueError, match="groups"):
        UNetConfig(channels=(6, 16), groups=4)


@pytest.mark.parametrize("cfg", [MICRO, FIT_MICRO], ids=["unet", "fit"])
def test_save_load_gives_identical_outputs(cfg, tmp_path):
    net = make(cfg, seed=3)
    save_file(net.state_dict(), tmp_path / "net.safetensors")
    loaded = type(net)(from_dict(type(cfg), to_dict(net.config)))  # the config travels as plain JSON/YAML data
    loaded.load_state_dict(load_file(tmp_path / "net.safetensors"))
    x, c, cond, mask = inputs(T=2, cfg=cfg)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x, c, cond, mask), net(x, c, cond, mask))


def test_gradient_checkpointing_gives_equal_gradients():
    x, c, cond, mask = inputs()
    grads = []
    for ckpt in (False, True):
        net = make(UNetConfig(**{**to_dict(MICRO), "gradient_checkpointing": ckpt})).train()
        net(x, c, cond, mask).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_registry_builds_every_family_by_name_and_rejects_bad_names():
    names = backbone_names()
    assert {"fit-tiny", "unet-s"} <= set(names)
    assert type(build_backbone("unet-xs", device="meta")).__name__ == "UNet"
    assert type(build_backbone("fit-tiny", device="meta")).__name__ == "FIT"
    assert backbone_config("unet-s", cond_dim=64).cond_dim == 64
    with pytest.raises(BackboneError, match="must start with one of"):
        build_backbone("resnet-50")
    with pytest.raises(BackboneError, match="unknown backbone size"):
        build_backbone("unet-huge")
    with pytest.raises(BackboneError, match=r"no setting\(s\) \['latent_dim'\]"):
        backbone_config("unet-s", latent_dim=3)


def test_model_config_names_the_backbone_and_its_arguments():
    cfg = load_config(VimiConfig, None, ["backbone=unet-xs", "backbone_args.channels=[8,16]",
                                         "backbone_args.attention_levels=[1]", "backbone_args.groups=4",
                                         "backbone_args.cond_dim=32"])
    model = VimiModel(cfg)
    unet = model.net.backbone
    assert isinstance(unet, UNet) and unet.config.channels == (8, 16) and unet.config.frame_cond_channels == 4
    assert model.encoder.out_dim == 32
    with pytest.raises(ConfigError):
        load_config(VimiConfig, None, ["backbone_args=3"])


def test_frame_condition_holds_the_last_given_frame_and_masks_only_given_ones():
    from vimi.models import frame_condition

    video = torch.randn(3, 3, 5, 4, 4)
    k = torch.tensor([0, 1, 2])
    held = frame_condition(video, k)
    assert held.shape == (3, 4, 5, 4, 4)
    assert not held[0].any()                                                # t2v / subject: nothing given
    assert torch.equal(held[1, :3, 0], video[1, :, 0])                      # the given frame as it is
    assert all(torch.equal(held[1, :3, t], video[1, :, 0]) for t in range(1, 5))   # then held
    assert torch.equal(held[2, :3, 4], video[2, :, 1])                      # the last of k = 2 given frames
    assert held[2, 3].sum() == 2 * 16 and held[1, 3].sum() == 16            # mask: only the given frames
    zeros = frame_condition(video, k, hold=False)
    assert torch.equal(zeros[1, :3, 1:], torch.zeros_like(zeros[1, :3, 1:]))


def test_space_time_temporal_convolution_is_the_k_by_3_by_3_conv3d():
    """temporal_spatial_kernel = 3 sums over each frame's 3×3 neighbourhood in the frames around it, exactly as a
    Conv3d with the same weights: so one layer can tell an object moving left from one moving right."""
    from vimi.models.unet import TemporalConv
    torch.manual_seed(0)
    layer = TemporalConv(channels=8, kernel=3, groups=4, spatial=3)
    nn.init.normal_(layer.conv.weight)
    B, T = 2, 5
    x = torch.randn(B * T, 8, 6, 6)
    with torch.no_grad():
        out = layer(x, T) - x
        h = torch.nn.functional.silu(layer.norm(x)).view(B, T, 8, 6, 6).transpose(1, 2)   # (B, C, T, H, W)
        weight = layer.conv.weight.view(8, 3, 8, 3, 3).transpose(1, 2)                    # (out, in, kt, kh, kw)
        ref = torch.nn.functional.conv3d(h, weight, layer.conv.bias, padding=1).transpose(1, 2).reshape(B * T, 8, 6, 6)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    cfg = UNetConfig(channels=(8, 16), attention_levels=(), num_heads=2, emb_dim=16, cond_dim=8, groups=4,
                     temporal_spatial_kernel=3)
    net = make(cfg)
    x, c, cond, mask = inputs(T=4, cfg=cfg)
    with torch.no_grad():
        assert net(x, c, cond, mask).shape == x.shape
    with pytest.raises(ValueError, match="temporal_spatial_kernel"):
        UNetConfig(temporal_spatial_kernel=2)


def test_temporal_film_lets_the_condition_steer_the_temporal_convolution():
    """temporal_film: the temporal layer's output depends on the embedding (σ + caption), and starts as the
    unmodulated layer (zero-initialised)."""
    from vimi.models.unet import TemporalConv
    torch.manual_seed(0)
    plain, filmed = TemporalConv(8, 3, 4, spatial=3), TemporalConv(8, 3, 4, spatial=3, film_dim=6)
    filmed.load_state_dict(plain.state_dict(), strict=False)
    nn.init.normal_(plain.conv.weight)
    filmed.conv.weight.data.copy_(plain.conv.weight)
    x, emb = torch.randn(2 * 4, 8, 5, 5), torch.randn(2, 6).repeat_interleave(4, dim=0)
    with torch.no_grad():
        torch.testing.assert_close(filmed(x, 4, emb), plain(x, 4))      # zero FiLM: the plain layer
        nn.init.normal_(filmed.film.weight)
        assert not torch.allclose(filmed(x, 4, emb), filmed(x, 4, torch.randn_like(emb)))
    cfg = UNetConfig(channels=(8, 16), attention_levels=(1,), num_heads=2, emb_dim=16, cond_dim=8, groups=4,
                     temporal_film=True)
    x, c, cond, mask = inputs(cfg=cfg)
    with torch.no_grad():
        assert make(cfg)(x, c, cond, mask).shape == x.shape


def test_coordinate_channels_give_the_stem_each_pixels_frame_row_and_column():
    """coordinate_channels: the stem sees (t, y, x) in [-1, 1] beside the clip, so pure noise at high σ can
    still be mapped to a place and frame; with their stem weights at zero it is the plain U-Net."""
    base = dict(channels=(8, 16), attention_levels=(1,), num_heads=2, emb_dim=16, cond_dim=8, groups=4)
    plain, coord = make(UNetConfig(**base)), make(UNetConfig(**base, coordinate_channels=True))
    seen = []
    coord.stem.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    x, c, cond, mask = inputs(T=4, H=8, W=8)
    with torch.no_grad():
        coord(x, c, cond, mask)
        t, y, xx = seen[0][:, -3:].view(2, 4, 3, 8, 8).unbind(2)                    # (B, T, H, W) each
        assert torch.equal(t[0, :, 0, 0], torch.linspace(-1, 1, 4))
        assert torch.equal(y[0, 1, :, 5], torch.linspace(-1, 1, 8))
        assert torch.equal(xx[1, 2, 3], torch.linspace(-1, 1, 8))
        state = dict(coord.state_dict())
        state["stem.weight"] = state["stem.weight"][:, :-3]
        plain.load_state_dict(state)
        coord.stem.weight[:, -3:] = 0
        torch.testing.assert_close(coord(x, c, cond, mask), plain(x, c, cond, mask))


def test_velocity_attention_favours_keys_along_the_embeddings_velocity():
    """VelocityBias: a head whose v is (+1, 0) cells/frame puts its largest logit bias (0) on the key one frame
    later and one cell right; at init v = 0, a weak locality prior, and the U-Net option runs."""
    from vimi.models.unet import VelocityBias
    vb = VelocityBias(4, heads=2, from_tokens=False)
    T, H, W = 3, 4, 4
    index = lambda t, y, x: (t * H + y) * W + x   # noqa: E731
    none = (torch.zeros(1, 1, 4), torch.ones(1, 1, dtype=torch.bool))              # tokens it does not read
    with torch.no_grad():
        init = vb(torch.randn(1, 4), *none, T, H, W)                            # (1, 2, L, L)
        assert init[0, 0, index(0, 1, 1), index(0, 1, 1)] == 0 and init[0, 0, index(0, 1, 1), index(1, 1, 1)] == 0
        assert init[0, 0, index(0, 1, 1), index(0, 1, 2)] < 0
        vb.proj.bias[0] = 1.0                                                   # head 0: v_x = +1
        bias = vb(torch.zeros(1, 4), *none, T, H, W)
    q = index(0, 1, 1)
    assert bias[0, 0, q, index(1, 1, 2)] == 0 and bias[0, 0, q, index(2, 1, 3)] == 0
    assert bias[0, 0, q, index(1, 1, 1)] < 0 and bias[0, 0, q, index(1, 1, 0)] < bias[0, 0, q, index(1, 1, 1)]
    assert bias[0, 1, q, index(1, 1, 1)] == 0                                   # head 1 keeps v = 0
    # reading the tokens: head 0's query picks token 1, whose first feature sets its v_x
    vt = VelocityBias(4, heads=2, from_tokens=True)
    tokens, mask = torch.zeros(1, 3, 4), torch.tensor([[True, True, False]])
    tokens[0, 1, 0], tokens[0, 2, 0] = 1.0, 50.0                                  # token 2 is padding
    with torch.no_grad():
        torch.testing.assert_close(vt(torch.randn(1, 4), tokens, mask, T, H, W), init)   # the locality prior
        vt.query[0, 0] = 100.0
        vt.proj.weight[0, 0] = 2.0                                                 # v_x of head 0 = 2 · feature 0
        bias = vt(torch.randn(1, 4), tokens, mask, T, H, W)
    assert bias[0, 0, q, index(1, 1, 3)] == 0 and bias[0, 1, q, index(1, 1, 1)] == 0
    for mode in ("embedding", "tokens"):
        cfg = UNetConfig(channels=(8, 16), attention_levels=(1,), num_heads=2, emb_dim=16, cond_dim=8, groups=4,
                         velocity_attention=mode)
        x, c, cond, mask = inputs(T=3, cfg=cfg)
        with torch.no_grad():
            assert make(cfg)(x, c, cond, mask).shape == x.shape
