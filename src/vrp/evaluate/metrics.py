"""Pure metric functions for `vrp evaluate`: diversity, degeneration, genericness, retrieval and bootstrap statistics.

Knows: the definitions and their sources — distinct-n (Li et al., "A Diversity-Promoting Objective Function for Neural
Conversation Models", NAACL 2016), the percentile bootstrap (Efron, "Bootstrap methods: another look at the
jackknife", Ann. Statist. 1979; Efron & Tibshirani 1993), a word/emoji tokenizer for text metrics, repetition runs,
cosine-similarity retrieval, and the version of the metric definitions.
Does not know: models, tokenizers of language models, embeddings or files; the ranking statistics (Recall@k, MRR,
the tie rule, the random baseline) and NLL / PMI of scores, which training's learning curve shares and
`vrp.ranking` holds. Every function takes plain Python or numpy values and is deterministic (the bootstrap given its
seed).
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from vrp.ranking import tie_aware_stats

# Version of the metric definitions of `vrp evaluate` (in metrics.json and report.md's Definitions, as
# lm-evaluation-harness versions its tasks): raise it whenever a number's definition changes, so that reports made
# with different definitions are not compared. History: `vrp.evaluate.report.DEFINITIONS`.
METRICS_VERSION = 2

# A word (letters/digits, inner apostrophes), or one symbol character together with trailing variation selectors,
# skin-tone modifiers and zero-width joiners (so "❤️" is one token and "❤️❤️❤️" three equal tokens).
_TOKEN_RE = re.compile(r"\w+(?:['’]\w+)*|[^\w\s][\ufe0e\ufe0f\u200d\U0001F3FB-\U0001F3FF]*")
_ASCII_PUNCT = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def text_tokens(text: str) -> list[str]:
    """Split `text` into lower-cased word and symbol tokens for the text metrics (not a language-model tokenizer).

    Words are `\\w+` runs (with inner apostrophes), every other non-space character is its own token (emoji keep
    their variation selector). Example: "Great video!! ❤️❤️" -> ['great', 'video', '!', '!', '❤️', '❤️'].
    """
    return _TOKEN_RE.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(token_lists: Sequence[Sequence[str]], n: int) -> float | None:
    """distinct-n of a set of outputs (Li et al., NAACL 2016): distinct n-grams / total n-grams, pooled over outputs.

    token_lists: one token list per output. n >= 1. Returns a ratio in [0, 1], or None when there is no n-gram at
    all (every output shorter than n). Raises ValueError for n < 1.
    Example: [['a','b','a','b']] -> distinct-2 = |{ab, ba}| / 3 = 2/3.
    """
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    grams = [g for toks in token_lists for g in _ngrams(toks, n)]
    return len(set(grams)) / len(grams) if grams else None


def _is_punct(gram: Sequence[str]) -> bool:
    return all(t in _ASCII_PUNCT for t in gram)


def has_repetition_run(tokens: Sequence[str], min_repeats: int = 3, max_n: int = 32) -> bool:
    """True when some n-gram (1 <= n <= max_n) occurs `min_repeats` or more times in a row.

    "haha haha haha", "❤️❤️❤️" and a sentence said three times in a row count; n-grams made only of ASCII
    punctuation ("!!!", "...") do not, since real comments use them normally. tokens: from `text_tokens`.
    Cost O(len(tokens) * max_n * min_repeats).
    """
    L = len(tokens)
    for n in range(1, min(max_n, L // min_repeats) + 1):
        for i in range(L - n * min_repeats + 1):
            gram = tokens[i:i + n]
            if all(tokens[i + k * n:i + (k + 1) * n] == gram for k in range(1, min_repeats)) and not _is_punct(gram):
                return True
    return False


def repetition_rate(token_lists: Sequence[Sequence[str]], min_repeats: int = 3) -> float | None:
    """Share of outputs (in [0, 1]) that contain a repetition run (see `has_repetition_run`); None for no outputs."""
    if not token_lists:
        return None
    return sum(has_repetition_run(t, min_repeats) for t in token_lists) / len(token_lists)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of `x` (N, D) scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarities (N, M) between the rows of `a` (N, D) and `b` (M, D)."""
    return l2_normalize(a) @ l2_normalize(b).T


def generic_rate(output_emb: np.ndarray, generic_emb: np.ndarray, threshold: float = 0.9) -> float | None:
    """Share of outputs whose cosine similarity to at least one generic reference comment is >= `threshold`.

    output_emb: (N, D) sentence embeddings of the outputs; generic_emb: (G, D) of the reference comments (e.g. the
    50 most frequent training comments). Returns a share in [0, 1], or None when N == 0 or G == 0.
    """
    output_emb, generic_emb = np.asarray(output_emb), np.asarray(generic_emb)
    if output_emb.size == 0 or generic_emb.size == 0:
        return None
    return float((cosine_matrix(output_emb, generic_emb).max(axis=1) >= threshold).mean())


def retrieval_at_1(query_emb: np.ndarray, doc_emb: np.ndarray, gold: Sequence[int]) -> dict[str, float | int]:
    """On-topic retrieval: does each query (a comment) retrieve its own document (a video) by cosine similarity?

    query_emb: (Q, D); doc_emb: (N, D); gold[q]: index in 0..N-1 of query q's document. A query scores 1 when its
    document is the unique most similar one, 1/(t+1) when it ties with t others (expected value of a random
    tie-break). Returns `{recall_at_1, chance (= 1/N), mrr, queries, documents}`. Raises ValueError on shape mismatch.
    """
    query_emb, doc_emb = np.asarray(query_emb), np.asarray(doc_emb)
    if len(gold) != len(query_emb):
        raise ValueError(f"retrieval_at_1: {len(query_emb)} queries but {len(gold)} gold indices")
    n = len(doc_emb)
    sims = cosine_matrix(query_emb, doc_emb) if len(query_emb) else np.zeros((0, n))
    hits, rrs = [], []
    for q, g in enumerate(gold):
        st = tie_aware_stats(float(sims[q, g]), np.delete(sims[q], g), ks=(1,))
        hits.append(st.recall[1])
        rrs.append(st.rr)
    return {"recall_at_1": float(np.mean(hits)) if hits else float("nan"), "chance": 1.0 / n if n else float("nan"),
            "mrr": float(np.mean(rrs)) if rrs else float("nan"), "queries": len(gold), "documents": n}


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 10000,
                 seed: int = 0) -> tuple[float, float, float]:
    """Mean of `values` and its percentile-bootstrap confidence interval (Efron 1979).

    Resamples the values with replacement `n_resamples` times (numpy PCG64 generator seeded with `seed`, so the
    result is deterministic) and returns `(mean, lower, upper)` at the given two-sided `confidence`. For a single
    value the interval is that value. Raises ValueError for no values or confidence outside (0, 1).
    The resampling unit is whatever `values` holds (vrp evaluate passes one value per video, a cluster bootstrap
    over videos, since comments of one video are not independent).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci: no values")
    if not 0 < confidence < 1:
        raise ValueError(f"bootstrap_ci: confidence must be in (0, 1), got {confidence}")
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return mean, float(lo), float(hi)


def length_stats(lengths: Sequence[int]) -> dict[str, float | None]:
    """Mean and median of lengths (e.g. tokens per comment); None values when empty."""
    if not lengths:
        return {"mean": None, "median": None}
    return {"mean": float(np.mean(lengths)), "median": float(np.median(lengths))}
