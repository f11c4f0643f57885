"""Log-likelihood of candidate completions given one prompt, with shared-prefix packing or a reused prompt KV cache.

Knows: how to score many candidates (comment token lists, normally ending with EOS) against one prompt without
running the prompt once per candidate. Two exact paths (same numbers as scoring each candidate alone with a plain
forward, up to float rounding):
- packing (`use_prompt_cache=False`): candidates are packed behind one copy of the prompt with the shared-prefix
  attention mask of `vrp.packing` (several rows, each repeating the prompt, when they do not fit
  `max_row_tokens`);
- prompt KV cache (`use_prompt_cache=True`, default): the prompt is prefilled once; its keys/values are copied to
  each batch of candidate rows (`DynamicCache`), and each candidate token attends to the whole cached prompt and
  the earlier tokens of its own candidate. A candidate's first token is scored from the prefill's last hidden state;
  its last token is only a target, so it is not fed to the model.
Does not know: generation, ranking metrics, or training (see `packing`, `train`).
The caller sets eval mode (`model.eval()`, so LoRA/attention dropout is off) and any `torch.autocast` context.
"""
from __future__ import annotations

from typing import Any

import torch

from vrp.errors import VrpError
from vrp.layer_masks import check_shared_prefix, layer_types, shared_prefix_problem
from vrp.loss import cache_kwarg, decoder_and_head, logits_at, model_attention_mask, target_logprobs
from vrp.packing import collate, make_rows, shared_prefix_mask
from vrp.prompts import EncodedVideo


def _check(prompt_ids: list[int], candidates: list[list[int]], rows_per_batch: int) -> None:
    if not prompt_ids:
        raise VrpError("score_candidates: empty prompt")
    if rows_per_batch < 1:
        raise VrpError(f"score_candidates: rows_per_batch must be >= 1, got {rows_per_batch}")
    for i, c in enumerate(candidates):
        if not c:
            raise VrpError(f"score_candidates: candidate {i} has no tokens")


def score_packed(model: Any, prompt_ids: list[int], candidates: list[list[int]], max_row_tokens: int,
                 rows_per_batch: int, contexts: list[list[int]] | None = None) -> list[float]:
    """Sum of log-probs (nats, float64) of each candidate after the prompt, in shared-prefix rows (prompt repeated
    once per row of at most `max_row_tokens`). `contexts[i]` (optional) are tokens placed between the prompt and
    candidate i that condition it but are not scored (e.g. a like-tier marker). Returns one float per candidate, in
    order. Runs under the caller's grad mode; raises whatever `packing.make_rows` raises for a candidate too long.
    A model that vrp cannot shared-prefix mask exactly (`vrp.layer_masks.shared_prefix_problem`) is scored one
    candidate per row (packing mode `none`) instead."""
    mode = "shared_prefix" if shared_prefix_problem(decoder_and_head(model)[0]) is None else "none"
    rows = make_rows([EncodedVideo("candidates", prompt_ids, candidates, contexts or [])], mode, max_row_tokens)
    sums: list[float] = []
    for i in range(0, len(rows), rows_per_batch):
        batch = collate(rows[i:i + rows_per_batch], pad_id=0, mode=mode)
        logp = target_logprobs(model, batch)
        per = torch.zeros(batch["num_comments"], dtype=torch.float64, device=logp.device)
        per.index_add_(0, batch["target_comment"].to(logp.device), logp.double())
        sums += per.tolist()
    return sums


def _cached_rows(candidates: list[list[int]], budget: int) -> list[list[int]]:
    """Greedy fill of candidate indices into rows of at most `budget` fed tokens (a candidate feeds len - 1)."""
    rows: list[list[int]] = []
    used = budget + 1
    for i, c in enumerate(candidates):
        n = len(c) - 1
        if n == 0:
            continue
        if used + n > budget:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


