"""Shared-prefix packing of models with sliding-window and chunked attention layers (`vrp.layer_masks`): loss and LoRA
gradients of packed rows equal the per-example forward (fp32, 1e-5) on tiny random Gemma 3 (sliding + full layers),
Mistral (every layer sliding), Qwen2 (`use_sliding_window`: full + sliding) and Llama 4 text (chunked + full NoPE
layers), with windows and chunks shorter than the prompts; prompt-cached scoring of such a model; the refusal of
models vrp cannot mask."""
from __future__ import annotations

import pytest
import torch
from helpers import PACK_EOS, grads, make_videos, packed_loss, tiny_llama, with_lora

from vrp.errors import VrpError
from vrp.layer_masks import layer_types, model_attention_mask, shared_prefix_problem
from vrp.loss import decoder_and_head, loss_sum
from vrp.packing import Row, collate, make_rows

WINDOW = 8  # sliding window and chunk size, tokens: shorter than every prompt of `make_videos` (25-60 tokens)
SHARP = 0.2  # initializer_range: attention far from uniform, so a mask that lets in the wrong keys shows
RTOL, ATOL = 1e-5, 1e-6
GRAD_ATOL = 1e-5  # gradients up to O(1): fp32 rounding of sums taken in another order stays below 1e-6
IMPLS = ["eager", "sdpa", "split_sdpa"]
FAMILIES = ["gemma3", "mistral", "qwen2", "llama4"]
SMALL = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
             max_position_embeddings=4096, initializer_range=SHARP, tie_word_embeddings=True, pad_token_id=None)


def tiny(family: str, tokenizer, impl: str = "sdpa", window: int = WINDOW):
    """A tiny random fp32 model of `family` over the real tokenizer's vocabulary, in eval mode; its sliding windows
    and attention chunks are `window` tokens."""
    import transformers as tf

    if impl == "split_sdpa":
        from vrp.attention import register

        register()
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if family == "gemma3":  # layers sliding, sliding, full
        cfg = tf.Gemma3TextConfig(**SMALL, **ids, num_hidden_layers=3, sliding_window=window, query_pre_attn_scalar=8,
                                  layer_types=["sliding_attention", "sliding_attention", "full_attention"])
        cls = tf.Gemma3ForCausalLM
    elif family == "mistral":  # every layer sliding (no layer_types: Mistral applies one sliding mask)
        cfg, cls = tf.MistralConfig(**SMALL, **ids, num_hidden_layers=2, sliding_window=window), tf.MistralForCausalLM
    elif family == "qwen2":  # layers from `max_window_layers` on are sliding: full, sliding
        cfg = tf.Qwen2Config(**SMALL, **ids, num_hidden_layers=2, use_sliding_window=True, sliding_window=window,
                             max_window_layers=1)
        cls = tf.Qwen2ForCausalLM
    else:  # Llama 4 text: layer 0 chunked (RoPE), layer 1 full (NoPE, attention temperature tuning), MoE of 2 experts
        small = {k: v for k, v in SMALL.items() if k != "intermediate_size"}
        cfg = tf.Llama4TextConfig(**small, **ids, intermediate_size=64, intermediate_size_mlp=64, num_hidden_layers=2,
                                  no_rope_layers=[1, 0], attention_chunk_size=window, num_local_experts=2,
                                  num_experts_per_tok=1)
        cls = tf.Llama4ForCausalLM
    cfg._attn_implementation = impl
    torch.manual_seed(0)
    return cls(cfg).eval()


def tiny_lora(family: str, tokenizer, impl: str = "sdpa", window: int = WINDOW):
    """`tiny` with a random LoRA adapter on every linear layer; for Llama 4 on the attention and dense MLP
    projections (its MoE router is a Linear that returns a tuple, which PEFT's LoRA layer cannot wrap)."""
    targets = (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] if family == "llama4"
               else "all-linear")
    return with_lora(tiny(family, tokenizer, impl, window), targets)


def test_layer_types_of_the_families(tokenizer):
    kinds = {f: layer_types(tiny(f, tokenizer).config) for f in FAMILIES}
    assert kinds == {"gemma3": ["sliding_attention", "sliding_attention", "full_attention"],
                     "mistral": ["sliding_attention"] * 2, "qwen2": ["full_attention", "sliding_attention"],
                     "llama4": ["chunked_attention", "full_attention"]}
    assert layer_types(tiny_llama(tokenizer).config) == ["full_attention"] * 2


