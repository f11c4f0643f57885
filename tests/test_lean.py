"""Memory-lean training (`vrp.lean`, `vrp.attention`, the chunked LM head of `vrp.loss`): the same maths as
PEFT's LoRA forward, transformers' SDPA and a full-vocabulary cross-entropy, with less kept for backward."""
from __future__ import annotations

import pytest
import torch
from helpers import assert_grads_close, lean_loss_and_grads, lean_model, lean_videos

from vrp.bench.memory import SavedTensorTracker
from vrp.lean import DropoutLinear, _keep_mask, keep_probability
from vrp.loss import loss_sum, target_nll
from vrp.packing import Row, collate, make_rows
from vrp.precision import Precision, autocast_ctx

EOS = 2
FP32 = Precision("cpu", torch.float32, None)
BF16 = Precision("cpu", torch.bfloat16, torch.bfloat16)


def test_dropout_linear_equals_masked_reference() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, 16, generator=g, requires_grad=True)
    w = torch.randn(4, 16, generator=g, requires_grad=True)
    y = DropoutLinear.apply(x, w, 0.3, 123)
    (y * torch.arange(4.0)).sum().backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    keep = _keep_mask(x, 0.3, 123)
    assert 0.6 < keep.float().mean().item() < 0.8 and not torch.equal(keep, _keep_mask(x, 0.3, 124))
    ref = torch.nn.functional.linear(x * keep / keep_probability(0.3), w)
    (ref * torch.arange(4.0)).sum().backward()
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gw, w.grad)
    assert (gx[~keep] == 0).all()  # dropped inputs get no gradient
    big = _keep_mask(torch.empty(1001, 1000), 0.05, 7)       # 1,001,000 draws: a standard error of 2e-4
    assert big.shape == (1001, 1000) and abs(big.float().mean().item() - keep_probability(0.05)) < 1e-3
    assert keep_probability(0.05) == 1 - 1638 / 32768


@pytest.mark.parametrize("prec,rel", [(FP32, 1e-5), (BF16, 3e-2)])
def test_lean_lora_equals_peft_forward(tokenizer, prec, rel) -> None:
    """Without dropout the lean model computes PEFT's loss and gradients (fp32: to rounding; bf16 autocast: within
    bf16 rounding, the norm and SwiGLU backward run in fp32)."""
    ref_loss, ref = lean_loss_and_grads(lean_model(tokenizer, prec, lean=False), prec)
    model = lean_model(tokenizer, prec, lean=True)
    loss, got = lean_loss_and_grads(model, prec)
    assert loss == pytest.approx(ref_loss, rel=1e-6 if prec is FP32 else 1e-3)
    assert_grads_close(got, ref, rel)
    patched = [m for m in model.modules() if "forward" in vars(m)]
    assert sum(type(m).__name__ == "LlamaRMSNorm" for m in patched) == 5      # 2 per layer + the final norm
    assert sum(type(m).__name__ == "LlamaMLP" for m in patched) == 2
    assert ({k for k in model.state_dict()} ==
            {k for k in lean_model(tokenizer, prec, lean=False).state_dict()})     # the adapter's format is unchanged


def test_lean_keeps_no_dropout_copies_nor_fp32_inputs(tokenizer) -> None:
    rows = make_rows(lean_videos(), "shared_prefix", 70)
    saved = {}
    for lean in (False, True):
        model = lean_model(tokenizer, BF16, lean=lean, dropout=0.1)
        lora_bf16 = 2 * sum(p.numel() for p in model.parameters() if p.requires_grad)
        tracker = SavedTensorTracker(model)
        with autocast_ctx(BF16), tracker:
            loss_sum(model, collate(rows, EOS, "shared_prefix"))
        saved[lean] = (tracker.totals(), dict(tracker.casts))
    (old, old_casts), (new, new_casts) = saved[False], saved[True]
    assert old["LoRA dropout copies"] > 0 and new["LoRA dropout copies"] == 0
    # lean: the only casts among LoRA's saved tensors are autocast's bf16 copies of the LoRA weights themselves
    assert old_casts.get("LoRA inputs", 0) > 4 * lora_bf16 and new_casts.get("LoRA inputs", 0) <= lora_bf16
    assert old_casts.get("norms", 0) > 0 and new_casts.get("norms", 0) == 0
    assert new["norms"] < 0.6 * old["norms"] and new["MLP"] < old["MLP"]
    assert sum(new.values()) < 0.5 * sum(old.values())


