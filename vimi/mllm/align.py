"""LLaVA-style alignment of the tiny default MLLM on the image-text memory.

LLaVA's first stage (Liu et al., NeurIPS 2023, sec. 4.1) trains on image -> caption next-token
prediction so that the projector maps vision features into the LM's space. Our tiny LLaVA starts
from random weights, so by default every part is trained (``--train all``); with a pretrained
llava folder as ``--init``, ``--train projector`` is LLaVA's stage 1 proper (``--train lm`` keeps
the vision tower fixed). A second, training-only loss names the caption's words from the picture's
mean projected state (``--word-weight``, on by default). Afterwards the frozen encoder carries
meaning: on ShapeWorld (the demo's run: 4-px patches, a 2-layer conv stem, ~3 min on 2 threads) a
linear probe reads scene, colour and subject from the picture's states at 0.95-1.00; shapes stay
near chance (0.2 vs 0.17) and need longer runs (docs/learning.md, "The encoder").
Grounding emerges late: after 300-600 steps colours are still at chance, only the scene is read.

    python -m vimi.mllm.align --memory data/shapeworld/memory.parquet --out outputs/mllm-tiny

Reports the held-out caption loss (nats per caption token) before and after, and after with the
held-out images shuffled (the gap is what the image contributes), in ``OUT/align_report.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from base.config import to_dict
from vimi.mllm.encoder import count_image_tokens, load_llava
from vimi.mllm.tiny import TinyLlavaConfig, build_tiny_llava, save_llava


@dataclass
class AlignConfig:
    memory: str = ""             # image-text memory: table or img2dataset tars (data_pipelines.ingest.iter_memory)
    out: str = ""                # output folder: aligned LLaVA (save_pretrained) + align_report.json
    init: str = ""               # LLaVA folder to start from; "" = tiny LLaVA built from seed
    seed: int = 0
    tiny: TinyLlavaConfig = field(default_factory=TinyLlavaConfig)  # architecture when init="" (--tiny-*)
    steps: int = 1000            # ShapeWorld: colour is read from the image after ~1000 steps, not after 300-600
    batch: int = 16              # many small steps beat fewer big ones for the from-scratch tiny model
    lr: float = 3e-3             # peak AdamW learning rate (high: the tiny model starts from scratch; 1e-2 diverges)
    warmup: int = 20             # linear warm-up steps, then cosine decay to 0
    weight_decay: float = 0.0
    clip: float = 1.0            # gradient-norm clip (0 = off)
    train: str = "all"           # "all" (tiny, from scratch) | "projector" (LLaVA stage 1 on a pretrained init)
    eval_rows: int = 128         # held-out rows (chosen by id hash, never trained on)
    max_rows: int = 10000        # training rows read from the memory (streamed; the rest is not read)
    # SuperClass-style words (Huang et al., NeurIPS 2024): besides the captioning loss, a linear head
    # (discarded) names the caption's tokens from the mean of the picture's projected states, the
    # states the generator reads. On the demo's memory (4-px patches, 1,000 steps) it lifts the layer-0
    # probe's subject from 0.42-0.52 to 0.95-1.00 and colour to 1.00 for the same time (docs/learning.md,
    # "The encoder"); shape stays near chance at this budget (0.31-0.35 after 3,000 steps, 0.52-0.58 after 5,000).
    word_weight: float = 1.0
    # The captioning softmax runs over the memory's own caption tokens (and EOS), not the whole 30k vocabulary.
    # Over all of it, with tied embeddings, every word the memory never shows is pushed down at every step, and
    # Adam turns those tiny gradients into full-size steps along one shared direction: after the demo's 1,000
    # steps "left", "right", "up", "down" and "still" (pictures do not move) sat at cosine 0.975 in the
    # layer-0 states the generator reads, and its motion word gain was 1.000 (docs/learning.md, "Words the
    # memory never shows"). Restricted, they keep their distinct initial rows, and the LM head computes 49
    # columns on the demo's memory instead of 30k (alignment 153 s against 190).
    corpus_vocabulary: bool = True
    threads: int = 1             # torch CPU threads (0 = torch's default): the tiny model gains little from
                                 # more, and on a busy machine several spinning threads run ~10x slower


# ---------------------------------------------------------------------- data
def read_memory(
    path: str, eval_rows: int, max_rows: int
) -> tuple[list[tuple[str, object]], list[tuple[str, object]], int]:
    """-> (train [(caption, image)], held-out [(caption, image)], rows skipped for lack of an image).

    Rows stream through ``data_pipelines.ingest.iter_memory`` (tables or img2dataset tars). A row
    is held out when crc32(id) % 8 == 0 (stable across runs and memory orderings) until
    ``eval_rows`` are held out; reading stops once both lists are full.
    """
    from base.errors import MissingImageError
    from base.images import load_image
    from data_pipelines.ingest import iter_memory

    train: list = []
    held: list = []
    skipped = 0
    for rows in iter_memory(path):
        for r in rows:
            caption = str(r.get("caption") or "").strip()
            to_eval = zlib.crc32(str(r["id"]).encode()) % 8 == 0 and len(held) < eval_rows
            target = held if to_eval else train
            if target is train and len(train) >= max_rows:
                continue
            try:  # rows without a caption or a usable image teach nothing here
                image = load_image(r["image"], name=str(r["id"])) if caption else None
            except MissingImageError:
                image = None
            if image is None:
                skipped += 1
                continue
            target.append((caption, image))
        if len(train) >= max_rows and len(held) >= eval_rows:
            break
    if not train or not held:
        raise ValueError(
            f"{path}: need image rows for training and held-out evaluation, got {len(train)} and {len(held)}"
        )
    return train, held, skipped


class CaptionBatcher:
    """(caption, image) pairs -> LLaVA captioning batches: [BOS] <image>*N caption [EOS], loss on caption + EOS."""

    def __init__(self, llava, processor):
        tok = processor.tokenizer
        self.processor = processor
        self.tok = tok
        self.image_token_id = llava.config.image_token_id
        self.bos = [] if tok.bos_token_id is None else [tok.bos_token_id]
        self.eos = [] if tok.eos_token_id is None else [tok.eos_token_id]
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def __call__(self, pairs: list[tuple[str, object]], n_image: int) -> dict[str, torch.Tensor]:
        caps = self.tok([c for c, _ in pairs], add_special_tokens=False)["input_ids"]
        seqs, labels = [], []
        for ids in caps:
            ids = [t for t in ids if t != self.image_token_id] + self.eos
            prefix = self.bos + [self.image_token_id] * n_image
            seqs.append(prefix + ids)
            labels.append([-100] * len(prefix) + ids)
        L = max(len(s) for s in seqs)
        B = len(seqs)
        input_ids = torch.full((B, L), self.pad, dtype=torch.long)
        lab = torch.full((B, L), -100, dtype=torch.long)
        attn = torch.zeros(B, L, dtype=torch.long)
        for i, (s, y) in enumerate(zip(seqs, labels)):
            input_ids[i, : len(s)] = torch.tensor(s)
            lab[i, : len(y)] = torch.tensor(y)
            attn[i, : len(s)] = 1
        pixels = self.processor.image_processor(images=[im for _, im in pairs], return_tensors="pt")["pixel_values"]
        return {"input_ids": input_ids, "labels": lab, "attention_mask": attn, "pixel_values": pixels}


class CaptionWords(torch.nn.Module):
    """Auxiliary loss: which of the memory's caption tokens does this picture's caption hold?

    The classes are the token ids of the training captions; the target is the caption's bag of
    tokens weighted by inverse document frequency and normalised, under a softmax (SuperClass). A
    token in every caption ("a photo of") weighs nothing; a colour or shape word weighs most. The
    signal reaches the vision tower and projector directly, without waiting for the LM to learn
    to read them.
    """

    def __init__(self, tok, captions: list[str], width: int):
        super().__init__()
        bags = [sorted(set(seq) - set(tok.all_special_ids))
                for seq in tok(captions, add_special_tokens=False)["input_ids"]]
        df: dict[int, int] = {}
        for bag in bags:
            for t in bag:
                df[t] = df.get(t, 0) + 1
        index = {t: i for i, t in enumerate(sorted(df))}
        self.bags = [[index[t] for t in bag] for bag in bags]   # per caption, its classes: tokenized once
        self.register_buffer("idf", torch.tensor([math.log(len(bags) / df[t]) for t in sorted(df)]))
        self.head = torch.nn.Linear(width, len(df))

    def forward(self, image_states: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """image_states (B, N, H): the projector's output for captions ``rows`` -> mean cross-entropy
        against each caption's weighted bag."""
        target = torch.zeros(len(rows), len(self.idf))
        for i, r in enumerate(rows):
            target[i, self.bags[r]] = 1.0
        target = target * self.idf
        target = target / target.sum(1, keepdim=True).clamp(min=1e-8)
        logp = F.log_softmax(self.head(image_states.float().mean(1)), dim=-1)
        return -(target * logp).sum(1).mean()


