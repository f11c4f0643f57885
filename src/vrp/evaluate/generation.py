"""Generated comments in `vrp evaluate`: generating them per setup, and measuring them against the real ones.

Knows: the generation setups of an evaluation (`EvaluateConfig.setups`: presets, with or without reranking), the
reference-free metrics of a set of comments (distinct-n, repetition, generic rate, on-topic retrieval), whether
comments end (finished rate), their length next to the real comments' (median new tokens, ratio), MAUVE between the
generated and the real comments' embeddings, the original project's published outputs, and the side-by-side
examples of report.md.
Does not know: metric formulas (`vrp.evaluate.metrics`), decoding (`vrp.generate.run`, `vrp.decoding`, `vrp.rerank`), report
layout (`vrp.evaluate.report`).

MAUVE (Pillutla et al. 2021, "MAUVE: Measuring the Gap Between Neural Text and Human Text using Divergence
Frontiers"; PyPI `mauve-text`, GPL-3.0) is computed from features we pass in: the bundled MiniLM sentence embeddings
of the real comments (P) and of the generated ones (Q), `num_buckets='auto'` (min(|P|, |Q|) / 10 k-means clusters,
at least 2), the package's default scaling factor 5. It needs enough comments on both sides: at least
`MAUVE_MIN_COMMENTS` each (else None), and `vrp evaluate` generates 5 per video by default.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vrp.errors import ConfigError, VrpError
from vrp.evaluate import metrics as M
from vrp.evaluate.config import EvaluateConfig
from vrp.generate.run import predict
from vrp.records import Video
from vrp.tables import read_table

MAUVE_MIN_COMMENTS = 10


def mauve_available() -> bool:
    """True when the optional `mauve-text` package (extra `vrp[mauve]`, GPL-3.0) is installed."""
    import importlib.util

    return importlib.util.find_spec("mauve") is not None


def mauve_score(real_emb: np.ndarray, gen_emb: np.ndarray, seed: int = 0) -> float | None:
    """MAUVE in [0, 1] (1 = the two distributions cannot be told apart) between real-comment features `real_emb`
    (N, D) and generated-comment features `gen_emb` (M, D), or None when either has fewer than
    `MAUVE_MIN_COMMENTS` rows or the optional `mauve-text` package is not installed (`mauve_available`; the
    evaluation report then says so). Deterministic given `seed` (k-means initialisation)."""
    real_emb, gen_emb = np.asarray(real_emb, dtype=np.float32), np.asarray(gen_emb, dtype=np.float32)
    if min(len(real_emb), len(gen_emb)) < MAUVE_MIN_COMMENTS or not mauve_available():
        return None
    import mauve
    out = mauve.compute_mauve(p_features=real_emb, q_features=gen_emb, num_buckets="auto", seed=seed, verbose=False,
                              device_id=-1)
    return float(out.mauve)


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def generation_metrics(texts: Sequence[str], gold: Sequence[int], video_emb: np.ndarray, embedder: Any,
                       generic_emb: np.ndarray | None, count_tokens: Callable[[str], int],
                       finished: Sequence[bool] | None = None, new_tokens: Sequence[int] | None = None,
                       real: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """Metrics of comments `texts` (gold[i] = index of text i's video in `video_emb`): distinct-1/2, repetition rate,
    generic rate (cosine >= 0.9 to a frequent training comment), length in tokens of `count_tokens`, on-topic
    retrieval (Recall@1 of the own video among all rows of `video_emb`, chance 1/N); with `finished` / `new_tokens`
    (generated comments) the finished rate and the median of new tokens (stop token included); with `real`
    (`{"emb": (R, D) real-comment embeddings, "median_new_tokens": float}`) the ratio of medians and MAUVE."""
    toks = [M.text_tokens(t) for t in texts]
    emb = embedder.encode(list(texts)) if texts else np.zeros((0, video_emb.shape[1]))
    med = _median(list(new_tokens)) if new_tokens is not None else None
    real_med = (real or {}).get("median_new_tokens")
    return {"outputs": len(texts), "distinct_1": M.distinct_n(toks, 1), "distinct_2": M.distinct_n(toks, 2),
            "repetition_rate": M.repetition_rate(toks),
            "generic_rate": None if generic_emb is None or not len(texts) else M.generic_rate(emb, generic_emb, 0.9),
            "length_tokens": M.length_stats([count_tokens(t) for t in texts]),
            "empty_rate": float(np.mean([not t.strip() for t in texts])) if texts else None,
            "on_topic": M.retrieval_at_1(emb, video_emb, list(gold)) if texts else None,
            "finished_rate": float(np.mean(list(finished))) if finished is not None and len(finished) else None,
            "median_new_tokens": med,
            "length_ratio_to_real": med / real_med if med is not None and real_med else None,
            "mauve": (mauve_score(real["emb"], emb, seed)
                      if real is not None and real.get("emb") is not None and len(texts) else None)}


def real_reference(texts: Sequence[str], embedder: Any, count_tokens: Callable[[str], int]) -> dict[str, Any]:
    """What generated comments are compared with: the real comments' embeddings (`emb`, for MAUVE) and the median of
    their lengths as a model would generate them (`median_new_tokens`: tokens + 1 for the end-of-turn token)."""
    lengths = [count_tokens(t) + 1 for t in texts]
    return {"emb": embedder.encode(list(texts)) if texts else None, "median_new_tokens": _median(lengths),
            "count": len(texts)}


def run_generation(loaded: tuple[Any, Any, dict[str, Any]], videos: Sequence[Video], pcfg: Any,
                   cfg: EvaluateConfig, embedder: Any = None
                   ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, float]]:
    """Generate comments for `videos` with each setup of `cfg` (`EvaluateConfig.setups`, via `vrp.generate.run.predict`,
    prompts built with `pcfg`; reranking embeds with `embedder`); rows and seconds per setup label."""

    rows, secs = {}, {}
    for label, preset, rerank in cfg.setups():
        t0 = time.perf_counter()
        rows[label] = predict(list(videos), cfg.generate_config(preset, rerank), progress=not cfg.quiet,
                              loaded=loaded, prompt=pcfg, embedder=embedder)
        secs[label] = time.perf_counter() - t0
    return rows, secs


def read_seed_outputs(seed_dir: str | Path, n_videos: int) -> dict[str, list[str]]:
    """The original project's outputs: `DIR/*.xlsx`, column `text`, one row per test video in order. Raises VrpError
    for a missing dir, no xlsx, a missing column or a row count different from `n_videos`."""

    d = Path(seed_dir)
    files = sorted(d.glob("*.xlsx")) if d.is_dir() else []
    if not files:
        raise ConfigError("seed_results", f"no .xlsx files in {d}")
    out = {}
    for f in files:
        df = read_table(f)  # cells as the spreadsheet shows them (`vrp.xlsx_cells`), as every table vrp reads
        if "text" not in df.columns:
            raise VrpError(f"{f}: no 'text' column (found {list(df.columns)})")
        if len(df) != n_videos:
            raise VrpError(f"{f}: {len(df)} rows, but the seed test set has {n_videos} videos")
        out[f"original/{f.stem}"] = ["" if not isinstance(t, str) else t.strip() for t in df["text"].tolist()]
    return out


def side_by_side(videos: Sequence[Video], real: Sequence[Sequence[str]], gen_rows: Sequence[dict[str, Any]],
                 n_videos: int = 5, chars: int = 100) -> list[dict[str, Any]]:
    """Examples for report.md: for the first `n_videos` videos with generated comments, the title (or the start of
    the transcript when untitled), the first real comment and the first generated comment of every setup
    (`model/preset`), each cut to `chars` characters."""
    first: dict[str, dict[str, str]] = {}
    for r in gen_rows:
        if r.get("set") == "held_out" and r["comment_index"] == 1:
            first.setdefault(r["video_id"], {})[f"{r['model']}/{r['preset']}"] = r["comment"][:chars]
    out = []
    for v, rc in zip(videos, real):
        if v.video_id in first and len(out) < n_videos:
            what = v.title.strip() or " ".join(v.transcript.split()[:16]) + " ..."
            out.append({"video_id": v.video_id, "video": what[:chars], "real": (rc[0] if rc else "")[:chars],
                        "predicted": first[v.video_id]})
    return out