def test_masks_restricted_by_logical_position(tokenizer):
    """Window 3 / chunk 4 on a row [prompt 0-4][comment at positions 5-7][comment at positions 5-6]."""
    b = collate([Row([11, 12, 13, 14, 15], [[21, 22, PACK_EOS], [31, PACK_EOS]])], PACK_EOS, "shared_prefix")
    full, pos = b["attention_mask"], b["position_ids"]
    assert pos.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 5, 6]]
    cfg = tiny("gemma3", tokenizer).config
    cfg.sliding_window = 3
    m = model_attention_mask(full, cfg, torch.float32, pos)
    assert set(m) == {"sliding_attention", "full_attention"} and m["full_attention"] is full
    sliding = m["sliding_attention"][0, 0]
    # the second comment's last token (row 9, position 6) sees positions 4 (prompt), 5 and 6 (itself), not comment 1
    assert sliding[9].nonzero().flatten().tolist() == [4, 8, 9]
    assert sliding[7].nonzero().flatten().tolist() == [5, 6, 7]  # comment 1's last token: its own 3 positions
    assert torch.equal(sliding, full[0, 0] & (pos[0][:, None] - pos[0][None, :] < 3))
    cfg.sliding_window = 100  # every logical sequence fits: the full mask itself for both layer types
    m = model_attention_mask(full, cfg, torch.float32, pos)
    assert m["sliding_attention"] is full and m["full_attention"] is full
    chunk_cfg = tiny("llama4", tokenizer).config
    chunk_cfg.attention_chunk_size = 4
    chunked = model_attention_mask(full, chunk_cfg, torch.float32, pos)["chunked_attention"][0, 0]
    assert chunked[9].nonzero().flatten().tolist() == [4, 8, 9]        # positions 4, 5, 6: chunk 1
    assert chunked[3].nonzero().flatten().tolist() == [0, 1, 2, 3]     # prompt positions 0-3: chunk 0
    assert chunked[4].nonzero().flatten().tolist() == [4]              # position 4 starts chunk 1
    eager = model_attention_mask(full, tiny("mistral", tokenizer, "eager").config, torch.float32, pos)
    assert eager.dtype == torch.float32 and torch.equal(eager == 0, full & (pos[:, None, :, None] -
                                                                            pos[:, None, None, :] < WINDOW))
    with pytest.raises(VrpError, match="sliding_attention layers need the position ids"):
        model_attention_mask(full, cfg, torch.float32)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("family", FAMILIES)
def test_packed_equals_per_example_loss_and_lora_grads(tokenizer, family, impl):
    """Prompts of 25-60 tokens and comments of 2-15 under an 8-token window / chunk: shared-prefix loss and LoRA
    gradients (rows split at 70 tokens, padded batches) equal those of one row per comment (1e-5)."""
    videos = make_videos()
    model = tiny_lora(family, tokenizer, impl)
    ref_loss = packed_loss(model, make_rows(videos, "none", 70), "none", rows_per_batch=3)
    ref = grads(model)
    loss = packed_loss(model, make_rows(videos, "shared_prefix", 70), "shared_prefix", rows_per_batch=2)
    got = grads(model)
    torch.testing.assert_close(loss, ref_loss, rtol=RTOL, atol=ATOL)
    assert 8.0 < loss.item() < 14.0  # ~ln(49152) = 10.8 for a random model: a real loss, not a degenerate one
    assert ref and all(g.abs().max() > 0 for g in ref.values())
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=RTOL, atol=GRAD_ATOL, msg=name)


