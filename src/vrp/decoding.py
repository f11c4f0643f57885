"""Decoding presets and comment generation with one prefill for all K comments of a prompt.

Knows: the named presets (the original project's greedy / beam / beam-temperature / beam-sample, and our default
`nucleus`), how to generate K comments for one prompt with transformers' `generate` after a single prefill of the
prompt (the prompt's KV cache is computed once and repeated across the K samples or beams), and per-comment
model log-probabilities. Does not know: where prompts come from or where results go (see `cli.generate`).

The original project (2023) passed temperature/top-k/top-p together with beam search but without `do_sample`,
which makes transformers ignore them; `beam-temperature` reproduces exactly that (greedy beam search), and
`beam-sample` is beam search with `do_sample=True` (Hugging Face "beam-search multinomial sampling").
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from vrp.errors import VrpError

MAX_NEW_TOKENS = 150  # as the original project


@dataclass(frozen=True)
class Preset:
    """A decoding setup: keyword arguments for `transformers.GenerationConfig`."""

    name: str
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def deterministic(self) -> bool:
        """True when repeated calls give the same output (no sampling)."""
        return not self.kwargs.get("do_sample", False)


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("greedy", "greedy decoding (one comment)", {"do_sample": False, "num_beams": 1}),
    Preset("beam", "beam search, 5 beams", {"do_sample": False, "num_beams": 5}),
    Preset("beam-temperature", "5 beams with temperature 0.7, top-k 50, top-p 0.9 passed as the original did "
           "(without do_sample, so transformers ignores them: deterministic beam search)",
           {"do_sample": False, "num_beams": 5, "temperature": 0.7, "top_k": 50, "top_p": 0.9}),
    Preset("beam-sample", "beam search with do_sample (beam-search multinomial sampling), 5 beams",
           {"do_sample": True, "num_beams": 5}),
    Preset("nucleus", "nucleus (top-p 0.9) sampling at temperature 0.8 with a repetition guard "
           "(repetition penalty 1.15, no repeated 4-gram); the default",
           {"do_sample": True, "num_beams": 1, "top_p": 0.9, "top_k": 0, "temperature": 0.8,
            "repetition_penalty": 1.15, "no_repeat_ngram_size": 4}),
]}
DEFAULT_PRESET = "nucleus"


def get_preset(name: str) -> Preset:
    """Look up a preset by name. Raises VrpError listing the valid names."""
    if name not in PRESETS:
        raise VrpError(f"--preset: unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass
class GeneratedComment:
    """One generated comment. tokens: new tokens including the end-of-turn token when it was produced;
    logprob: sum of the model's log-probabilities (natural log, before any sampling warpers) of those tokens;
    finished: True when the model produced its end-of-turn token within the budget."""

    text: str
    tokens: int
    logprob: float
    finished: bool


def _generation_config(model: Any, tokenizer: Any, preset: Preset, num_comments: int, max_new_tokens: int) -> Any:
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
        gc.eos_token_id = tokenizer.eos_token_id
        gc.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        gc.return_dict_in_generate = True
        gc.output_logits = True
    if gc.num_beams > 1 and num_comments > gc.num_beams:
        gc.num_beams = num_comments  # beam search returns at most num_beams distinct sequences
    return gc


def generate_comments(model: Any, tokenizer: Any, prompt_ids: list[int], preset: str | Preset = DEFAULT_PRESET,
                      num_comments: int = 1, max_new_tokens: int = MAX_NEW_TOKENS, seed: int | None = None,
                      share_prefill: bool = True) -> list[GeneratedComment]:
    """Generate `num_comments` comments for one prompt.

    prompt_ids: (prompt_len,) token ids ending with the assistant header (see `prompts.build_prompt_ids`).
    With `share_prefill`, the prompt except its last token is run once (prefill, batch 1), its KV cache is repeated
    to the decoding batch (K samples, or the beams), and `generate` continues from it; the result equals a plain
    `generate` call. Raises VrpError for `greedy` with num_comments > 1 (it can only give one comment), or for
    num_comments / max_new_tokens < 1.
    """
    import torch
    from transformers import DynamicCache

    p = get_preset(preset) if isinstance(preset, str) else preset
    if num_comments < 1 or max_new_tokens < 1:
        raise VrpError("num_comments and max_new_tokens must be at least 1")
    if p.name == "greedy" and num_comments > 1:
        raise VrpError("preset greedy gives exactly one comment; use beam, nucleus or beam-sample for several")
    if seed is not None:
        torch.manual_seed(seed)
    gc = _generation_config(model, tokenizer, p, num_comments, max_new_tokens)
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    kwargs: dict[str, Any] = {}
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
    eos = tokenizer.eos_token_id
    results = []
    for row in range(new.shape[0]):
        toks = new[row].tolist()
        finished = eos in toks
        n = toks.index(eos) + 1 if finished else len(toks)
        lp = scores[row, :n].float()
        text = tokenizer.decode(toks[:n], skip_special_tokens=True).strip()
        results.append(GeneratedComment(text=text, tokens=n, logprob=float(lp[torch.isfinite(lp)].sum()),
                                        finished=finished))
    return results


def timed_generate(model: Any, tokenizer: Any, prompt_ids: list[int], preset: str, num_comments: int = 1,
                   max_new_tokens: int = MAX_NEW_TOKENS, seed: int | None = None) -> tuple[list[GeneratedComment], float]:
    """`generate_comments` plus the wall time in seconds."""
    t0 = time.perf_counter()
    res = generate_comments(model, tokenizer, prompt_ids, preset, num_comments, max_new_tokens, seed)
    return res, time.perf_counter() - t0
