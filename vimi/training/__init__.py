"""Training: one loop for VIMI's two stages (DESIGN.md, Training).

- ``config``: ``TrainConfig`` (run, data, optim, ema, sample, model), loaded from YAML.
- ``data``: shard streaming and the sample stages (decode, frame sampling, task formatting).
- ``loop``: the DeepSpeed training loop; ``train(cfg)``.
- ``ema``, ``checkpoint``, ``frozen``, ``distributed``, ``metrics``: one job each.

Nothing here imports DeepSpeed at package import: ``distributed.setup_env`` must run first.
"""
