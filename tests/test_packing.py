"""Shared-prefix packing: row building, masks/position ids/targets, and exactness of loss and LoRA gradients
against per-example rows and against the plain transformers `labels=` loss, on a tiny random Llama (fp32)."""
from __future__ import annotations

import pytest
import torch
from helpers import grads, make_videos, packed_loss, random_ids, tiny_llama, with_lora

from vrp.errors import VrpError
from vrp.loss import loss_sum, model_attention_mask, target_logits
from vrp.packing import Row, collate, make_rows
from vrp.prompts import EncodedVideo, PromptConfig, encode_video
from vrp.records import Comment, Video

EOS = 2
SHARP = 0.2  # initializer_range: attention and logits far from uniform, so context/position bugs show
IMPLS = ["eager", "sdpa"]
RTOL, ATOL = 1e-5, 1e-6
GRAD_ATOL = 5e-6  # ~1e-5 of the largest LoRA gradient (0.54); observed fp32 differences <= 8e-7
LOGIT_ATOL = 1e-5  # logits are O(1-10): fp32 rounding across different sequence lengths is ~1e-6


def _ids(gen: torch.Generator, n: int) -> list[int]:
    return random_ids(gen, n)


def lora(tokenizer, impl: str):
    """Tiny Llama with a LoRA adapter whose A and B are both random (so every adapter weight has a gradient)."""
    return with_lora(tiny_llama(tokenizer, attn_implementation=impl, initializer_range=SHARP))


def test_make_rows_none_and_greedy_split():
    videos = make_videos()
    none = make_rows(videos, "none", 100)
    assert [(r.video_id, len(r.completions)) for r in none] == [("a", 1)] * 4 + [("b", 1)] + [("c", 1)] * 4
    assert none[2].completions == [videos[0].completions[2]] and none[2].prompt_ids == videos[0].prompt_ids
    rows = make_rows(videos, "shared_prefix", 70)
    # a: 40+12+9=61, +15 > 70 -> new row 40+15+2; b: one row; c: 60+4+6=70, then 60+2+8=70.
    assert [(r.video_id, [len(c) for c in r.completions]) for r in rows] == [
        ("a", [12, 9]), ("a", [15, 2]), ("b", [7]), ("c", [4, 6]), ("c", [2, 8])]
    assert all(r.num_tokens <= 70 and r.prompt_ids == videos["abc".index(r.video_id)].prompt_ids for r in rows)
    assert len(make_rows(videos, "shared_prefix", 10_000)) == 3


def test_make_rows_errors():
    videos = make_videos()
    with pytest.raises(VrpError, match="'c'.*max_row_tokens=67"):
        make_rows(videos, "shared_prefix", 67)
    with pytest.raises(VrpError, match="packing mode"):
        make_rows(videos, "pairs", 100)
    with pytest.raises(VrpError, match="empty prompt"):
        make_rows([EncodedVideo("x", [], [[5, EOS]])], "none", 100)
    with pytest.raises(VrpError, match="one completion per row"):
        collate(make_rows(videos, "shared_prefix", 1000), EOS, "none")


