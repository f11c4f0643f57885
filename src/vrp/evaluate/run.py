"""`vrp evaluate`: does a model's comment prediction use the video? Likelihood, conditioning gain, ranking, generation.

Knows: which videos are evaluated (a dataset dir's `validation.jsonl`, its `train.jsonl` for the most frequent
training comments, or any source `vrp.sources.load_source` reads), how the ranking candidates of a video are drawn
(`num_candidates`, 100 by default), how real comments and candidates are scored with shared-prefix scoring
(`vrp.scoring.score_candidates`) under four prompts (own video, another video, title only, and no video for the PMI
ranking, whose lambda `vrp.evaluate.pmi` cross-fits), and which generated comments are measured
(`vrp.evaluate.generation`).
Does not know: metric formulas (`metrics`, `pmi`), report layout and charts (`report`), decoding (`predict`,
`decoding`), its options' defaults and validation (`vrp.evaluate.config.EvaluateConfig`), a run's layout
(`vrp.artifacts`).

The definitions of every number (NLL, conditioning gain, the candidate sets, the per-comment ranking with the other
real comments removed, the analytic random baseline) are `vrp.evaluate.report.DEFINITIONS`, which report.md repeats.
"""
from __future__ import annotations

import itertools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from vrp.artifacts import DatasetDir
from vrp.comment_pool import frequent_comments
from vrp.embeddings import Embedder, embed_videos
from vrp.errors import VrpError
from vrp.evaluate import metrics as M
from vrp.evaluate.candidates import CandidateSet, build_candidate_sets, check_candidate_count, derangement
from vrp.evaluate.config import EvaluateConfig
from vrp.evaluate.generation import (  # noqa: F401 (re-exported)
    MAUVE_MIN_COMMENTS,
    generation_metrics,
    mauve_available,
    read_seed_outputs,
    real_reference,
    run_generation,
    side_by_side,
)
from vrp.evaluate.pmi import cross_fit
from vrp.model import load_for_inference
from vrp.precision import autocast_ctx, resolve_precision
from vrp.prompt_format import resolve_prompt_config
from vrp.prompts import PromptConfig, build_completion_ids, no_video_prompt_ids, video_prompt_ids
from vrp.ranking import RankStat, Score, distractor_ranks, mean_logprob, mean_nll, random_rank_stat, summarize_ranks
from vrp.records import Video, iter_videos
from vrp.rundir import RunDir, prompt_settings
from vrp.scoring import score_candidates
from vrp.sources import load_source

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
    otherwise every video of any source `load_source` reads (no training comments). A dataset's splits are read a
    line at a time (`vrp.records.iter_videos`): of `validation.jsonl` only the first `max_videos` usable videos are
    kept, of `train.jsonl` only the comment texts. Raises VrpError for fewer than 2 usable videos (conditioning gain
    and ranking need another video)."""

    path, data = Path(path), DatasetDir(path)
    notes: list[str] = []
    held_out: Iterable[Video]
    if path.is_dir() and data.validation_path.is_file():  # splits read a line at a time, see the docstring
        held_out, source = iter_videos(data.validation_path), str(data.validation_path)
        train = ([c.text.strip() for v in iter_videos(data.train_path) for c in v.comments if c.text.strip()]
                 if data.train_path.is_file() else [])
    else:
        held_out, _ = load_source(path, require_comments=True)
        source, train = str(path), []
    if not train:
        notes.append("no training split: the ranking has no frequent training comments and the generic rate is "
                     "not computed")
    usable = (Video(v.video_id, v.title, v.transcript, [c for c in v.comments if c.text.strip()]) for v in held_out)
    videos = list(itertools.islice((v for v in usable if v.comments), max_videos or None))
    if not any(v.title.strip() for v in videos):
        notes.append("the videos have no separate title (the seed format puts the title inside the transcript), so "
                     "the title-only prompt carries no information about the video: it is the no-video ablation")
    if len(videos) < 2:
        raise VrpError(f"{source}: need at least 2 held-out videos with comments, found {len(videos)}")
    return EvalData(videos, train, source, notes)



class CachedScorer:
    """`score_candidates` with a cache keyed by (prompt, candidate): a candidate is scored once per distinct prompt.

    Videos with the same title-only prompt (e.g. untitled ones) therefore share work. row_tokens: candidate tokens
    per packed row (the prompt comes on top). Values are `(sum log-prob in nats, token count)`.
    """

    def __init__(self, model: Any, row_tokens: int = 512, rows_per_batch: int = 1) -> None:
        self.model, self.row_tokens, self.rows_per_batch = model, row_tokens, rows_per_batch
        self.cache: dict[tuple[int, ...], dict[tuple[int, ...], Score]] = {}

    def score(self, prompt: list[int], cands: Sequence[list[int]]) -> list[Score]:
        """Scores of `cands` given `prompt`, computing only those not cached for this prompt."""

        memo = self.cache.setdefault(tuple(prompt), {})
        todo = list(dict.fromkeys(tuple(c) for c in cands if tuple(c) not in memo))
        if todo:
            res = score_candidates(self.model, prompt, [list(c) for c in todo],
                                   max_row_tokens=len(prompt) + self.row_tokens, rows_per_batch=self.rows_per_batch)
            memo.update(zip(todo, res))
        return [memo[tuple(c)] for c in cands]


def score_videos(model: Any, tok: Any, pcfg: PromptConfig, videos: Sequence[Video], csets: Sequence[CandidateSet],
                 partner: Sequence[int], row_tokens: int = 512, rows_per_batch: int = 1, autocast: Any = None,
                 progress: bool = True, label: str = "", no_video: bool = False
                 ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Score every video's candidates under its own prompt and its title-only prompt, and its real comments under
    the prompt of `partner[video]`; with `no_video`, also every candidate under the no-video prompt
    (`prompts.no_video_prompt_ids`: one prompt for all videos, so each distinct candidate text is scored once).
    A title-only prompt shared by several videos (untitled ones) and the no-video prompt are each prefilled once and
    score the union of their videos' candidates in one `score_candidates` call (same scores, tested).
    Returns per-video dicts `{own, title, other: [(sum, n)] per real comment, rank_full, rank_title: [RankStat] per
    real comment, candidates, n_real, own_all (and no_video_all): [(sum, n)] for real comments then distractors}`
    and timings in seconds."""
    import contextlib

    from tqdm.auto import tqdm

    ids: dict[str, list[int]] = {}

    def cids(text: str) -> list[int]:
        if text not in ids:
            ids[text] = build_completion_ids(tok, text, pcfg)
        return ids[text]

    scorer = CachedScorer(model, max(row_tokens, pcfg.max_comment_tokens + 1), rows_per_batch)
    guests = {partner[i]: i for i in range(len(videos))}          # video j's prompt also scores guests[j]'s comments
    rows: list[dict[str, Any]] = [{} for _ in videos]
    t_full = t_title = t_none = 0.0
    nv_prompt = no_video_prompt_ids(tok, pcfg) if no_video else None
    cands = [([cids(t) for t in cs.real], [cids(t) for t in cs.distractors]) for cs in csets]
    title_prompts = [video_prompt_ids(tok, v, pcfg, transcript="") for v in videos]
    with autocast or contextlib.nullcontext():
        # The title-only and no-video prompts are shared by many videos (all untitled ones, all videos): each
        # distinct prompt is prefilled once and scores the union of its videos' candidates in one call (the scores
        # are those of scoring each video alone; `CachedScorer` then answers every video from its cache).
        shared: dict[tuple[int, ...], list[list[int]]] = {}
        users: dict[tuple[int, ...], int] = {}
        for (real, dis), tp in zip(cands, title_prompts):
            shared.setdefault(tuple(tp), []).extend(real + dis)
            users[tuple(tp)] = users.get(tuple(tp), 0) + 1
        groups = [(list(p), c, "title") for p, c in shared.items() if users[p] > 1]
        if nv_prompt is not None:
            groups.append((nv_prompt, [c for real, dis in cands for c in real + dis], "none"))
        for prompt, group, kind in tqdm(groups, desc=f"score {label} shared prompts".strip(), unit="prompt",
                                        disable=not progress or not groups):
            t0 = time.perf_counter()
            scorer.score(prompt, group)
            if kind == "title":
                t_title += time.perf_counter() - t0
            else:
                t_none += time.perf_counter() - t0
        for j, v in enumerate(tqdm(videos, desc=f"score {label}".strip(), unit="video", disable=not progress)):
            real, dis = cands[j]
            guest = [cids(t) for t in csets[guests[j]].real] if j in guests and guests[j] != j else []
            t0 = time.perf_counter()
            sc = scorer.score(video_prompt_ids(tok, v, pcfg), real + dis + guest)
            t1 = time.perf_counter()
            st = scorer.score(title_prompts[j], real + dis)
            t_full, t_title = t_full + t1 - t0, t_title + time.perf_counter() - t1
            if nv_prompt is not None:
                t2 = time.perf_counter()
                rows[j]["no_video_all"] = scorer.score(nv_prompt, real + dis)
                t_none += time.perf_counter() - t2
            rows[j].update(own=sc[:len(real)], title=st[:len(real)], candidates=len(real) + len(dis),
                           n_real=len(real), own_all=sc[:len(real) + len(dis)],
                           rank_full=_ranks(sc[:len(real)], sc[len(real):len(real) + len(dis)]),
                           rank_title=_ranks(st[:len(real)], st[len(real):]))
            if guest:
                rows[guests[j]]["other"] = sc[len(real) + len(dis):]
    n = max(len(videos), 1)
    return rows, {"score_own_prompt_s": t_full, "score_title_only_s": t_title, "score_no_video_s": t_none,
                  "ranking_total_s": t_full + t_title + t_none, "seconds_per_video": (t_full + t_title + t_none) / n}


