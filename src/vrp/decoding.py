"""Decoding presets and comment generation with one prefill for all K comments of a prompt.

Knows: the named presets (the original project's greedy / beam / beam-temperature / beam-sample, and our default
`nucleus`), how to generate K comments for one prompt with transformers' `generate` after a single prefill of the
prompt (the prompt's KV cache is computed once and repeated across the K samples or beams), and per-comment
model log-probabilities. Generation stops at any of `prompts.stop_token_ids` (the chat template's end-of-turn token
or, in the plain prompt format, the EOS; all of the model's `generation_config.eos_token_id` and the tokenizer's
EOS), so a model whose EOS is not the token that ends its turns (Llama-3 `<|eot_id|>`, Phi-3 `<|end|>`, Gemma `<end_of_turn>`) stops after its reply.
Does not know: where prompts come from or where results go (see `cli.generate`).

The original project (2023) passed temperature/top-k/top-p together with beam search but without `do_sample`,
which makes transformers ignore them; `beam-temperature` reproduces exactly that (greedy beam search), and
`beam-sample` is beam search with `do_sample=True` (Hugging Face "beam-search multinomial sampling"). These four
presets are kept as they were, to reproduce 2023 behaviour.

Our presets `nucleus` and `cad` guard against repetition with `processors.GeneratedTokensGuard`: the penalty and the
n-gram ban look at the generated tokens only, never at the prompt, and never touch the stop tokens (transformers'
`repetition_penalty` / `no_repeat_ngram_size` also count the prompt, whose end-of-turn tokens then make the model
less likely to end its comment). `cad` adds context-aware decoding (Shi et al. 2023) against the no-video prompt
(`prompts.no_video_prompt_ids`, given by the caller as `no_video_ids`), see `processors.ContextAwareLogitsProcessor`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from vrp.errors import VrpError
from vrp.presets import DEFAULT_PRESET, MAX_NEW_TOKENS, PRESETS, Preset, get_preset
from vrp.processors import ContextAwareLogitsProcessor, GeneratedTokensGuard
from vrp.prompts import stop_token_ids


@dataclass
class GeneratedComment:
    """One generated comment. text: the new tokens decoded without the stop token and without special tokens, and
    when unfinished without a trailing partial character (the budget can end inside a multi-byte character);
    tokens: new tokens including the stop token when it was produced; logprob: sum of the model's log-probabilities
    (natural log, before any sampling warpers) of those tokens; finished: True when the comment ended with one of
    `prompts.stop_token_ids` within the budget; token_ids: those new tokens (stop token included when produced);
    pmi: the reranking score when the comment was chosen by `rerank.rerank_comments`, else None."""

    text: str
    tokens: int
    logprob: float
    finished: bool
    token_ids: list[int] = field(default_factory=list, repr=False)
    pmi: float | None = None


def _generation_config(model: Any, tokenizer: Any, preset: Preset, num_comments: int, max_new_tokens: int,
                       stops: list[int]) -> Any:
    import copy
    import warnings

    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    gc = copy.deepcopy(base) if base is not None else GenerationConfig()
    for k in ("temperature", "top_k", "top_p", "repetition_penalty", "no_repeat_ngram_size"):
        setattr(gc, k, GenerationConfig().__getattribute__(k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # beam-temperature deliberately passes sampling knobs without do_sample
        gc.update(**preset.kwargs)
        gc.max_new_tokens = max_new_tokens
        gc.num_return_sequences = num_comments
        gc.eos_token_id = stops
        gc.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
        gc.return_dict_in_generate = True
        gc.output_logits = True
    if gc.num_beams > 1 and num_comments > gc.num_beams:
        gc.num_beams = num_comments  # beam search returns at most num_beams distinct sequences
    return gc


def logits_processors(model: Any, preset: Preset, prompt_len: int, stops: list[int],
                      no_video_ids: list[int] | None = None) -> list[Any]:
    """The logits processors `generate` runs for `preset` before its temperature / top-k / top-p warpers, in order:
    context-aware decoding (`cad_alpha`, against `no_video_ids`), then the repetition guard over the generated tokens
    (`repetition_penalty`, `no_repeat_ngram_size`; `stops` exempt). prompt_len: tokens of the (video) prompt.
    Raises VrpError when the preset needs `no_video_ids` and none are given."""

    out: list[Any] = []
    if preset.cad_alpha is not None:
        if not no_video_ids:
            raise VrpError(f"preset {preset.name} needs the no-video prompt (prompts.no_video_prompt_ids)")
        out.append(ContextAwareLogitsProcessor(model, no_video_ids, prompt_len, preset.cad_alpha))
    if preset.repetition_penalty != 1.0 or preset.no_repeat_ngram_size > 0:
        out.append(GeneratedTokensGuard(prompt_len, preset.repetition_penalty, preset.no_repeat_ngram_size, stops))
    return out


def generate_comments(model: Any, tokenizer: Any, prompt_ids: list[int], preset: str | Preset = DEFAULT_PRESET,
                      num_comments: int = 1, max_new_tokens: int = MAX_NEW_TOKENS, seed: int | None = None,
                      share_prefill: bool = True, no_video_ids: list[int] | None = None,
                      prompt_format: str = "auto") -> list[GeneratedComment]:
    """Generate `num_comments` comments for one prompt.

    prompt_ids: (prompt_len,) token ids ending with the assistant header (see `prompts.build_prompt_ids`; a caller
    may append marker tokens). no_video_ids: the no-video prompt (`prompts.no_video_prompt_ids`, with the same
    markers), needed by presets with `cad_alpha` (`cad`) and ignored by the others.
    With `share_prefill`, the prompt except its last token is run once (prefill, batch 1), its KV cache is repeated
    to the decoding batch (K samples, or the beams), and `generate` continues from it; the result equals a plain
    `generate` call. Every comment stops at the first of `prompts.stop_token_ids(tokenizer,
    model.generation_config, prompt_format)` (the chat template's end-of-turn token, or the EOS in the plain format,
    all of the model's `eos_token_id`s, the tokenizer's EOS); `prompt_format` is the one the prompt was rendered in
    (a run's `PromptConfig.prompt_format`; `auto` resolves as `vrp.prompt_format.resolve_prompt_format`).
    Processors: `logits_processors` (the guard of `nucleus` / `cad` sees only the new tokens).
    Raises VrpError for a `single_output` preset (`greedy`) with num_comments > 1, for num_comments /
    max_new_tokens < 1, for `cad` without `no_video_ids`, or naming the model when its chat template is unusable
    (`prompts.chat_format`).
    """
    import torch
    from transformers import DynamicCache

    p = get_preset(preset) if isinstance(preset, str) else preset
    if num_comments < 1 or max_new_tokens < 1:
        raise VrpError("num_comments and max_new_tokens must be at least 1")
    if p.single_output and num_comments > 1:
        raise VrpError(f"preset {p.name} gives exactly one comment; use a preset that samples or searches several "
                       f"for more ({', '.join(n for n, q in PRESETS.items() if not q.single_output)})")
    if seed is not None:
        torch.manual_seed(seed)
    stops = stop_token_ids(tokenizer, getattr(model, "generation_config", None), prompt_format)
    gc = _generation_config(model, tokenizer, p, num_comments, max_new_tokens, stops)
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    kwargs: dict[str, Any] = {}
    procs = logits_processors(model, p, len(prompt_ids), stops, no_video_ids)
    if procs:
        from transformers import LogitsProcessorList

        kwargs["logits_processor"] = LogitsProcessorList(procs)
    if share_prefill and len(prompt_ids) > 1:
        cache = DynamicCache(config=getattr(model, "config", None))
        with torch.no_grad():
            model(input_ids=ids[:, :-1], cache=cache, use_cache=True)
        cache.batch_repeat_interleave(gc.num_beams if gc.num_beams > 1 else num_comments)
        kwargs["cache"] = cache
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gc, **kwargs)
    new = out.sequences[:, ids.shape[1]:]
    beam_idx = getattr(out, "beam_indices", None)
    scores = model.compute_transition_scores(out.sequences, out.logits, beam_indices=beam_idx,
                                             normalize_logits=True)
    stop_set = set(stops)
    results = []
    for row in range(new.shape[0]):
        toks = new[row].tolist()
        end = next((i for i, t in enumerate(toks) if t in stop_set), None)
        finished = end is not None
        n = end + 1 if end is not None else len(toks)
        lp = scores[row, :n].float()
        text = tokenizer.decode(toks[:end] if finished else toks, skip_special_tokens=True)
        if not finished:
            text = text.rstrip("\ufffd")  # bytes of a character the budget cut off decode to U+FFFD
        text = text.strip()
        results.append(GeneratedComment(text=text, tokens=n, logprob=float(lp[torch.isfinite(lp)].sum()),
                                        finished=finished, token_ids=toks[:n]))
    return results


def timed_generate(model: Any, tokenizer: Any, prompt_ids: list[int], preset: str, num_comments: int = 1,
                   max_new_tokens: int = MAX_NEW_TOKENS, seed: int | None = None) -> tuple[list[GeneratedComment], float]:
    """`generate_comments` plus the wall time in seconds."""
    t0 = time.perf_counter()
    res = generate_comments(model, tokenizer, prompt_ids, preset, num_comments, max_new_tokens, seed)
    return res, time.perf_counter() - t0
