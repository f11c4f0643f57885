"""Batching of (prompt, comments) videos for completion-only loss: per-example rows or shared-prefix packing.

Knows: how the comments of a video become rows (`make_rows`), how rows become padded tensors with attention masks,
position ids and loss targets (`collate`), and how the summed completion-only loss is computed from the decoder
body plus the LM head applied only at target positions (`loss_sum`, `target_logprobs`).
Does not know: optimisers, gradient accumulation, learning-rate schedules or data loading (see `train`), nor how
prompts and completions are tokenized (see `prompts`).

Two modes:
- `none`: one row per (video, comment) pair = prompt + completion, causal attention with a 2D padding mask built
  by transformers (the per-example baseline, as TRL's SFTTrainer with completion-only loss).
- `shared_prefix`: one row = `[prompt][comment 1 + EOS][comment 2 + EOS]...`. The prompt is causal among itself;
  every comment token sees the whole prompt and the earlier tokens of its own comment, never another comment;
  each comment's position ids restart at `len(prompt)`. Every comment therefore sees exactly the context it would
  see alone after the prompt, so the loss and its gradients equal the per-example ones (up to float rounding),
  while the prompt (hundreds to 1,000+ tokens) is run once per row instead of once per comment.

Attention masks (transformers 5.x, `transformers/masking_utils.py`): `create_causal_mask` ->
`_preprocess_mask_arguments` returns a 4D mask `(batch, 1, q_len, kv_len)` as-is, without adapting it to the
attention implementation. `collate` therefore emits a boolean 4D mask (True = may attend, the form `sdpa_mask`
builds) and `model_attention_mask` converts it to what the model's attention kernel consumes:
- `sdpa`: the boolean mask, passed to `torch.nn.functional.scaled_dot_product_attention(attn_mask=...)`;
- `eager`: an additive float mask, 0 where allowed and `finfo(dtype).min` elsewhere (as `eager_mask` builds it;
  `eager_attention_forward` adds it to the scores, so a boolean mask would be silently wrong);
- `flex_attention`: a `BlockMask` from `torch.nn.attention.flex_attention.create_block_mask`. On CPU, torch 2.13's
  FlexAttention has no backward (training fails) and compiles each shape for ~20 s; use it on CUDA;
- `flash_attention_*` takes no 4D masks: VrpError (use mode `none`, or sdpa/eager).
Padded query positions attend only to themselves, so no softmax row is empty (no NaN); real tokens never see pads.
Layers with sliding-window or chunked attention are refused for shared-prefix masks (the 4D mask would override
their window). A 4D mask costs B*T*T bytes (bool; 4x that as the fp32 eager mask): 64 MiB for 4 rows of 4,096.
Training forwards pass `use_cache=False`, so no KV cache is built.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from vrp.prompts import EncodedVideo
from vrp.records import VrpError

MODES = ("none", "shared_prefix")
Batch = dict[str, Any]


@dataclass
class Row:
    """A unit of batching: one prompt followed by one or more completions.

    prompt_ids: (prompt_len,) token ids. completions: token ids of each comment, each ending with EOS.
    video_id: the video the row comes from (for error messages and bookkeeping).
    """

    prompt_ids: list[int]
    completions: list[list[int]] = field(default_factory=list)
    video_id: str = ""

    @property
    def num_tokens(self) -> int:
        """Length of the row in tokens: prompt + all completions."""
        return len(self.prompt_ids) + sum(len(c) for c in self.completions)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise VrpError(f"packing mode: choose from {MODES}, got {mode!r}")


def make_rows(videos: list[EncodedVideo], mode: str, max_row_tokens: int) -> list[Row]:
    """Split videos into rows, in video order then comment order (deterministic).

    mode `none`: one row per (video, comment). mode `shared_prefix`: the video's comments are packed greedily behind
    one copy of the prompt; when the next comment would make the row longer than `max_row_tokens` (tokens), a new
    row repeating the prompt is started. Raises VrpError for an unknown mode, an empty prompt or comment, or a
    comment that does not fit with the prompt into `max_row_tokens` (naming the video).
    """
    _check_mode(mode)
    rows: list[Row] = []
    for v in videos:
        p = len(v.prompt_ids)
        if p == 0:
            raise VrpError(f"video {v.video_id!r}: empty prompt (the first comment token is predicted from the "
                           f"prompt's last position)")
        current: Row | None = None
        for i, c in enumerate(v.completions):
            if not c:
                raise VrpError(f"video {v.video_id!r}: comment {i} has no tokens")
            if p + len(c) > max_row_tokens:
                raise VrpError(f"video {v.video_id!r}: prompt ({p} tokens) + comment {i} ({len(c)} tokens) exceed "
                               f"max_row_tokens={max_row_tokens}; raise it or lower --max-prompt-tokens / "
                               f"--max-comment-tokens")
            if mode == "none" or current is None or current.num_tokens + len(c) > max_row_tokens:
                current = Row(list(v.prompt_ids), [], v.video_id)
                rows.append(current)
            current.completions.append(list(c))
    return rows


def shared_prefix_mask(segments: torch.Tensor) -> torch.Tensor:
    """Boolean shared-prefix attention mask from per-token segment ids.

    segments: (batch, seq) int; 0 = prompt, j >= 1 = comment j, -1 = padding.
    Returns (batch, 1, seq, seq) bool, True where query q may attend key k: k <= q and (k is prompt or k is in q's
    comment), both real; a padding query attends only to itself.
    """
    n = segments.shape[1]
    idx = torch.arange(n, device=segments.device)
    causal = (idx[None, :] <= idx[:, None])[None]                      # (1, q, k)
    seg_q, seg_k = segments[:, :, None], segments[:, None, :]          # (B, q, 1), (B, 1, k)
    real = (seg_q >= 0) & (seg_k >= 0)
    allowed = causal & real & ((seg_k == 0) | (seg_k == seg_q))
    pad_self = (seg_q < 0) & (idx[:, None] == idx[None, :])[None]
    return (allowed | pad_self)[:, None]


def collate(rows: list[Row], pad_id: int, mode: str) -> Batch:
    """Pad rows (on the right) into one batch.

    Returns a dict:
    - `input_ids`: (B, T) long, pads = `pad_id` (which may equal EOS: pads are told apart by the mask, not the id);
    - `attention_mask`: mode `none`: (B, T) long, 1 = real token (transformers builds causal + padding);
      mode `shared_prefix`: (B, 1, T, T) bool, True = may attend (see `shared_prefix_mask`; `loss_sum` converts it
      for the model's attention implementation with `model_attention_mask`);
    - `position_ids`: (B, T) long; prompt 0..P-1, comment j token k at P + k; pads 0;
    - `target_positions`: (N,) long, flat index b*T + t of the hidden state that predicts each target: the prompt's
      last position for a comment's first token, the previous token of the same comment otherwise;
    - `target_ids`: (N,) long, the comment tokens (EOS included); prompt tokens are never targets;
    - `target_comment`: (N,) long, index of each target's comment in batch order (row by row);
    - `num_comments` (int), `num_tokens` (int, real non-pad tokens), `num_targets` (int, N).
    Raises VrpError for an empty list, an unknown mode, or a row in mode `none` that has more than one completion.
    """
    _check_mode(mode)
    if not rows:
        raise VrpError("collate: no rows")
    if mode == "none" and any(len(r.completions) != 1 for r in rows):
        raise VrpError("collate(mode='none') needs one completion per row; build rows with make_rows(mode='none')")
    b, t = len(rows), max(r.num_tokens for r in rows)
    input_ids = torch.full((b, t), pad_id, dtype=torch.long)
    position_ids = torch.zeros((b, t), dtype=torch.long)
    segments = torch.full((b, t), -1, dtype=torch.long)
    tgt_pos: list[int] = []
    tgt_ids: list[int] = []
    tgt_comment: list[int] = []
    n_comments = 0
    for i, r in enumerate(rows):
        p = len(r.prompt_ids)
        input_ids[i, :p] = torch.tensor(r.prompt_ids)
        position_ids[i, :p] = torch.arange(p)
        segments[i, :p] = 0
        off = p
        for j, c in enumerate(r.completions):
            n = len(c)
            input_ids[i, off:off + n] = torch.tensor(c)
            position_ids[i, off:off + n] = torch.arange(p, p + n)
            segments[i, off:off + n] = j + 1
            tgt_pos += [i * t + p - 1] + [i * t + off + k for k in range(n - 1)]
            tgt_ids += c
            tgt_comment += [n_comments] * n
            n_comments += 1
            off += n
    if mode == "none":
        mask: torch.Tensor = (segments >= 0).long()
    else:
        mask = shared_prefix_mask(segments)
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids,
            "target_positions": torch.tensor(tgt_pos, dtype=torch.long),
            "target_ids": torch.tensor(tgt_ids, dtype=torch.long),
            "target_comment": torch.tensor(tgt_comment, dtype=torch.long),
            "num_comments": n_comments, "num_tokens": sum(r.num_tokens for r in rows), "num_targets": len(tgt_ids)}


def decoder_and_head(model: Any) -> tuple[Any, Any]:
    """`(decoder, lm_head)` of a causal LM: the transformer body (e.g. `LlamaModel`) and the output projection.

    Accepts a transformers `*ForCausalLM` or a PEFT `PeftModel` around one (LoRA layers are injected in place, so
    the inner modules run them). Raises VrpError when the model exposes no decoder or output embeddings.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_dec = getattr(base, "get_decoder", None)
    decoder = get_dec() if get_dec is not None else getattr(base, "model", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or head is None:
        raise VrpError(f"{type(base).__name__}: not a causal LM with a decoder and an LM head")
    return decoder, head


def _check_full_attention(config: Any) -> None:
    types = getattr(config, "layer_types", None)
    sliding = getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)
    if (types is not None and any(x != "full_attention" for x in types)) or (types is None and sliding):
        raise VrpError("shared-prefix attention masks need full-attention layers; this model has sliding-window "
                       "or chunked layers (use packing mode 'none')")


def model_attention_mask(mask: torch.Tensor, config: Any, dtype: torch.dtype) -> Any:
    """Convert a mask from `collate` to the form the model's attention implementation consumes.

    mask: (B, T) 2D padding mask (returned unchanged: transformers builds the causal mask) or (B, 1, Q, K) bool,
    True = may attend. dtype: dtype of the input embeddings (the additive eager mask uses `finfo(dtype).min`, as
    transformers' `eager_mask` does). Returns the bool mask (sdpa), an additive float mask (eager) or a flex
    `BlockMask` (flex_attention). Raises VrpError for other attention implementations or sliding-window models.
    """
    if mask.ndim == 2:
        return mask
    _check_full_attention(config)
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl == "sdpa":
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
                   f"'sdpa', 'eager' or 'flex_attention' (or use packing mode 'none')")


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


