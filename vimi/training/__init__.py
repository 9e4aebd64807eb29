"""Training: one loop for VIMI's two stages (docs/architecture.md, Training).

- ``config``: ``TrainConfig`` (run, data, optim, ema, sample, model), loaded from YAML.
- ``data``: the sample stages (split, shuffle, decode + frame sampling, task formatting, collate);
  ``loader``: a rank's resumable shard stream; ``synthetic``: shards for tests and benchmarks.
- ``build``: model (+ stage-1 init), EMA twin, data stream; ``frozen``: the frozen MLLM kept out
  of DeepSpeed; ``ema``: EMA correct under ZeRO-3; ``step``: the per-sample EDM loss module;
  ``optim``: AdamW groups, warmup + cosine, the DeepSpeed config.
- ``loop``: ``train(cfg)``; ``checkpoint``: atomic checkpoints and exact resume; ``metrics``:
  metrics.jsonl, TensorBoard, loss curve; ``samples``: sample videos and the pipeline export.
- ``cli``: launch/pretrain.py and launch/instruct_tune.py; ``dry_run``: ``--dry-run``.

Nothing here imports DeepSpeed at package import: ``distributed.setup_env`` must run first.
"""
