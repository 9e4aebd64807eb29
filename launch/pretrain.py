"""Stage 1, retrieval-augmented pretraining (VIMI sec. 3.1): `deepspeed launch/pretrain.py --config ...`.

Also `python launch/pretrain.py ...` (one process) and `torchrun ...`; see vimi/training/cli.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from base.cli_guard import guarded  # noqa: E402
from vimi.training.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(guarded(main, None, "pretrain", prog="launch/pretrain.py"))
