"""PMI ranking of candidates and an honest choice of its weight lambda: 2-fold cross-fitting over videos.

Knows: ranks of the real comments under the per-token PMI score with a weight lambda (`vrp.ranking.pmi_score`:
`mean log p(c | video prompt) - lambda * mean log p(c | no-video prompt)`, means per candidate token, its end-of-turn
token included), and the choice of lambda on held-out videos without looking at the videos it is reported on.
Does not know: the PMI formula and the rank statistics (`vrp.ranking`, shared with training's learning curve and
reranking), models or how the log-probabilities were computed (`vrp.evaluate.run` scores them with
`vrp.scoring.score_candidates`), report layout (`vrp.evaluate.report`).

Cross-fitting (as in double machine learning, Chernozhukov et al. 2018, with 2 folds): the videos are split in two
halves by a seeded permutation; lambda is chosen on half A (the grid value with the highest MRR; ties go to the
smaller lambda, i.e. closer to plain likelihood) and the ranks of half B are computed with it, and vice versa. The
reported PMI ranking is the union of those out-of-fold ranks, so no video's rank used a lambda chosen on itself.
"""
from __future__ import annotations

import random
from typing import Any, Sequence

from vrp.ranking import RankStat, distractor_ranks, pmi_scores, summarize_ranks

LAMBDA_GRID = tuple(round(0.1 * i, 1) for i in range(16))  # 0.0, 0.1, ..., 1.5
KS = (1, 5, 10)


def pmi_ranks(row: dict[str, Any], lam: float, ks: Sequence[int] = KS) -> list[RankStat]:
    """Rank statistics of a video's real comments among its distractors under PMI with weight `lam`.

    row: `{own_all, no_video_all: [(sum, n)] for real comments then distractors, n_real}`. Each real comment is
    ranked against the distractors only (`vrp.ranking.distractor_ranks`), as the likelihood ranking is; a video
    without distractors has no ranks. Raises ValueError when `own_all` and `no_video_all` differ in length."""
    s = pmi_scores(row["own_all"], row["no_video_all"], lam)
    k = row["n_real"]
    return distractor_ranks(s[:k], s[k:], ks)


def grid_mrr(rows: Sequence[dict[str, Any]], grid: Sequence[float] = LAMBDA_GRID) -> dict[float, float]:
    """MRR (macro over videos, `vrp.ranking.summarize_ranks`) of the PMI ranking of `rows` for each lambda of `grid`."""
    return {lam: float(summarize_ranks([pmi_ranks(r, lam) for r in rows]).get("mrr", float("nan")))
            for lam in grid}


def select_lambda(rows: Sequence[dict[str, Any]], grid: Sequence[float] = LAMBDA_GRID) -> float:
    """The lambda of `grid` with the highest MRR on `rows` (the first, i.e. smallest in a sorted grid, on ties)."""
    curve = grid_mrr(rows, grid)
    best = max(curve.values())
    return next(lam for lam in grid if curve[lam] == best)


def cross_fit(rows: Sequence[dict[str, Any]], grid: Sequence[float] = LAMBDA_GRID, seed: int = 0) -> dict[str, Any]:
    """2-fold cross-fitted PMI ranking (see the module docstring). rows: one per video (>= 2).

    Returns `{ranks: [list[RankStat] per row, in row order], lambdas: [lambda chosen on fold 0, on fold 1],
    folds: [[row indices of fold 0], [of fold 1]], grid_mrr_all: {lambda: MRR on all rows} (for information only:
    choosing from it would not be honest)}`. Raises ValueError for fewer than 2 rows.
    """
    if len(rows) < 2:
        raise ValueError(f"cross_fit: need at least 2 videos, got {len(rows)}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    half = len(order) // 2
    folds = [sorted(order[:half]), sorted(order[half:])]
    ranks: list[list[RankStat]] = [[] for _ in rows]
    lambdas = []
    for f in (0, 1):
        lam = select_lambda([rows[i] for i in folds[f]], grid)
        lambdas.append(lam)
        for i in folds[1 - f]:
            ranks[i] = pmi_ranks(rows[i], lam)
    return {"ranks": ranks, "lambdas": lambdas, "folds": folds, "grid_mrr_all": grid_mrr(rows, grid)}
