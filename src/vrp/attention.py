"""`split_sdpa`: PyTorch SDPA that runs the causal prefix of a masked batch with the causal kernel.

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
(`causal_prefix`, cached for the mask tensor of the current forward).
Measured (SmolLM2-135M, 4 rows x 1,103 tokens, bf16, 1 thread, CPU seconds per training step): shared-prefix rows
faster than `sdpa` and, for padded `none` rows, 17.5 s instead of 21.9 s (BENCHMARKS.md, "Training memory and step time").
Registered with transformers as attention implementation `split_sdpa` (its masks are built like `sdpa`'s), so a
model loaded with `attn_implementation="split_sdpa"` uses it in every layer.
Does not know: how masks are built (`vrp.packing`, `vrp.loss.model_attention_mask`).
"""
from __future__ import annotations

from typing import Any

import torch

NAME = "split_sdpa"
MIN_PREFIX = 16  # below this the split saves less than the second kernel call costs
_cache: dict[str, Any] = {"mask": None, "prefix": 0}


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


@torch.compiler.disable
def _prefix_of(mask: torch.Tensor) -> int:
    """`causal_prefix(mask)`, computed once per mask tensor (all layers of a forward share the mask); run eagerly
    under `torch.compile` (its result depends on the mask's values)."""
    if _cache["mask"] is not mask:
        _cache["mask"], _cache["prefix"] = mask, causal_prefix(mask)
    return int(_cache["prefix"])


def split_sdpa_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                         is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention function with transformers' signature: query (B, H, Q, D), key/value (B, H_kv, K, D), mask
    (B, 1, Q, K) or None; returns (B, Q, H, D) and no attention weights. Falls back to transformers' `sdpa`
    function when there is no mask, a KV cache (Q != K), dropout, or a causal prefix shorter than `MIN_PREFIX`."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    p = 0
    if attention_mask is not None and attention_mask.ndim == 4 and dropout == 0.0 and not kwargs.get("softcap"):
        p = _prefix_of(attention_mask)
    if p < MIN_PREFIX:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    groups = getattr(module, "num_key_value_groups", 1)   # a Python int: static under torch.compile
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
