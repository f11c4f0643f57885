"""Scores of candidate comments and the ranks they give: NLL per token, PMI, tie-aware rank statistics.

Knows, once for training's learning curve (`vrp.train.probes`), reranking (`vrp.rerank`) and `vrp evaluate`
(`vrp.evaluate.run`, `vrp.evaluate.pmi`):
- a candidate's score as `(sum of natural-log token probabilities in nats, tokens)`, what `vrp.scoring`
  returns; its mean log-probability per token and the token-weighted NLL per token of several (`mean_nll`);
- the per-token PMI of a candidate with the video (`pmi_score`, below);
- the rank of a gold item among distractors, tie-aware (`tie_aware_stats`, the one tie rule, below), the analytic
  random baseline, and the macro average over videos (`summarize_ranks`). Recall@k / MRR / mean rank of a gold item
  among candidates ranked by model likelihood is the LiveBot protocol (Ma et al., "LiveBot: Generating Live Video
  Comments Based on Visual and Textual Contexts", AAAI 2019), here with an analytic random baseline.
Does not know: models, tokenizers, how candidates are drawn or scored, report layout. Every function takes plain
Python or numpy values and is deterministic.

The tie rule (the one `vrp evaluate` documents and versions, `vrp.evaluate.report.DEFINITIONS`): two scores tie
when they are equal, and a tie counts as a uniformly random tie-break, in exact expectation. No tolerance: every
caller scores each distinct candidate once per prompt (`vrp.evaluate.run.CachedScorer`, the probes' `_score`,
reranking's distinct samples), so the same candidate always has the same score.

PMI (domain-conditional PMI, Holtzman et al. 2021, "Surface Form Competition: Why the Highest Probability Answer
Isn't Always Right", with a weight lambda as in the anti-LM form of maximum mutual information, Li et al. 2016, "A
Diversity-Promoting Objective Function for Neural Conversation Models"):
`mean log p(c | video prompt) - lambda * mean log p(c | no-video prompt)`, means per candidate token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

Score = tuple[float, int]  # (sum of natural-log token probabilities in nats, number of tokens)


def mean_logprob(score: Score) -> float:
    """Mean log-probability per token (nats) of a `(sum log-prob, tokens)` score. Example: (-6, 3) -> -2.0.
    Raises ValueError for fewer than one token."""
    total, tokens = score
    if tokens < 1:
        raise ValueError(f"mean_logprob: a score needs at least one token, got {tokens}")
    return total / tokens


def mean_nll(scores: Sequence[Score]) -> float:
    """Token-weighted negative log-likelihood per token (nats) of `(sum log-prob, tokens)` scores: minus the sum of
    the sums over the sum of the tokens, so a long comment weighs more than a short one. Example: (-6, 3) and
    (-1, 1) -> 7 / 4 = 1.75. Raises ValueError when the scores hold no token."""
    tokens = sum(n for _, n in scores)
    if tokens < 1:
        raise ValueError("mean_nll: no tokens")
    return -math.fsum(s for s, _ in scores) / tokens


def pmi_score(own: Score, no_video: Score, lam: float) -> float:
    """Per-token PMI of one candidate (module doc): `mean_logprob(own) - lam * mean_logprob(no_video)`.

    own / no_video: the candidate's `(sum log-prob, tokens)` under the video prompt and the no-video prompt
    (`vrp.prompts.no_video_prompt_ids`). lam: the weight of the no-video term (0 = plain likelihood). Example: own
    (-6, 3), no video (-9, 3), lam 1 -> -2 + 3 = 1.0. Raises ValueError as `mean_logprob` does."""
    return mean_logprob(own) - lam * mean_logprob(no_video)


def pmi_scores(own: Sequence[Score], no_video: Sequence[Score], lam: float) -> list[float]:
    """`pmi_score` of each candidate; own[i] and no_video[i] are the same candidate. Raises ValueError when the two
    lists differ in length."""
    if len(own) != len(no_video):
        raise ValueError(f"pmi_scores: {len(own)} own scores but {len(no_video)} no-video scores")
    return [pmi_score(o, u, lam) for o, u in zip(own, no_video)]


@dataclass
class RankStat:
    """Ranking outcome of one gold item among `num_candidates` (= distractors + 1), expected over random tie-breaks.

    mean_rank: expected rank (1 = best). rr: expected reciprocal rank. recall: k -> probability that rank <= k.
    """

    mean_rank: float
    rr: float
    recall: dict[int, float]
    num_candidates: int


def tie_aware_stats(gold_score: float, distractor_scores: Sequence[float] | np.ndarray,
                    ks: Sequence[int] = (1, 5, 10)) -> RankStat:
    """Rank of a gold item among distractors, higher score = better; ties broken uniformly at random (in exact
    expectation).

    With g distractors scoring strictly higher and t equal to it, the rank is uniform on {g+1, ..., g+t+1}: mean rank
    g + 1 + t/2, reciprocal rank the mean of 1/r over that set, Recall@k the share of that set that is <= k. A model
    that gives every candidate the same score therefore gets exactly the random baseline (not the best or worst rank).
    Example: gold 0.5 among [0.9, 0.5, 0.5, 0.1] -> rank uniform on {2, 3, 4}, mean rank 3.
    """
    d = np.asarray(distractor_scores, dtype=np.float64)
    g = int((d > gold_score).sum())
    t = int((d == gold_score).sum())
    ranks = np.arange(g + 1, g + t + 2, dtype=np.float64)
    return RankStat(mean_rank=float(ranks.mean()), rr=float((1.0 / ranks).mean()),
                    recall={k: float((ranks <= k).mean()) for k in ks}, num_candidates=len(d) + 1)


def distractor_ranks(real_scores: Sequence[float], distractor_scores: Sequence[float],
                     ks: Sequence[int] = (1, 5, 10)) -> list[RankStat]:
    """`tie_aware_stats` of each of a video's real comments among its distractors only (the other real comments are
    left out); none for a video without distractors (a rank among no competitors is 1 whatever the model does, so
    such a video is left out of the ranking, not scored)."""
    if not len(distractor_scores):
        return []
    return [tie_aware_stats(s, distractor_scores, ks) for s in real_scores]


def random_rank_stat(num_candidates: int, ks: Sequence[int] = (1, 5, 10)) -> RankStat:
    """Analytic random-ranking baseline for one gold item among `num_candidates` (gold + distractors).

    A uniformly random order puts the gold item at each rank 1..n with probability 1/n, so mean rank = (n+1)/2,
    MRR = H_n / n (H_n the n-th harmonic number) and Recall@k = min(k, n) / n. Raises ValueError for n < 1.
    """
    n = num_candidates
    if n < 1:
        raise ValueError(f"random_rank_stat: need at least one candidate, got {n}")
    harmonic = math.fsum(1.0 / r for r in range(1, n + 1))
    return RankStat(mean_rank=(n + 1) / 2, rr=harmonic / n, recall={k: min(k, n) / n for k in ks}, num_candidates=n)


def summarize_ranks(groups: Sequence[Sequence[RankStat]],
                    ks: Sequence[int] = (1, 5, 10)) -> dict[str, float | int | None]:
    """Macro-average of rank statistics: first over the gold items of a group (a video), then over groups.

    groups: one list of `RankStat` per video (empty lists are skipped). Returns `{mean_rank, mrr, recall_at_<k>...,
    videos, items, mean_candidates, min_candidates}` (only `videos` and `items` when no group has an item); every
    video weighs the same whatever its number of real comments. Recall@k is None when some item has k or fewer
    candidates: it would be 1 there whatever the scores (a rank among n <= k candidates is always <= k), so the
    average would not measure the ranking.
    """
    groups = [g for g in groups if g]
    out: dict[str, float | int | None] = {"videos": len(groups), "items": sum(len(g) for g in groups)}
    if not groups:
        return out

    def avg(f: Callable[[RankStat], float]) -> float:
        return float(np.mean([np.mean([f(s) for s in g]) for g in groups]))

    fewest = min(s.num_candidates for g in groups for s in g)
    out["mean_rank"] = avg(lambda s: s.mean_rank)
    out["mrr"] = avg(lambda s: s.rr)
    for k in ks:
        out[f"recall_at_{k}"] = avg(lambda s, k=k: s.recall[k]) if fewest > k else None
    out["mean_candidates"] = avg(lambda s: s.num_candidates)
    out["min_candidates"] = fewest
    return out


def mean_rank(ranks: Sequence[float]) -> float:
    """Mean of 1-based ranks."""
    return float(np.mean(ranks))


def mrr(ranks: Sequence[float]) -> float:
    """Mean reciprocal rank of 1-based ranks: mean(1 / rank). Example: ranks [1, 2, 4] -> (1 + 0.5 + 0.25) / 3."""
    return float(np.mean([1.0 / r for r in ranks]))


def recall_at_k(ranks: Sequence[float], k: int) -> float:
    """Share of 1-based ranks that are <= k."""
    return float(np.mean([r <= k for r in ranks]))
