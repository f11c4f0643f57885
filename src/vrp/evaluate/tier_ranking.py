"""The like-tier part of `vrp evaluate`: does a tiered run know which comments rise to the top?

Knows, for held-out videos whose comments have tiers (`vrp.tiers.comment_tiers`, from the run's tier source):
- scoring every tiered real comment after the prompt followed by each tier's marker and by no marker, in one
  shared-prefix packed row per video (the markers are the completions' contexts, `vrp.packing.Row`; exact as the
  training loss is) — `score_under_markers`;
- (a) tier accuracy: the tier whose marker gives the comment the highest likelihood vs its true tier, with the
  confusion matrix and chance = the majority tier's share — `tier_accuracy`;
- (b) pairwise: under one marker, is the video's real top comment more likely (mean log-prob per token) than its low
  comment; share of videos with a 95% percentile bootstrap CI over videos (Efron 1979), chance 0.5 — `pairwise`;
- (c) generation per tier: comments generated with each tier's marker, measured like the other generations
  (`vrp.evaluate.run.generation_metrics`) next to the real comments of that tier — `generation_by_tier`;
- without any model, how the real top and low comments differ (words, questions, emoji, generic rate; top − low
  per video with bootstrap CIs) — `real_comment_differences`;
- the report section (`tier_markdown`).
Does not know: the rest of the evaluation (`vrp.evaluate.run`), the tier rules (`vrp.tiers`), decoding.
The base model is scored too, as the reference: it has never seen the markers, so its accuracy shows what the marker
words alone and the comments' own likelihood give.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vrp.clean import is_pictographic
from vrp.comment_pool import frequent_comments
from vrp.embeddings import embed_videos
from vrp.errors import ConfigError
from vrp.evaluate import metrics as M
from vrp.evaluate.run import generation_metrics, shared_prompt_settings
from vrp.generate.run import predict
from vrp.model import load_for_inference
from vrp.precision import autocast_ctx, resolve_precision
from vrp.prompt_format import resolve_prompt_config
from vrp.prompts import build_completion_ids, video_prompt_ids
from vrp.records import Video
from vrp.rundir import prompt_settings
from vrp.scoring import score_packed
from vrp.tiers import (
    LABELS,
    MARKERS,
    TIERS,
    comment_tiers,
    dataset_format,
    marker_ids,
    resolve_tier_source,
    run_tier_source,
)

VARIANTS = TIERS + ("any",)  # the markers each comment is scored under; "any" = no marker


def score_under_markers(model: Any, tok: Any, pcfg: Any, videos: Sequence[Video], source: str,
                        row_tokens: int = 512, rows_per_batch: int = 1, progress: bool = False) -> list[dict[str, Any]]:
    """Log-likelihood of every tiered real comment (and its end-of-turn token) under each of `VARIANTS`.

    Returns one dict per comment: `video` (index into `videos`), `video_id`, `tier`, `text`, `tokens` (comment
    tokens incl. end-of-turn) and `logprob` {variant: sum of natural-log probabilities}. All variants of a video's
    comments are packed behind one copy of its prompt (rows of at most prompt + `row_tokens` tokens, more when one
    marker + comment is longer). Runs under `torch.no_grad()` in the caller's autocast; sets eval mode.
    """
    import torch
    from tqdm.auto import tqdm

    model.eval()
    markers = {t: marker_ids(tok, t) for t in VARIANTS}
    out: list[dict[str, Any]] = []
    for vi, v in enumerate(tqdm(videos, desc="score tiers", unit="video", disable=not progress)):
        comments = [c for c in v.comments if c.text.strip()]
        items = [(c, t) for c, t in zip(comments, comment_tiers(comments, source)) if t is not None]
        if not items:
            continue
        prompt = video_prompt_ids(tok, v, pcfg)
        ids = [build_completion_ids(tok, c.text, pcfg) for c, _ in items]
        comps = [c for c in ids for _ in VARIANTS]
        ctxs = [markers[name] for _ in ids for name in VARIANTS]
        budget = len(prompt) + max(row_tokens, max(len(a) + len(b) for a, b in zip(ctxs, comps)))
        with torch.no_grad():
            sums = score_packed(model, prompt, comps, budget, rows_per_batch, contexts=ctxs)
        for j, (c, t) in enumerate(items):
            k = j * len(VARIANTS)
            out.append({"video": vi, "video_id": v.video_id, "tier": t, "text": c.text, "tokens": len(ids[j]),
                        "logprob": {name: sums[k + n] for n, name in enumerate(VARIANTS)}})
    return out


def _cluster_ci(per_video: Sequence[tuple[float, int]], seed: int, n_resamples: int = 10000) -> list[float]:
    """95% percentile-bootstrap CI of sum(hits) / sum(n), resampling videos (clusters) with replacement."""
    hits = np.array([h for h, _ in per_video], dtype=np.float64)
    n = np.array([k for _, k in per_video], dtype=np.float64)
    if len(n) < 2:
        share = float(hits.sum() / max(n.sum(), 1))
        return [share, share]
    idx = np.random.default_rng(seed).integers(0, len(n), size=(n_resamples, len(n)))
    shares = hits[idx].sum(axis=1) / n[idx].sum(axis=1)
    lo, hi = np.quantile(shares, [0.025, 0.975])
    return [float(lo), float(hi)]


def tier_accuracy(records: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """(a) Each comment's predicted tier = the one of `TIERS` whose marker gives it the highest log-likelihood (the
    same tokens under every marker, so sums compare like means; exact ties go to the first of top, typical, low).
    Returns `{comments, accuracy, ci95 (bootstrap over videos), chance (majority share), majority, true_counts,
    confusion {true: {predicted: n}}, recall {tier: share of that tier's comments predicted right}}`."""
    if not records:
        return {"comments": 0}
    pred = [max(TIERS, key=lambda t, r=r: (r["logprob"][t], -TIERS.index(t))) for r in records]
    true = [r["tier"] for r in records]
    counts = Counter(true)
    majority, n_major = max(counts.items(), key=lambda kv: (kv[1], -TIERS.index(kv[0])))
    confusion = {t: {p: sum(1 for a, b in zip(true, pred) if a == t and b == p) for p in TIERS} for t in TIERS}
    by_video: dict[int, list[int]] = {}
    for r, p in zip(records, pred):
        by_video.setdefault(r["video"], []).append(int(p == r["tier"]))
    return {"comments": len(records), "accuracy": float(np.mean([a == b for a, b in zip(true, pred)])),
            "ci95": _cluster_ci([(sum(h), len(h)) for h in by_video.values()], seed),
            "chance": n_major / len(records), "majority": majority, "true_counts": {t: counts[t] for t in TIERS},
            "confusion": confusion,
            "recall": {t: (confusion[t][t] / counts[t] if counts[t] else None) for t in TIERS}}


def pairwise(records: Sequence[dict[str, Any]], marker: str = "top", seed: int = 0) -> dict[str, Any]:
    """(b) Under `marker` (a tier or `any`), the share of videos whose real top comment has a higher mean log-prob
    per token than their real low comment. A video with several top or low comments scores the share of its
    (top, low) pairs won (a tie counts half). Returns `{marker, videos, share, ci95, chance: 0.5}` (share None when
    no video has both)."""
    per: dict[int, dict[str, list[float]]] = {}
    for r in records:
        if r["tier"] in ("top", "low"):
            per.setdefault(r["video"], {"top": [], "low": []})[r["tier"]].append(r["logprob"][marker] / r["tokens"])
    values = [float(np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a in d["top"] for b in d["low"]]))
              for d in per.values() if d["top"] and d["low"]]
    if not values:
        return {"marker": marker, "videos": 0, "share": None, "ci95": None, "chance": 0.5}
    mean, lo, hi = M.bootstrap_ci(values, 0.95, seed=seed)
    return {"marker": marker, "videos": len(values), "share": mean, "ci95": [lo, hi], "chance": 0.5}


def _features(texts: Sequence[str], embedder: Any, generic_emb: np.ndarray | None) -> dict[str, np.ndarray]:
    out = {"words": np.array([len(t.split()) for t in texts], dtype=float),
           "question": np.array([float("?" in t) for t in texts]),
           "emoji": np.array([float(any(is_pictographic(ch) for ch in t)) for t in texts])}
    if generic_emb is not None and len(generic_emb) and len(texts):
        sims = M.cosine_matrix(np.asarray(embedder.encode(list(texts))), np.asarray(generic_emb))
        out["generic"] = (sims.max(axis=1) >= 0.9).astype(float)
    return out


FEATURES = [("words", "length (words)"), ("question", "asks a question"), ("emoji", "has an emoji"),
            ("generic", "generic (cos ≥ 0.9 to a frequent training comment)")]


def real_comment_differences(videos: Sequence[Video], source: str, embedder: Any, generic_emb: np.ndarray | None,
                             seed: int = 0) -> dict[str, Any]:
    """How the real comments of each tier differ, without any language model: per tier the number of comments and
    the mean of each of `FEATURES` (and the median like count when tiers come from likes); and per feature the
    top − low difference of the per-video means over videos that have both, with a 95% bootstrap CI over videos."""
    rows = [(vi, t, c) for vi, v in enumerate(videos)
            for c, t in zip(v.comments, comment_tiers(v.comments, source)) if t is not None]
    if not rows:
        return {"comments": 0}
    feats = _features([c.text for _, _, c in rows], embedder, generic_emb)
    per_tier: dict[str, dict[str, Any]] = {}
    for t in TIERS:
        sel = [i for i, (_, tt, _) in enumerate(rows) if tt == t]
        per_tier[t] = {"comments": len(sel), **{k: (float(f[sel].mean()) if sel else None) for k, f in feats.items()}}
        if source == "likes":
            per_tier[t]["median_likes"] = float(np.median([rows[i][2].like_count for i in sel])) if sel else None
    diffs: dict[str, Any] = {}
    for k, f in feats.items():
        vals = []
        for vi in sorted({vi for vi, _, _ in rows}):
            top = [f[i] for i, (v, t, _) in enumerate(rows) if v == vi and t == "top"]
            low = [f[i] for i, (v, t, _) in enumerate(rows) if v == vi and t == "low"]
            if top and low:
                vals.append(float(np.mean(top) - np.mean(low)))
        if vals:
            mean, lo, hi = M.bootstrap_ci(vals, 0.95, seed=seed)
            diffs[k] = {"mean": mean, "ci95": [lo, hi], "videos": len(vals)}
    return {"comments": len(rows), "source": source, "tiers": per_tier, "top_minus_low": diffs}


def generation_by_tier(loaded: tuple[Any, Any, dict[str, Any]], run: Any, videos: Sequence[Video], pcfg: Any,
                       cfg: Any, preset: str, progress: bool = False) -> dict[str, list[dict[str, Any]]]:
    """(c) Prediction rows (`vrp.generate.run.predict`) for `videos` with each tier's marker, one preset."""

    return {t: predict(list(videos), replace(cfg.generate_config(preset), run=str(run.path), tier=t),
                       progress=progress, loaded=loaded, prompt=pcfg) for t in TIERS}


