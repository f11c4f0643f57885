"""Every metric of `vrp.evaluate.metrics` against values computed by hand on tiny inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vrp.evaluate import metrics as M


def test_text_tokens_words_punct_emoji():
    assert M.text_tokens("Great video!! ❤️❤️ don't") == ["great", "video", "!", "!", "❤️", "❤️", "don't"]


def test_distinct_n_known_lists():
    toks = [["a", "b", "a", "b"], ["a", "c"]]
    # unigrams: a b a b a c -> {a, b, c} = 3 of 6; bigrams: ab ba ab | ac -> {ab, ba, ac} = 3 of 4
    assert M.distinct_n(toks, 1) == pytest.approx(3 / 6)
    assert M.distinct_n(toks, 2) == pytest.approx(3 / 4)
    assert M.distinct_n([["x"]], 2) is None
    with pytest.raises(ValueError):
        M.distinct_n(toks, 0)


def test_repetition_runs():
    t = M.text_tokens
    assert M.has_repetition_run(t("so good ❤️❤️❤️"))                       # emoji x3
    assert not M.has_repetition_run(t("so good ❤️❤️"))                     # only twice
    assert M.has_repetition_run(t("i'm glad you enjoyed it. " * 3))        # a 5-token sentence x3
    assert not M.has_repetition_run(t("wow!!! amazing..."))               # punctuation runs do not count
    assert M.has_repetition_run(t("haha haha haha"))
    assert not M.has_repetition_run(t("a b a b a"))                        # 'a b' twice + 'a'
    # 2 of 4 outputs repeat
    assert M.repetition_rate([t("x x x"), t("x y"), t("lol lol lol lol"), t("")]) == 0.5
    assert M.repetition_rate([]) is None


def test_generic_rate_and_cosine():
    out = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    generic = np.array([[2.0, 0.0]])
    # cosines to generic: 1, 0, 0.7071 -> only the first is >= 0.9
    assert M.generic_rate(out, generic, 0.9) == pytest.approx(1 / 3)
    assert M.generic_rate(out, generic, 0.7) == pytest.approx(2 / 3)
    assert M.generic_rate(np.zeros((0, 2)), generic) is None
    assert M.cosine_matrix(out, generic)[2, 0] == pytest.approx(1 / math.sqrt(2))


def test_retrieval_at_1_known():
    docs = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    q = np.array([[0.9, 0.1], [0.9, 0.1], [0.0, 1.0]])
    r = M.retrieval_at_1(q, docs, [0, 1, 1])
    # query 0 -> doc 0 rank 1; query 1 gold doc 1 is second (rank 2); query 2 -> doc 1 rank 1
    assert r["recall_at_1"] == pytest.approx(2 / 3)
    assert r["mrr"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert r["chance"] == pytest.approx(1 / 3)


def test_rank_functions_known_ranking():
    ranks = [1, 2, 4, 10]
    assert M.mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 10) / 4)
    assert M.mean_rank(ranks) == pytest.approx(17 / 4)
    assert M.recall_at_k(ranks, 1) == 0.25
    assert M.recall_at_k(ranks, 5) == 0.75


def test_tie_aware_stats():
    s = M.tie_aware_stats(0.5, [0.9, 0.1, 0.2], ks=(1, 2))
    assert (s.mean_rank, s.rr, s.recall[1], s.recall[2], s.num_candidates) == (2, 0.5, 0.0, 1.0, 4)
    # gold ties with two distractors, one is above: rank uniform on {2, 3, 4}
    t = M.tie_aware_stats(0.5, [0.9, 0.5, 0.5, 0.1], ks=(1, 3))
    assert t.mean_rank == pytest.approx(3.0)
    assert t.rr == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)
    assert t.recall[3] == pytest.approx(2 / 3) and t.recall[1] == 0
    # all equal scores -> exactly the random baseline
    eq = M.tie_aware_stats(0.0, [0.0] * 9, ks=(1, 5))
    rb = M.random_rank_stat(10, ks=(1, 5))
    assert (eq.mean_rank, eq.rr) == pytest.approx((rb.mean_rank, rb.rr))
    assert eq.recall == pytest.approx(rb.recall)


def test_random_baseline_known_candidate_sets():
    r = M.random_rank_stat(4, ks=(1, 5))
    assert r.mean_rank == 2.5
    assert r.rr == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert r.recall == {1: 0.25, 5: 1.0}
    r100 = M.random_rank_stat(100)
    assert r100.recall[10] == pytest.approx(0.1) and r100.mean_rank == 50.5
    with pytest.raises(ValueError):
        M.random_rank_stat(0)
    # macro average: video A has 2 real comments among 3 candidates each, video B one among 5
    a = [M.random_rank_stat(3, (1,)), M.random_rank_stat(3, (1,))]
    b = [M.random_rank_stat(5, (1,))]
    s = M.summarize_ranks([a, b, []], ks=(1,))
    assert s["videos"] == 2 and s["items"] == 3
    assert s["recall_at_1"] == pytest.approx((1 / 3 + 1 / 5) / 2)
    assert s["mean_rank"] == pytest.approx((2 + 3) / 2)
    assert s["mrr"] == pytest.approx(((1 + 1 / 2 + 1 / 3) / 3 + (1 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 5) / 2)


def test_recall_at_k_is_not_reported_when_some_item_has_k_or_fewer_candidates():
    """Among n <= k candidates every rank is <= k: Recall@k would be 1 for any scores, so it is None."""
    worst = M.tie_aware_stats(-9.0, [0.0, 1.0, 2.0, 3.0], ks=(1, 5, 10))   # last of 5 candidates
    assert worst.recall == {1: 0.0, 5: 1.0, 10: 1.0}
    big = [M.tie_aware_stats(1.0, [0.0] * 11, ks=(1, 5, 10))]               # first of 12
    s = M.summarize_ranks([[worst], big])
    assert s["recall_at_1"] == 0.5 and s["recall_at_5"] is None and s["recall_at_10"] is None
    assert s["min_candidates"] == 5 and s["mean_candidates"] == pytest.approx(8.5)
    s = M.summarize_ranks([big])
    assert s["recall_at_10"] == 1.0 and s["min_candidates"] == 12


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    vals = [0.1, 0.4, -0.2, 0.3, 0.25, 0.05, 0.6]
    m, lo, hi = M.bootstrap_ci(vals, seed=1, n_resamples=2000)
    assert m == pytest.approx(np.mean(vals))
    assert lo < m < hi
    assert M.bootstrap_ci(vals, seed=1, n_resamples=2000) == (m, lo, hi)
    assert M.bootstrap_ci(vals, seed=2, n_resamples=2000) != (m, lo, hi)
    assert M.bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    c = M.bootstrap_ci([1.0, 1.0, 1.0])
    assert c == pytest.approx((1.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        M.bootstrap_ci([])
    # wider confidence -> wider interval
    _, lo99, hi99 = M.bootstrap_ci(vals, confidence=0.99, seed=1, n_resamples=2000)
    assert lo99 <= lo and hi99 >= hi


def test_length_stats():
    assert M.length_stats([1, 2, 6]) == {"mean": 3.0, "median": 2.0}
    assert M.length_stats([]) == {"mean": None, "median": None}
