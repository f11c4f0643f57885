"""`split_sdpa`: PyTorch SDPA that runs the causal prefix of a masked batch with the causal kernel, and on a CPU the
later comments of shared-prefix rows by segments (`SegmentAttention`).

Knows: on a CPU (torch 2.13) `scaled_dot_product_attention` with an explicit mask scores every (query, key) pair of
the (T, T) square, while `is_causal=True` (no mask) skips the upper triangle; a shared-prefix row
(`vrp.packing.collate`) is plain causal attention up to the start of its second comment (the prompt and the first
comment see everything before them), and a padded batch of `none` rows is causal up to its shortest row. So for a
mask whose first `p` query rows (in every row of the batch) are exactly causal, the attention output is computed as
- queries [0, p): causal SDPA over keys [0, p) (`is_causal=True`, the causal kernel), and
- queries [p, T): SDPA over all keys with the mask's rows [p, T),
which gives the same softmax over the same keys for every query (exact up to float rounding; tested against
`sdpa`). Grouped-query attention uses SDPA's `enable_gqa` on a CPU instead of copying the key/value heads (on CUDA the
masked kernels take no GQA, so the heads are repeated as transformers does). `p` is found once per mask
(`causal_prefix`, cached per mask tensor: each layer type of a model may have its own mask, `vrp.layer_masks`).
Measured (SmolLM2-135M, 4 rows x 1,103 tokens, bf16, 1 thread, CPU seconds per training step): shared-prefix rows
faster than `sdpa` and, for padded `none` rows, 17.5 s instead of 21.9 s
(docs/benchmarks-history.md, "Training memory and step time").
Registered with transformers as attention implementation `split_sdpa` (its masks are built like `sdpa`'s), so a
model loaded with `attn_implementation="split_sdpa"` uses it in every layer.
On a CPU, when every row of a batch is a shared-prefix row (prompt, then comments that see the prompt and
themselves), the comments after the first run per row as segments instead (`SegmentAttention`): each comment's
queries attend the row's prompt keys (one dense call per row, no mask) and their own keys (one causal call per
comment); the two softmax parts are merged by their log-sum-exp (`lse = logaddexp(lse_1, lse_2)`, `out = sum_i
exp(lse_i - lse) out_i`), and the backward calls the kernel's backward of each part with the merged output and
log-sum-exp, which gives the gradients of the whole softmax (the flash-attention recurrence, Dao et al. 2022,
"FlashAttention", section 3.1 and appendix B; the merge is that of blockwise/ring attention). This scores only the
pairs a comment may attend, not the earlier comments of its row nor the padding: measured (SmolLM2-135M shapes, 4
rows, 30 comments per video, one layer's attention forward + backward) 285 ms instead of 428 ms. It is used when
it scores under `SEGMENT_BELOW` of the pairs of the split path (`scored_pairs`); with few comments per row the batched
causal call is as fast.
Sliding-window and chunked layers (their masks restricted by `vrp.layer_masks`) run through the same function and
stay exact: `causal_prefix` counts only query rows that are exactly causal (a window of W keys ends it at W at most),
and `row_plans` accepts only masks that are exactly shared-prefix rows, so a window or chunk that cuts into a row
sends the batch to the split path, whose masked tail applies the mask as it is; a window longer than every logical
sequence leaves the mask unchanged and the segment path applies.
An unmasked decoding step (one query per sequence, grouped-query attention, CPU) runs `decode_step_attention`,
the query heads packed onto their key/value heads, instead of SDPA's slower bf16 `enable_gqa` kernel; inference on
a CPU uses `split_sdpa` for this (`vrp.model.load_for_inference`).
Does not know: how masks are built (`vrp.packing`, `vrp.loss.model_attention_mask`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

NAME = "split_sdpa"
MIN_PREFIX = 16  # below this the split saves less than the second kernel call costs
SEGMENT_BELOW = 0.8  # use `SegmentAttention` when it scores fewer than this share of the split path's pairs
CACHED_MASKS = 4  # masks remembered: one per layer type of a forward (full, sliding, chunked; `vrp.layer_masks`)
_cache: list[tuple[torch.Tensor, int, Any]] = []  # (mask, causal prefix, row plans or None), newest first


@dataclass
class RowPlan:
    """One shared-prefix row: real tokens [0, `length`); queries [0, `causal_end`) are plain causal (the prompt and
    the first comment); every later query sees keys [0, `prompt`) and its own comment's span, `spans` = the
    (start, end) of each later comment."""
    length: int
    causal_end: int
    prompt: int
    spans: list[tuple[int, int]] = field(default_factory=list)


def row_plans(mask: torch.Tensor) -> list[RowPlan] | None:
    """The `RowPlan` of every row of a square 4D mask (B, 1, T, T) (bool, True = may attend; or additive, 0 = may
    attend), or None when some row is not exactly a shared-prefix row (`vrp.packing.shared_prefix_mask`: padding
    at the end attends only itself) or the mask is not square."""
    if mask.ndim != 4 or mask.shape[-1] != mask.shape[-2] or mask.shape[1] != 1 or mask.shape[-1] == 0:
        return None
    t = mask.shape[-1]
    idx = torch.arange(t, device=mask.device, dtype=torch.int32)
    below = idx[None, :] <= idx[:, None]                                          # (q, k): k <= q
    plans = []
    for b in range(mask.shape[0]):                                                # one (T, T) row at a time
        allowed = mask[b, 0] if mask.dtype == torch.bool else mask[b, 0] == 0
        real = allowed[:, 0].clone()
        real[0] = True
        n = int(real.sum())
        if not bool(real[:n].all()):
            return None
        starts = torch.where(~allowed[:n] & below[:n], idx, -1).amax(-1) + 1      # (n,): start of the run ending at q
        later = (starts > 0).nonzero()
        c = int(later[0, 0]) if later.numel() else n
        prompt = int((~allowed[c]).nonzero()[0, 0]) if c < n else c               # first key query c may not see
        want = (idx[None, :] < prompt) | ((idx[None, :] >= starts[:, None]) & below[:n])
        want[:c] = below[:c]
        pads = torch.eye(t, dtype=torch.bool, device=mask.device)[n:]
        if prompt > c or not torch.equal(allowed[:n], want) or not torch.equal(allowed[n:], pads):
            return None
        spans: list[tuple[int, int]] = []
        for q, s in enumerate(starts[c:].tolist(), start=c):
            if s == q:                                  # a comment starts: it sees the prompt and itself
                spans.append((s, q + 1))
            elif spans and s == spans[-1][0]:          # the comment goes on
                spans[-1] = (s, q + 1)
            else:                                      # e.g. a query that sees only part of its own comment
                return None
        plans.append(RowPlan(n, c, prompt, spans))
    return plans


def scored_pairs(mask: torch.Tensor) -> tuple[float, str]:
    """(query-key pairs the kernels score, path) of `split_sdpa_attention` on the 4D mask (B, 1, Q, K): path
    'segments' (`SegmentAttention`: per row c(c+1)/2 causal + (n - c) * prompt + m(m+1)/2 per later comment of m
    tokens), 'split' (B * (p(p+1)/2 + (T - p) * T), p = `causal_prefix`) or 'sdpa' (B * Q * K: no usable prefix,
    or not square). Raises ValueError for a mask that is not 4D."""
    if mask.ndim != 4:
        raise ValueError(f"scored_pairs: a 4D mask (B, 1, Q, K) is needed, got shape {tuple(mask.shape)}")
    b, t = mask.shape[0], mask.shape[-1]
    p = causal_prefix(mask)
    if p < MIN_PREFIX:
        return float(b * mask.shape[-2] * t), "sdpa"
    plans = _worth_segments(mask, p)
    return (_segment_pairs(plans), "segments") if plans else (_split_pairs(b, t, p), "split")


def _split_pairs(b: int, t: int, p: int) -> float:
    return b * (p * (p + 1) / 2 + (t - p) * t)


def _segment_pairs(plans: list[RowPlan]) -> float:
    return sum(r.causal_end * (r.causal_end + 1) / 2 + (r.length - r.causal_end) * r.prompt
               + sum((e - s) * (e - s + 1) / 2 for s, e in r.spans) for r in plans)


def _worth_segments(mask: torch.Tensor, prefix: int) -> list[RowPlan] | None:
    """The row plans when `SegmentAttention` applies (a CPU mask of shared-prefix rows) and scores fewer than
    `SEGMENT_BELOW` of the split path's pairs, else None."""
    if mask.device.type != "cpu" or not MIN_PREFIX <= prefix < mask.shape[-1]:  # no tail: the causal call is all
        return None
    plans = row_plans(mask)
    if plans and _segment_pairs(plans) < SEGMENT_BELOW * _split_pairs(mask.shape[0], mask.shape[-1], prefix):
        return plans
    return None


