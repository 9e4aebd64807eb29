"""Test-wide settings: offline, CPU, one OpenMP thread.

Test tensors are tiny; on a 2-core machine extra OpenMP threads only add barrier waits (measured:
a (4000, 1) sqrt went from 0.008 ms to 12 ms under load). Subprocesses inherit the environment.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# A FIT small enough that a 2-step sample takes well under a second on one core.
TINY_MODEL = ["backbone=fit-tiny", "backbone_args.num_blocks=1", "backbone_args.latent_layers=1",
              "backbone_args.latent_dim=64", "backbone_args.patch_dim=32",
              "backbone_args.cond_dim=64", "backbone_args.num_heads=2", "sampler.num_steps=2"]


@pytest.fixture(scope="session")
def tiny_pipeline():
    """An untrained VimiPipeline with a tiny FIT and the built-in tiny LLaVA (built once per session)."""
    from base.config import load_config
    from vimi.model import VimiConfig
    from vimi.pipeline import VimiPipeline

    return VimiPipeline.from_config(load_config(VimiConfig, None, TINY_MODEL))


@pytest.fixture(scope="session")
def eval_world(tmp_path_factory) -> Path:
    """A ShapeWorld folder holding only the five eval sets, two rows each."""
    from data_pipelines.shapeworld.__main__ import main as shapeworld_main

    out = tmp_path_factory.mktemp("world") / "w"
    assert shapeworld_main(["--out", str(out), "--videos", "0", "--memory", "0", "--eval-per-split", "2",
                            "--workers", "1"]) == 0
    return out
