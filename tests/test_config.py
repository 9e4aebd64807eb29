"""Typed configs: YAML + overrides -> dataclasses, typos rejected, saved configs rebuild the run."""
from dataclasses import dataclass, field

import pytest

from base.config import ConfigError, load_config, save_config
from vimi.model import VimiConfig


@dataclass
class Optim:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])


@dataclass
class Run:
    name: str = "x"
    steps: int = 10
    resume: bool = False
    init: str | None = None
    optim: Optim = field(default_factory=Optim)


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("steps: 20\noptim:\n  lr: 0.5\n")
    cfg = load_config(Run, p, ["optim.betas=[0.8, 0.9]", "resume=true", "init=/x"])
    assert cfg.steps == 20 and cfg.optim.lr == 0.5 and cfg.optim.betas == [0.8, 0.9]
    assert cfg.resume is True and cfg.init == "/x" and cfg.name == "x"


def test_typos_and_wrong_types_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(Run, None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="int"):
        load_config(Run, None, ["steps=1.5"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Run, tmp_path / "missing.yaml")


def test_saved_config_rebuilds_the_same_object(tmp_path):
    cfg = load_config(VimiConfig, None, ["backbone=fit-s", "backbone_args.num_blocks=2", "sampler.num_steps=7"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(VimiConfig, tmp_path / "run" / "config.yaml")
    assert again == cfg
    assert again.backbone_config().num_blocks == 2 and again.sampler.num_steps == 7
