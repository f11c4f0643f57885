"""Maximum mutual information reranking of sampled comments, and the one entry point that turns a prompt into comments.

Knows: how to sample N comments for one prompt with one prefill (`decoding.generate_comments`), score each by
pointwise mutual information with the video, drop near-duplicates and keep the best K (`rerank_comments`), and which
of plain generation or reranking a request asks for (`comments_for_prompt`, used by `vrp generate`, `vrp evaluate`
and `vrp serve`).
Does not know: where prompts or the embedder come from (the callers build the video prompt and the no-video prompt,
`prompts.no_video_prompt_ids`, with any marker tokens they append; `evaluate.embed` provides MiniLM).

Score (maximum mutual information, Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation
Models", the anti-LM form with a weight; per token as in domain-conditional PMI, Holtzman et al. 2021, "Surface Form
Competition"; `vrp.ranking.pmi_score`, the one PMI of vrp): `pmi = mean log p(c | video prompt) - lambda * mean log
p(c | no-video prompt)`, means over the comment's generated tokens (its stop token included when it has one). The
first term is the model's log-probability that generation already computed from the raw logits (no second prefill of
the long video prompt); the second is computed with the shared-prefix scorer (`scoring.score_candidates`, the short
no-video prompt prefilled once for all N).
Order: non-empty before empty, finished (ended with a stop token) before cut-off comments, then by pmi, then by
sampling order. Near-duplicates: going down that order, a comment whose embedding has cosine >= `dup_threshold`
(0.9) with one already kept is dropped (so the better-scored one stays). Fewer than K remain when the N samples hold
fewer than K distinct comments.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from vrp.decoding import GeneratedComment, generate_comments
from vrp.embeddings import load_embedder
from vrp.errors import ConfigError
from vrp.presets import DEFAULT_PRESET, DEFAULT_RERANK_LAMBDA, MAX_NEW_TOKENS, Preset, check_rerank, get_preset
from vrp.ranking import pmi_score
from vrp.scoring import score_candidates

DUP_THRESHOLD = 0.9


def drop_near_duplicates(emb: np.ndarray, threshold: float = DUP_THRESHOLD) -> list[int]:
    """Indices of the rows of `emb` (N, D) kept when going down the rows in order and dropping a row whose cosine
    similarity with an already kept row is >= `threshold`. Example: rows [a, 0.99 a, b] -> [0, 2]."""
    e = np.asarray(emb, dtype=np.float64).reshape(len(emb), -1)
    e = e / np.where((n := np.linalg.norm(e, axis=1, keepdims=True)) == 0, 1.0, n)
    kept: list[int] = []
    for i in range(len(e)):
        if not kept or float((e[kept] @ e[i]).max()) < threshold:
            kept.append(i)
    return kept


def rerank_comments(model: Any, tokenizer: Any, prompt_ids: list[int], no_video_ids: list[int],
                    preset: str | Preset = DEFAULT_PRESET, num_comments: int = 1, pool: int = 20,
                    max_new_tokens: int = MAX_NEW_TOKENS, seed: int | None = None,
                    lam: float = DEFAULT_RERANK_LAMBDA, embedder: Any = None,
                    dup_threshold: float = DUP_THRESHOLD, prompt_format: str = "auto") -> list[GeneratedComment]:
    """Sample `pool` comments for one prompt (one prefill), score them by PMI, drop near-duplicates and return at
    most `num_comments`, best first (see the module docstring), each with its `pmi` set.

    prompt_ids / no_video_ids: the video prompt and the no-video prompt (token ids, same markers appended).
    embedder: `encode(texts) -> (N, D)` (default: the bundled MiniLM, `evaluate.embed.load_embedder`).
    prompt_format: the format both prompts were rendered in (its stop tokens end the samples, `generate_comments`).
    Raises ConfigError('rerank') when `pool < num_comments` or the preset gives a single comment (`single_output`), and
    whatever `generate_comments` raises.
    """

    p = get_preset(preset) if isinstance(preset, str) else preset
    check_rerank(max(pool, 1), num_comments, [p])
    comments = generate_comments(model, tokenizer, prompt_ids, p, pool, max_new_tokens, seed,
                                 no_video_ids=no_video_ids, prompt_format=prompt_format)
    if embedder is None:
        embedder = load_embedder()
    unique = list(dict.fromkeys(tuple(c.token_ids) for c in comments))
    longest = max(len(u) for u in unique)
    scored = score_candidates(model, list(no_video_ids), [list(u) for u in unique],
                              max_row_tokens=len(no_video_ids) + max(longest, 512))
    no_video = dict(zip(unique, scored))
    for c in comments:
        c.pmi = pmi_score((c.logprob, len(c.token_ids)), no_video[tuple(c.token_ids)], lam)
    order = sorted(range(len(comments)),
                   key=lambda i: (not comments[i].text, not comments[i].finished, -float(comments[i].pmi or 0.0), i))
    ranked = [comments[i] for i in order]
    keep = drop_near_duplicates(embedder.encode([c.text for c in ranked]), dup_threshold)
    return [ranked[i] for i in keep][:num_comments]


def comments_for_prompt(model: Any, tokenizer: Any, prompt_ids: list[int], preset: str | Preset = DEFAULT_PRESET,
                        num_comments: int = 1, max_new_tokens: int = MAX_NEW_TOKENS, seed: int | None = None,
                        no_video_ids: Sequence[int] | None = None, rerank: int = 0,
                        rerank_lambda: float = DEFAULT_RERANK_LAMBDA, embedder: Any = None,
                        prompt_format: str = "auto") -> list[GeneratedComment]:
    """Comments for one prompt: `rerank_comments` from `rerank` samples when `rerank > 0`, else
    `decoding.generate_comments`. no_video_ids: needed by `cad` and by reranking. prompt_format: the format the
    prompts were rendered in (a run's `PromptConfig.prompt_format`: it picks the stop tokens). Raises as those do."""
    nv = list(no_video_ids) if no_video_ids is not None else None
    if rerank > 0:
        if not nv:
            raise ConfigError("rerank", "needs the no-video prompt (prompts.no_video_prompt_ids)")
        return rerank_comments(model, tokenizer, prompt_ids, nv, preset, num_comments, rerank, max_new_tokens, seed,
                               rerank_lambda, embedder, prompt_format=prompt_format)
    return generate_comments(model, tokenizer, prompt_ids, preset, num_comments, max_new_tokens, seed,
                             no_video_ids=nv, prompt_format=prompt_format)
