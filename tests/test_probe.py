"""The encoder probe: what a linear readout of the frozen MLLM's states at a picture's tokens can tell."""
from __future__ import annotations

import json

import torch

from vimi.eval.linear_probe import linear_probe
from vimi.mllm.probe import ATTRIBUTES, READOUTS, main


def test_the_linear_probe_reads_a_separable_label_and_not_a_random_one():
    g = torch.Generator().manual_seed(0)
    labels = [["a", "b", "c"][i % 3] for i in range(300)]
    x = torch.randn(300, 20, generator=g)
    x[:, 0] += torch.tensor([8.0 * (i % 3) for i in range(300)])      # class written in one feature
    assert linear_probe(x, labels) > 0.95
    noise = torch.randn(300, 20, generator=g)
    assert linear_probe(noise, labels) < 0.55                          # chance is 1/3


def test_the_cli_probes_every_attribute_both_ways_and_writes_json(tmp_path, capsys):
    out = tmp_path / "probe.json"
    assert main(["--mllm", "", "--images", "60", "--out", str(out)]) == 0   # the untrained tiny default
    report = json.loads(out.read_text())
    assert report["images"] == 60 and report["layer"] == -2
    for readout in READOUTS:
        assert set(report[readout]) == set(ATTRIBUTES) and all(0 <= v <= 1 for v in report[readout].values())
    assert "pooled" in capsys.readouterr().out