def test_lean_dropout_is_a_function_of_the_seed(tokenizer) -> None:
    runs = [lean_loss_and_grads(lean_model(tokenizer, FP32, lean=True, dropout=0.2, seed=s), FP32) for s in (5, 5, 6)]
    no_drop = lean_loss_and_grads(lean_model(tokenizer, FP32, lean=True, dropout=0.0, seed=5), FP32)
    assert runs[0][0] == runs[1][0] and all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    assert runs[0][0] != runs[2][0]           # another seed, other masks
    assert runs[0][0] != no_drop[0]           # the dropout drops


def test_causal_prefix_of_collated_masks() -> None:
    from vrp.attention import causal_prefix

    packed = collate([Row([1, 2, 3], [[4, 5, EOS], [6, EOS]]), Row([7, 8], [[9, EOS]])], EOS, "shared_prefix")
    mask = packed["attention_mask"]                                    # rows of 8 and 4 real tokens
    assert causal_prefix(mask[:1]) == 6       # the prompt and the first comment are plain causal attention
    assert causal_prefix(mask[1:]) == 4       # up to the padding
    assert causal_prefix(mask) == 4
    additive = torch.where(mask, 0.0, torch.finfo(torch.float32).min)
    assert causal_prefix(additive) == 4
    assert causal_prefix(torch.ones(1, 1, 3, 3, dtype=torch.bool)) == 0  # row 0 may see the future
    own = torch.ones(3, 3, dtype=torch.bool).tril()
    own[2, :2] = False                                                   # row 2 sees only itself
    assert causal_prefix(own[None, None]) == 2
    assert causal_prefix(torch.ones(1, 1, 2, 3, dtype=torch.bool)) == 0  # not square: a KV cache


@pytest.mark.parametrize("mode", ["shared_prefix", "none"])
def test_split_sdpa_equals_sdpa(tokenizer, mode, monkeypatch) -> None:
    from vrp import attention

    ref_loss, ref = lean_loss_and_grads(lean_model(tokenizer, FP32, lean=True), FP32, mode)
    prefixes = []
    real = attention.causal_prefix
    monkeypatch.setattr(attention, "causal_prefix", lambda m: prefixes.append(real(m)) or prefixes[-1])
    monkeypatch.setattr(attention, "MIN_PREFIX", 4)
    loss, got = lean_loss_and_grads(lean_model(tokenizer, FP32, lean=True, attn="split_sdpa"), FP32, mode)
    assert prefixes and max(prefixes) >= 24   # the split ran (a prompt of 23+ tokens in every batch)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert_grads_close(got, ref, 1e-5)


def test_chunked_lm_head_equals_full_and_keeps_no_logits(tokenizer) -> None:
    model = lean_model(tokenizer, FP32, lean=True)
    decoder = model.get_base_model().model
    head = model.get_base_model().lm_head
    hidden = torch.randn(10, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    ids = torch.randint(0, len(tokenizer), (10,), generator=torch.Generator().manual_seed(1))
    full = torch.nn.functional.cross_entropy(head(hidden).float(), ids, reduction="none")
    full.sum().backward()
    want = hidden.grad.clone()
    hidden.grad = None
    tracker = SavedTensorTracker(model)
    with tracker:
        nll = target_nll(decoder.config, head, hidden, ids, chunk=3)
    nll.sum().backward()
    torch.testing.assert_close(nll, full)
    torch.testing.assert_close(hidden.grad, want)
    assert sum(tracker.totals().values()) < 10 * len(tokenizer) * 4 / 10   # no (N, vocab) logits kept


def test_compile_decoder_layers_compiles_each_layer_once(tokenizer) -> None:
    """Structure only (compiling a forward takes ~30 s on a busy CPU): every decoder layer gets a compiled call."""
    from vrp.errors import VrpError
    from vrp.train.compile import compile_decoder_layers

    model = lean_model(tokenizer, FP32, lean=True)
    layers = model.get_base_model().model.layers
    assert all(getattr(layer, "_compiled_call_impl", None) is None for layer in layers)
    assert compile_decoder_layers(model) == 2
    assert all(getattr(layer, "_compiled_call_impl", None) is not None for layer in layers)
    with pytest.raises(VrpError, match="not a causal LM with a decoder"):
        compile_decoder_layers(torch.nn.Linear(2, 2))