@pytest.mark.parametrize(("window", "paths"), [(40, {"split"}), (1000, {"segments", "split"})])
def test_split_sdpa_paths_on_windowed_layers(tokenizer, window, paths):
    """`split_sdpa` on Gemma 3's sliding layers stays exact in each of its paths: a 40-token window cuts into the
    longer logical sequences (split path: causal prefix, then the masked tail; never the segment path), a 1000-token
    window into none (the sliding mask is the full one: segment path for the 2-row batch, split for the 1-row one)."""
    from vrp.attention import scored_pairs

    videos = make_videos()
    model = tiny_lora("gemma3", tokenizer, "split_sdpa", window)
    rows = make_rows(videos, "shared_prefix", 10_000)
    seen = set()
    for i in range(0, len(rows), 2):
        b = collate(rows[i:i + 2], PACK_EOS, "shared_prefix")
        masks = model_attention_mask(b["attention_mask"], model.config, torch.float32, b["position_ids"])
        seen.add(scored_pairs(masks["sliding_attention"])[1])
    assert seen == paths
    ref_loss = packed_loss(model, make_rows(videos, "none", 10_000), "none", rows_per_batch=3)
    ref = grads(model)
    loss = packed_loss(model, rows, "shared_prefix", rows_per_batch=2)
    got = grads(model)
    torch.testing.assert_close(loss, ref_loss, rtol=RTOL, atol=ATOL)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=RTOL, atol=GRAD_ATOL, msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_window_matters(tokenizer, family, monkeypatch):
    """The exactness above depends on the per-layer-type masks: with the full shared-prefix mask in every layer
    (windows and chunks ignored) the packed loss differs from the per-example one."""
    import vrp.layer_masks

    videos = make_videos()
    model = tiny_lora(family, tokenizer)
    rows_none, rows_sp = make_rows(videos, "none", 70), make_rows(videos, "shared_prefix", 70)
    ref_loss = packed_loss(model, rows_none, "none", rows_per_batch=3)
    monkeypatch.setattr(vrp.layer_masks, "_restrict", lambda mask, *a: mask)
    wrong = packed_loss(model, rows_sp, "shared_prefix", rows_per_batch=2)
    assert abs(wrong.item() - ref_loss.item()) > 1e-3


@pytest.mark.parametrize("family", ["gemma3", "llama4"])
def test_prompt_cached_scoring_equals_alone(tokenizer, family):
    """`score_candidates` with the prompt's KV cache and with packed rows == each candidate scored alone."""
    from vrp.loss import target_logprobs
    from vrp.scoring import score_candidates

    g = torch.Generator().manual_seed(4)
    prompt = torch.randint(3, 5000, (30,), generator=g).tolist()
    cands = [torch.randint(3, 5000, (n,), generator=g).tolist() + [PACK_EOS] for n in (5, 11, 1, 7)]
    model = tiny(family, tokenizer, "split_sdpa")
    with torch.no_grad():
        alone = [float(target_logprobs(model, collate([Row(prompt, [c])], PACK_EOS, "none")).double().sum())
                 for c in cands]
    for cached in (True, False):
        got = [s for s, _ in score_candidates(model, prompt, cands, max_row_tokens=60, rows_per_batch=2,
                                              use_prompt_cache=cached)]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(alone), rtol=1e-5, atol=1e-4)


def test_models_vrp_cannot_mask_are_refused(tokenizer):
    """Mixed layer types in a decoder whose forward takes no mask dict (Llama), a layer type vrp does not mask, and
    a flash-attention kernel: one message naming the model type and packing mode 'none'."""
    from vrp.train.packing_check import validation_packing

    model = tiny_llama(tokenizer)
    assert shared_prefix_problem(model.model) is None
    model.config.layer_types, model.config.sliding_window = ["full_attention", "sliding_attention"], WINDOW
    msg = shared_prefix_problem(model.model)
    assert msg == ("shared-prefix packing cannot mask model type 'llama' exactly: it mixes full_attention and "
                   "sliding_attention layers and LlamaModel.forward takes no attention-mask dict keyed by layer type; "
                   "train it with packing mode 'none' (--packing none)")
    batch = collate([Row([11, 12, 13], [[21, PACK_EOS], [31, PACK_EOS]])], PACK_EOS, "shared_prefix")
    with pytest.raises(VrpError, match="model type 'llama' exactly: it mixes"):
        loss_sum(model, batch)
    assert validation_packing(model, "none") == "none"
    with pytest.raises(VrpError, match="model type 'llama' exactly: it mixes"):
        validation_packing(model, "shared_prefix")
    model.config.layer_types = ["full_attention", "linear_attention"]
    assert "it has 'linear_attention' layers" in shared_prefix_problem(model.model)
    gemma = tiny("gemma3", tokenizer)
    assert shared_prefix_problem(decoder_and_head(gemma)[0]) is None
    gemma.config._attn_implementation = "flash_attention_2"
    assert "'gemma3_text' exactly: its attention implementation 'flash_attention_2'" in \
        shared_prefix_problem(decoder_and_head(gemma)[0])
