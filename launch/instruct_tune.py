"""Stage 2, multimodal instruction tuning (VIMI sec. 3.2):
`deepspeed launch/instruct_tune.py --config ... --init <stage-1 RUN/pipeline>`.

Also `python launch/instruct_tune.py ...` (one process) and `torchrun ...`; see vimi/training/cli.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from base.cli_guard import guarded  # noqa: E402
from vimi.training.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(guarded(main, None, "instruct", prog="launch/instruct_tune.py"))