def test_collate_positions_mask_targets_and_eos():
    rows = [Row([11, 12, 13], [[21, 22, EOS], [31, EOS]], "v"), Row([41, 42], [[51, EOS]], "w")]
    b = collate(rows, pad_id=EOS, mode="shared_prefix")
    assert b["input_ids"].tolist() == [[11, 12, 13, 21, 22, EOS, 31, EOS], [41, 42, 51, EOS, EOS, EOS, EOS, EOS]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 3, 4], [0, 1, 2, 3, 0, 0, 0, 0]]
    # first comment token predicted from the prompt's last position (2), the rest from their previous token
    assert b["target_positions"].tolist() == [2, 3, 4, 2, 6, 8 + 1, 8 + 2]
    assert b["target_ids"].tolist() == [21, 22, EOS, 31, EOS, 51, EOS]  # EOS is a target although pad_id == EOS
    assert b["target_comment"].tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert (b["num_comments"], b["num_tokens"], b["num_targets"]) == (3, 12, 7)
    m = b["attention_mask"]
    assert m.shape == (2, 1, 8, 8) and m.dtype == torch.bool
    expected0 = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0],
                              [1, 1, 0, 0, 0, 0, 0, 0],
                              [1, 1, 1, 0, 0, 0, 0, 0],
                              [1, 1, 1, 1, 0, 0, 0, 0],
                              [1, 1, 1, 1, 1, 0, 0, 0],
                              [1, 1, 1, 1, 1, 1, 0, 0],
                              [1, 1, 1, 0, 0, 0, 1, 0],   # comment 2 sees the prompt and itself, not comment 1
                              [1, 1, 1, 0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(m[0, 0], expected0)
    # padded row: real tokens never see pads; each pad query sees only itself (no empty softmax row)
    assert torch.equal(m[1, 0, :4, 4:], torch.zeros(4, 4, dtype=torch.bool))
    assert torch.equal(m[1, 0, 4:], torch.eye(8, dtype=torch.bool)[4:])
    n = collate([Row([11, 12], [[21, EOS]])], EOS, "none")
    assert n["attention_mask"].tolist() == [[1, 1, 1, 1]] and n["position_ids"].tolist() == [[0, 1, 2, 3]]


@pytest.mark.parametrize("impl", IMPLS)
def test_eager_mask_is_additive(tokenizer, impl):
    mask = collate([Row([1, 2], [[3, EOS], [4, EOS]])], EOS, "shared_prefix")["attention_mask"]
    cfg = tiny_llama(tokenizer, attn_implementation=impl, initializer_range=SHARP).config
    out = model_attention_mask(mask, cfg, torch.float32)
    if impl == "sdpa":
        assert out is mask
    else:
        assert out.dtype == torch.float32 and torch.equal(out == 0, mask)
        assert out.min().item() == torch.finfo(torch.float32).min
    cfg._attn_implementation = "flash_attention_2"
    with pytest.raises(VrpError, match="does not take custom 4D masks"):
        model_attention_mask(mask, cfg, torch.float32)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("contexts", "max_row_tokens", "n_rows"),
                         [(False, 10_000, 3), (False, 70, 5), (True, 10_000, 3), (True, 71, 6)])
def test_packed_equals_per_example_loss_and_lora_grads(tokenizer, impl, contexts, max_row_tokens, n_rows):
    """Mixed prompt lengths (padding), a single-comment video, videos split across rows (70 / 71 tokens), and
    (contexts) tier markers: shared-prefix loss and LoRA gradients equal the per-example ones (1e-5)."""
    videos = make_videos_with_contexts() if contexts else make_videos()
    model = lora(tokenizer, impl)
    ref_loss = packed_loss(model, make_rows(videos, "none", max_row_tokens), "none", rows_per_batch=3)
    ref = grads(model)
    rows = make_rows(videos, "shared_prefix", max_row_tokens)
    assert len(rows) == n_rows
    loss = packed_loss(model, rows, "shared_prefix", rows_per_batch=2)
    got = grads(model)
    torch.testing.assert_close(loss, ref_loss, rtol=RTOL, atol=ATOL)
    assert 8.0 < loss.item() < 12.0  # ~ln(49152) = 10.8 for a random model: a real loss, not a degenerate one
    assert len(got) == 2 * 7 * 2 and all(g.abs().max() > 0 for g in ref.values())
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=RTOL, atol=GRAD_ATOL, msg=name)


def _assert_packed_equals_per_example_hf_loss(model, videos, max_row_tokens: int) -> None:
    """Shared-prefix packed loss and LoRA gradients == transformers' own `model(input_ids, labels)` run per
    (prompt + context + comment) with -100 on prompt and context tokens, token-weighted (HF's loss is a mean)."""
    total, n = torch.zeros(()), 0
    for v in videos:
        for j, c in enumerate(v.completions):
            ctx = v.contexts[j] if v.contexts else []
            ids = torch.tensor([v.prompt_ids + ctx + c])
            labels = torch.tensor([[-100] * (len(v.prompt_ids) + len(ctx)) + c])
            total = total + model(input_ids=ids, labels=labels).loss * len(c)
            n += len(c)
    ref_loss = total / n
    ref_loss.backward()
    ref = grads(model)
    loss = packed_loss(model, make_rows(videos, "shared_prefix", max_row_tokens), "shared_prefix", rows_per_batch=4)
    got = grads(model)
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=RTOL, atol=ATOL)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=RTOL, atol=GRAD_ATOL, msg=name)


