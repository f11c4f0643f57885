"""The forward pass for training and scoring: decoder body once, LM head only at target positions, summed NLL.

Knows: how to split a causal LM (plain or PEFT-wrapped) into its decoder body and LM head, how to convert a
boolean 4D attention mask from `vrp.packing.collate` to what the model's attention kernel consumes
(`model_attention_mask`, per layer type: `vrp.layer_masks`), and how to compute logits, log-probabilities and the
summed completion-only loss at the target positions of a batch (`target_logits`, `target_logprobs`, `loss_sum`).
Does not know: how rows and masks are built (see `vrp.packing`), optimisers or data (see `vrp.train`).

Memory: the LM head and the cross-entropy run in chunks of target positions (`logit_chunk_rows`: at most
`LOGIT_CHUNK_BYTES` of fp32 logits per chunk). With gradients on, each chunk is an activation checkpoint
(`torch.utils.checkpoint`, non-reentrant): only the chunk's hidden states (N x hidden) are kept for backward and
its logits are recomputed there, so an (N, vocab) fp32 logit tensor and its log-softmax copy never exist at once
(for SmolLM2's 49,152-token vocabulary that is 192 KiB per target per copy). The recompute costs one more LM-head
forward at the target positions (about 1% of a training step of SmolLM2-135M).

Attention masks (transformers 5.x, `transformers/masking_utils.py`): `create_causal_mask` ->
`_preprocess_mask_arguments` returns a 4D mask `(batch, 1, q_len, kv_len)` as-is, without adapting it to the
attention implementation, so `model_attention_mask` converts it:
- `sdpa`: the boolean mask, passed to `torch.nn.functional.scaled_dot_product_attention(attn_mask=...)`;
  `split_sdpa` (`vrp.attention`) takes it as well;
- `eager`: an additive float mask, 0 where allowed and `finfo(dtype).min` elsewhere (as `eager_mask` builds it;
  `eager_attention_forward` adds it to the scores, so a boolean mask would be silently wrong);
- `flex_attention`: a `BlockMask` from `torch.nn.attention.flex_attention.create_block_mask`. On CPU, torch 2.13's
  FlexAttention has no backward (training fails) and compiles each shape for ~20 s; use it on CUDA;
- `flash_attention_*` takes no 4D masks: VrpError (use packing mode `none`, or sdpa/eager).
Sliding-window and chunked layers get their own masks, restricted by logical position, as a dict keyed by layer type
(`vrp.layer_masks`, which also says which models are refused). Training forwards pass `use_cache=False`, so no KV
cache is built.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

from vrp.errors import VrpError
from vrp.layer_masks import check_shared_prefix, model_attention_mask

__all__ = ["decoder_and_head", "model_attention_mask", "check_shared_prefix", "cache_kwarg", "logits_at",
           "logit_chunk_rows", "target_hidden", "target_logits", "target_nll", "target_logprobs", "loss_sum"]

Batch = dict[str, Any]


def decoder_and_head(model: Any) -> tuple[Any, Any]:
    """`(decoder, lm_head)` of a causal LM: the transformer body (e.g. `LlamaModel`) and the output projection.

    Accepts a transformers `*ForCausalLM` or a PEFT `PeftModel` around one (LoRA layers are injected in place, so
    the inner modules run them). Raises VrpError when the model exposes no decoder or output embeddings.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_dec = getattr(base, "get_decoder", None)
    decoder = get_dec() if get_dec is not None else None
    if decoder is None or decoder is base:  # e.g. Llama4ForCausalLM, whose `base_model_prefix` names no attribute
        decoder = getattr(base, "model", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or head is None:
        raise VrpError(f"{type(base).__name__}: not a causal LM with a decoder and an LM head")
    return decoder, head



def cache_kwarg(decoder: Any) -> str:
    """Name of the decoder's KV-cache argument: `cache` (transformers >= 5.x) or `past_key_values` (older)."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"



def logits_at(config: Any, head: Any, hidden: torch.Tensor) -> torch.Tensor:
    """LM-head logits of selected hidden states, in fp32.

    hidden: (N, hidden_size). Returns (N, vocab) float32; applies `config.final_logit_softcapping` when set
    (Gemma-2 style), so the values match the model's own `logits`.
    """
    logits = head(hidden).float()
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits



LOGIT_CHUNK_BYTES = 64 * 2 ** 20


def logit_chunk_rows(vocab: int, budget: int = LOGIT_CHUNK_BYTES) -> int:
    """Target positions per LM-head chunk: as many fp32 logit rows of `vocab` entries as fit in `budget` bytes
    (at least 1). 341 for SmolLM2's 49,152-token vocabulary and the default 64 MiB."""
    return max(1, budget // (4 * max(vocab, 1)))


def target_hidden(model: Any, batch: Batch) -> tuple[Any, Any, torch.Tensor]:
    """`(config, lm_head, hidden)`: the decoder body's last hidden states at the targets of a batch from `collate`.

    Runs the decoder body once with `use_cache=False` (no KV cache is built) and gathers the hidden states at
    `batch['target_positions']`: hidden is (N, hidden_size) in the body's output dtype. Works under
    `torch.autocast` and with PEFT-wrapped models.
    """
    decoder, head = decoder_and_head(model)
    emb = decoder.get_input_embeddings().weight
    dev = emb.device
    input_ids = batch["input_ids"].to(dev)
    position_ids = batch["position_ids"].to(dev)
    mask = batch["attention_mask"].to(dev)
    if mask.ndim == 4:
        check_shared_prefix(decoder)
    mask = model_attention_mask(mask, decoder.config, emb.dtype, position_ids)
    out = decoder(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
    hidden = out.last_hidden_state                                     # (B, T, H)
    flat = hidden.reshape(-1, hidden.shape[-1])                        # (B*T, H)
    return decoder.config, head, flat.index_select(0, batch["target_positions"].to(dev))


def target_logits(model: Any, batch: Batch) -> torch.Tensor:
    """Logits (fp32) at each target of a batch from `collate`: (N, vocab).

    The vocabulary projection of prompt positions is skipped (see `target_hidden`). Materialises all N x vocab
    logits: for losses and log-probabilities use `loss_sum` / `target_logprobs`, which work in chunks.
    """
    config, head, hidden = target_hidden(model, batch)
    return logits_at(config, head, hidden)


def _chunk_nll(config: Any, head: Any, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """NLL (nats, fp32) of each target in one chunk: (n,)."""
    return torch.nn.functional.cross_entropy(logits_at(config, head, hidden), ids, reduction="none")


def target_nll(config: Any, head: Any, hidden: torch.Tensor, ids: torch.Tensor,
               chunk: int | None = None) -> torch.Tensor:
    """NLL (nats, fp32) of each target, (N,), from hidden states (N, hidden_size) and target ids (N,), computed in
    chunks of `chunk` targets (default `logit_chunk_rows`). When gradients are on and `hidden` requires them, each
    chunk is an activation checkpoint, so backward recomputes the chunk's logits instead of keeping them."""
    from torch.utils.checkpoint import checkpoint

    step = chunk or logit_chunk_rows(getattr(config, "vocab_size", 0) or head.weight.shape[0])
    grad = torch.is_grad_enabled() and hidden.requires_grad
    parts = []
    for i in range(0, hidden.shape[0], step):
        h, t = hidden[i:i + step], ids[i:i + step]
        parts.append(checkpoint(_chunk_nll, config, head, h, t, use_reentrant=False) if grad
                     else _chunk_nll(config, head, h, t))
    return torch.cat(parts) if parts else hidden.new_zeros((0,), dtype=torch.float32)


def target_logprobs(model: Any, batch: Batch) -> torch.Tensor:
    """Natural-log probability of each target token: (N,) float32 (see `target_hidden`, `target_nll`)."""
    config, head, hidden = target_hidden(model, batch)
    return -target_nll(config, head, hidden, batch["target_ids"].to(hidden.device))


def loss_sum(model: Any, batch: Batch) -> tuple[torch.Tensor, int]:
    """Completion-only loss of a batch: `(sum of token NLLs in nats, scalar float32; N = number of targets)`.

    Divide the summed losses of a gradient-accumulation window by the window's total N to get the mean NLL per
    comment token, identical for modes `none` and `shared_prefix`. The LM head runs in checkpointed chunks of
    target positions (see the module docstring).
    """
    config, head, hidden = target_hidden(model, batch)
    nll = target_nll(config, head, hidden, batch["target_ids"].to(hidden.device))
    return nll.sum(), int(nll.shape[0])
