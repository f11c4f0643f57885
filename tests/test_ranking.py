"""`vrp.ranking` against values computed by hand: NLL per token, PMI, the tie-aware rank statistics, the random
baseline and the macro average; and the one tie rule: the learning curve (`vrp.train.probes`) and `vrp evaluate` give
the same MRR / Recall@10 for the same scores with near-ties."""
from __future__ import annotations

import pytest
import torch

from vrp import ranking as R
from vrp.records import Comment, Video


def test_mean_logprob_and_token_weighted_nll():
    assert R.mean_logprob((-6.0, 3)) == -2.0
    assert R.mean_nll([(-6.0, 3), (-1.0, 1)]) == pytest.approx(7 / 4)     # token-weighted, not (2 + 1) / 2
    with pytest.raises(ValueError, match="at least one token, got 0"):
        R.mean_logprob((0.0, 0))
    with pytest.raises(ValueError, match="mean_nll: no tokens"):
        R.mean_nll([])


def test_pmi_score():
    assert R.pmi_score((-6.0, 3), (-9.0, 3), 1.0) == pytest.approx(1.0)      # -2 + 3
    assert R.pmi_score((-6.0, 3), (-9.0, 3), 0.5) == pytest.approx(-0.5)     # -2 + 1.5
    assert R.pmi_score((-6.0, 3), (-9.0, 3), 0.0) == pytest.approx(-2.0)     # plain likelihood
    assert R.pmi_score((-6.0, 3), (-8.0, 2), 1.0) == pytest.approx(2.0)      # each term per its own tokens
    assert R.pmi_scores([(-6.0, 3), (-1.0, 1)], [(-9.0, 3), (-1.0, 1)], 1.0) == [pytest.approx(1.0), 0.0]
    with pytest.raises(ValueError, match="pmi_scores: 1 own scores but 0 no-video scores"):
        R.pmi_scores([(-1.0, 1)], [], 1.0)


def test_rank_functions_known_ranking():
    ranks = [1, 2, 4, 10]
    assert R.mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 10) / 4)
    assert R.mean_rank(ranks) == pytest.approx(17 / 4)
    assert R.recall_at_k(ranks, 1) == 0.25
    assert R.recall_at_k(ranks, 5) == 0.75


def test_tie_aware_stats():
    s = R.tie_aware_stats(0.5, [0.9, 0.1, 0.2], ks=(1, 2))
    assert (s.mean_rank, s.rr, s.recall[1], s.recall[2], s.num_candidates) == (2, 0.5, 0.0, 1.0, 4)
    # gold ties with two distractors, one is above: rank uniform on {2, 3, 4}
    t = R.tie_aware_stats(0.5, [0.9, 0.5, 0.5, 0.1], ks=(1, 3))
    assert t.mean_rank == pytest.approx(3.0)
    assert t.rr == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)
    assert t.recall[3] == pytest.approx(2 / 3) and t.recall[1] == 0
    # a near-tie is no tie: one distractor 5e-7 above is simply above (rank 2)
    near = R.tie_aware_stats(1.0, [1.0 + 5e-7, 0.5], ks=(1,))
    assert (near.mean_rank, near.rr, near.recall[1]) == (2.0, 0.5, 0.0)
    # all equal scores -> exactly the random baseline
    eq = R.tie_aware_stats(0.0, [0.0] * 9, ks=(1, 5))
    rb = R.random_rank_stat(10, ks=(1, 5))
    assert (eq.mean_rank, eq.rr) == pytest.approx((rb.mean_rank, rb.rr))
    assert eq.recall == pytest.approx(rb.recall)


def test_distractor_ranks_rank_each_real_comment_among_the_distractors_only():
    ranks = R.distractor_ranks([3.0, 1.0], [2.0, 0.0], ks=(1,))
    assert [(r.mean_rank, r.num_candidates) for r in ranks] == [(1.0, 3), (2.0, 3)]   # the other real one left out
    assert R.distractor_ranks([3.0, 1.0], []) == []                                    # no competitor: no rank


