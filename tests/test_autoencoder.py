"""Latent mode's per-frame autoencoder: shapes, the saved folder, its errors, and the lean trainer on latents."""
from __future__ import annotations

import pytest
import torch

from vimi.models.autoencoder import AutoencoderConfig, AutoencoderError, FrameAutoencoder, load_autoencoder

SMALL = AutoencoderConfig(channels=(8, 16), latent_channels=4, groups=4)


def test_clips_encode_frame_by_frame_to_a_grid_f_times_smaller_and_decode_back():
    ae = FrameAutoencoder(SMALL)
    video = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    z = ae.encode_video(video)
    assert SMALL.factor == 4 and z.shape == (2, 4, 5, 8, 8)
    assert ae.decode_video(z).shape == video.shape
    # frame t of clip b depends on that frame only
    torch.testing.assert_close(z[1, :, 3], ae.encode(video[1, :, 3][None])[0])


def test_a_saved_autoencoder_loads_frozen_with_its_latent_scale(tmp_path):
    ae = FrameAutoencoder(AutoencoderConfig(channels=(8, 16), latent_channels=4, groups=4, latent_scale=0.25))
    ae.save(tmp_path / "ae")
    back = load_autoencoder(tmp_path / "ae")
    assert back.config.latent_scale == 0.25 and not any(p.requires_grad for p in back.parameters())
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(back.encode(x), ae.encode(x))


def test_a_missing_or_damaged_autoencoder_folder_is_named(tmp_path):
    with pytest.raises(AutoencoderError, match="config.json: not found"):
        load_autoencoder(tmp_path)
    FrameAutoencoder(SMALL).save(tmp_path / "ae")
    (tmp_path / "ae" / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(AutoencoderError, match="model.safetensors"):
        load_autoencoder(tmp_path / "ae")


def test_the_lean_trainer_diffuses_latents_and_scores_decoded_pixels(tmp_path):
    from vimi.diffusion import EDMConfig, SamplerConfig
    from vimi.training.lean import LeanConfig, LeanTrainer

    FrameAutoencoder(SMALL).save(tmp_path / "ae")
    cfg = LeanConfig(backbone="unet-lat", edm=EDMConfig(sigma_data=0.5, sigma_in=1.0), batch=2, frames=4,
                     autoencoder=str(tmp_path / "ae"), sampler=SamplerConfig(num_steps=2, guidance_scale=1.0))
    trainer = LeanTrainer(cfg)
    assert trainer.net.backbone.config.in_channels == 4 and trainer.net.backbone.config.frame_cond_channels == 5
    trainer.train_to(2)
    report = trainer.evaluate(splits=("t2v-seen", "prediction"), rows=2, batch=2)
    assert report["t2v-seen"]["rows"] == 2 and "psnr" in report["prediction"]
    assert trainer.last_videos["prediction"][0].shape == (4, 32, 32, 3)       # decoded pixels, not latents


def test_a_latent_pipeline_generates_pixels_and_travels_with_its_autoencoder(tmp_path):
    import numpy as np

    from base.config import load_config
    from vimi.model import VimiConfig
    from vimi.pipeline import VimiPipeline

    FrameAutoencoder(SMALL).save(tmp_path / "ae")
    cfg = load_config(VimiConfig, None, ["backbone=unet-lat", "backbone_args.cond_dim=64", "sampler.num_steps=2",
                                         "edm.sigma_in=1.0", f"autoencoder={tmp_path / 'ae'}"])
    pipe = VimiPipeline.from_config(cfg)
    assert pipe.model.net.backbone.config.in_channels == 4                    # the latent channels
    assert not any(n.startswith("autoencoder") for n in pipe.model.state_dict())   # its own folder, not ours
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 200
    requests = [("t2v", {"prompt": "a big red circle moves left on sand"}),
                ("prediction", {"prompt": "a big red circle moves left on sand", "frames": [red]})]
    a = pipe.generate_batch(requests, seeds=[0, 1], steps=2)
    assert a[0].shape == (8, 32, 32, 3) and np.array_equal(a[1][0], red)   # decoded; the given frame kept
    pipe.save_pretrained(tmp_path / "p")
    (tmp_path / "ae" / "model.safetensors").unlink()                       # the export has its own copy
    b = VimiPipeline.from_pretrained(tmp_path / "p").generate_batch(requests, seeds=[0, 1], steps=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_scorer_agreement_is_the_share_of_clips_read_back_the_same():
    import numpy as np

    from data_pipelines.shapeworld.render import render_clip
    from data_pipelines.shapeworld.world import WorldConfig
    from vimi.training.autoencoder import held_out_params, read_back, scorer_agreement, shape_agreement

    clips = [render_clip(p) for p in held_out_params(WorldConfig(out="unused", videos=10**9, memory=10**9), n=8)]
    same = read_back(clips, clips)
    assert scorer_agreement(same) == {"scene": 1.0, "color": 1.0, "shape": 1.0, "motion": 1.0, "subject": 1.0}
    flat = [np.broadcast_to(c[:, :1, :1], c.shape).copy() for c in clips]   # each clip's corner colour everywhere
    lost = read_back(clips, flat)
    read = scorer_agreement(lost)
    assert read["scene"] == 1.0 and read["color"] == read["shape"] == read["motion"] == 0.0
    shapes = shape_agreement(same)
    assert len(shapes) >= 3 and set(shapes.values()) == {1.0} and set(shape_agreement(lost).values()) == {0.0}


def test_the_training_cli_reports_psnr_and_agreement_and_names_bad_channels(tmp_path, capsys):
    import json

    from vimi.training.autoencoder import main

    assert main(["--out", str(tmp_path / "ae"), "--channels", "8,x"]) == 2
    assert "--channels must be comma-separated integers" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "ae"), "--foreground-dilation", "-1"]) == 2
    assert "--foreground-dilation must be >= 0, got -1" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "ae"), "--identity-weight", "-0.1"]) == 2
    assert "--identity-weight must be >= 0, got -0.1" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "ae"), "--latent-noise", "-1"]) == 2
    assert "--latent-noise must be >= 0, got -1.0" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "ae"), "--steps", "2", "--clips", "1", "--pictures", "1",
                 "--channels", "8,16", "--latent-channels", "4", "--foreground-weight", "4", "--threads", "1",
                 "--identity-weight", "0.1"]) == 0
    report = json.loads((tmp_path / "ae" / "report.json").read_text())
    assert set(report["scorer_agreement"]) == {"scene", "color", "shape", "motion", "subject"}
    assert 0.0 <= report["cell_identity_probe"] <= 1.0
    assert report["factor"] == 4 and load_autoencoder(tmp_path / "ae").config.channels == (8, 16)