def causal_prefix(mask: torch.Tensor) -> int:
    """The largest p such that query rows [0, p) of the 4D mask (B, 1 or heads, Q, K) with Q == K are exactly
    causal in every row and head (query t may attend keys 0..t and nothing else). Bool masks: True = may attend;
    float masks: additive, 0 = may attend. Returns 0 when the mask is not square."""
    q, k = mask.shape[-2], mask.shape[-1]
    if q != k or q == 0:
        return 0
    allowed = mask if mask.dtype == torch.bool else mask == 0
    causal = torch.ones(q, q, dtype=torch.bool, device=mask.device).tril()
    ok = (allowed == causal).all(dim=-1).reshape(-1, q).all(dim=0)        # (Q,): row t exactly causal everywhere
    bad = (~ok).nonzero()
    return int(bad[0, 0]) if bad.numel() else q


def _entry(mask: torch.Tensor) -> tuple[torch.Tensor, int, Any]:
    """`(mask, causal_prefix(mask), _worth_segments(...))`, computed once per mask tensor: the layers of one type
    share their mask in a forward, and a model with sliding-window or chunked layers alternates between up to
    `CACHED_MASKS` masks (`vrp.layer_masks`)."""
    for e in _cache:
        if e[0] is mask:
            return e
    prefix = causal_prefix(mask)
    e = (mask, prefix, _worth_segments(mask, prefix))
    _cache.insert(0, e)
    del _cache[CACHED_MASKS:]
    return e