def test_random_baseline_known_candidate_sets():
    r = R.random_rank_stat(4, ks=(1, 5))
    assert r.mean_rank == 2.5
    assert r.rr == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert r.recall == {1: 0.25, 5: 1.0}
    r100 = R.random_rank_stat(100)
    assert r100.recall[10] == pytest.approx(0.1) and r100.mean_rank == 50.5
    with pytest.raises(ValueError, match="need at least one candidate, got 0"):
        R.random_rank_stat(0)
    # macro average: video A has 2 real comments among 3 candidates each, video B one among 5
    a = [R.random_rank_stat(3, (1,)), R.random_rank_stat(3, (1,))]
    b = [R.random_rank_stat(5, (1,))]
    s = R.summarize_ranks([a, b, []], ks=(1,))
    assert s["videos"] == 2 and s["items"] == 3
    assert s["recall_at_1"] == pytest.approx((1 / 3 + 1 / 5) / 2)
    assert s["mean_rank"] == pytest.approx((2 + 3) / 2)
    assert s["mrr"] == pytest.approx(((1 + 1 / 2 + 1 / 3) / 3 + (1 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 5) / 2)
    assert R.summarize_ranks([[], []]) == {"videos": 0, "items": 0}


def test_recall_at_k_is_not_reported_when_some_item_has_k_or_fewer_candidates():
    """Among n <= k candidates every rank is <= k: Recall@k would be 1 for any scores, so it is None."""
    worst = R.tie_aware_stats(-9.0, [0.0, 1.0, 2.0, 3.0], ks=(1, 5, 10))   # last of 5 candidates
    assert worst.recall == {1: 0.0, 5: 1.0, 10: 1.0}
    big = [R.tie_aware_stats(1.0, [0.0] * 11, ks=(1, 5, 10))]               # first of 12
    s = R.summarize_ranks([[worst], big])
    assert s["recall_at_1"] == 0.5 and s["recall_at_5"] is None and s["recall_at_10"] is None
    assert s["min_candidates"] == 5 and s["mean_candidates"] == pytest.approx(8.5)
    s = R.summarize_ranks([big])
    assert s["recall_at_10"] == 1.0 and s["min_candidates"] == 12


def test_learning_curve_and_vrp_evaluate_rank_the_same_scores_alike(monkeypatch, tokenizer):
    """The same scores through `vrp.train.probes.run_probes` and `vrp.evaluate.run.score_videos` +
    `ranking_summary` (their scorer replaced by a table): each real comment has 9 distractors above it, one 5e-7 nats
    per token above it and one below, so it is 11th of 12: MRR 1/11, Recall@10 0. The probes' former rule (scores
    within 1e-6 tie) gave rank 10 or 11: MRR (1/10 + 1/11) / 2 = 0.0955 and Recall@10 0.5. The no-video prompt scores
    every candidate 0, so PMI (any lambda) ranks as likelihood does."""
    from vrp.decoding import GeneratedComment
    from vrp.evaluate import run as E
    from vrp.evaluate.candidates import CandidateSet
    from vrp.precision import resolve_precision
    from vrp.prompts import PromptConfig, build_completion_ids, no_video_prompt_ids, video_prompt_ids
    from vrp.train import probes as P

    pcfg = PromptConfig(max_prompt_tokens=64)
    videos = [Video(f"v{i}", f"Video {i}", f"we talk about topic {i}. " * 3, [Comment(f"real comment {i}")])
              for i in range(2)]
    others = [f"distractor {j}" for j in range(11)]
    mean = {**{v.comments[0].text: -1.0 for v in videos}, **{t: 0.0 for t in others[:9]},
            others[9]: -1.0 + 5e-7, others[10]: -2.0}                        # nats per token under a video prompt
    per_token = {tuple(build_completion_ids(tokenizer, t, pcfg)): m for t, m in mean.items()}
    no_video = no_video_prompt_ids(tokenizer, pcfg)

    def table(model, prompt, cands, **kw):
        return [(0.0 if list(prompt) == no_video else per_token[tuple(c)] * len(c), len(c)) for c in cands]

    monkeypatch.setattr(P, "score_candidates", table)
    monkeypatch.setattr(E, "score_candidates", table)
    monkeypatch.setattr(P, "generate_comments", lambda *a, **k: [GeneratedComment("hi", 2, -1.0, True, [1, 2])])

    def ids(text):
        return build_completion_ids(tokenizer, text, pcfg)

    probes = P.ProbeSet(video_ids=[v.video_id for v in videos],
                        prompts=[video_prompt_ids(tokenizer, v, pcfg) for v in videos],
                        real=[[ids(v.comments[0].text)] for v in videos], distractors=[[ids(t) for t in others]] * 2,
                        partner=[1, 0], no_video=no_video, seed=0)
    curve = P.run_probes(torch.nn.Linear(1, 1), tokenizer, probes, resolve_precision("fp32", "none", "cpu"))
    csets = [CandidateSet([v.comments[0].text], list(others), {}) for v in videos]
    rows, _ = E.score_videos(None, tokenizer, pcfg, videos, csets, [1, 0], progress=False, no_video=True)
    ev = E.ranking_summary(rows)

    assert curve["val_mrr"] == ev["own_prompt"]["mrr"] == pytest.approx(1 / 11)
    assert curve["val_recall_at_10"] == ev["own_prompt"]["recall_at_10"] == 0.0
    assert curve["val_pmi_mrr"] == ev["pmi"]["mrr"] == pytest.approx(1 / 11)
    assert curve["val_pmi_recall_at_10"] == ev["pmi"]["recall_at_10"] == 0.0
    assert probes.describe()["random_mrr"] == ev["random_baseline"]["mrr"]     # the same baseline function too
    assert curve["val_gain"] == 0.0                                             # the table ignores the video
