"""Linear probes: what can be read from the frozen encoder's states at an image's positions?

VIMI grounds a novel subject through the pictures retrieved for it, so the generator can only
draw what the MLLM's hidden states *say* about those pictures. This module renders held-out
ShapeWorld pictures (fresh positions and scenes, all 54 compositions and 12 subjects), encodes each
alone, takes the encoder's hidden states at its image tokens (the layer the generator reads,
``MLLMConfig.layer``), and fits one multinomial logistic regression per attribute on 75% of the
pictures, from all the tokens' states and from their mean; the accuracy on the other 25% is the
probe's reading.

    python -m vimi.mllm.probe --mllm data/demo/mllm --images 1200
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from base.io import write_json_atomic
from data_pipelines.shapeworld import spec
from data_pipelines.shapeworld.render import render_image
from data_pipelines.shapeworld.sampling import sample_object_image, sample_subject_image
from vimi.eval.linear_probe import linear_probe
from vimi.mllm.encoder import MLLMConfig, MLLMEncoder
from vimi.mllm.prompt import Segment

ATTRIBUTES = ("scene", "color", "shape", "subject")


def probe_images(n: int, seed: int = 12345, size: int = 32) -> tuple[list[np.ndarray], list[dict]]:
    """n pictures, one in five a subject (as in the memory), with their labels."""
    rng = np.random.default_rng(seed)
    names, comps = list(spec.SUBJECTS), list(spec.ALL_COMPOSITIONS)
    images, labels = [], []
    for i in range(n):
        if i % 5 == 4:
            p = sample_subject_image(rng, names[(i // 5) % len(names)], size)
        else:
            color, shape = comps[i % len(comps)]
            p = sample_object_image(rng, color, shape, size)
        images.append(render_image(p))
        labels.append({"scene": p.scene, "color": p.color, "shape": p.shape, "subject": p.subject})
    return images, labels


@torch.no_grad()
def image_features(encoder: MLLMEncoder, images: list[np.ndarray], batch: int = 64) -> torch.Tensor:
    """(N, n_image_tokens · H): the hidden states at each picture's image tokens, flattened in order."""
    from PIL import Image

    # Every prompt is one image alone, so all share one token layout: find its image positions once.
    layout = encoder.tokenize([[Segment("task_image", image=Image.fromarray(images[0]))]])[0].ids
    at_image = torch.tensor(layout) == encoder.llava.config.image_token_id              # (L,)
    feats = []
    for start in range(0, len(images), batch):
        prompts = [[Segment("task_image", image=Image.fromarray(im))] for im in images[start:start + batch]]
        h, _ = encoder.hidden(prompts)                                                   # (B, L, H)
        feats.append(h[:, at_image].flatten(1).float())                                 # (B, n_image · H)
    return torch.cat(feats)


READOUTS = ("positions", "pooled")


def probe(mllm: str, n_images: int = 1200, seed: int = 12345, layer: int = MLLMConfig.layer) -> dict:
    """-> {"positions": {attr: acc}, "pooled": {attr: acc}, "images": n, "layer": layer}.

    Two linear readouts of the same states: ``positions`` sees every image token's state (where an
    object is matters: its shape is in the tokens it covers), ``pooled`` their mean (position-free;
    with 1,200 pictures a 64-token readout has more weights than training pictures, and the mean
    is the readout that does not overfit).
    """
    encoder = MLLMEncoder(MLLMConfig(path=mllm, layer=layer, cache_prompts=0), out_dim=8).eval()
    images, labels = probe_images(n_images, seed)
    per_token = image_features(encoder, images)                                   # (N, n_image · H)
    views = {"positions": per_token, "pooled": per_token.view(len(images), -1, encoder.hidden_size).mean(1)}
    report: dict = {}
    for readout, x in views.items():
        report[readout] = {}
        for attr in ATTRIBUTES:
            rows = [i for i, lab in enumerate(labels) if lab[attr] is not None]
            report[readout][attr] = round(linear_probe(x[rows], [labels[i][attr] for i in rows]), 3)
    report["images"], report["layer"] = n_images, layer
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mllm", required=True,
                    help="local LLaVA folder (the output of vimi.mllm.align); \"\" = untrained tiny")
    ap.add_argument("--images", type=int, default=1200, help="held-out pictures rendered for the probes")
    ap.add_argument("--layer", type=int, default=MLLMConfig.layer,
                    help="hidden state to read (the generator's model.mllm.layer; 0 = the LM's input)")
    ap.add_argument("--out", type=Path, default=None, help="write the accuracies here as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    report = probe(args.mllm, args.images, layer=args.layer)
    print(f"{'readout':<10}" + "".join(f"{a:>9}" for a in ATTRIBUTES))
    for readout in READOUTS:
        print(f"{readout:<10}" + "".join(f"{report[readout][a]:>9.3f}" for a in ATTRIBUTES))
    if args.out:
        write_json_atomic(args.out, report)
    return 0


if __name__ == "__main__":
    from base.cli_guard import guarded

    sys.exit(guarded(main, prog="python -m vimi.mllm.probe"))
