"""PMI ranking and its cross-fitted lambda, the generation metrics of `vrp evaluate` (finished rate, length vs real,
MAUVE) against values computed by hand."""
from __future__ import annotations

import numpy as np
import pytest

from vrp.evaluate import pmi as P
from vrp.evaluate.generation import generation_metrics, mauve_score, real_reference, side_by_side
from vrp.records import Video

# Two videos, one real comment and one distractor each, scores as (sum log-prob, tokens).
# A: real PMI = -1 + lam, distractor -2 + 5 lam: the real comment wins only for lam < 0.25.
A = {"own_all": [(-1.0, 1), (-2.0, 1)], "no_video_all": [(-1.0, 1), (-5.0, 1)], "n_real": 1}
# B: the mirror image: the real comment wins only for lam > 0.25.
B = {"own_all": [(-2.0, 1), (-1.0, 1)], "no_video_all": [(-5.0, 1), (-1.0, 1)], "n_real": 1}


def test_pmi_ranks():
    with pytest.raises(ValueError, match="pmi_scores: 2 own scores but 1 no-video scores"):
        P.pmi_ranks({"own_all": A["own_all"], "no_video_all": A["no_video_all"][:1], "n_real": 1}, 1.0)
    assert P.pmi_ranks({**A, "own_all": A["own_all"][:1], "no_video_all": A["no_video_all"][:1]}, 0.0) == []
    assert P.pmi_ranks(A, 0.0)[0].mean_rank == 1 and P.pmi_ranks(A, 0.3)[0].mean_rank == 2
    tie = P.pmi_ranks(A, 0.25)[0]                                   # -0.75 vs -0.75: a tie, expected rank 1.5
    assert tie.mean_rank == pytest.approx(1.5) and tie.rr == pytest.approx(0.75)
    assert P.LAMBDA_GRID[0] == 0.0 and P.LAMBDA_GRID[-1] == 1.5 and len(P.LAMBDA_GRID) == 16


def test_select_lambda_prefers_the_smallest_best():
    assert P.select_lambda([A]) == 0.0                # 0, 0.1, 0.2 all rank A's comment first: the smallest
    assert P.select_lambda([B]) == 0.3                # the first grid value above 0.25
    both = P.grid_mrr([A, B])
    assert both[0.0] == both[0.3] == both[1.5] == pytest.approx(0.75)   # one first, one second at every lambda
    assert P.select_lambda([A, B]) == 0.0


def test_cross_fit_never_uses_a_videos_own_lambda():
    """Each video is ranked with the lambda chosen on the other one: A with B's 0.3 (rank 2), B with A's 0.0 (rank
    2), although each would rank its real comment first with its own best lambda."""
    cf = P.cross_fit([A, B], seed=0)
    assert sorted(cf["folds"]) == [[0], [1]]
    chosen = {0: 0.0, 1: 0.3}
    assert cf["lambdas"] == [chosen[cf["folds"][0][0]], chosen[cf["folds"][1][0]]]
    assert [r[0].mean_rank for r in cf["ranks"]] == [2.0, 2.0]
    assert cf["grid_mrr_all"][0.0] == pytest.approx(0.75)
    many = P.cross_fit([A, B, A, B, A], seed=3)
    assert sorted(i for f in many["folds"] for i in f) == list(range(5)) and len(many["folds"][0]) == 2
    with pytest.raises(ValueError, match=r"^cross_fit: need at least 2 videos, got 1$"):
        P.cross_fit([A])


def test_generation_metrics_finished_length_and_ratio():
    emb = np.eye(4, dtype=np.float32)

    class Fake:
        def encode(self, texts):
            return np.stack([emb[len(t.split()) % 4] for t in texts])

    texts = ["a b", "a b c", "x", "y y"]
    m = generation_metrics(texts, [0, 1, 2, 3], emb, Fake(), None, lambda t: len(t.split()),
                           finished=[True, False, True, True], new_tokens=[3, 10, 5, 7],
                           real={"emb": None, "median_new_tokens": 4.0})
    assert m["finished_rate"] == pytest.approx(0.75)
    assert m["median_new_tokens"] == pytest.approx(6.0)                  # median of 3, 5, 7, 10
    assert m["length_ratio_to_real"] == pytest.approx(1.5)
    assert m["mauve"] is None                                            # no real features given
    ref = real_reference(["a b", "a b c d", "a"], Fake(), lambda t: len(t.split()))
    assert ref["median_new_tokens"] == 3.0 and ref["emb"].shape == (3, 4)  # lengths 3, 5, 2 (+1 end-of-turn each)


@pytest.mark.slow
def test_mauve_identical_near_one_disjoint_low():
    """The wiring of `mauve-text` with our features: the same set scores ~1, disjoint clusters score low, and a
    half-overlapping set in between; too few comments give None."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(8, 32))

    def sample(idx, n=25):
        return np.concatenate([centers[i] + 0.3 * rng.normal(size=(n, 32)) for i in idx])

    real = sample(range(4))
    same, disjoint, half = mauve_score(real, real), mauve_score(real, sample(range(4, 8))), \
        mauve_score(real, sample([0, 1, 4, 5]))
    assert same > 0.99 and disjoint < 0.05 and disjoint < half < same
    assert mauve_score(real, real[:5]) is None


def test_side_by_side_rows():
    videos = [Video("a", "", "one two three " * 10), Video("b", "Bread", "x"), Video("c", "C", "y")]
    rows = [{"set": "held_out", "model": "m", "preset": "nucleus", "video_id": v, "comment_index": i, "comment": t}
            for v, i, t in (("a", 1, "first a"), ("a", 2, "second a"), ("b", 1, "first b"))]
    ex = side_by_side(videos, [["real a"], ["real b"], ["real c"]], rows)
    assert [e["video_id"] for e in ex] == ["a", "b"]                       # c has no generated comment
    assert ex[0]["video"].startswith("one two three") and ex[1]["video"] == "Bread"
    assert ex[0]["predicted"] == {"m/nucleus": "first a"} and ex[1]["real"] == "real b"


def test_evaluate_setups_and_ranking_options():
    from vrp.errors import ConfigError
    from vrp.evaluate.config import EvaluateConfig

    cfg = EvaluateConfig(presets="beam,nucleus", rerank=[0, 10])
    assert cfg.setups() == [("beam", "beam", 0), ("beam+rerank10", "beam", 10), ("nucleus", "nucleus", 0),
                            ("nucleus+rerank10", "nucleus", 10)]
    assert EvaluateConfig(presets="greedy,nucleus").setups() == [("greedy", "greedy", 0), ("nucleus", "nucleus", 0)]
    with pytest.raises(ConfigError, match="rerank: preset greedy gives a single comment"):  # as `vrp generate`
        EvaluateConfig(presets="greedy,nucleus", rerank=[0, 10])
    g = cfg.generate_config("nucleus", 10)
    assert (g.rerank, g.num_comments, g.rerank_lambda) == (10, 5, cfg.rerank_lambda)
    assert EvaluateConfig(ranking="pmi").ranking_list() == ["pmi"]
    assert EvaluateConfig().ranking_list() == ["likelihood", "pmi"]
    with pytest.raises(ConfigError, match="ranking"):
        EvaluateConfig(ranking="best")
