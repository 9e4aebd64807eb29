"""Command line of launch/pretrain.py and launch/instruct_tune.py (one parser for both stages).

    deepspeed launch/pretrain.py --config configs/shapeworld/pretrain.yaml [--set optim.lr=1e-4 ...]
    python launch/pretrain.py ...                      (one process; sets the distributed env itself)
    deepspeed --num_gpus 2 launch/pretrain.py ...      (two ranks; CPU ranks talk over gloo)
    torchrun --standalone --nproc_per_node 2 launch/pretrain.py ...
    deepspeed --hostfile configs/real/hostfile.example launch/pretrain.py --config configs/real/...
    python launch/instruct_tune.py --config configs/shapeworld/instruct.yaml --init runs/.../pipeline
    python launch/pretrain.py --config ... --dry-run   (build, count parameters, estimate memory; no training)
"""
from __future__ import annotations

import argparse
import sys

from base.config import ConfigError

STAGE_SCRIPTS = {"pretrain": "launch/pretrain.py", "instruct": "launch/instruct_tune.py"}


def parser(stage: str) -> argparse.ArgumentParser:
    what = ("stage 1: retrieval-augmented pretraining (retrieved pairs before the caption)" if stage == "pretrain"
            else "stage 2: multimodal instruction tuning (t2v, prediction, subject)")
    ap = argparse.ArgumentParser(prog=STAGE_SCRIPTS[stage], description=f"VIMI {what}.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--config", required=True, help="training YAML (TrainConfig), e.g. configs/shapeworld/*.yaml")
    ap.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                    help="override config fields, e.g. --set optim.lr=1e-4 run.steps=100")
    ap.add_argument("--init", help="pipeline export to start from (stage 2: stage 1's RUN/pipeline)")
    ap.add_argument("--out", help="run folder (run.out)")
    ap.add_argument(
        "--resume", help='"auto" (default: latest checkpoint of the run folder), "never", or a checkpoint path'
    )
    ap.add_argument("--deepspeed_config", help="DeepSpeed JSON (run.deepspeed), e.g. configs/deepspeed/zero3.json")
    ap.add_argument("--dry-run", action="store_true",
                    help="build model and data, print parameter counts and a memory estimate, do not train")
    ap.add_argument("--meta", action="store_true",
                    help="with --dry-run: build on the meta device (no weights read), as real-scale configs do")
    ap.add_argument("--world-size", type=int, default=None,
                    help="with --dry-run: estimate memory for this many ranks (default: $WORLD_SIZE or 1)")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # passed by `deepspeed`
    return ap


def main(stage: str, argv: list[str] | None = None) -> int:
    args = parser(stage).parse_args(argv)
    from vimi.mllm.encoder import MLLMLoadError
    from vimi.training.build import InitError, check_init
    from vimi.training.checkpoint import CheckpointError
    from vimi.training.config import load_train_config
    from vimi.training.data import DataError

    try:
        cfg = load_train_config(args.config, args.overrides, stage=stage)
        if args.init is not None:
            cfg.run.init = args.init
        if args.out is not None:
            cfg.run.out = args.out
        if args.resume is not None:
            cfg.run.resume = args.resume
        if args.deepspeed_config is not None:
            cfg.run.deepspeed = args.deepspeed_config
        if args.dry_run:
            check_init(cfg, resuming=True)
            from vimi.training.dry_run import dry_run

            print(dry_run(cfg, meta=args.meta, world_size=args.world_size).text)
            return 0
        from vimi.training.loop import train

        result = train(cfg)
    except (ConfigError, InitError, CheckpointError, DataError, MLLMLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result.interrupted:
        print(f"stopped at step {result.step}; checkpoint {result.checkpoint}")
    elif result.pipeline is not None:
        print(f"done: step {result.step}, pipeline {result.pipeline}")
    return 0