class Vocabulary:
    """The token ids a softmax runs over, and the map from a token id to its column (-100: not in it)."""

    def __init__(self, ids: list[int], size: int):
        self.ids = torch.tensor(sorted(set(ids)), dtype=torch.long)
        self.column = torch.full((size,), -100, dtype=torch.long)
        self.column[self.ids] = torch.arange(len(self.ids))

    @classmethod
    def of_captions(cls, batcher: CaptionBatcher, captions: list[str], size: int) -> Vocabulary:
        """Every token of ``captions`` as the batcher feeds them (image tokens dropped, EOS added)."""
        seqs = batcher.tok(captions, add_special_tokens=False)["input_ids"]
        return cls([t for seq in seqs for t in seq if t != batcher.image_token_id] + batcher.eos, size)


def caption_logits(llava, batch: dict[str, torch.Tensor], vocab: Vocabulary | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (logits (N, V), targets (N,)) at the N caption positions (next-token prediction); with ``vocab``,
    over its tokens only (V = len(vocab.ids)) and targets as its columns.

    The LM head runs only where a label exists: with a 30k vocabulary the full logits of the
    image positions would cost more than the rest of the step.
    """
    out = llava.model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"].to(llava.dtype),
                      attention_mask=batch["attention_mask"])
    h = out.last_hidden_state[:, :-1]          # (B, L-1, H): position t predicts token t+1
    target = batch["labels"][:, 1:]            # (B, L-1)
    keep = target != -100
    h, target = h[keep], target[keep]
    if vocab is None:
        return llava.lm_head(h).float(), target
    return F.linear(h, llava.lm_head.weight[vocab.ids]).float(), vocab.column[target]


def caption_loss(llava, batch: dict[str, torch.Tensor], vocab: Vocabulary | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over caption tokens (LLaVA's captioning objective)."""
    return F.cross_entropy(*caption_logits(llava, batch, vocab))


@torch.no_grad()
def evaluate(llava, batcher: CaptionBatcher, pairs: list, n_image: int, batch: int = 64,
             vocab: Vocabulary | None = None) -> tuple[float, float]:
    """Held-out (caption loss in nats per caption token, teacher-forced next-token accuracy)."""
    llava.eval()
    total, correct, count = 0.0, 0, 0
    for i in range(0, len(pairs), batch):
        logits, target = caption_logits(llava, batcher(pairs[i : i + batch], n_image), vocab)
        total += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(-1) == target).sum())
        count += target.numel()
    return total / max(count, 1), correct / max(count, 1)


