"""Ranking candidates for the LiveBot-style evaluation: which comments compete with a video's real comments.

Knows: how the `num_candidates` candidates of a held-out video are drawn (its real comments, comments of similar
held-out videos, frequent training comments, random others) and that they must exceed its real comments
(`check_candidate_count`), and the fixed random pairing of videos for the conditioning gain (`derangement`).
Does not know: when two comments are the same text and which are the most frequent (`vrp.comment_pool`, shared with
training's learning curve), how candidates are scored or ranked (`evaluate`, `scoring`, `vrp.ranking`).
Protocol: Ma et al., "LiveBot: Generating Live Video Comments Based on Visual and Textual Contexts", AAAI 2019,
with the fixes described in `vrp.evaluate.report.DEFINITIONS` (no test videos in training, an analytic random baseline).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vrp.comment_pool import distinct_texts, text_key
from vrp.errors import ConfigError
from vrp.evaluate import metrics as M
from vrp.records import Video

MAX_REAL = 25  # real comments of a video that enter its candidate set (its best-ranked distinct ones)


@dataclass
class CandidateSet:
    """Ranking candidates of one video: its real comments and the distractors, with counts per distractor source."""

    real: list[str]
    distractors: list[str]
    sources: dict[str, int]


def build_candidate_sets(videos: Sequence[Video], video_emb: np.ndarray, frequent: Sequence[str],
                         train_comments: Sequence[str], n_candidates: int = 100, n_similar: int = 30,
                         n_frequent: int = 20, max_real: int = MAX_REAL, seed: int = 0) -> list[CandidateSet]:
    """Candidates per video, in this order until `n_candidates` (real + distractors) are reached:
    1. its real comments (distinct non-blank texts, `comment_pool.distinct_texts`, at most `max_real`, best-ranked
       first);
    2. comments of the most similar other held-out videos (`video_emb` cosine), whole videos, up to `n_similar`;
    3. the first `n_frequent` of `frequent` (most frequent training comments);
    4. random comments of other held-out videos and of the training split (`random.Random(seed, video index)`).
    A text equal (`comment_pool.text_key`) to one already chosen, or blank, is skipped, so no distractor duplicates a
    real comment. Fewer than `n_candidates` only when the pool runs out (`sources['short_by']` says by how many)."""
    sims = M.cosine_matrix(video_emb, video_emb)
    pool = [c.text for v in videos for c in v.comments] + list(train_comments)
    out = []
    for vi, v in enumerate(videos):
        real = distinct_texts(c.text for c in sorted(v.comments, key=lambda c: c.rank))[:max_real]
        chosen = {text_key(t) for t in real}
        dis: list[str] = []
        src = {"similar_videos": 0, "frequent_training": 0, "random": 0}

        def add(text: str, source: str) -> None:
            k = text_key(text)
            if k and k not in chosen and len(real) + len(dis) < n_candidates:
                chosen.add(k)
                dis.append(text)
                src[source] += 1

        for j in np.argsort(-sims[vi], kind="stable"):
            if j != vi and src["similar_videos"] < n_similar:
                for c in sorted(videos[j].comments, key=lambda c: c.rank):
                    if src["similar_videos"] < n_similar:
                        add(c.text, "similar_videos")
        for text in frequent[:n_frequent]:
            add(text, "frequent_training")
        order = list(range(len(pool)))
        random.Random(seed * 1000003 + vi).shuffle(order)
        for i in order:
            if len(real) + len(dis) >= n_candidates:
                break
            add(pool[i], "random")
        src["short_by"] = n_candidates - len(real) - len(dis)
        out.append(CandidateSet(real, dis, src))
    return out


def real_count(video: Video, max_real: int = MAX_REAL) -> int:
    """How many of `video`'s comments enter its candidate set as real comments: its distinct non-blank texts
    (`comment_pool.distinct_texts`), at most `max_real`."""
    return min(len(distinct_texts(c.text for c in video.comments)), max_real)


def check_candidate_count(videos: Sequence[Video], n_candidates: int, max_real: int = MAX_REAL) -> None:
    """Raise ConfigError('num_candidates') unless `n_candidates` exceeds the real comments of every video
    (`real_count`): each real comment is ranked against the video's distractors only, so a set that its real comments
    fill has none, and every model (and random) would score Recall@1 = MRR = 1 there. Called before any model is
    loaded."""
    if not videos:
        return
    most, vid = max((real_count(v, max_real), v.video_id) for v in videos)
    if n_candidates <= most:
        raise ConfigError("num_candidates", f"must exceed the real comments per video so that each is ranked "
                                            f"against at least one distractor: video {vid!r} has {most} (at most "
                                            f"{max_real} count), so give at least {most + 1}; got {n_candidates}")


def derangement(n: int, seed: int) -> list[int]:
    """A random permutation without fixed points (Sattolo's algorithm, one n-cycle): partner[i] != i for n >= 2."""
    p = list(range(n))
    rng = random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)
        p[i], p[j] = p[j], p[i]
    return p