@pytest.mark.parametrize("impl", IMPLS)
def test_matches_transformers_labels_loss(tokenizer, impl):
    """Independent reference: `model(input_ids, labels)` per (prompt + comment), -100 on prompt tokens."""
    cfg = PromptConfig(max_prompt_tokens=96)
    real = encode_video(tokenizer, Video("r", "Cats", "We feed the cat and it sleeps all day. " * 8,
                                         [Comment("so cute!"), Comment("my cat does this too lol"), Comment("ok")]),
                        cfg)
    assert real.prompt_ids[0] == tokenizer.bos_token_id and all(c[-1] == EOS for c in real.completions)
    videos = [real] + make_videos()[:2]
    _assert_packed_equals_per_example_hf_loss(lora(tokenizer, impl), videos, 128)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_cross_contamination_between_comments(tokenizer, impl):
    g = torch.Generator().manual_seed(5)
    prompt, c1, c2, c2b = _ids(g, 20), _ids(g, 6) + [EOS], _ids(g, 4) + [EOS], _ids(g, 9) + [EOS]
    model = tiny_llama(tokenizer, attn_implementation=impl, initializer_range=SHARP)

    def logits_c1(rows: list[Row], sel: slice) -> torch.Tensor:
        with torch.no_grad():
            return target_logits(model, collate(rows, EOS, "shared_prefix"))[sel]

    base = logits_c1([Row(prompt, [c1, c2])], slice(0, 7))
    assert base.shape == (7, len(tokenizer))
    torch.testing.assert_close(logits_c1([Row(prompt, [c1, c2b])], slice(0, 7)), base, rtol=RTOL, atol=LOGIT_ATOL)
    # c1 placed after another comment: same logits (positions restart, earlier comment invisible)
    torch.testing.assert_close(logits_c1([Row(prompt, [c2b, c1])], slice(10, 17)), base, rtol=RTOL, atol=LOGIT_ATOL)
    # c1 alone in a padded batch next to a longer row
    torch.testing.assert_close(logits_c1([Row(prompt, [c1]), Row(prompt, [c2b, c2, c2b])], slice(0, 7)), base,
                               rtol=RTOL, atol=LOGIT_ATOL)
    changed = logits_c1([Row([prompt[0] + 1] + prompt[1:], [c1, c2])], slice(0, 7))
    assert (changed - base).abs().max() > 0.1  # the prompt is seen


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_autocast_finite_and_close(tokenizer, impl):
    videos = make_videos()
    model = lora(tokenizer, impl)
    rows = make_rows(videos, "shared_prefix", 70)
    ref = packed_loss(model, rows, "shared_prefix", rows_per_batch=5)
    grads(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = packed_loss(model, rows, "shared_prefix", rows_per_batch=5)
    g = grads(model)
    assert torch.isfinite(loss) and all(torch.isfinite(v).all() for v in g.values())
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=0.0)


def test_training_forward_builds_no_kv_cache(tokenizer):
    model = lora(tokenizer, "sdpa")
    seen: list[dict] = []
    outs: list = []
    dec = model.get_base_model().model
    dec.register_forward_pre_hook(lambda m, a, kw: seen.append(dict(kw)), with_kwargs=True)
    dec.register_forward_hook(lambda m, a, out: outs.append(out))
    loss_sum(model, collate(make_rows(make_videos(), "shared_prefix", 1000), EOS, "shared_prefix"))
    assert len(seen) == 1 and seen[0]["use_cache"] is False
    assert getattr(outs[0], "cache", None) is None and getattr(outs[0], "past_key_values", None) is None


def test_flex_attention(tokenizer):
    if not torch.cuda.is_available():
        pytest.skip("flex_attention on CPU (torch 2.13): no backward (NotImplementedError) and ~20 s compile per "
                    "shape; the shared-prefix BlockMask forward was checked by hand against sdpa (max logit diff 6e-6)")
    videos = make_videos()
    losses = []
    for impl in ("sdpa", "flex_attention"):
        model = lora(tokenizer, impl).cuda()
        b = collate(make_rows(videos, "shared_prefix", 70), EOS, "shared_prefix")
        s, n = loss_sum(model, b)
        losses.append((s / n).detach().cpu())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)


# --- completions with context tokens (tier markers): inputs that are never targets ------------------------------
def make_videos_with_contexts() -> list[EncodedVideo]:
    """`make_videos` with a context before most comments (lengths 1-5, some comments without one)."""
    g = torch.Generator().manual_seed(7)
    lengths = {"a": [3, 0, 5, 1], "b": [4], "c": [0, 0, 2, 3]}
    return [EncodedVideo(v.video_id, v.prompt_ids, v.completions, [_ids(g, n) for n in lengths[v.video_id]])
            for v in make_videos()]