def _ranks(real: Sequence[Score], dis: Sequence[Score]) -> list[RankStat]:
    """Rank statistics of each real comment among the distractors by mean log-probability per token
    (`vrp.ranking.distractor_ranks`: none for a video without distractors)."""
    return distractor_ranks([mean_logprob(x) for x in real], [mean_logprob(x) for x in dis], KS)


def likelihood_summary(rows: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """NLL per token and perplexity under own / title-only / other prompts, and conditioning gains with 95% CIs."""
    out: dict[str, Any] = {"comments": sum(len(r["own"]) for r in rows),
                           "tokens": sum(n for r in rows for _, n in r["own"])}
    for key in ("own", "title", "other"):
        pairs = [p for r in rows for p in r.get(key, [])]
        if pairs:
            nll = mean_nll(pairs)
            out[f"nll_{key}"], out[f"perplexity_{key}"] = nll, math.exp(min(nll, 700))
    for key, name in (("other", "conditioning_gain"), ("title", "title_only_gain")):
        per = [mean_nll(r[key]) - mean_nll(r["own"]) for r in rows if r.get(key)]
        if per:
            mean, lo, hi = M.bootstrap_ci(per, 0.95, seed=seed)
            out[name] = {"mean": mean, "ci95": [lo, hi], "videos": len(per),
                         "share_of_videos_positive": float(np.mean([g > 0 for g in per]))}
    return out


def ranking_summary(rows: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Ranking metrics for own prompts (likelihood), title-only prompts and the analytic random baseline of the same
    sets; when the rows hold no-video scores, also the PMI ranking with lambda 2-fold cross-fitted over videos
    (`vrp.evaluate.pmi.cross_fit`; its per-video ranks are stored in the rows as `rank_pmi`). Videos without
    distractors have no ranks (`_ranks`); PMI is cross-fitted over the others and needs two of them."""
    base = [[random_rank_stat(s.num_candidates, KS) for s in r["rank_full"]] for r in rows]
    out = {"own_prompt": summarize_ranks([r["rank_full"] for r in rows], KS),
           "title_only": summarize_ranks([r["rank_title"] for r in rows], KS),
           "random_baseline": summarize_ranks(base, KS)}
    rankable = [r for r in rows if r["rank_full"]]
    if len(rankable) >= 2 and all("no_video_all" in r for r in rows):
        cf = cross_fit(rankable, seed=seed)
        for r in rows:
            r["rank_pmi"] = []
        for r, ranks in zip(rankable, cf["ranks"]):
            r["rank_pmi"] = ranks
        out["pmi"] = {**summarize_ranks(cf["ranks"], KS), "lambdas": cf["lambdas"],
                      "fold_videos": [len(f) for f in cf["folds"]],
                      "grid_mrr_all_videos": {str(k): v for k, v in cf["grid_mrr_all"].items()}}
    return out


def _candidate_summary(csets: Sequence[CandidateSet], n_candidates: int, frequent: Sequence[str]) -> dict[str, Any]:
    sizes = [len(c.real) + len(c.distractors) for c in csets]
    return {"target": n_candidates, "mean": float(np.mean(sizes)), "min": min(sizes),
            "videos_short": sum(c.sources["short_by"] > 0 for c in csets),
            "videos_without_distractors": sum(not c.distractors for c in csets),
            "mean_real": float(np.mean([len(c.real) for c in csets])),
            "mean_by_source": {k: float(np.mean([c.sources[k] for c in csets]))
                               for k in ("similar_videos", "frequent_training", "random")},
            "frequent_training_comments": list(frequent[:20])}


def shared_prompt_settings(models: Sequence[tuple[str, str | None, RunDir | None]],
                           max_prompt_tokens: int | None) -> tuple[PromptConfig, list[str]]:
    """The prompt settings every model of one report is scored with, so that base and fine-tuned numbers compare:
    the budget `max_prompt_tokens` when given, else the first run's (with its truncation, which the base model then
    uses too), else the defaults. Returns them and a note for each run trained with other settings."""

    runs = [r for _, _, r in models if r is not None]
    shared = prompt_settings(runs[0] if runs else None, max_prompt_tokens)
    notes = []
    for r in runs:
        own = r.prompt_config()
        if max_prompt_tokens is None and (own.max_prompt_tokens, own.truncation) != (shared.max_prompt_tokens,
                                                                                      shared.truncation):
            notes.append(f"{r.path.name} was trained with prompts <= {own.max_prompt_tokens} tokens ({own.truncation}) "
                         f"but every model is scored at {shared.max_prompt_tokens} ({shared.truncation}), the first "
                         "run's; pass max_prompt_tokens to choose")
    return shared, notes


def evaluate_run(data: EvalData, models: Sequence[tuple[str, str | None, RunDir | None]], embedder: Embedder,
                 cfg: EvaluateConfig | None = None
                 ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Evaluate each `(label, model_spec, run)` (a base model, or a run dir with its adapter and prompt settings)
    with the options `cfg`; return `(metrics, per_video_rows, generation_rows)`.

    All models see the same candidate sets, partners and generation videos. A run's config.yaml is read once (by its
    `RunDir`). Raises ConfigError / VrpError from loading or inputs.
    """
    import torch

    cfg = cfg or EvaluateConfig()
    presets, num_comments, max_new_tokens, seed = cfg.preset_list(), cfg.num_comments, cfg.max_new_tokens, cfg.seed
    n_candidates, precision, progress = cfg.num_candidates, cfg.precision, not cfg.quiet
    seed_test, seed_results = cfg.seed_test, cfg.seed_results
    if cfg.quiet:  # transformers' own bars too ("Loading weights")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    t_start = time.perf_counter()
    videos = data.videos
    check_candidate_count(videos, n_candidates)  # a set its real comments fill ranks nothing
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
    gen_videos = videos[: cfg.max_gen_videos or None]      # a prefix: indices into `videos` stay valid
    cand = _candidate_summary(csets, n_candidates, frequent)
    notes = list(data.notes)
    if not mauve_available():
        notes.append("MAUVE not computed: the optional package mauve-text is not installed (pip install 'vrp[mauve]')")
    if len(gen_videos) < len(videos) and presets:
        notes.append(f"comments are generated for the first {len(gen_videos)} of {len(videos)} held-out videos "
                     f"(max_gen_videos); on-topic retrieval searches all {len(videos)}")
    if cand["videos_short"]:
        notes.append(f"{cand['videos_short']} of {len(videos)} videos have fewer than {n_candidates} candidates (pool "
                     f"too small); baselines use the actual counts")
    if cand["videos_without_distractors"]:
        notes.append(f"{cand['videos_without_distractors']} of {len(videos)} videos got no distractor (pool too small) "
                     f"and are left out of the ranking: among no competitors every rank is 1")
    result: dict[str, Any] = {
        "metrics_version": M.METRICS_VERSION,
        "data": {"source": data.source, "videos": len(videos), "real_comments": sum(len(c.real) for c in csets),
                 "train_comments": len(data.train_comments), "generation_videos": len(gen_videos),
                 "seed_test_videos": len(seed_videos), "notes": notes},
        "candidates": cand,
        "settings": {"presets": list(presets), "setups": [s[0] for s in cfg.setups()], "num_comments": num_comments,
                     "max_new_tokens": max_new_tokens, "seed": seed, "precision": precision, "ranking": cfg.ranking,
                     "rerank_lambda": cfg.rerank_lambda, "score_row_tokens": cfg.score_row_tokens,
                     "score_rows_per_batch": cfg.score_rows_per_batch, "torch_threads": torch.get_num_threads()},
        "models": {}, "references": {}, "seed_comparison": {}}
    real_texts = [(i, c) for i in range(len(gen_videos)) for c in csets[i].real]   # every real comment, for
    real_ref: dict[str, Any] | None = None                                          # MAUVE and the length median
    tok_count: Callable[[str], int] | None = None
    per_video: list[dict[str, Any]] = []
    gen_rows: list[dict[str, Any]] = []
    shared, budget_notes = shared_prompt_settings(models, cfg.max_prompt_tokens)
    notes += budget_notes
    for label, spec, run in models:
        t0 = time.perf_counter()
        loaded = load_for_inference(spec, run, precision=precision)
        m, tok, info = loaded
        pcfg = shared if run is None else prompt_settings(run, shared.max_prompt_tokens)
        pcfg = resolve_prompt_config(tok, pcfg, model=info.get("model"))  # a base model's `auto`: chat or plain, said on stderr
        tm: dict[str, Any] = {"load_s": time.perf_counter() - t0}
        if tok_count is None:
            tok_count = lambda t, tok=tok: len(tok(t, add_special_tokens=False)["input_ids"])  # noqa: E731
            real_ref = real_reference([c for _, c in real_texts], embedder, tok_count)
        rows, st = score_videos(m, tok, pcfg, videos, csets, partner, cfg.score_row_tokens, cfg.score_rows_per_batch,
                                autocast_ctx(resolve_precision(precision)), progress, label,
                                no_video="pmi" in cfg.ranking_list())
        tm.update(st)
        entry: dict[str, Any] = {"model": info["model"], "adapter": info["adapter"], "precision": info["precision"],
                                 "max_prompt_tokens": pcfg.max_prompt_tokens, "truncation": pcfg.truncation,
                                 "prompt_format": pcfg.prompt_format,
                                 "likelihood": likelihood_summary(rows, seed), "ranking": ranking_summary(rows, seed),
                                 "generation": {}, "seed_generation": {}}
        per_video += [{"model": label, "video_id": v.video_id, "candidates": r["candidates"],
                       "nll_own": mean_nll(r["own"]), "nll_title_only": mean_nll(r["title"]),
                       "nll_other_video": mean_nll(r["other"]) if r.get("other") else None,
                       "rank_own": [s.mean_rank for s in r["rank_full"]],
                       "rank_title_only": [s.mean_rank for s in r["rank_title"]],
                       "rank_pmi": [s.mean_rank for s in r["rank_pmi"]] if "rank_pmi" in r else None}
                      for v, r in zip(videos, rows)]
        for name, vids, emb, key in (("generation", gen_videos, video_emb, "held_out"),
                                     ("seed_generation", seed_videos, seed_emb, "seed_test")):
            if not vids or not presets:
                continue
            grows, tm[f"{name}_s"] = run_generation(loaded, vids, pcfg, cfg, embedder)
            index = {v.video_id: i for i, v in enumerate(vids)}
            ref = real_ref if key == "held_out" else {"median_new_tokens": (real_ref or {}).get("median_new_tokens")}
            for p, rr in grows.items():
                entry[name][p] = generation_metrics([r["comment"] for r in rr], [index[r["video_id"]] for r in rr],
                                                    emb, embedder, generic_emb, tok_count,
                                                    [r["finished"] for r in rr], [r["new_tokens"] for r in rr], ref,
                                                    seed)
                n_real = (real_ref or {}).get("count", 0)
                if key == "held_out" and mauve_available() and min(len(rr), n_real) < MAUVE_MIN_COMMENTS:
                    notes.append(f"MAUVE of {label}/{p} not computed: {len(rr)} generated and {n_real} real comments, "
                                 f"it needs {MAUVE_MIN_COMMENTS} on each side (more `num_comments` or videos)")
                if name == "seed_generation":
                    result["seed_comparison"][f"{label}/{p}"] = entry[name][p]
                gen_rows += [{"set": key, "model": label, "preset": p, "video_id": r["video_id"],
                              "comment_index": r["comment_index"], "comment": r["comment"],
                              "new_tokens": r["new_tokens"], "finished": r["finished"]} for r in rr]
        entry["timing_s"] = tm
        result["models"][label] = entry
        del m, loaded
    assert tok_count is not None and real_ref is not None
    ref = generation_metrics([c for _, c in real_texts], [i for i, _ in real_texts], video_emb, embedder, generic_emb,
                             tok_count)
    ref.update(median_new_tokens=real_ref["median_new_tokens"], length_ratio_to_real=1.0)
    result["references"]["real_held_out"] = ref
    result["examples"] = side_by_side(gen_videos, [csets[i].real for i in range(len(gen_videos))], gen_rows)
    for label, texts in seed_outputs.items():
        result["seed_comparison"][label] = generation_metrics(texts, list(range(len(texts))), seed_emb, embedder,
                                                              generic_emb, tok_count)
    timing.update(total_s=time.perf_counter() - t_start, load_average_end=list(os.getloadavg()))
    result["timing_s"] = timing
    return result, per_video, gen_rows
