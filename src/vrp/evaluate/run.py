"""`vrp evaluate`: does a model's comment prediction use the video? Likelihood, conditioning gain, ranking, generation.

Knows: which videos are evaluated (a dataset dir's `validation.jsonl`, its `train.jsonl` for the most frequent
training comments, or any source `vrp.dataset.load_source` reads), how the 100 ranking candidates of a video are
drawn, how real comments are scored with shared-prefix scoring (`vrp.scoring.score_candidates`) under three prompts
(own video, another video, title only), and how generated comments are measured (`vrp.evaluate.metrics`).
Does not know: metric formulas (`metrics`), report layout and charts (`report`), decoding (`predict`, `generate`).

The definitions of every number (NLL, conditioning gain, the candidate sets, the per-comment ranking with the other
real comments removed, the analytic random baseline) are `vrp.evaluate.report.DEFINITIONS`, which report.md repeats.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vrp.errors import VrpError
from vrp.evaluate import metrics as M
from vrp.evaluate.candidates import (  # noqa: F401 (re-exported)
    CandidateSet,
    build_candidate_sets,
    derangement,
    frequent_comments,
    norm_key,
)
from vrp.records import Video, read_videos

KS = (1, 5, 10)


@dataclass
class EvalData:
    """Held-out videos (each with >= 1 non-empty comment), all training comment texts (may be empty), notes."""

    videos: list[Video]
    train_comments: list[str]
    source: str
    notes: list[str] = field(default_factory=list)


def load_eval_data(path: str | Path, max_videos: int = 0) -> EvalData:
    """Videos to evaluate: `DIR/validation.jsonl` (+ `DIR/train.jsonl` for training comments) of a prepared dataset,
    otherwise every video of any source `load_source` reads (no training comments). Raises VrpError for fewer than 2
    usable videos (conditioning gain and ranking need another video)."""
    from vrp.dataset import load_source

    path = Path(path)
    notes: list[str] = []
    if path.is_dir() and (path / "validation.jsonl").is_file():
        videos, source = read_videos(path / "validation.jsonl"), str(path / "validation.jsonl")
        train = read_videos(path / "train.jsonl") if (path / "train.jsonl").is_file() else []
    else:
        videos, _ = load_source(path, require_comments=True)
        source, train = str(path), []
    if not train:
        notes.append("no training split: the ranking has no frequent training comments and the generic rate is "
                     "not computed")
    videos = [Video(v.video_id, v.title, v.transcript, [c for c in v.comments if c.text.strip()]) for v in videos]
    videos = [v for v in videos if v.comments][: max_videos or None]
    if not any(v.title.strip() for v in videos):
        notes.append("the videos have no separate title (the seed format puts the title inside the transcript), so "
                     "the title-only prompt carries no information about the video: it is the no-video ablation")
    if len(videos) < 2:
        raise VrpError(f"{source}: need at least 2 held-out videos with comments, found {len(videos)}")
    return EvalData(videos, [c.text.strip() for v in train for c in v.comments if c.text.strip()], source, notes)



class CachedScorer:
    """`score_candidates` with a cache keyed by (prompt, candidate): a candidate is scored once per distinct prompt.

    Videos with the same title-only prompt (e.g. untitled ones) therefore share work. row_tokens: candidate tokens
    per packed row (the prompt comes on top). Values are `(sum log-prob in nats, token count)`.
    """

    def __init__(self, model: Any, row_tokens: int = 512, rows_per_batch: int = 1) -> None:
        self.model, self.row_tokens, self.rows_per_batch = model, row_tokens, rows_per_batch
        self.cache: dict[tuple[int, ...], dict[tuple[int, ...], tuple[float, int]]] = {}

    def score(self, prompt: list[int], cands: Sequence[list[int]]) -> list[tuple[float, int]]:
        """Scores of `cands` given `prompt`, computing only those not cached for this prompt."""
        from vrp.scoring import score_candidates

        memo = self.cache.setdefault(tuple(prompt), {})
        todo = list(dict.fromkeys(tuple(c) for c in cands if tuple(c) not in memo))
        if todo:
            res = score_candidates(self.model, prompt, [list(c) for c in todo],
                                   max_row_tokens=len(prompt) + self.row_tokens, rows_per_batch=self.rows_per_batch)
            memo.update(zip(todo, res))
        return [memo[tuple(c)] for c in cands]


def _nll(pairs: Sequence[tuple[float, int]]) -> float:
    """Token-weighted NLL per token (nats) of (sum log-prob, tokens) pairs."""
    return -math.fsum(s for s, _ in pairs) / sum(n for _, n in pairs)


def score_videos(model: Any, tok: Any, pcfg: Any, videos: Sequence[Video], csets: Sequence[CandidateSet],
                 partner: Sequence[int], row_tokens: int = 512, rows_per_batch: int = 1, autocast: Any = None,
                 progress: bool = True, label: str = "") -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Score every video's candidates under its own prompt and its title-only prompt, and its real comments under
    the prompt of `partner[video]`. Returns per-video dicts `{own, title, other: [(sum, n)] per real comment,
    rank_full, rank_title: [RankStat] per real comment, candidates}` and timings in seconds."""
    import contextlib

    from tqdm.auto import tqdm

    from vrp.prompts import build_completion_ids, build_prompt_ids

    ids: dict[str, list[int]] = {}

    def cids(text: str) -> list[int]:
        if text not in ids:
            ids[text] = build_completion_ids(tok, text, pcfg)
        return ids[text]

    scorer = CachedScorer(model, max(row_tokens, pcfg.max_comment_tokens + 1), rows_per_batch)
    guests = {partner[i]: i for i in range(len(videos))}          # video j's prompt also scores guests[j]'s comments
    rows: list[dict[str, Any]] = [{} for _ in videos]
    t_full = t_title = 0.0
    with autocast or contextlib.nullcontext():
        for j, v in enumerate(tqdm(videos, desc=f"score {label}".strip(), unit="video", disable=not progress)):
            cs = csets[j]
            real, dis = [cids(t) for t in cs.real], [cids(t) for t in cs.distractors]
            guest = [cids(t) for t in csets[guests[j]].real] if j in guests and guests[j] != j else []
            t0 = time.perf_counter()
            sc = scorer.score(build_prompt_ids(tok, v.title, v.transcript, pcfg), real + dis + guest)
            t1 = time.perf_counter()
            st = scorer.score(build_prompt_ids(tok, v.title, "", pcfg), real + dis)
            t_full, t_title = t_full + t1 - t0, t_title + time.perf_counter() - t1
            rows[j].update(own=sc[:len(real)], title=st[:len(real)], candidates=len(real) + len(dis),
                           rank_full=_ranks(sc[:len(real)], sc[len(real):len(real) + len(dis)]),
                           rank_title=_ranks(st[:len(real)], st[len(real):]))
            if guest:
                rows[guests[j]]["other"] = sc[len(real) + len(dis):]
    n = max(len(videos), 1)
    return rows, {"score_own_prompt_s": t_full, "score_title_only_s": t_title,
                  "ranking_total_s": t_full + t_title, "seconds_per_video": (t_full + t_title) / n}


