"""The texts of a pool of comments: when two comments are the same text, the distinct ones, the most frequent ones.

Knows, once for training's learning curve (`vrp.train.probes`) and `vrp evaluate`'s candidate sets
(`vrp.evaluate.candidates`, `vrp.evaluate.tier_ranking`):
- the key under which two comments count as the same text (`text_key`: lower-cased, whitespace collapsed and
  stripped; an empty key is no comment);
- the distinct texts of a sequence, first spelling kept (`distinct_texts`);
- the most frequent comments of a pool (`frequent_comments`), ties in count broken by centrality when embeddings are
  given, else by first appearance.
Does not know: where comments come from, embeddings models (callers pass embedding rows), how candidates are drawn.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np

_SPACES_RE = re.compile(r"\s+")


def text_key(text: str) -> str:
    """Key under which two comments count as the same text: lower-cased, every whitespace run one space, stripped.
    Example: "  Great   VIDEO!\\n" -> "great video!"."""
    return _SPACES_RE.sub(" ", text).strip().lower()


def distinct_texts(texts: Iterable[str]) -> list[str]:
    """The texts of `texts` one per `text_key`, each as its first spelling, in order; texts whose key is empty
    (blank) left out. Example: ["Hi", "", "hi ", "yo"] -> ["Hi", "yo"]."""
    seen: set[str] = set()
    out = []
    for t in texts:
        if (k := text_key(t)) and k not in seen:
            seen.add(k)
            out.append(t)
    return out


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of `x` (N, D) scaled to unit L2 norm, float64 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def frequent_comments(comments: Sequence[str], n: int, emb: np.ndarray | None = None) -> list[str]:
    """The `n` most frequent comments of `comments` by count of `text_key`, each as its first spelling; blank
    comments are not counted.

    Ties in count are broken by centrality when `emb` is given: the cosine similarity of a comment's embedding (rows
    of `emb` (len(comments), D), aligned with `comments`, first spelling's row) to the mean of all rows, so that among
    comments seen once the most typical ("love this video") come first; then by first appearance. Without `emb`,
    ties go by first appearance. Example: ["wow", "ok", "WOW", "fine"], n 2 -> ["wow", "ok"].
    Raises ValueError when `emb` has another number of rows than `comments`."""
    if emb is not None and len(emb) != len(comments):
        raise ValueError(f"frequent_comments: {len(comments)} comments but {len(emb)} embedding rows")
    first: dict[str, int] = {}
    counts: Counter[str] = Counter()
    for i, c in enumerate(comments):
        if k := text_key(c):
            counts[k] += 1
            first.setdefault(k, i)
    cent = np.zeros(len(comments))
    if emb is not None and len(comments):
        e = _unit_rows(emb)
        cent = e @ _unit_rows(e.mean(axis=0, keepdims=True))[0]
    keys = sorted(first, key=lambda k: (-counts[k], -cent[first[k]], first[k]))
    return [comments[first[k]] for k in keys[:n]]