def test_collate_with_contexts_positions_mask_targets():
    rows = [Row([11, 12, 13], [[21, 22, EOS], [31, EOS]], "v", [[91, 92], []]), Row([41, 42], [[51, EOS]], "w", [[93]])]
    b = collate(rows, pad_id=EOS, mode="shared_prefix")
    assert b["input_ids"].tolist() == [[11, 12, 13, 91, 92, 21, 22, EOS, 31, EOS],
                                       [41, 42, 93, 51, EOS, EOS, EOS, EOS, EOS, EOS]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 3, 4], [0, 1, 2, 3, 4, 0, 0, 0, 0, 0]]
    # comment 1's first token is predicted from its context's last position (4), comment 2's from the prompt's (2)
    assert b["target_positions"].tolist() == [4, 5, 6, 2, 8, 10 + 2, 10 + 3]
    assert b["target_ids"].tolist() == [21, 22, EOS, 31, EOS, 51, EOS]  # context tokens are never targets
    assert (b["num_comments"], b["num_tokens"], b["num_targets"]) == (3, 15, 7)
    m = b["attention_mask"][0, 0]
    assert m[5, :5].all() and m[3, :3].all() and not m[3, 4]   # comment sees prompt + its context, causally
    assert not m[8, 3:8].any() and m[8, :3].all()              # comment 2 sees neither comment 1 nor its context
    n = collate([Row([11, 12], [[21, EOS]], "x", [[91]])], EOS, "none")
    assert n["input_ids"].tolist() == [[11, 12, 91, 21, EOS]] and n["target_positions"].tolist() == [2, 3]
    with pytest.raises(VrpError, match="2 contexts for 1 completions"):
        collate([Row([11], [[21, EOS]], "x", [[1], [2]])], EOS, "shared_prefix")


def test_make_rows_counts_contexts():
    videos = make_videos_with_contexts()
    # c's last comment needs 60 + (3 + 8) = 71 tokens: refused at 70 (its context counts).
    with pytest.raises(VrpError, match=r"'c'.*comment 3 \(11 tokens\)"):
        make_rows(videos, "shared_prefix", 70)
    rows = make_rows(videos, "shared_prefix", 71)
    # a: 40 + (3+12) + (0+9) = 64, then 40 + (5+15) + (1+2) = 63; b: 25 + (4+7); c: 60 + 4 + 6 = 70, 60 + (2+2),
    # 60 + (3+8) = 71.
    assert [(r.video_id, [len(c) for c in r.contexts]) for r in rows] == [
        ("a", [3, 0]), ("a", [5, 1]), ("b", [4]), ("c", [0, 0]), ("c", [2]), ("c", [3])]
    assert all(r.num_tokens <= 71 for r in rows) and rows[0].num_tokens == 64
    assert [len(r.contexts) for r in make_rows(videos, "none", 71)] == [1] * 9
    with pytest.raises(VrpError, match="1 contexts for 4 comments"):
        make_rows([EncodedVideo("x", [1, 2], videos[0].completions, [[5]])], "none", 100)


@pytest.mark.parametrize("impl", IMPLS)
def test_contexts_match_transformers_labels_loss(tokenizer, impl):
    """Independent reference: `model(prompt + context + comment, labels)` with -100 on prompt and context tokens."""
    from vrp.tiers import encode_tiered_video

    cfg = PromptConfig(max_prompt_tokens=96)
    video = Video("r", "Cats", "We feed the cat and it sleeps all day. " * 8,
                  [Comment("so cute!", 50), Comment("my cat does this too lol", 7), Comment("ok", 0)])
    real = encode_tiered_video(tokenizer, video, cfg, "likes")
    assert [tokenizer.decode(c) for c in real.contexts] == ["[most liked comment]\n", "[typical comment]\n",
                                                           "[least liked comment]\n"]
    videos = [real] + make_videos_with_contexts()[:2]
    _assert_packed_equals_per_example_hf_loss(lora(tokenizer, impl), videos, 160)


@pytest.mark.parametrize("impl", IMPLS)
def test_context_is_seen_by_its_comment_only(tokenizer, impl):
    g = torch.Generator().manual_seed(9)
    prompt, c1, c2, m1, m2 = _ids(g, 20), _ids(g, 6) + [EOS], _ids(g, 4) + [EOS], _ids(g, 3), _ids(g, 3)
    model = tiny_llama(tokenizer, attn_implementation=impl, initializer_range=SHARP)

    def logits(row: Row) -> torch.Tensor:
        with torch.no_grad():
            return target_logits(model, collate([row], EOS, "shared_prefix"))

    base = logits(Row(prompt, [c1, c2], "v", [m1, []]))
    alone = logits(Row(prompt, [c2], "v", [[]]))
    torch.testing.assert_close(base[7:], alone, rtol=RTOL, atol=LOGIT_ATOL)  # c2 never sees c1's context
    other = logits(Row(prompt, [c1, c2], "v", [m2, []]))
    assert (other[:7] - base[:7]).abs().max() > 0.1                           # c1 sees its own context
    torch.testing.assert_close(other[7:], base[7:], rtol=RTOL, atol=LOGIT_ATOL)
