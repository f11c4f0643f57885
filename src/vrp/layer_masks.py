"""Attention masks per layer type for shared-prefix rows: full, sliding-window and chunked attention layers.

Knows: which attention each decoder layer runs (`layer_types`: `config.layer_types` where the config has it, as
transformers 5.x configs of Gemma 2/3, Qwen2, Llama 4, Cohere 2 and others do; else every layer sliding when
`config.sliding_window` is set, as Mistral and Phi-3 apply `create_sliding_window_causal_mask` to all layers; else
every layer chunked when `config.attention_chunk_size` is set; else full), and how to restrict the boolean
shared-prefix mask of `vrp.packing` (True = may attend) to what each layer type sees of a comment's own logical
sequence (prompt, then context and comment, as if the comment were alone), using the position ids, which restart
after the prompt for every comment (`vrp.packing.collate`):
- `full_attention`: the shared-prefix mask itself;
- `sliding_attention`: also `pos_q - pos_k < sliding_window` (transformers' `sliding_window_overlay`,
  `masking_utils.py`: a query sees itself and the `sliding_window - 1` keys before it);
- `chunked_attention`: also `pos_q // attention_chunk_size == pos_k // attention_chunk_size` (transformers'
  `chunked_overlay`, without left padding: vrp pads on the right).
When a restriction removes nothing (every logical sequence of the batch fits the window or the first chunk), the
full mask object itself is used for that layer type, so `vrp.attention`'s per-mask plan is computed once.
How the masks reach the layers (transformers 5.x, checked in 5.25 source): a 4D mask is returned as-is by
`masking_utils._preprocess_mask_arguments`, so a model that applies one mask function to all its layers (Llama,
Mistral, Phi-3) takes the one tensor; a model with several layer types takes a dict keyed by layer type (its forward
reads `causal_mask_mapping[config.layer_types[i]]` when `isinstance(attention_mask, dict)`: Gemma 3, Qwen2, Llama 4,
and every model whose forward has that test).
Llama 4's NoPE layers with `attn_temperature_tuning` scale queries by `log1p(floor((t + 1) / floor_scale))` of the
row index t, not the position id (`Llama4TextAttention.forward`): packing is exact only while both give the same
floor, i.e. for rows shorter than `floor_scale` (8,192) tokens; a longer row is refused.
Does not know: how rows and the shared-prefix mask are built (`vrp.packing`), the forward pass (`vrp.loss`).
Refused (`shared_prefix_problem` says why): other layer types (linear attention, convolutions, compressed or
indexed attention: their state or pattern crosses comments), bidirectional attention, several layer types in a
model whose forward takes no mask dict, attention kernels that take no 4D mask (flash attention).
"""
from __future__ import annotations

import functools
import inspect
import re
from typing import Any

import torch

from vrp.errors import VrpError

MASKED_KINDS = ("full_attention", "sliding_attention", "chunked_attention")
MASK_IMPLS = ("sdpa", "split_sdpa", "eager", "flex_attention")
_DICT_TEST = re.compile(r"isinstance\([^()]*attention_mask\s*,\s*dict\)")


def layer_types(config: Any) -> list[str]:
    """The attention type of each decoder layer of `config` (see the module docstring): `num_hidden_layers`
    strings such as 'full_attention', 'sliding_attention', 'chunked_attention'."""
    n = int(getattr(config, "num_hidden_layers", 0) or 0)
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)
    if getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True):
        return ["sliding_attention"] * n
    if getattr(config, "attention_chunk_size", None) is not None:
        return ["chunked_attention"] * n
    return ["full_attention"] * n


@functools.lru_cache(maxsize=None)
def takes_mask_dict(decoder_cls: type) -> bool:
    """True when the decoder class's `forward` accepts an attention-mask dict keyed by layer type (its source tests
    `isinstance(..., attention_mask, dict)`, the transformers 5.x convention); False when the source is unreadable."""
    try:
        src = inspect.getsource(decoder_cls.forward)
    except (OSError, TypeError):
        return False
    return _DICT_TEST.search(src) is not None


def shared_prefix_problem(decoder: Any) -> str | None:
    """Why vrp cannot build exact shared-prefix masks for this decoder body (e.g. `LlamaModel`, from
    `vrp.loss.decoder_and_head`), as one line naming the model type and what to use; None when it can."""
    config = decoder.config
    name = getattr(config, "model_type", None) or type(decoder).__name__
    impl = getattr(config, "_attn_implementation", None) or "eager"
    why = None
    if impl not in MASK_IMPLS:
        why = f"its attention implementation {impl!r} takes no custom 4D masks (use sdpa, split_sdpa or eager)"
    elif not getattr(config, "is_causal", True) or getattr(config, "use_bidirectional_attention", False):
        why = "its attention is bidirectional"
    else:
        kinds = layer_types(config)
        other = sorted(set(kinds) - set(MASKED_KINDS))
        if other:
            why = f"it has {', '.join(map(repr, other))} layers (vrp masks {', '.join(MASKED_KINDS)} layers only)"
        elif len(set(kinds)) > 1 and not takes_mask_dict(type(decoder)):
            why = (f"it mixes {' and '.join(sorted(set(kinds)))} layers and {type(decoder).__name__}.forward takes "
                   f"no attention-mask dict keyed by layer type")
    if why is None:
        return None
    return (f"shared-prefix packing cannot mask model type {name!r} exactly: {why}; train it with packing mode "
            f"'none' (--packing none)")