TRAIN_CHOICES = ("all", "lm", "projector")


def _set_trainable(llava, train: str) -> list[torch.nn.Parameter]:
    """all: every weight; lm: projector + language model (vision tower fixed); projector: LLaVA stage 1."""
    if train not in TRAIN_CHOICES:
        raise ValueError(f"--train must be one of {TRAIN_CHOICES}, got {train!r}")
    llava.requires_grad_(train == "all")
    llava.model.multi_modal_projector.requires_grad_(True)
    if train == "lm":
        llava.model.language_model.requires_grad_(True)
        llava.lm_head.requires_grad_(True)
    return [p for p in llava.parameters() if p.requires_grad]


# ---------------------------------------------------------------------- run
def align(cfg: AlignConfig, progress: bool = True) -> dict:
    """Run the alignment and write OUT (LLaVA folder + align_report.json) -> report dict."""
    if not cfg.memory or not cfg.out:
        raise ValueError("align needs --memory and --out")
    if cfg.word_weight < 0:
        raise ValueError(f"--word-weight must be >= 0, got {cfg.word_weight}")
    threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        return _align(cfg, progress)
    finally:  # the thread count is process-wide: give the caller's back
        torch.set_num_threads(threads)


def _align(cfg: AlignConfig, progress: bool) -> dict:
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    if cfg.init:
        llava, processor = load_llava(cfg.init)
    else:  # same path as a user's folder: build to disk, then load it back
        with tempfile.TemporaryDirectory(prefix="vimi-tiny-llava-") as tmp:
            llava, processor = load_llava(build_tiny_llava(tmp, cfg.seed, cfg.tiny))
    train, held, skipped = read_memory(cfg.memory, cfg.eval_rows, cfg.max_rows)
    batcher = CaptionBatcher(llava, processor)
    n_image = count_image_tokens(llava, processor)
    shuffled = [(c, held[(i + 1) % len(held)][1]) for i, (c, _) in enumerate(held)]  # each caption, another's image
    vocab = (Vocabulary.of_captions(batcher, [c for c, _ in train + held], llava.config.text_config.vocab_size)
             if cfg.corpus_vocabulary else None)

    before, acc_before = evaluate(llava, batcher, held, n_image, vocab=vocab)
    params = _set_trainable(llava, cfg.train)
    words, projected, hook = None, [], None
    if cfg.word_weight > 0:
        words = CaptionWords(batcher.tok, [c for c, _ in train], llava.config.text_config.hidden_size)
        params = params + list(words.parameters())
        # The projector's output is what the head reads: caught on the way through the captioning forward.
        hook = llava.model.multi_modal_projector.register_forward_hook(lambda mod, i, out: projected.append(out))
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup, 1)) * 0.5 * (1 + math.cos(math.pi * min(s / cfg.steps, 1.0)))
    )
    rng = random.Random(cfg.seed)
    order: list[int] = []
    llava.train()
    bar = tqdm(range(cfg.steps), desc="align", disable=not progress, unit="step")
    ema = None
    for _ in bar:
        if len(order) < cfg.batch:  # epochs of shuffled rows
            perm = list(range(len(train)))
            rng.shuffle(perm)
            order.extend(perm)
        idx, order = order[: cfg.batch], order[cfg.batch :]
        projected.clear()
        loss = caption_loss(llava, batcher([train[i] for i in idx], n_image), vocab)
        if words is not None:
            loss = loss + cfg.word_weight * words(projected[0], idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{ema:.3f}")
    if hook is not None:
        hook.remove()
    llava.eval()
    llava.requires_grad_(False)
    after, acc_after = evaluate(llava, batcher, held, n_image, vocab=vocab)
    after_shuffled, acc_shuffled = evaluate(llava, batcher, shuffled, n_image, vocab=vocab)

    out = Path(cfg.out)
    save_llava(llava, processor, out)
    report = {
        "heldout_caption_loss_before": before,
        "heldout_caption_loss_after": after,
        "heldout_caption_loss_after_shuffled_images": after_shuffled,
        "heldout_token_accuracy_before": acc_before, "heldout_token_accuracy_after": acc_after,
        "heldout_token_accuracy_after_shuffled_images": acc_shuffled,
        "train_rows": len(train), "heldout_rows": len(held), "skipped_rows": skipped,
        "image_tokens": n_image, "softmax_tokens": len(vocab.ids) if vocab else llava.config.text_config.vocab_size,
        "parameters": sum(p.numel() for p in llava.parameters()),
        "trained_parameters": sum(p.numel() for p in params), "seconds": round(time.time() - t0, 1),
        "config": to_dict(cfg),
    }
    (out / "align_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    d = AlignConfig()
    ap = argparse.ArgumentParser(prog="python -m vimi.mllm.align", description=__doc__.split("\n\n")[0])
    ap.add_argument("--memory", required=True, help="image-text memory (table, folder, or img2dataset tars)")
    ap.add_argument("--out", required=True, help="output folder for the aligned LLaVA")
    ap.add_argument("--init", default=d.init, help="LLaVA folder to start from (default: tiny LLaVA from --seed)")
    for name in ("seed", "steps", "batch", "warmup", "eval_rows", "max_rows", "threads"):
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for f in fields(TinyLlavaConfig):  # the tiny LLaVA's architecture, e.g. --tiny-patch-size 4
        ap.add_argument("--tiny-" + f.name.replace("_", "-"), type=int, default=getattr(d.tiny, f.name))
    for name in ("lr", "weight_decay", "clip", "word_weight"):
        ap.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    ap.add_argument("--train", choices=TRAIN_CHOICES, default=d.train)
    ap.add_argument("--full-vocabulary", dest="corpus_vocabulary", action="store_false",
                    help="captioning softmax over the whole vocabulary (default: the memory's caption tokens)")
    ap.add_argument("--no-progress", action="store_true")
    args = vars(ap.parse_args(argv))
    progress = not args.pop("no_progress")
    tiny = TinyLlavaConfig(**{f.name: args.pop("tiny_" + f.name) for f in fields(TinyLlavaConfig)})
    report = align(AlignConfig(**args, tiny=tiny), progress=progress)
    print(
        f"held-out caption loss: before {report['heldout_caption_loss_before']:.3f} -> after "
        f"{report['heldout_caption_loss_after']:.3f} "
        f"(shuffled images {report['heldout_caption_loss_after_shuffled_images']:.3f}) "
        f"nats/token; token accuracy {report['heldout_token_accuracy_before']:.3f} -> "
        f"{report['heldout_token_accuracy_after']:.3f} "
        f"(shuffled {report['heldout_token_accuracy_after_shuffled_images']:.3f}) over "
        f"{report['softmax_tokens']} tokens; "
        f"{report['seconds']} s; wrote {args['out']}"
    )
    return 0


if __name__ == "__main__":
    from base.cli_guard import guarded

    sys.exit(guarded(main, prog="python -m vimi.mllm.align"))
