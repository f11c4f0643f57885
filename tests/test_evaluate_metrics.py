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
    with pytest.raises(ValueError, match=r"^distinct_n: n must be >= 1, got 0$"):
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
    with pytest.raises(ValueError, match=r"^bootstrap_ci: no values$"):
        M.bootstrap_ci([])
    # wider confidence -> wider interval
    _, lo99, hi99 = M.bootstrap_ci(vals, confidence=0.99, seed=1, n_resamples=2000)
    assert lo99 <= lo and hi99 >= hi


def test_length_stats():
    assert M.length_stats([1, 2, 6]) == {"mean": 3.0, "median": 2.0}
    assert M.length_stats([]) == {"mean": None, "median": None}
