"""MLLM encoder on a tiny LLaVA saved to disk and loaded through the user's path."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vimi.mllm import (
    MLLMConfig,
    MLLMEncoder,
    MLLMLoadError,
    build_tiny_llava,
    pretrain_prompt,
    prompt_key,
    task_prompt,
    tiny_llava,
)
from vimi.mllm.align import AlignConfig, align
from vimi.mllm.encoder import load_llava

OUT = 24


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("llava"), seed=0)


def make_encoder(folder, **kw) -> MLLMEncoder:
    torch.manual_seed(0)  # projection + null init
    return MLLMEncoder(MLLMConfig(path=str(folder), **kw), out_dim=OUT)


@pytest.fixture(scope="module")
def enc(folder):
    return make_encoder(folder)


def shape_image(color, square: bool) -> np.ndarray:
    """A 32x32 ShapeWorld-like picture: a coloured disc or square on sand."""
    im = np.empty((32, 32, 3), dtype=np.uint8)
    im[:] = (194, 178, 128)
    yy, xx = np.mgrid[:32, :32]
    mask = (np.abs(xx - 16) < 7) & (np.abs(yy - 16) < 7) if square else (xx - 16) ** 2 + (yy - 16) ** 2 < 49
    im[mask] = color
    return im


RED, BLUE = (220, 30, 30), (40, 70, 220)


def prompts():
    return [
        task_prompt(
            "t2v", "a red circle moves left on sand", context=[("a photo of a red circle", shape_image(RED, False))]
        ),
        task_prompt("prediction", "a blue square moves up", images=[shape_image(BLUE, True)]),
        task_prompt("subject", "A <image> moves left on sand", images=[shape_image(RED, True)]),
        pretrain_prompt("a red circle"),
    ]


def test_saved_tiny_llava_loads_through_user_path_and_is_deterministic(folder):
    enc = make_encoder(folder)
    torch.manual_seed(0)
    default = MLLMEncoder(MLLMConfig(), out_dim=OUT)  # path="": the same build, from the same seed
    for (name, a), b in zip(default.llava.state_dict().items(), enc.llava.state_dict().values()):
        assert torch.equal(a, b), name
    ps = prompts()[:2]
    torch.testing.assert_close(copy.deepcopy(default).encode(ps), enc.encode(ps))  # EMA-style copies work
    other, _ = tiny_llava(seed=1)
    assert not torch.equal(other.lm_head.weight, enc.llava.lm_head.weight)
    assert enc.n_image_tokens == 16  # 32x32 image, 8x8 patches, CLS dropped as in llava-1.5
    assert (folder / "config.json").is_file() and (folder / "processor_config.json").is_file()
    with pytest.raises(MLLMLoadError, match="not a local folder"):
        MLLMEncoder(MLLMConfig(path="llava-hf/llava-1.5-7b-hf"), out_dim=OUT)


def test_encode_shapes_masks_and_batch_independence(enc):
    ps = prompts()
    c, mask = enc.encode(ps)
    lengths = [len(t.ids) for t in enc.tokenize(ps)]
    assert c.shape == (4, max(lengths), OUT) and c.dtype == torch.float32
    assert mask.dtype == torch.bool and mask.sum(1).tolist() == lengths
    assert torch.all(c[~mask] == 0)
    assert lengths[1] > 16 and lengths[3] < 16  # the image prompt carries its 16 image tokens
    alone, m1 = enc.encode(ps[1:2])  # padding and batch neighbours must not change a prompt's C
    torch.testing.assert_close(alone[0, : lengths[1]], c[1, : lengths[1]], atol=1e-5, rtol=1e-5)


def test_different_images_change_condition(enc):
    a = task_prompt("subject", "A <image> moves left on sand", images=[shape_image(RED, False)])
    b = task_prompt("subject", "A <image> moves left on sand", images=[shape_image(BLUE, True)])
    ca, _ = enc.encode([a])
    cb, _ = enc.encode([b])
    ca2, _ = enc.encode([a])
    assert torch.equal(ca, ca2)
    n_head = (
        len(enc.tokenize([a])[0].ids)
        - 16
        - len(enc.processor.tokenizer("moves left on sand", add_special_tokens=False)["input_ids"])
    )
    assert torch.allclose(ca[0, :n_head], cb[0, :n_head])  # causal: tokens before the image cannot see it
    assert (ca[0, n_head:] - cb[0, n_head:]).abs().amax(-1).min() > 1e-4  # every token from the image on differs


def test_frozen_mllm_has_no_trainable_params_and_no_grads(folder):
    enc = make_encoder(folder)
    enc.train()
    assert not enc.llava.training  # frozen MLLM stays in eval mode
    names = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert names == {"proj.weight", "proj.bias", "null"}
    assert {id(p) for p in enc.trainable_parameters()} == {id(enc.proj.weight), id(enc.proj.bias), id(enc.null)}
    c, mask = enc.encode(prompts()[:2])
    c.pow(2).sum().backward()
    assert enc.proj.weight.grad is not None and enc.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.llava.parameters())
    assert set(enc.trainable_state_dict()) == names


def test_lora_adds_trainable_lm_params_only_and_starts_equal_to_frozen(folder, enc):
    lora = make_encoder(folder, tuning="lora", lora_r=4)
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    lora_names = [n for n in trainable if "lora_" in n]
    assert lora_names and all("language_model" in n for n in lora_names)
    assert set(trainable) == set(lora_names) | {"proj.weight", "proj.bias", "null"}
    ps = prompts()[:2]
    c0, _ = enc.encode(ps)
    c1, _ = lora.encode(ps)
    torch.testing.assert_close(c0, c1)  # LoRA's B starts at zero
    c1.pow(2).sum().backward()
    # layer=-2 reads the output of the second-to-last LM layer: LoRA in every layer up to it gets gradients
    last = f"layers.{lora.llava.config.text_config.num_hidden_layers - 1}."
    assert all(p.grad is not None for n, p in lora.named_parameters() if "lora_B" in n and last not in n)

    full = make_encoder(folder, tuning="full")
    assert all(p.requires_grad for p in full.parameters())


def test_each_layer_reads_the_full_forwards_state_and_runs_no_layer_after_it(folder):
    ps = prompts()
    n_layers = make_encoder(folder).llava.config.text_config.num_hidden_layers
    for layer in range(-n_layers - 1, n_layers + 1):
        full, enc = (make_encoder(folder, layer=layer, cache_prompts=0) for _ in range(2))
        full._exit_index = n_layers + 1   # no early stop: every layer runs and hidden_states[layer] is read
        h_full, m_full = full.hidden(ps)
        ran = []
        for i, block in enumerate(enc.llava.model.language_model.layers):
            block.register_forward_hook(lambda m, a, o, i=i, ran=ran: ran.append(i))
        h, mask = enc.hidden(ps)
        assert torch.equal(mask, m_full)
        torch.testing.assert_close(h, h_full)
        assert ran == list(range(layer % (n_layers + 1)))   # reading state n runs layers 0..n-1 only


def test_frozen_encoder_computes_each_distinct_prompt_once(folder):
    uncached, cached = make_encoder(folder, cache_prompts=0), make_encoder(folder, cache_prompts=3)
    ps = prompts()
    calls = []
    inner = cached._hidden
    cached._hidden = lambda batch: calls.append(len(batch)) or inner(batch)
    c_ref, m_ref = uncached.encode(ps + ps[:1])
    c1, m1 = cached.encode(ps + ps[:1])   # 4 distinct prompts: one MLLM call of 4; the bound keeps the 3 last used
    c2, m2 = cached.encode([ps[1], ps[0]])  # ps[1] was evicted (least recently used), ps[0] was not
    assert calls == [4, 1] and len(cached._cache) == 3
    assert torch.equal(m1, m_ref)
    torch.testing.assert_close(c1, c_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(c2, c_ref[[1, 0]][:, : c2.shape[1]], atol=1e-6, rtol=1e-6)
    image_changed = task_prompt("prediction", "a blue square moves up", images=[shape_image(RED, True)])
    assert prompt_key(image_changed) != prompt_key(ps[1])   # same text, other pixels: another prompt


def test_null_condition_and_drop(enc):
    c0, m0 = enc.null_condition(3)
    assert c0.shape == (3, 1, OUT) and m0.all()
    c, m = enc.encode(prompts()[:3])
    cd, md = enc.drop_condition(c, m, torch.tensor([False, True, False]))
    assert cd.shape == c.shape and torch.equal(cd[0], c[0]) and torch.equal(md[2], m[2])
    assert md[1].tolist() == [True] + [False] * (c.shape[1] - 1)
    torch.testing.assert_close(cd[1, 0], enc.null[0])


def test_truncation_in_encoder_drops_context_first(folder):
    ctx = [(f"a photo of a red circle number {i}", shape_image(RED, False)) for i in range(4)]
    p = task_prompt("t2v", "a blue square moves up", context=ctx)
    full = make_encoder(folder, max_length=1000).tokenize([p])[0]
    enc = make_encoder(folder, max_length=len(full.ids) - 30)
    t = enc.tokenize([p])[0]
    assert t.dropped_pairs == 2 and len(t.images) == 2 and t.ids[-6:] == full.ids[-6:]
    c, m = enc.encode([p])
    assert c.shape[1] == len(t.ids) <= enc.cfg.max_length


def test_trainable_state_roundtrip(folder):
    a = make_encoder(folder)
    torch.manual_seed(1)
    b = MLLMEncoder(MLLMConfig(path=str(folder)), out_dim=OUT)
    assert not torch.equal(a.proj.weight, b.proj.weight)
    b.load_trainable_state_dict(a.trainable_state_dict())
    ps = prompts()[:2]
    torch.testing.assert_close(a.encode(ps)[0], b.encode(ps)[0])
    with pytest.raises(KeyError, match="mismatch"):
        b.load_trainable_state_dict({"proj.weight": a.proj.weight})


def write_memory(folder, pictures: list[tuple[str, np.ndarray]]) -> str:
    """An image-text memory table (memory.jsonl + mem/*.png) of (caption, picture) rows -> its path."""
    (folder / "mem").mkdir()
    rows = []
    for i, (caption, picture) in enumerate(pictures):
        Image.fromarray(picture).save(folder / "mem" / f"{i}.png")
        rows.append({"id": f"m{i}", "caption": caption, "image": f"mem/{i}.png"})
    rows.append({"id": "noimg", "caption": "skipped", "image": None})
    (folder / "memory.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(folder / "memory.jsonl")


def colour_memory(folder, n: int = 48) -> str:
    rng = np.random.default_rng(0)
    colors = {"red": RED, "blue": BLUE, "green": (40, 190, 60)}
    pictures = []
    for i in range(n):
        name, square = list(colors)[i % 3], bool(rng.integers(2))
        pictures.append((f"a photo of a {name} {'square' if square else 'circle'} on sand",
                         shape_image(colors[name], square)))
    return write_memory(folder, pictures)


def test_align_reduces_caption_loss_and_output_loads(tmp_path):
    out = tmp_path / "aligned"
    report = align(AlignConfig(memory=colour_memory(tmp_path), out=str(out), steps=25, batch=8, eval_rows=6,
                               lr=3e-3, warmup=5), progress=False)
    assert report["skipped_rows"] == 1 and report["heldout_rows"] == 6 and report["train_rows"] == 42
    # The softmax runs over the memory's words: a photo of {red, blue, green} {square, circle} on sand, and EOS.
    assert report["softmax_tokens"] == 11
    assert report["heldout_caption_loss_after"] < 0.5 * report["heldout_caption_loss_before"]
    assert (
        json.loads((out / "align_report.json").read_text())["heldout_caption_loss_after"]
        == report["heldout_caption_loss_after"]
    )
    enc = MLLMEncoder(MLLMConfig(path=str(out)), out_dim=OUT)  # the aligned folder is a drop-in MLLM
    assert enc.encode(prompts()[:1])[0].shape[-1] == OUT


def test_a_new_refiner_passes_states_through_then_mixes_the_prompt_and_is_saved(folder):
    torch.manual_seed(0)
    plain = MLLMEncoder(MLLMConfig(path=str(folder)), out_dim=OUT)
    torch.manual_seed(0)
    refined = MLLMEncoder(MLLMConfig(path=str(folder), refiner_layers=2, refiner_heads=2), out_dim=OUT)
    ps = prompts()[:2]
    (c0, m0), (c1, _) = plain.encode(ps), refined.encode(ps)
    torch.testing.assert_close(c1, c0)                              # zero-initialised: identity at the start
    assert any(n.startswith("refiner.") for n in refined.trainable_state_dict())
    with torch.no_grad():
        for p in refined.refiner.parameters():
            p.add_(0.1 * torch.randn_like(p))
    c2, m2 = refined.encode(ps)
    assert not torch.allclose(c2, c0) and torch.equal(m2, m0)
    assert not c2[~m2].any()                                        # padding stays zero
    twin = MLLMEncoder(MLLMConfig(path=str(folder), refiner_layers=2, refiner_heads=2), out_dim=OUT)
    twin.load_trainable_state_dict(refined.trainable_state_dict())
    torch.testing.assert_close(twin.encode(ps)[0], c2)


@pytest.mark.parametrize("cache", [0, 8])
def test_caption_summary_opens_the_condition(folder, cache):
    """caption_summary: C's first token is the mean of the caption's C tokens; the rest are unchanged."""
    full, summ = make_encoder(folder), make_encoder(folder, caption_summary=True, cache_prompts=cache)
    ps = prompts()
    (c_full, m_full), (c_summ, m_summ) = full.encode(ps), summ.encode(ps)
    for i, t in enumerate(full.tokenize(ps)):
        assert len(t.roles) == len(t.ids) and t.roles[0] == "instruction"   # BOS counts as instruction
        caption = [j for j, r in enumerate(t.roles) if r == "caption"]
        assert caption and int(m_summ[i].sum()) == int(m_full[i].sum()) + 1
        torch.testing.assert_close(c_summ[i, 0], c_full[i, caption].mean(0))
        torch.testing.assert_close(c_summ[i, 1:], c_full[i])


@pytest.mark.parametrize("mode,roles", [("in_caption", ("caption_image",)), ("all", ("caption_image", "task_image"))])
def test_summary_images_add_the_pictures_mean_to_the_caption_summary(folder, mode, roles):
    """summary_images: the subject's picture (a subject prompt names its subject only there), and with "all" also
    prediction's given frame, reach C's first token beside the caption's mean; other prompts keep the caption's."""
    full = make_encoder(folder)
    summ = make_encoder(folder, caption_summary=True, summary_images=mode)
    ps = prompts()
    (c_full, _), (c_summ, _) = full.encode(ps), summ.encode(ps)
    with_pictures = 0
    for i, t in enumerate(full.tokenize(ps)):
        caption = [j for j, r in enumerate(t.roles) if r == "caption"]
        pictures = [j for j, r in enumerate(t.roles) if r in roles]
        with_pictures += bool(pictures)
        want = c_full[i, caption].mean(0) + (c_full[i, pictures].mean(0) if pictures else 0)
        torch.testing.assert_close(c_summ[i, 0], want)
        torch.testing.assert_close(c_summ[i, 1:], c_full[i])
    assert with_pictures == len(roles)   # the subject's prompt; with "all", prediction's too


def test_picture_token_puts_the_pictures_mean_in_a_masked_second_token(folder):
    full = make_encoder(folder)
    summ = make_encoder(folder, caption_summary=True, summary_images="in_caption", picture_token=True)
    ps = prompts()
    (c_full, m_full), (c_summ, m_summ) = full.encode(ps), summ.encode(ps)
    for i, t in enumerate(full.tokenize(ps)):
        caption = [j for j, r in enumerate(t.roles) if r == "caption"]
        pictures = [j for j, r in enumerate(t.roles) if r == "caption_image"]
        torch.testing.assert_close(c_summ[i, 0], c_full[i, caption].mean(0))
        assert bool(m_summ[i, 1]) == bool(pictures)           # only the subject's prompt has its picture's token
        if pictures:
            torch.testing.assert_close(c_summ[i, 1], c_full[i, pictures].mean(0))
        torch.testing.assert_close(c_summ[i, 2:], c_full[i])
        assert int(m_summ[i].sum()) == int(m_full[i].sum()) + 1 + bool(pictures)


def test_token_codes_tag_each_text_token_with_a_fixed_code_of_its_id(folder):
    plain, coded = make_encoder(folder), make_encoder(folder, token_codes=True)
    ps = prompts()
    (c0, _), (c1, _) = plain.encode(ps), coded.encode(ps)
    codes = c1 - c0                                                  # the same projection: only the codes differ
    toks = plain.tokenize(ps)
    image = plain.llava.config.image_token_id
    seen: dict[int, torch.Tensor] = {}
    for i, t in enumerate(toks):
        for j, tid in enumerate(t.ids):
            if tid == image:
                assert torch.all(codes[i, j] == 0)
            else:
                assert codes[i, j].abs().sum() > 0
                torch.testing.assert_close(codes[i, j], seen.setdefault(tid, codes[i, j]))   # one code per id
        assert torch.all(codes[i, len(t.ids):] == 0)                 # padding stays zero
    again = make_encoder(folder, token_codes=True)                   # drawn from (seed, id): reproducible
    torch.testing.assert_close(again.encode(ps)[0], c1)


def test_conv_stem_tower_loads_through_the_user_path_and_its_tokens_move_with_the_picture(tmp_path):
    from vimi.mllm.tiny import TinyLlavaConfig

    folder = build_tiny_llava(tmp_path / "stem", seed=0, cfg=TinyLlavaConfig(patch_size=4, stem_layers=2))
    vision = json.loads((folder / "config.json").read_text())["vision_config"]
    assert vision["model_type"] == "vimi_conv_stem_clip_vision" and vision["stem_layers"] == 2
    enc = make_encoder(folder)
    assert enc.n_image_tokens == 64                      # 32x32 picture, 4-px patches, CLS dropped
    again = make_encoder(folder)
    for (name, a), b in zip(enc.llava.state_dict().items(), again.llava.state_dict().values()):
        assert torch.equal(a, b), name
    # Why the stem is there: its token features are the same wherever the object sits. Shift a
    # picture by one patch and the tokens away from the borders shift by one token.
    stem = enc.llava.model.vision_tower.embeddings.patch_embedding
    im = torch.tensor(shape_image(RED, False)).permute(2, 0, 1)[None].float() / 127.5 - 1
    moved = torch.roll(im, shifts=4, dims=3)            # background wraps onto background
    a, b = stem(im), stem(moved)                         # (1, width, 8, 8)
    torch.testing.assert_close(b[..., 1:7, 2:7], a[..., 1:7, 1:6])
    assert not torch.allclose(a[..., 1:7, 2:7], a[..., 1:7, 1:6])   # the picture is not flat there


def test_align_with_caption_words_trains_and_saves_the_plain_model(tmp_path):
    pictures = [(f"a photo of a {name} shape", shape_image(color, bool(i % 3)))
                for i, (name, color) in enumerate([("red", RED), ("blue", BLUE)] * 12)]
    write_memory(tmp_path, pictures)
    report = align(AlignConfig(memory=str(tmp_path / "memory.jsonl"), out=str(tmp_path / "a"), steps=15, batch=8,
                               eval_rows=4, warmup=3, word_weight=1.0), progress=False)
    assert report["heldout_caption_loss_after"] < 0.5 * report["heldout_caption_loss_before"]
    plain = make_encoder(build_tiny_llava(tmp_path / "plain", seed=0))
    words = make_encoder(tmp_path / "a")            # the head is discarded: the same parameters as a plain LLaVA
    assert list(words.llava.state_dict()) == list(plain.llava.state_dict())


def test_align_keeps_the_words_the_memory_never_shows_apart(tmp_path):
    """Pictures do not move, so no memory caption holds a motion word; the generator reads those words at
    layer 0 (their embedding rows) and must still be able to tell "left" from "right" after alignment."""
    memory = colour_memory(tmp_path)

    def rows(folder):
        llava, processor = load_llava(folder)
        ids = processor.tokenizer.convert_tokens_to_ids(["left", "right", "red"])
        return dict(zip(["left", "right", "red"], llava.get_input_embeddings().weight[ids].detach()))

    before = rows(build_tiny_llava(tmp_path / "start", seed=0))
    for corpus in (True, False):
        out = tmp_path / f"corpus{corpus}"
        align(AlignConfig(memory=memory, out=str(out), steps=30, batch=8, eval_rows=6, warmup=5,
                          corpus_vocabulary=corpus), progress=False)
        after = rows(out)
        assert not torch.equal(after["red"], before["red"])          # a memory word is trained either way
        unseen_kept = all(torch.equal(after[w], before[w]) for w in ("left", "right"))
        assert unseen_kept == corpus
    # ... and over the whole vocabulary they drift together, towards one direction.
    cos = torch.nn.functional.cosine_similarity
    assert cos(after["left"], after["right"], dim=0) > cos(before["left"], before["right"], dim=0) + 0.2