@torch.compiler.disable
def _prefix_of(mask: torch.Tensor) -> int:
    """`causal_prefix(mask)`, cached per mask tensor (`_entry`); run eagerly under `torch.compile` (its result
    depends on the mask's values)."""
    return int(_entry(mask)[1])


@torch.compiler.disable
def _plans_of(mask: torch.Tensor) -> list[RowPlan] | None:
    """The `SegmentAttention` row plans of the mask (`_worth_segments`, cached per mask tensor), or None."""
    return _entry(mask)[2]


_FWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


class SegmentAttention(torch.autograd.Function):
    """Shared-prefix attention by segments (see the module doc) with PyTorch's CPU flash-attention kernel.
    Inputs: query (B, H, T, D), key/value (B, H_kv, T, D) in the query's dtype, `plans` (one `RowPlan` per row),
    `scale` (None = 1/sqrt(D)), `groups` = H / H_kv. Returns (B, H, T, D); padding queries get zeros (nothing reads
    them: no real query attends a pad and pads carry no loss)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plans: list[RowPlan],
                scale: float | None, groups: int) -> torch.Tensor:
        k_in, v_in = k, v
        if groups > 1:
            k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        b_, h, t, d = q.shape
        out = q.new_zeros(b_, h, t, d)
        lse = q.new_zeros(b_, h, t, dtype=_acc(q.dtype))
        for b, p in enumerate(plans):
            qb, kb, vb, c, n = q[b:b + 1], k[b:b + 1], v[b:b + 1], p.causal_end, p.length
            out[b:b + 1, :, :c], lse[b:b + 1, :, :c] = _FWD(qb[:, :, :c], kb[:, :, :c], vb[:, :, :c], 0.0, True,
                                                            scale=scale)
            if c == n:
                continue
            o_p, l_p = _FWD(qb[:, :, c:n], kb[:, :, :p.prompt], vb[:, :, :p.prompt], 0.0, False, scale=scale)
            for s, e in p.spans:
                o_s, l_s = _FWD(qb[:, :, s:e], kb[:, :, s:e], vb[:, :, s:e], 0.0, True, scale=scale)
                l_a = l_p[:, :, s - c:e - c]
                both = torch.logaddexp(l_a, l_s)
                out[b:b + 1, :, s:e] = (o_p[:, :, s - c:e - c].float() * torch.exp(l_a - both).unsqueeze(-1)
                                        + o_s.float() * torch.exp(l_s - both).unsqueeze(-1)).to(q.dtype)
                lse[b:b + 1, :, s:e] = both
        ctx.save_for_backward(q, k_in, v_in, out, lse)
        ctx.plans, ctx.scale, ctx.groups = plans, scale, groups
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[Any, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        scale, groups = ctx.scale, ctx.groups
        ke, ve = (k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)) if groups > 1 else (k, v)
        acc = _acc(q.dtype)
        dq, dk, dv = (torch.zeros(x.shape, dtype=acc, device=x.device) for x in (q, ke, ve))
        dout = dout.to(q.dtype)

        def part(b: int, qs: slice, ks: slice, causal: bool) -> None:
            i = slice(b, b + 1)
            g = _BWD(dout[i, :, qs], q[i, :, qs], ke[i, :, ks], ve[i, :, ks], out[i, :, qs], lse[i, :, qs], 0.0,
                     causal, scale=scale)
            dq[i, :, qs] += g[0]
            dk[i, :, ks] += g[1]
            dv[i, :, ks] += g[2]

        for b, p in enumerate(ctx.plans):
            part(b, slice(0, p.causal_end), slice(0, p.causal_end), True)
            if p.causal_end < p.length:
                part(b, slice(p.causal_end, p.length), slice(0, p.prompt), False)
                for s, e in p.spans:
                    part(b, slice(s, e), slice(s, e), True)
        if groups > 1:
            b_, h, t, d = dk.shape
            dk, dv = (x.view(b_, h // groups, groups, t, d).sum(2) for x in (dk, dv))
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None


def _acc(dtype: torch.dtype) -> torch.dtype:
    """The kernel's log-sum-exp dtype, also used to accumulate gradients: fp32 for bf16/fp16, else `dtype`."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