def test_each_frame_is_labelled_with_its_objects_identity_read_only_where_the_object_is():
    from data_pipelines.shapeworld import spec
    from data_pipelines.shapeworld.world import WorldConfig, train_video_params
    from vimi.training.autoencoder import IDENTITIES, AETrainConfig, _frames, identity_loss, object_cover

    world = WorldConfig(out="unused", videos=10**9, memory=10**9)
    frames, ids = _frames(world, AETrainConfig(clips=2, pictures=24), step=0)
    assert len(frames) == len(ids) == 2 * world.frames + 24
    assert set(ids[-24:].tolist()) & {IDENTITIES.index(s) for s in spec.SUBJECTS}   # memory subjects are classes too
    for k in range(2):   # the first frame of each clip
        p = train_video_params(world, k)
        assert IDENTITIES[ids[k * world.frames]] == (p.subject or p.shape)
    head = torch.nn.Conv2d(len(IDENTITIES), len(IDENTITIES), 1, bias=False)
    torch.nn.init.eye_(head.weight[:, :, 0, 0])
    right = 10.0 * torch.nn.functional.one_hot(ids, len(IDENTITIES)).float()[:, :, None, None].expand(-1, -1, 8, 8)
    wrong = right.roll(1, dims=1)
    assert identity_loss(head, right, frames, ids) < 1e-3 < 9.0 < identity_loss(head, wrong, frames, ids)
    # cells the object does not cover do not count: wrong there, right on the object, still ~0
    mixed = torch.where(object_cover(frames, 4)[:, None] > 0, right, wrong)
    assert identity_loss(head, mixed, frames, ids) < 1e-3


def test_the_cell_probe_reads_identity_from_a_latent_that_says_it_and_not_from_noise():
    from data_pipelines.shapeworld.render import render_clip
    from data_pipelines.shapeworld.world import WorldConfig
    from vimi.training.autoencoder import IDENTITIES, cell_identity_probe, held_out_params, identity

    params = held_out_params(WorldConfig(out="unused", videos=10**9, memory=10**9))
    clips = [render_clip(p) for p in params]
    codes = torch.nn.functional.one_hot(torch.tensor([identity(p) for p in params]), len(IDENTITIES)).float()

    class Says:   # every cell of clip b carries its object's identity as a one-hot code
        def encode_video(self, video):
            return codes[:, :, None, None, None].expand(-1, -1, video.shape[2], 8, 8)

    class Noise:
        def encode_video(self, video):
            return torch.randn(video.shape[0], len(IDENTITIES), video.shape[2], 8, 8)

    assert cell_identity_probe(Says(), clips, params) == 1.0
    assert cell_identity_probe(Noise(), clips, params) < 0.5