def _ranks(real: Sequence[tuple[float, int]], dis: Sequence[tuple[float, int]]) -> list[M.RankStat]:
    d = [s / n for s, n in dis]
    return [M.tie_aware_stats(s / n, d, KS) for s, n in real]


def likelihood_summary(rows: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """NLL per token and perplexity under own / title-only / other prompts, and conditioning gains with 95% CIs."""
    out: dict[str, Any] = {"comments": sum(len(r["own"]) for r in rows),
                           "tokens": sum(n for r in rows for _, n in r["own"])}
    for key in ("own", "title", "other"):
        pairs = [p for r in rows for p in r.get(key, [])]
        if pairs:
            nll = _nll(pairs)
            out[f"nll_{key}"], out[f"perplexity_{key}"] = nll, math.exp(min(nll, 700))
    for key, name in (("other", "conditioning_gain"), ("title", "title_only_gain")):
        per = [_nll(r[key]) - _nll(r["own"]) for r in rows if r.get(key)]
        if per:
            mean, lo, hi = M.bootstrap_ci(per, 0.95, seed=seed)
            out[name] = {"mean": mean, "ci95": [lo, hi], "videos": len(per),
                         "share_of_videos_positive": float(np.mean([g > 0 for g in per]))}
    return out


def ranking_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Ranking metrics for own prompts, title-only prompts and the analytic random baseline of the same sets."""
    base = [[M.random_rank_stat(s.num_candidates, KS) for s in r["rank_full"]] for r in rows]
    return {"own_prompt": M.summarize_ranks([r["rank_full"] for r in rows], KS),
            "title_only": M.summarize_ranks([r["rank_title"] for r in rows], KS),
            "random_baseline": M.summarize_ranks(base, KS)}


def generation_metrics(texts: Sequence[str], gold: Sequence[int], video_emb: np.ndarray, embedder: Any,
                       generic_emb: np.ndarray | None, count_tokens: Callable[[str], int]) -> dict[str, Any]:
    """Reference-free metrics of comments `texts` (gold[i] = index of text i's video in `video_emb`): distinct-1/2,
    repetition rate, generic rate (cosine >= 0.9 to a frequent training comment), length in tokens, on-topic
    retrieval (Recall@1 of the own video among all rows of `video_emb`, chance 1/N)."""
    toks = [M.text_tokens(t) for t in texts]
    emb = embedder.encode(list(texts)) if texts else np.zeros((0, video_emb.shape[1]))
    return {"outputs": len(texts), "distinct_1": M.distinct_n(toks, 1), "distinct_2": M.distinct_n(toks, 2),
            "repetition_rate": M.repetition_rate(toks),
            "generic_rate": None if generic_emb is None or not len(texts) else M.generic_rate(emb, generic_emb, 0.9),
            "length_tokens": M.length_stats([count_tokens(t) for t in texts]),
            "empty_rate": float(np.mean([not t.strip() for t in texts])) if texts else None,
            "on_topic": M.retrieval_at_1(emb, video_emb, list(gold)) if texts else None}


def run_generation(loaded: tuple[Any, Any, dict[str, Any]], videos: Sequence[Video], run: str | None,
                   presets: Sequence[str], num_comments: int, max_new_tokens: int, seed: int,
                   max_prompt_tokens: int | None, progress: bool) -> tuple[dict[str, list[dict[str, Any]]], dict[str, float]]:
    """Generate comments for `videos` with each preset (via `vrp.predict.predict`); rows and seconds per preset."""
    from vrp.predict import predict

    rows, secs = {}, {}
    for p in presets:
        t0 = time.perf_counter()
        rows[p] = predict(list(videos), run=run, presets=[p], num_comments=num_comments, max_new_tokens=max_new_tokens,
                          seed=seed, max_prompt_tokens=max_prompt_tokens, progress=progress, loaded=loaded)
        secs[p] = time.perf_counter() - t0
    return rows, secs


def read_seed_outputs(seed_dir: str | Path, n_videos: int) -> dict[str, list[str]]:
    """The original project's outputs: `DIR/*.xlsx`, column `text`, one row per test video in order. Raises VrpError
    for a missing dir, no xlsx, a missing column or a row count different from `n_videos`."""
    import pandas as pd

    d = Path(seed_dir)
    files = sorted(d.glob("*.xlsx")) if d.is_dir() else []
    if not files:
        raise VrpError(f"--seed-results: no .xlsx files in {d}")
    out = {}
    for f in files:
        df = pd.read_excel(f)
        if "text" not in df.columns:
            raise VrpError(f"{f}: no 'text' column (found {list(df.columns)})")
        if len(df) != n_videos:
            raise VrpError(f"{f}: {len(df)} rows, but --seed-test has {n_videos} videos")
        out[f"original/{f.stem}"] = ["" if not isinstance(t, str) else t.strip() for t in df["text"].tolist()]
    return out


def _candidate_summary(csets: Sequence[CandidateSet], n_candidates: int, frequent: Sequence[str]) -> dict[str, Any]:
    sizes = [len(c.real) + len(c.distractors) for c in csets]
    return {"target": n_candidates, "mean": float(np.mean(sizes)), "min": min(sizes),
            "videos_short": sum(c.sources["short_by"] > 0 for c in csets),
            "mean_real": float(np.mean([len(c.real) for c in csets])),
            "mean_by_source": {k: float(np.mean([c.sources[k] for c in csets]))
                               for k in ("similar_videos", "frequent_training", "random")},
            "frequent_training_comments": list(frequent[:20])}


def evaluate_run(data: EvalData, models: Sequence[tuple[str, str | None, str | None]], embedder: Any,
                 presets: Sequence[str] = ("nucleus", "beam"), num_comments: int = 1, max_new_tokens: int = 150,
                 max_prompt_tokens: int | None = None, n_candidates: int = 100, seed: int = 0,
                 precision: str = "auto", row_tokens: int = 512, rows_per_batch: int = 1, max_gen_videos: int = 0,
                 seed_test: str | None = None, seed_results: str | None = None,
                 progress: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Evaluate each `(label, model_spec, run_dir)`; return `(metrics, per_video_rows, generation_rows)`.

    All models see the same candidate sets, partners and generation videos. Raises VrpError from loading or inputs.
    """
    import torch

    from vrp.dataset import load_source
    from vrp.evaluate.embed import embed_videos
    from vrp.model import autocast_ctx, load_for_inference, resolve_precision
    from vrp.predict import run_prompt_settings

    t_start = time.perf_counter()
    videos = data.videos
    video_emb = embed_videos(embedder, videos)
    train_emb = embedder.encode(data.train_comments) if data.train_comments else None
    frequent = frequent_comments(data.train_comments, 50, train_emb)
    generic_emb = embedder.encode(frequent) if frequent else None
    csets = build_candidate_sets(videos, video_emb, frequent, data.train_comments, n_candidates, seed=seed)
    partner = derangement(len(videos), seed)
    seed_videos = load_source(seed_test, require_comments=False)[0] if seed_test else []
    seed_emb = embed_videos(embedder, seed_videos) if seed_videos else None
    seed_outputs = read_seed_outputs(seed_results, len(seed_videos)) if seed_test and seed_results else {}
    timing: dict[str, Any] = {"embed_and_candidates_s": time.perf_counter() - t_start, "cpus": os.cpu_count(),
                              "load_average_start": list(os.getloadavg())}
    gen_videos = videos[: max_gen_videos or None]          # a prefix: indices into `videos` stay valid
    cand = _candidate_summary(csets, n_candidates, frequent)
    notes = list(data.notes)
    if len(gen_videos) < len(videos) and presets:
        notes.append(f"comments are generated for the first {len(gen_videos)} of {len(videos)} held-out videos "
                     f"(--max-gen-videos); on-topic retrieval searches all {len(videos)}")
    if cand["videos_short"]:
        notes.append(f"{cand['videos_short']} of {len(videos)} videos have fewer than {n_candidates} candidates (pool "
                     f"too small); baselines use the actual counts")
    result: dict[str, Any] = {
        "data": {"source": data.source, "videos": len(videos), "real_comments": sum(len(c.real) for c in csets),
                 "train_comments": len(data.train_comments), "generation_videos": len(gen_videos),
                 "seed_test_videos": len(seed_videos), "notes": notes},
        "candidates": cand,
        "settings": {"presets": list(presets), "num_comments": num_comments, "max_new_tokens": max_new_tokens,
                     "seed": seed, "precision": precision, "score_row_tokens": row_tokens,
                     "score_rows_per_batch": rows_per_batch, "torch_threads": torch.get_num_threads()},
        "models": {}, "references": {}, "seed_comparison": {}}
    tok_count: Callable[[str], int] | None = None
    per_video: list[dict[str, Any]] = []
    gen_rows: list[dict[str, Any]] = []
    for label, spec, run in models:
        t0 = time.perf_counter()
        loaded = load_for_inference(spec, run, precision=precision)
        m, tok, info = loaded
        pcfg = run_prompt_settings(run, max_prompt_tokens)
        tm: dict[str, Any] = {"load_s": time.perf_counter() - t0}
        if tok_count is None:
            tok_count = lambda t, tok=tok: len(tok(t, add_special_tokens=False)["input_ids"])  # noqa: E731
        rows, st = score_videos(m, tok, pcfg, videos, csets, partner, row_tokens, rows_per_batch,
                                autocast_ctx(resolve_precision(precision)), progress, label)
        tm.update(st)
        entry: dict[str, Any] = {"model": info["model"], "adapter": info["adapter"], "precision": info["precision"],
                                 "max_prompt_tokens": pcfg.max_prompt_tokens, "truncation": pcfg.truncation,
                                 "likelihood": likelihood_summary(rows, seed), "ranking": ranking_summary(rows),
                                 "generation": {}, "seed_generation": {}}
        per_video += [{"model": label, "video_id": v.video_id, "candidates": r["candidates"],
                       "nll_own": _nll(r["own"]), "nll_title_only": _nll(r["title"]),
                       "nll_other_video": _nll(r["other"]) if r.get("other") else None,
                       "rank_own": [s.mean_rank for s in r["rank_full"]],
                       "rank_title_only": [s.mean_rank for s in r["rank_title"]]} for v, r in zip(videos, rows)]
        for name, vids, emb, key in (("generation", gen_videos, video_emb, "held_out"),
                                     ("seed_generation", seed_videos, seed_emb, "seed_test")):
            if not vids or not presets:
                continue
            grows, tm[f"{name}_s"] = run_generation(loaded, vids, run, presets, num_comments, max_new_tokens, seed,
                                                    max_prompt_tokens, progress)
            index = {v.video_id: i for i, v in enumerate(vids)}
            for p, rr in grows.items():
                entry[name][p] = generation_metrics([r["comment"] for r in rr], [index[r["video_id"]] for r in rr],
                                                    emb, embedder, generic_emb, tok_count)
                if name == "seed_generation":
                    result["seed_comparison"][f"{label}/{p}"] = entry[name][p]
                gen_rows += [{"set": key, "model": label, "preset": p, "video_id": r["video_id"],
                              "comment_index": r["comment_index"], "comment": r["comment"],
                              "new_tokens": r["new_tokens"], "finished": r["finished"]} for r in rr]
        entry["timing_s"] = tm
        result["models"][label] = entry
        del m, loaded
    assert tok_count is not None
    real = [(i, c) for i in range(len(gen_videos)) for c in csets[i].real[:num_comments]]
    result["references"]["real_held_out"] = generation_metrics([c for _, c in real], [i for i, _ in real], video_emb,
                                                               embedder, generic_emb, tok_count)
    for label, texts in seed_outputs.items():
        result["seed_comparison"][label] = generation_metrics(texts, list(range(len(texts))), seed_emb, embedder,
                                                              generic_emb, tok_count)
    timing.update(total_s=time.perf_counter() - t_start, load_average_end=list(os.getloadavg()))
    result["timing_s"] = timing
    return result, per_video, gen_rows
