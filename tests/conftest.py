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