def _score_cached(model: Any, prompt_ids: list[int], candidates: list[list[int]], max_row_tokens: int,
                  rows_per_batch: int) -> list[float]:
    """Sum of log-probs per candidate, prompt prefilled once and its KV cache reused by every candidate row."""
    from transformers import DynamicCache

    decoder, head = decoder_and_head(model)
    emb = decoder.get_input_embeddings().weight
    dev, p = emb.device, len(prompt_ids)
    ckw = cache_kwarg(decoder)
    budget = max_row_tokens - p
    longest = max(len(c) for c in candidates)
    if longest - 1 > budget:
        raise VrpError(f"score_candidates: prompt ({p} tokens) + a candidate ({longest} tokens) exceed "
                       f"max_row_tokens={max_row_tokens}")
    check_shared_prefix(decoder)
    # Prefill: the prompt alone, causal mask built by transformers; the cache keeps every key (a config's sliding
    # layers would keep only their window, and the candidate rows' keys must line up with the masks' keys).
    cache = DynamicCache(config=decoder.config) if set(layer_types(decoder.config)) <= {"full_attention"} \
        else DynamicCache()
    out = decoder(input_ids=torch.tensor([prompt_ids], device=dev), position_ids=torch.arange(p, device=dev)[None],
                  use_cache=True, **{ckw: cache})
    first = torch.log_softmax(logits_at(decoder.config, head, out.last_hidden_state[0, -1:]), dim=-1)[0]  # (V,)
    sums = [float(first[c[0]]) for c in candidates]
    prompt_kv = [(layer.keys, layer.values) for layer in cache.layers]
    rows = _cached_rows(candidates, budget)
    for r0 in range(0, len(rows), rows_per_batch):
        chunk = rows[r0:r0 + rows_per_batch]
        b = len(chunk)
        s = max(sum(len(candidates[i]) - 1 for i in row) for row in chunk)
        input_ids = torch.zeros((b, s), dtype=torch.long)
        position_ids = torch.zeros((b, s), dtype=torch.long)
        segments = torch.full((b, p + s), -1, dtype=torch.long)      # virtual [prompt][row] sequence
        segments[:, :p] = 0
        tgt_pos: list[int] = []
        tgt_ids: list[int] = []
        tgt_cand: list[int] = []
        for bi, row in enumerate(chunk):
            off = 0
            for j, ci in enumerate(row):
                c = candidates[ci]
                n = len(c) - 1
                input_ids[bi, off:off + n] = torch.tensor(c[:-1])
                position_ids[bi, off:off + n] = torch.arange(p, p + n)
                segments[bi, p + off:p + off + n] = j + 1
                tgt_pos += [bi * s + off + k for k in range(n)]
                tgt_ids += c[1:]
                tgt_cand += [ci] * n
                off += n
        mask = shared_prefix_mask(segments)[:, :, p:, :].to(dev)       # (B, 1, S, P + S): queries are the row
        row_cache = DynamicCache(ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1))
                                                 for k, v in prompt_kv])
        keys = torch.cat([torch.arange(p).expand(b, p), position_ids], dim=1)  # the prompt's, then the row's
        out = decoder(input_ids=input_ids.to(dev), position_ids=position_ids.to(dev),
                      attention_mask=model_attention_mask(mask, decoder.config, emb.dtype, position_ids.to(dev),
                                                          keys.to(dev)), use_cache=True, **{ckw: row_cache})
        hidden = out.last_hidden_state.reshape(b * s, -1)
        logits = logits_at(decoder.config, head, hidden.index_select(0, torch.tensor(tgt_pos, device=dev)))
        logp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(tgt_ids, device=dev)[:, None])[:, 0]
        for ci, v in zip(tgt_cand, logp.double().tolist()):
            sums[ci] += v
    return sums


@torch.no_grad()
def score_candidates(model: Any, prompt_ids: list[int], candidates: list[list[int]], max_row_tokens: int = 4096,
                     rows_per_batch: int = 4, use_prompt_cache: bool = True) -> list[tuple[float, int]]:
    """Log-likelihood of each candidate completion given the prompt.

    prompt_ids: (prompt_len,) token ids. candidates: token-id lists (normally ending with EOS).
    max_row_tokens: longest sequence (prompt + packed candidate tokens) one row may hold, in tokens.
    rows_per_batch: rows per forward pass. use_prompt_cache: prefill the prompt once and reuse its KV cache
    (default) instead of repeating the prompt in each packed row (a model that vrp cannot shared-prefix mask is
    scored one candidate per row instead, `score_packed`).
    Returns, in candidate order, `(sum of natural-log token probabilities, number of candidate tokens)`.
    Runs under `torch.no_grad()`. Raises VrpError for an empty prompt or candidate, `rows_per_batch < 1`, or a
    candidate that does not fit with the prompt into `max_row_tokens`.
    """
    _check(prompt_ids, candidates, rows_per_batch)
    if not candidates:
        return []
    cached = use_prompt_cache and shared_prefix_problem(decoder_and_head(model)[0]) is None
    score = _score_cached if cached else score_packed  # a model vrp cannot mask: one candidate per row
    sums = score(model, list(prompt_ids), [list(c) for c in candidates], max_row_tokens, rows_per_batch)
    return [(s, len(c)) for s, c in zip(sums, candidates)]