def target_logits(model: Any, batch: Batch) -> torch.Tensor:
    """Logits (fp32) at each target of a batch from `collate`: (N, vocab).

    Runs the decoder body once with `use_cache=False` (no KV cache is built), gathers the hidden states at
    `batch['target_positions']` and applies the LM head only there (the vocabulary projection of prompt positions
    is skipped). Works under `torch.autocast` and with PEFT-wrapped models.
    """
    decoder, head = decoder_and_head(model)
    emb = decoder.get_input_embeddings().weight
    dev = emb.device
    input_ids = batch["input_ids"].to(dev)
    mask = model_attention_mask(batch["attention_mask"].to(dev), decoder.config, emb.dtype)
    out = decoder(input_ids=input_ids, attention_mask=mask, position_ids=batch["position_ids"].to(dev),
                  use_cache=False)
    hidden = out.last_hidden_state                                     # (B, T, H)
    flat = hidden.reshape(-1, hidden.shape[-1])                        # (B*T, H)
    return logits_at(decoder.config, head, flat.index_select(0, batch["target_positions"].to(dev)))


def target_logprobs(model: Any, batch: Batch) -> torch.Tensor:
    """Natural-log probability of each target token: (N,) float32 (see `target_logits`)."""
    logits = target_logits(model, batch)
    ids = batch["target_ids"].to(logits.device)
    return torch.log_softmax(logits, dim=-1).gather(1, ids[:, None]).squeeze(1)


def loss_sum(model: Any, batch: Batch) -> tuple[torch.Tensor, int]:
    """Completion-only loss of a batch: `(sum of token NLLs in nats, scalar float32; N = number of targets)`.

    Divide the summed losses of a gradient-accumulation window by the window's total N to get the mean NLL per
    comment token, identical for modes `none` and `shared_prefix`.
    """
    logp = target_logprobs(model, batch)
    return -logp.sum(), int(logp.shape[0])