@torch.compiler.disable
def _segments(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plans: list[RowPlan],
              scale: float | None, groups: int) -> torch.Tensor:
    """`SegmentAttention` run eagerly (its Python loop over rows depends on the mask's values)."""
    return SegmentAttention.apply(query, key.to(query.dtype), value.to(query.dtype), plans, scale, groups)


def decode_step_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None,
                          groups: int) -> torch.Tensor:
    """One decoding step of grouped-query attention on a CPU, unmasked: query (B, H, 1, D), key/value (B, H_kv, K, D)
    with H = groups * H_kv; returns (B, 1, H, D). The `groups` query heads of each key/value head become `groups`
    query rows of that head (transformers' own `pack_gqa` layout, which it uses when a decoding step has a mask), so
    SDPA runs on the H_kv heads without repeating keys and values and without `enable_gqa`, whose bf16 CPU kernel
    (torch 2.13) is ~5x slower at this shape: 1.9 ms instead of 0.37 ms per layer for SmolLM2-135M with 5 sequences
    and 600 cached keys, about a third of a decoding step (measured 2026-12-08, docs/evaluation.md#speed). The same
    softmax over the same keys: equal to `enable_gqa` up to float rounding (fp32 ~1e-7)."""
    b, h, _, d = query.shape
    out = torch.nn.functional.scaled_dot_product_attention(query.reshape(b, h // groups, groups, d), key, value,
                                                           scale=scale)
    return out.reshape(b, h, 1, out.shape[-1]).transpose(1, 2).contiguous()


def split_sdpa_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                         is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention function with transformers' signature: query (B, H, Q, D), key/value (B, H_kv, K, D), mask
    (B, 1, Q, K) or None; returns (B, Q, H, D) and no attention weights. An unmasked single-query step of
    grouped-query attention on a CPU (decoding) runs `decode_step_attention`. Falls back to transformers' `sdpa`
    function when there is no mask, a KV cache (Q != K), dropout, or a causal prefix shorter than `MIN_PREFIX`."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)   # a Python int: static under torch.compile
    if (attention_mask is None and query.shape[2] == 1 and groups > 1 and query.device.type == "cpu"
            and dropout == 0.0 and all(kwargs.get(k) is None for k in ("softcap", "position_bias", "s_aux"))):
        return decode_step_attention(query, key, value, scaling, groups), None
    p = 0
    if attention_mask is not None and attention_mask.ndim == 4 and dropout == 0.0 and not kwargs.get("softcap"):
        p = _prefix_of(attention_mask)
    if p < MIN_PREFIX:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    plans = _plans_of(attention_mask)
    if plans is not None and query.device.type == "cpu" and len(plans) == query.shape[0]:
        out = _segments(query, key, value, plans, scaling, groups)
        return out.transpose(1, 2).contiguous(), None
    gqa = groups > 1 and query.device.type == "cpu"       # CUDA's masked kernels take no GQA: expand there
    if groups > 1 and not gqa:
        from transformers.integrations.sdpa_attention import repeat_kv

        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    parts = [sdpa(query[:, :, :p], key[:, :, :p], value[:, :, :p], is_causal=True, scale=scaling, enable_gqa=gqa)]
    if p < query.shape[2]:
        tail = attention_mask[:, :, p:]
        if tail.dtype == torch.bool:  # the CPU kernel is faster with an additive mask
            zero = torch.zeros((), dtype=query.dtype, device=query.device)
            tail = torch.where(tail, zero, torch.finfo(query.dtype).min)
        parts.append(sdpa(query[:, :, p:], key, value, attn_mask=tail, scale=scaling, enable_gqa=gqa))
    out = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register `split_sdpa` with transformers' attention and mask interfaces (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, split_sdpa_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