def evaluate_tiers(data: Any, models: Sequence[tuple[str, str | None, Any]], embedder: Any, cfg: Any
                   ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The tier section of `vrp evaluate` for `models` (`(label, base model spec, RunDir or None)`, as
    `vrp.evaluate.run.evaluate_run` takes them) on `data` (`EvalData`): `(section, generation rows)`, or
    `(None, [])` when no run was trained with tiers. The base model (run None) is scored as the reference; runs
    without tiers are left out. Generation per tier uses the first preset of `cfg.presets` (none: skipped) on the
    first `cfg.max_gen_videos` videos. When the held-out videos have no tiers the section says why."""

    sources = {label: run_tier_source(run) for label, _, run in models if run is not None}
    tiered = [label for label, s in sources.items() if s]
    if not tiered:
        return None, []
    source = sources[tiered[0]]
    notes = [f"runs {tiered[1:]} use the tier source of {tiered[0]!r}"] if len(tiered) > 1 else []
    try:
        source = resolve_tier_source(source, data.videos, dataset_format(Path(data.source).parent))
    except ConfigError as e:
        return {"skipped": f"the held-out videos have no tiers: {e.message}"}, []
    t0 = time.perf_counter()
    generic_emb = None
    if data.train_comments:
        frequent = frequent_comments(data.train_comments, 50, embedder.encode(data.train_comments))
        generic_emb = embedder.encode(frequent) if frequent else None
    section: dict[str, Any] = {"source": source, "markers": dict(MARKERS), "notes": notes,
                               "real": real_comment_differences(data.videos, source, embedder, generic_emb, cfg.seed),
                               "models": {}}
    presets = cfg.preset_list()[:1]
    gen_videos = data.videos[: cfg.max_gen_videos or None]
    video_emb = embed_videos(embedder, data.videos) if presets else None  # on-topic: among all, as section 4
    gen_rows: list[dict[str, Any]] = []
    shared, _ = shared_prompt_settings(models, cfg.max_prompt_tokens)
    for label, spec, run in models:
        if run is not None and not sources.get(label):
            continue
        t1 = time.perf_counter()
        loaded = load_for_inference(spec, run, precision=cfg.precision)
        m, tok, _ = loaded
        pcfg = resolve_prompt_config(tok, shared if run is None else prompt_settings(run, shared.max_prompt_tokens),
                                     announce=False, model=loaded[2].get("model"))  # said in the likelihood part
        with autocast_ctx(resolve_precision(cfg.precision)):
            records = score_under_markers(m, tok, pcfg, data.videos, source, cfg.score_row_tokens,
                                          cfg.score_rows_per_batch, progress=not cfg.quiet)
        entry: dict[str, Any] = {"accuracy": tier_accuracy(records, cfg.seed),
                                 "pairwise": {k: pairwise(records, k, cfg.seed) for k in ("top", "any", "low")},
                                 "generation": {}, "seconds": {"score": time.perf_counter() - t1}}
        if run is not None and presets:
            t2 = time.perf_counter()
            count = lambda t, tok=tok: len(tok(t, add_special_tokens=False)["input_ids"])  # noqa: E731
            index = {v.video_id: i for i, v in enumerate(gen_videos)}
            for tier, rows in generation_by_tier(loaded, run, gen_videos, pcfg, cfg, presets[0],
                                                 not cfg.quiet).items():
                real = [(i, c.text) for i, v in enumerate(gen_videos)
                        for c, t in zip(v.comments, comment_tiers(v.comments, source)) if t == tier]
                entry["generation"][tier] = {
                    "generated": generation_metrics([r["comment"] for r in rows], [index[r["video_id"]] for r in rows],
                                                    video_emb, embedder, generic_emb, count),
                    "real": generation_metrics([c for _, c in real], [i for i, _ in real], video_emb, embedder,
                                               generic_emb, count)}
                gen_rows += [{"set": "tiers", "model": label, "preset": presets[0], "tier": tier,
                              "video_id": r["video_id"], "comment_index": r["comment_index"], "comment": r["comment"],
                              "new_tokens": r["new_tokens"], "finished": r["finished"]} for r in rows]
            entry["seconds"]["generation"] = time.perf_counter() - t2
        section["models"][label] = entry
        del m, loaded
    section["seconds"] = time.perf_counter() - t0
    return section, gen_rows


def _fmt(x: Any, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


NO_TIERED_COMMENTS = "no held-out comment has a tier, so there is no tier accuracy"
NO_PAIRS = "no held-out video has both a top and a low comment, so there is no pairwise comparison"


def tier_summary(label: str, entry: dict[str, Any]) -> str:
    """The line `vrp evaluate` prints for one model's tier results (`entry`: `{accuracy, pairwise}` as
    `evaluate_tiers` builds it): tier accuracy with chance, and the share of videos whose top comment is more likely
    than their low one under the top marker. A measure with nothing to measure (no tiered comment, no video with both
    a top and a low comment) is said to be missing, never printed as nan."""
    a, p = entry["accuracy"], entry["pairwise"]["top"]
    first = (f"tier accuracy {a['accuracy']:.3f} (chance {a['chance']:.3f}, {a['comments']} comments)"
             if a.get("comments") else NO_TIERED_COMMENTS)
    second = (f"top comment more likely than low under the top marker in {p['share']:.3f} of {p['videos']} videos"
              if p.get("videos") and p.get("share") is not None else NO_PAIRS)
    return f"{label}: {first}; {second}"


def _ci(d: dict[str, Any] | None, signed: bool = False) -> str:
    if not d or d.get("ci95") is None:
        return "–"
    f = "{:+.3f}" if signed else "{:.3f}"
    value = d.get("mean", d.get("share", d.get("accuracy")))
    return f"{f.format(value)} [{f.format(d['ci95'][0])}, {f.format(d['ci95'][1])}]"


TIER_READING = """How to read it: **tier accuracy** is the share of held-out real comments whose own tier's marker
gives them the highest likelihood (chance = always guessing the most common tier); the confusion matrix shows which
tiers are told apart. **Pairwise** is the share of videos whose real top comment is more likely (mean log-prob per
token) than their real low comment: under the `top` marker a model that learned what rises to the top is above
0.5, and the gap to the no-marker (`any`) row is what the marker adds. A CI that includes the chance value means
the data do not show a difference. The base model has never seen the markers: its row is the reference. The
model-free table shows what there is to learn at all: if top and low comments barely differ in length, questions,
emoji and genericness, even a perfect model has little to go on."""


def tier_markdown(section: dict[str, Any] | None) -> list[str]:
    """The report.md lines of the tier section (none when `section` is None)."""
    if not section:
        return []
    out = ["## 6. Like tiers: top, typical and ignored comments", ""]
    if "skipped" in section:
        return out + [f"Skipped: {section['skipped']}.", ""]
    out += [f"Tiers from {section['source']} (markers: " + ", ".join(f"`{m}`" for m in section["markers"].values())
            + ")." + "".join(f" Note: {n}." for n in section["notes"]), "", TIER_READING, ""]
    rows = []
    for label, e in section["models"].items():
        a, p = e["accuracy"], e["pairwise"]
        rows.append(f"| {label} | {a.get('comments', 0)} | {_ci(a)} | {_fmt(a.get('chance'))} ({a.get('majority')})"
                    f" | {_ci(p['top'])} ({p['top']['videos']}) | {_ci(p['any'])} | {_ci(p['low'])} |")
    out += ["| model | comments | tier accuracy (95% CI) | chance (majority) | pairwise, top marker (videos) | "
            "pairwise, no marker | pairwise, low marker |", "|---|---|---|---|---|---|---|", *rows, ""]
    entries = list(section["models"].values())
    if entries and not any(e["accuracy"].get("comments") for e in entries):
        out += [f"Note: {NO_TIERED_COMMENTS}.", ""]
    if entries and not any(e["pairwise"]["top"].get("videos") for e in entries):
        out += [f"Note: {NO_PAIRS} (– above).", ""]
    for label, e in section["models"].items():
        conf = e["accuracy"].get("confusion")
        if conf:
            out += [f"Confusion of `{label}` (rows: true tier, columns: tier with the highest likelihood):", "",
                    "| true \\ predicted | " + " | ".join(TIERS) + " |", "|---" * (len(TIERS) + 1) + "|"]
            out += [f"| {t} | " + " | ".join(str(conf[t][q]) for q in TIERS) + " |" for t in TIERS] + [""]
    gen = [(label, t, g) for label, e in section["models"].items() for t, g in e["generation"].items()]
    if gen:
        out += ["Generated comments per tier, next to the real comments of that tier:", "",
                "| model | tier | outputs | length (tokens) | generic rate | on-topic Recall@1 | real: length | "
                "real: generic rate | real: on-topic Recall@1 |", "|---" * 9 + "|"]
        for label, t, g in gen:
            cells = []
            for m in (g["generated"], g["real"]):
                cells += [_fmt((m.get("length_tokens") or {}).get("mean"), 1), _fmt(m.get("generic_rate")),
                          _fmt((m.get("on_topic") or {}).get("recall_at_1"))]
            out.append(f"| {label} | {LABELS[t]} | {g['generated']['outputs']} | " + " | ".join(cells[:3]) + " | "
                       + " | ".join(cells[3:]) + " |")
        out.append("")
    real = section["real"]
    if real.get("comments"):
        keys = [(k, n) for k, n in FEATURES if k in real["top_minus_low"]]
        out += ["Real held-out comments by tier (no model):", "",
                "| | " + " | ".join(n for _, n in keys) + (" | median likes" if real["source"] == "likes" else "")
                + " | comments |", "|---" * (len(keys) + 2 + (real["source"] == "likes")) + "|"]
        for t in TIERS:
            d = real["tiers"][t]
            out.append(f"| {t} | " + " | ".join(_fmt(d.get(k)) for k, _ in keys)
                       + (f" | {_fmt(d.get('median_likes'), 0)}" if real["source"] == "likes" else "")
                       + f" | {d['comments']} |")
        out.append("| top − low per video (95% CI) | " + " | ".join(_ci(real["top_minus_low"][k], True)
                                                                   for k, _ in keys)
                   + (" | " if real["source"] == "likes" else "") + " | |")
        out.append("")
    return out
