"""Related methods as options of the one generator (vimi/models/adapters.py): adapters, LoRA, latent
shift, frame-wise conditioning; what trains, what is saved, and the errors for what cannot be."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from base.config import load_config
from vimi.model import VimiConfig, VimiModel
from vimi.models.adapters import (
    AdapterConfig,
    FrameCondConfig,
    FrameCrossAttention,
    FrameQueryFormer,
    FrameSlot,
    LoraConfig,
    TuningError,
    add_frame_attention,
    add_latent_shift,
    apply_tuning,
    shift_frames,
)
from vimi.models.fit import FIT, FITConfig
from vimi.models.unet import UNet, UNetConfig

UNET = UNetConfig(channels=(8, 16), attention_levels=(1,), num_heads=2, emb_dim=16, cond_dim=8, groups=4)
FITC = FITConfig(patch_size=4, group_size=(2, 2), patch_dim=16, latents_per_group=2, latent_dim=16, num_blocks=2,
                 latent_layers=1, num_heads=2, cond_dim=8)
BACKBONES = [(UNet, UNET), (FIT, FITC)]
TINY_UNET = ["backbone=unet-xs", "backbone_args.channels=[8,16]", "backbone_args.attention_levels=[1]",
             "backbone_args.num_heads=2", "backbone_args.emb_dim=16", "backbone_args.cond_dim=16",
             "backbone_args.groups=4", "video.frames=4", "video.size=16", "sampler.num_steps=2"]


def trained(cls, cfg, seed=0) -> nn.Module:
    """A backbone whose zero-initialised layers are randomised (as a trained one), so outputs depend on all."""
    torch.manual_seed(seed)
    net = cls(cfg).eval()
    randomise_zeros(net.parameters())
    return net


def randomise_zeros(params) -> None:
    with torch.no_grad():
        for p in [p for p in params if p.ndim > 1 and not p.any()]:
            p.normal_(std=0.2)


def inputs(T=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 3, T, 8, 8, generator=g), torch.randn(2, generator=g), torch.randn(2, 3, 8, generator=g),
            torch.ones(2, 3, dtype=torch.bool), torch.randn(2, 4, T, 8, 8, generator=g))


@pytest.mark.parametrize("cls,cfg", BACKBONES, ids=["unet", "fit"])
@pytest.mark.parametrize("mode,adapters", [("adapters", AdapterConfig(temporal="conv")),
                                           ("adapters", AdapterConfig(temporal="attention")),
                                           ("lora", AdapterConfig())], ids=["adapters-conv", "adapters-attn", "lora"])
def test_tuning_starts_exactly_at_the_untuned_output_and_trains_only_what_it_adds(cls, cfg, mode, adapters):
    net = trained(cls, cfg)
    args = inputs()
    with torch.no_grad():
        before = net(*args)
    apply_tuning(net, mode, adapters, LoraConfig(r=2))
    with torch.no_grad():
        assert torch.equal(net(*args), before)                      # zero-initialised: exactly the same
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(("adapter" in n) if mode == "adapters" else ("lora_" in n) for n in trainable)
    if mode == "adapters":                                          # one adapter per block of either family
        n_blocks = len(net.blocks) if cls is FIT else sum(type(m).__name__ in ("ResBlock", "SpaceTimeAttention")
                                                          for m in net.modules())
        assert len({n.split(".adapter.")[0] for n in trainable}) == n_blocks
    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):                                              # two steps: the down-projections move too
        opt.zero_grad()
        net(*args).square().mean().backward()
        opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in net.named_parameters() if n in frozen)
    with torch.no_grad():
        assert not torch.equal(net(*args), before)                  # the tuned parameters did change the model


def test_temporal_adapter_mixes_frames_and_spatial_adapter_does_not():
    from vimi.models.adapters import FrameAdapter

    torch.manual_seed(0)
    for temporal, mixes in (("conv", True), ("attention", True), ("none", False)):
        a = FrameAdapter(8, AdapterConfig(bottleneck=4, temporal=temporal))
        for p in a.parameters():
            nn.init.normal_(p, std=0.3)
        t = torch.randn(1, 4, 5, 8)
        t2 = t.clone()
        t2[:, 0] += 1.0
        changed = (a(t2) - a(t)).abs().amax(dim=(0, 2, 3)) > 0      # per frame
        assert changed[0] and bool(changed[1:].any()) == mixes, temporal


def test_latent_shift_moves_a_share_of_channels_to_the_neighbouring_frames():
    t = torch.arange(2 * 3 * 1 * 8, dtype=torch.float32).view(2, 3, 1, 8)
    s = shift_frames(t, 0.5)                                        # 2 channels from t-1, 2 from t+1
    assert torch.equal(s[:, 1:, :, :2], t[:, :-1, :, :2]) and not s[:, 0, :, :2].any()
    assert torch.equal(s[:, :-1, :, 2:4], t[:, 1:, :, 2:4]) and not s[:, -1, :, 2:4].any()
    assert torch.equal(s[..., 4:], t[..., 4:])


@pytest.mark.parametrize("cls,cfg", BACKBONES, ids=["unet", "fit"])
def test_latent_shift_costs_no_parameters_and_lets_per_frame_layers_see_neighbours(cls, cfg):
    net = trained(cls, cfg)
    n = sum(p.numel() for p in net.parameters())
    args = inputs()
    with torch.no_grad():
        before = net(*args)
        add_latent_shift(net, 0.25)
        after = net(*args)
    assert sum(p.numel() for p in net.parameters()) == n
    assert after.shape == before.shape and not torch.equal(after, before)


def test_frame_query_former_gives_one_embedding_per_frame():
    f = FrameQueryFormer(8, 6, FrameCondConfig(queries_per_frame=2, heads=2))
    c, m = torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool)
    m[1] = False                                                    # a row with nothing valid still works
    fe = f(c, m, 4)
    assert fe.shape == (3, 4, 2, 8) and torch.isfinite(fe).all()
    assert not torch.allclose(fe[:, 0], fe[:, 1])                   # frames get different embeddings
    with pytest.raises(TuningError, match="queries for 6 frames"):
        f(c, m, 7)


@pytest.mark.parametrize("cls,cfg", BACKBONES, ids=["unet", "fit"])
def test_frame_branch_starts_at_zero_and_conditions_each_frame_on_its_own_embedding(cls, cfg):
    net = trained(cls, cfg)
    args = inputs()
    with torch.no_grad():
        before = net(*args)
    slot = FrameSlot()
    add_frame_attention(net, 8, 2, slot)
    slot.value = torch.randn(2, 4, 1, 8)
    with torch.no_grad():
        assert torch.equal(net(*args), before)                      # FCA's branch is zero-initialised
    branch = next(m for m in net.modules() if isinstance(m, FrameCrossAttention))
    x = torch.randn(2 if cls is UNet else 2 * 4, 4 * 4, branch.attn.to_q.in_features)   # 4 frames of 4 tokens
    nn.init.normal_(branch.attn.proj.weight)
    out = branch.hook(None, (x,), torch.zeros_like(x))
    fe2 = slot.value.clone()
    fe2[:, 2] += 1.0                                                # only frame 2's embedding changes
    slot.value = fe2
    diff = (branch.hook(None, (x,), torch.zeros_like(x)) - out).abs().view(x.shape[0], 4, 4, -1).amax(dim=(0, 2, 3))
    assert diff[2] > 0 and not diff[[0, 1, 3]].any()                # the frame mask


def test_bad_tuning_options_are_one_line_errors_naming_the_setting():
    net = trained(FIT, FITConfig(**{**FITC.__dict__, "group_frames": 1}))
    with pytest.raises(TuningError, match="latent_shift=0.25: backbone FIT has group_frames=1"):
        add_latent_shift(net, 0.25)
    with pytest.raises(TuningError, match="temporal='conv': backbone FIT has group_frames=1"):
        apply_tuning(net, "adapters", AdapterConfig(), LoraConfig())
    with pytest.raises(TuningError, match=r"targets \['nope'\] match no linear or conv layer of backbone UNet"):
        apply_tuning(trained(UNet, UNET), "lora", AdapterConfig(), LoraConfig(targets=["nope"]))
    from base.config import ConfigError

    with pytest.raises(ConfigError, match="tuning"):
        load_config(VimiConfig, None, ["tuning=prefix"])
    for bad in (["latent_shift=2"], ["adapters.kernel=2"]):
        with pytest.raises(TuningError, match=bad[0].split("=")[0]):
            VimiModel(load_config(VimiConfig, None, TINY_UNET + bad))


# ---------------------------------------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """An 'untuned export': a tiny U-Net pipeline with randomised (as if trained) weights."""
    from vimi.pipeline import VimiPipeline

    torch.manual_seed(0)
    pipe = VimiPipeline.from_config(load_config(VimiConfig, None, TINY_UNET))
    randomise_zeros(pipe.model.net.parameters())
    return pipe.save_pretrained(tmp_path_factory.mktemp("s1") / "pipeline")


def tuned_model(stage1, extra: list[str]) -> VimiModel:
    from vimi.training.build import load_init
    from vimi.training.config import TrainConfig

    cfg = load_config(TrainConfig, None, [f"model.{o}" for o in TINY_UNET + extra])
    model = VimiModel(cfg.model)
    load_init(model, str(stage1), cfg)
    return model


def denoise(model: VimiModel, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 4, 16, 16, generator=g)
    from vimi.mllm.prompt import pretrain_prompt

    c, m = model.condition([pretrain_prompt("a red circle"), pretrain_prompt("a blue square")])
    return model(x, torch.tensor([0.5, 2.0]), c, m, model.given_frame_condition(x, 1))


def test_adapter_run_from_an_untuned_export_starts_at_its_output_and_saves_only_tuned_weights(stage1, tmp_path):
    from vimi.pipeline import BASE_WEIGHTS, WEIGHTS, VimiPipeline

    base = VimiPipeline.from_pretrained(stage1).model
    model = tuned_model(stage1, ["tuning=adapters", "frame_cond.enabled=true", "frame_cond.inject=add",
                                 "latent_shift=0"])
    with torch.no_grad():
        assert torch.equal(denoise(model), denoise(base))           # adapters + FCA branch start at zero
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("adapter" in n or "frame_attn" in n or n.startswith("frame_cond.") for n in trainable)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    for _ in range(2):
        opt.zero_grad()
        denoise(model).square().mean().backward()
        opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    out = VimiPipeline(model).save_pretrained(tmp_path / "tuned")
    with safe_open(str(out / WEIGHTS), framework="pt") as f:
        assert set(f.keys()) == trainable and f.metadata()["tuning"] == "adapters"
    assert (out / BASE_WEIGHTS).is_file()
    loaded = VimiPipeline.from_pretrained(out)
    with torch.no_grad():
        assert torch.equal(denoise(loaded.model), denoise(model))   # save -> load equality
        assert not torch.equal(denoise(loaded.model), denoise(base))
    video = loaded("prediction", {"prompt": "a red circle moves left", "frames": [torch.zeros(16, 16, 3,
                   dtype=torch.uint8).numpy()]}, steps=2)
    assert video.shape == (4, 16, 16, 3)


def test_lora_run_loads_the_export_under_peft_names_and_round_trips(stage1, tmp_path):
    from vimi.pipeline import VimiPipeline

    base = VimiPipeline.from_pretrained(stage1).model
    model = tuned_model(stage1, ["tuning=lora", "lora.r=2"])
    assert any(".base_layer." in n for n, _ in model.named_parameters())
    with torch.no_grad():
        assert torch.equal(denoise(model), denoise(base))
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    loaded = VimiPipeline.from_pretrained(VimiPipeline(model).save_pretrained(tmp_path / "lora")).model
    with torch.no_grad():
        assert torch.equal(denoise(loaded), denoise(model))


def test_tuned_weights_for_another_backbone_or_size_are_refused_in_one_line(stage1, tmp_path):
    from vimi.pipeline import PipelineLoadError, VimiPipeline

    tuned = VimiPipeline(tuned_model(stage1, ["tuning=adapters"])).save_pretrained(tmp_path / "a")
    wider = load_config(VimiConfig, None, TINY_UNET + ["tuning=adapters", "backbone_args.channels=[16,16]"])
    other = VimiPipeline.from_config(wider)
    with pytest.raises(PipelineLoadError, match=r"another model: backbone_resolved.channels \[8, 16\] there, "
                                                r"\[16, 16\] here") as e:
        other.load_tuned(tuned)
    assert "\n" not in str(e.value)
    small = VimiPipeline.from_config(load_config(VimiConfig, None, TINY_UNET + ["tuning=adapters",
                                                                                "adapters.bottleneck=4"]))
    with pytest.raises(PipelineLoadError, match="tuning_options.adapters.bottleneck 16 there, 4 here"):
        small.load_tuned(tuned)
    same = VimiPipeline.from_config(load_config(VimiConfig, None, TINY_UNET + ["tuning=adapters"]))
    same.load_tuned(tuned)                                          # same base and options: loads
    # Weights written before a backbone option existed were made with its default: they load where the
    # option is at its default, and are refused where it is not.
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(tuned / "model.safetensors"), "pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    older = json.loads(meta["backbone_resolved"])
    del older["frame_embedding"]
    save_file(state, str(tuned / "model.safetensors"), metadata=meta | {"backbone_resolved": json.dumps(older)})
    same.load_tuned(tuned)
    aware = VimiPipeline.from_config(load_config(VimiConfig, None, TINY_UNET + ["tuning=adapters",
                                                                                "backbone_args.frame_embedding=true"]))
    with pytest.raises(PipelineLoadError, match="backbone_resolved.frame_embedding False there, True here"):
        aware.load_tuned(tuned)
    meta = json.loads((tuned / "config.json").read_text())
    meta["model"]["backbone"] = "fit-tiny"
    meta["model"]["backbone_args"] = {"cond_dim": 16}
    (tuned / "config.json").write_text(json.dumps(meta))
    with pytest.raises(PipelineLoadError, match="backbone 'unet-xs' there, 'fit-tiny' here"):
        VimiPipeline.from_pretrained(tuned)


def test_tuning_run_needs_an_init_and_something_to_train(stage1):
    from vimi.training.build import InitError, build_training_model, check_init
    from vimi.training.config import TrainConfig

    cfg = load_config(TrainConfig, None, [f"model.{o}" for o in TINY_UNET + ["tuning=adapters"]])
    with pytest.raises(InitError, match="tuning='adapters' tunes a trained generator: pass --init"):
        check_init(cfg, resuming=False)
    frozen = load_config(TrainConfig, None, [f"model.{o}" for o in TINY_UNET + ["tuning=frozen"]])
    with pytest.raises(InitError, match="tuning='frozen' leaves nothing to train"):
        build_training_model(frozen, torch.device("cpu"), str(stage1), with_ema=False)


def test_dry_run_counts_trainable_and_frozen_parts_of_a_tuned_model():
    from vimi.training.config import TrainConfig
    from vimi.training.dry_run import dry_run

    cfg = load_config(TrainConfig, None, [f"model.{o}" for o in TINY_UNET + ["tuning=adapters",
                                                                             "frame_cond.enabled=true"]])
    for meta in (True, False):
        r = dry_run(cfg, meta=meta)
        added = r.parts["added by tuning (adapters / LoRA / frame-wise branch)"]
        assert added[0] > 0 and added[1] == 0
        backbone = r.parts["backbone (unet-xs, tuning adapters)"]
        assert backbone[0] == 0 and backbone[1] > 0
        assert r.parts["frame-wise query former"][0] > 0
        assert "added by tuning" in r.text and r.trainable == sum(t for t, _ in r.parts.values())


def test_dry_run_counts_the_mllm_refiner_alike_on_meta_and_real_builds():
    from vimi.training.config import TrainConfig
    from vimi.training.dry_run import dry_run

    key = "MLLM head (projection, null, refiner)"
    plain = dry_run(load_config(TrainConfig, None, [f"model.{o}" for o in TINY_UNET]), meta=False)
    cfg = load_config(TrainConfig, None, [f"model.{o}" for o in TINY_UNET + ["mllm.refiner_layers=2"]])
    real, meta = dry_run(cfg, meta=False), dry_run(cfg, meta=True)
    assert real.parts[key] == meta.parts[key] and real.parts[key][0] > plain.parts[key][0]