def check_shared_prefix(decoder: Any) -> None:
    """Raise VrpError with `shared_prefix_problem`'s message when the decoder cannot be shared-prefix masked."""
    problem = shared_prefix_problem(decoder)
    if problem is not None:
        raise VrpError(problem)


def _restrict(mask: torch.Tensor, kind: str, config: Any, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """`mask` (B, 1, Q, K) bool restricted for layer type `kind` by logical positions q_pos (B, Q), k_pos (B, K);
    the same object when nothing is removed. Works one row at a time ((Q, K) int32 at most)."""
    if kind == "full_attention":
        return mask
    if kind == "sliding_attention":
        size = int(config.sliding_window)
        if int(q_pos.max()) - int(k_pos.min()) < size:   # every distance fits the window
            return mask
    else:
        size = int(config.attention_chunk_size)
        if int(torch.maximum(q_pos.max(), k_pos.max())) < size:   # everything in the first chunk
            return mask
    out = mask.clone()
    for b in range(mask.shape[0]):
        q, k = q_pos[b].to(torch.int32), k_pos[b].to(torch.int32)
        keep = (q[:, None] - k[None, :] < size) if kind == "sliding_attention" else (q[:, None] // size ==
                                                                                      k[None, :] // size)
        out[b, 0] &= keep
    return out


def _check_temperature_tuning(config: Any, q_pos: torch.Tensor, k_len: int) -> None:
    """Raise VrpError when Llama 4 style attention temperature tuning (NoPE layers, `attn_temperature_tuning`) would
    scale a query by another value in the packed row (row index) than alone (position id); see the module doc."""
    if not getattr(config, "attn_temperature_tuning", False) or all(getattr(config, "no_rope_layers", None) or [1]):
        return
    scale = int(config.floor_scale)
    q_len = q_pos.shape[-1]
    rows = torch.arange(k_len - q_len, k_len, device=q_pos.device)
    if not bool(((rows[None] + 1) // scale == (q_pos + 1) // scale).all()):
        raise VrpError(f"shared-prefix packing of model type {getattr(config, 'model_type', '?')!r}: rows of "
                       f"{k_len} tokens reach `floor_scale`={scale}, where its attention temperature tuning depends on "
                       f"the row position; lower `max_row_tokens` below {scale} or use packing mode 'none'")


def _convert(mask: torch.Tensor, impl: str, dtype: torch.dtype) -> Any:
    """One boolean 4D mask in the form `impl` consumes (see `model_attention_mask`)."""
    if impl in ("sdpa", "split_sdpa"):
        return mask
    if impl == "eager":
        zero = torch.zeros((), dtype=dtype, device=mask.device)
        return torch.where(mask, zero, torch.finfo(dtype).min)
    if impl == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        def mask_mod(b: Any, h: Any, q: Any, k: Any) -> Any:
            return mask[b, 0, q, k]

        return create_block_mask(mask_mod, B=mask.shape[0], H=None, Q_LEN=mask.shape[2], KV_LEN=mask.shape[3],
                                 device=mask.device, _compile=False)
    raise VrpError(f"attention implementation {impl!r} does not take custom 4D masks; shared-prefix packing needs "
                   f"'sdpa', 'split_sdpa', 'eager' or 'flex_attention' (or use packing mode 'none')")


def model_attention_mask(mask: torch.Tensor, config: Any, dtype: torch.dtype,
                         position_ids: torch.Tensor | None = None,
                         key_position_ids: torch.Tensor | None = None) -> Any:
    """Convert a mask from `vrp.packing.collate` to what the model's layers consume.

    mask: (B, T) 2D padding mask (returned unchanged: transformers builds the causal, sliding and chunked masks) or
    (B, 1, Q, K) bool, True = may attend. dtype: dtype of the input embeddings (the additive eager mask uses
    `finfo(dtype).min`, as transformers' `eager_mask` does). position_ids: (B, Q) logical positions of the queries,
    needed for sliding-window and chunked layers; key_position_ids: (B, K), default `position_ids` (Q == K; a KV
    cache before the queries needs its own). Returns, per form, the bool mask (sdpa, split_sdpa), an additive float
    mask (eager) or a flex `BlockMask` (flex_attention); one for every layer when all layers are of one type, else a
    dict keyed by layer type (see the module docstring). Raises VrpError for attention implementations that take no
    4D mask, layer types vrp cannot mask, or missing position ids.
    """
    if mask.ndim == 2:
        return mask
    impl = getattr(config, "_attn_implementation", None) or "eager"
    kinds = sorted(set(layer_types(config))) or ["full_attention"]
    other = [k for k in kinds if k not in MASKED_KINDS]
    if other:
        raise VrpError(f"shared-prefix packing cannot mask {', '.join(map(repr, other))} layers of model type "
                       f"{getattr(config, 'model_type', '?')!r} (use packing mode 'none')")
    if position_ids is not None:
        _check_temperature_tuning(config, position_ids, mask.shape[-1])
    masks: dict[str, torch.Tensor] = {}
    for kind in kinds:
        if kind != "full_attention":
            if position_ids is None:
                raise VrpError(f"{kind} layers need the position ids of a shared-prefix mask")
            keys = position_ids if key_position_ids is None else key_position_ids
            masks[kind] = _restrict(mask, kind, config, position_ids.to(mask.device), keys.to(mask.device))
        else:
            masks[kind] = mask
    done: dict[int, Any] = {}
    for m in masks.values():
        if id(m) not in done:
            done[id(m)] = _convert(m, impl, dtype)
    if len(kinds) == 1:
        return done[id(masks[kinds[0]])]
    return {kind: done[id(m)] for kind, m in masks.items()}
