"""`vrp.attention`: the row plans of shared-prefix masks, segment attention against PyTorch's SDPA, the pairs each
path scores, and the tiny model trained through it."""
from __future__ import annotations

import pytest
import torch
from helpers import PACK_EOS as EOS
from helpers import assert_grads_close, lean_loss_and_grads, lean_model

from vrp import attention
from vrp.attention import RowPlan, SegmentAttention, row_plans, scored_pairs
from vrp.packing import Row, collate
from vrp.precision import Precision

FP32 = Precision("cpu", torch.float32, None)
ROWS = [Row(list(range(3, 23)), [[5, 6, 7, EOS], [8, 9, EOS], [4, 4, 4, 4, EOS]]),
        Row(list(range(3, 15)), [[5, EOS], [6, 7, EOS]])]


def test_row_plans_of_collated_masks() -> None:
    mask = collate(ROWS, EOS, "shared_prefix")["attention_mask"]            # rows of 32 and 17 real tokens
    assert row_plans(mask) == [RowPlan(32, 24, 20, [(24, 27), (27, 32)]), RowPlan(17, 14, 12, [(14, 17)])]
    additive = torch.where(mask, 0.0, torch.finfo(torch.float32).min)
    assert row_plans(additive) == row_plans(mask)
    one = collate([Row([1, 2, 3], [[4, EOS]])], EOS, "shared_prefix")["attention_mask"]
    assert row_plans(one) == [RowPlan(5, 5, 5, [])]                        # one comment: all causal


@pytest.mark.parametrize("change", ["earlier comment", "future key", "pad in the middle", "not square", "empty",
                                    "part of its comment", "sees everything"])
def test_row_plans_refuse_other_masks(change: str) -> None:
    mask = collate(ROWS, EOS, "shared_prefix")["attention_mask"].clone()
    if change == "earlier comment":
        mask[0, 0, 28, 25] = True             # comment 3 sees comment 2: not a shared-prefix row
    elif change == "future key":
        mask[0, 0, 5, 6] = True
    elif change == "pad in the middle":
        mask[1, 0, 10, :] = False
        mask[1, 0, 10, 10] = True
    elif change == "part of its comment":
        mask[0, 0, 29, 27:29] = False         # a query of comment 3 sees the prompt and itself only
    elif change == "sees everything":
        mask[1, 0, 16, :17] = True            # the last query of row 2 sees the earlier comment too
    elif change == "not square":
        mask = mask[:, :, :20]
    else:
        mask = mask[:, :, :0, :0]
    assert row_plans(mask) is None


def _qkv(b: int, t: int, dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, h, t, 8, generator=g, dtype=dtype).requires_grad_() for h in (4, 2, 2)]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_segment_attention_equals_sdpa_on_real_tokens(dtype: torch.dtype, tol: float) -> None:
    mask = collate(ROWS, EOS, "shared_prefix")["attention_mask"]
    plans = row_plans(mask)
    b, t = mask.shape[0], mask.shape[-1]
    real = torch.zeros(b, 1, t, 1, dtype=dtype)
    for i, p in enumerate(plans):
        real[i, :, :p.length] = 1
    weights = torch.randn(b, 4, t, 8, generator=torch.Generator().manual_seed(1), dtype=dtype) * real
    runs = []
    for use_segments in (False, True):
        q, k, v = _qkv(b, t, dtype)
        out = (SegmentAttention.apply(q, k, v, plans, None, 2) if use_segments else
               torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True))
        (out * weights).sum().backward()
        runs.append([out * real, q.grad, k.grad, v.grad])
    for got, want in zip(runs[1], runs[0]):
        assert (got - want).abs().max() <= tol * want.abs().max()


def test_scored_pairs_of_each_path(monkeypatch) -> None:
    mask = collate(ROWS, EOS, "shared_prefix")["attention_mask"]            # T = 32, causal prefix 14
    split = 2 * (14 * 15 / 2 + (32 - 14) * 32)
    segments = (24 * 25 / 2 + 8 * 20 + 6 + 15) + (14 * 15 / 2 + 3 * 12 + 6)
    monkeypatch.setattr(attention, "MIN_PREFIX", 4)
    assert scored_pairs(mask) == (segments, "segments") and segments < 0.8 * split
    monkeypatch.setattr(attention, "SEGMENT_BELOW", 0.4)                  # 628 / 1362 = 0.46: not worth it
    assert scored_pairs(mask) == (split, "split")
    monkeypatch.setattr(attention, "MIN_PREFIX", 16)
    assert scored_pairs(mask) == (2 * 32 * 32, "sdpa")
    assert scored_pairs(mask[:, :, :20]) == (2 * 20 * 32, "sdpa")          # not square: a KV cache
    with pytest.raises(ValueError, match="4D mask"):
        scored_pairs(mask[0, 0])


def test_a_mask_broadcast_over_the_batch_takes_the_split_path(monkeypatch) -> None:
    from vrp.attention import split_sdpa_attention

    mask = collate(ROWS[:1], EOS, "shared_prefix")["attention_mask"]        # (1, 1, 32, 32), rows of the batch: 2
    monkeypatch.setattr(attention, "MIN_PREFIX", 4)

    class Layer:
        num_key_value_groups = 2

    q, k, v = _qkv(2, 32, torch.float32)
    out, _ = split_sdpa_attention(Layer(), q, k, v, mask)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(out, want.transpose(1, 2))


def test_tiny_model_trains_the_same_through_segments(tokenizer, monkeypatch) -> None:
    ref_loss, ref = lean_loss_and_grads(lean_model(tokenizer, FP32, lean=True), FP32)
    monkeypatch.setattr(attention, "MIN_PREFIX", 4)
    monkeypatch.setattr(attention, "SEGMENT_BELOW", 10.0)                 # always take the segment path
    calls = []
    real = SegmentAttention.apply
    monkeypatch.setattr(SegmentAttention, "apply", lambda *a: calls.append(len(a[3])) or real(*a))
    loss, got = lean_loss_and_grads(lean_model(tokenizer, FP32, lean=True, attn="split_sdpa"), FP32)
    assert len(calls) >= 2                     # every layer of at least one batch ran by segments
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert_grads_close(got, ref, 1e-5)
