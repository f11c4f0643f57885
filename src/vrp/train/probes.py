"""Learning-curve probes: cheap, fixed measurements of whether the model in training uses the video and stops.

Knows: the fixed validation subset a run probes at every validation (its first `curve_videos` validation videos),
the candidate set of each subset video, and the probe metrics written to each validation row of `metrics.jsonl`
(keys `val_*`, next to the full-validation `val_nll`):
- `val_gain`: conditioning gain, nats per comment token: the NLL of a video's real comments under another subset
  video's prompt (a fixed derangement: video i borrows the prompt of video i + 1, the last the first's) minus under
  its own, token-weighted within a video, mean over videos (as `vrp evaluate`'s conditioning gain);
- `val_recall_at_10`, `val_mrr`: each real comment ranked by mean log-likelihood per token given its video's prompt
  among the video's distractors (the other real comments of the video are left out), tie-aware (scores within
  `TIE_TOLERANCE` nats per token count as tied, ties broken uniformly at random in expectation), averaged over a
  video's real comments, then over videos; Recall@10 is None (not measured) when a video has 10 or fewer
  candidates, where every order puts each real comment within the top 10;
- `val_pmi_recall_at_10`, `val_pmi_mrr`: the same ranking by PMI, mean log p(c | video) - mean log p(c | no-video
  prompt), lambda = 1 (Holtzman et al. 2021, domain-conditional PMI; `prompts.no_video_prompt_ids`);
- `val_finished_rate`, `val_median_new_tokens`: one comment per subset video sampled with the default preset
  (`decoding.generate_comments`, one video at a time, at most `decoding.MAX_NEW_TOKENS` new tokens, seed `seed + i`
  for video i): the share that ended with a stop token and the median number of new tokens (the stop token counted);
- `val_probe_score_seconds`, `val_probe_generate_seconds`, `val_probe_seconds`: the wall time of the probe.
A subset video's candidates (at most `MAX_CANDIDATES`): its own real comments (up to half of the set), then
distractors, half the other subset videos' comments (taken round-robin from the next video on) and half the most
frequent training comments (by count of the lower-cased, whitespace-collapsed text), one source filling in for the
other when it runs short; no distractor repeats a real comment's text. No embeddings: `vrp evaluate` draws its 100
candidates by video similarity, this set is only meant to be cheap and fixed, so its numbers are comparable along
one run, not with `vrp evaluate`'s. The analytic random baseline of the same sets is in `ProbeSet.describe`.
Scoring is `scoring.score_candidates` (prompt KV cache) under `torch.no_grad()`, in eval mode and under the run's
autocast; the model's train/eval mode and torch's RNG states (CPU and CUDA) are restored afterwards, so probing does
not change the training that follows.
Does not know: when validation runs (`vrp.train.loop`), the best checkpoint (`vrp.train.checkpoint`), `vrp evaluate`
(which sits above training and is not imported).
"""
from __future__ import annotations

import math
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

from vrp.charts import learning_curve
from vrp.decoding import generate_comments
from vrp.precision import autocast_ctx
from vrp.presets import DEFAULT_PRESET, MAX_NEW_TOKENS
from vrp.prompts import build_completion_ids, no_video_prompt_ids, video_prompt_ids
from vrp.scoring import score_candidates
from vrp.train.validate import evaluate_nll

MAX_CANDIDATES = 50
GENERATE_MAX_NEW_TOKENS = MAX_NEW_TOKENS  # the generation budget of the finished-rate probe (tests shorten it)
RECALL_K = 10
PMI_LAMBDA = 1.0
TIE_TOLERANCE = 1e-6  # nats per token: the same candidate scored in another batch layout can differ in the last bits
PROBE_KEYS = ("val_gain", "val_recall_at_10", "val_mrr", "val_pmi_recall_at_10", "val_pmi_mrr", "val_finished_rate",
              "val_median_new_tokens")


def text_key(text: str) -> str:
    """The text a candidate is compared by: lower-cased, whitespace collapsed, stripped."""
    return re.sub(r"\s+", " ", text).strip().lower()


def frequent_texts(videos: Sequence[Any], n: int) -> list[str]:
    """The `n` most frequent comment texts of `videos` (records with `.comments[].text`), by count of `text_key`,
    ties in order of first appearance; each given as its first spelling."""
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    for v in videos:
        for c in v.comments:
            if (k := text_key(c.text)):
                counts[k] += 1
                first.setdefault(k, c.text.strip())
    order = {k: i for i, k in enumerate(first)}
    return [first[k] for k in sorted(counts, key=lambda k: (-counts[k], order[k]))[:n]]


@dataclass
class ProbeSet:
    """The fixed probe data of a run. prompts: per subset video, its prompt ids; real / distractors: per video, the
    completion ids (ending with the end-of-turn token) of its real comments / its distractors; partner[i]: the video
    whose prompt video i's real comments are also scored under (-1 with a single video); no_video: the no-video
    prompt ids; seed: generation seed of video 0; prompt_format: the format the prompts are rendered in (its stop
    tokens end the sampled comments)."""

    video_ids: list[str]
    prompts: list[list[int]]
    real: list[list[list[int]]]
    distractors: list[list[list[int]]]
    partner: list[int]
    no_video: list[int]
    seed: int
    prompt_format: str = "auto"

    def describe(self) -> dict[str, Any]:
        """Sizes of the probe and the analytic random baseline of its ranking (a uniformly random order: MRR
        H_n / n, Recall@10 min(10, n) / n for a video of n candidates, averaged over videos; None when a video has 10
        or fewer candidates, where Recall@10 is 1 whatever the order, `recall_defined`)."""
        mrr = [_random_rr(len(d) + 1) for d in self.distractors if d]
        rec = [min(RECALL_K, len(d) + 1) / (len(d) + 1) for d in self.distractors if d] if self.recall_defined() else []
        return {"videos": len(self.video_ids), "video_ids": self.video_ids,
                "real_comments": sum(len(r) for r in self.real),
                "mean_candidates": statistics.fmean(len(r) + len(d) for r, d in zip(self.real, self.distractors)),
                "random_mrr": statistics.fmean(mrr) if mrr else None,
                "random_recall_at_10": statistics.fmean(rec) if rec else None,
                "pmi_lambda": PMI_LAMBDA, "generation_seed": self.seed}

    def recall_defined(self) -> bool:
        """Whether Recall@10 measures the ranking: every ranked video (one with distractors) has more than
        `RECALL_K` candidates (its real comment + distractors); with fewer the rank is <= 10 whatever the scores."""
        return all(len(d) + 1 > RECALL_K for d in self.distractors if d)


def _random_rr(n: int) -> float:
    return math.fsum(1.0 / r for r in range(1, n + 1)) / n


def build_probe_set(tokenizer: Any, val_videos: Sequence[Any], train_videos: Sequence[Any], pcfg: Any,
                    n_videos: int, seed: int, max_candidates: int = MAX_CANDIDATES) -> ProbeSet | None:
    """The probe data of the first `n_videos` validation videos (None when `n_videos` is 0 or there are none).

    pcfg: the run's `PromptConfig`; seed: the generation seed. Candidates as in the module doc. Raises VrpError from
    `prompts` for a prompt that does not fit (not after `setup`, which encoded the same videos)."""

    subset = list(val_videos[:n_videos])
    if not subset:
        return None
    n = len(subset)
    texts = [_distinct(c.text for c in v.comments)[: max(1, max_candidates // 2)] for v in subset]
    frequent = frequent_texts(train_videos, max_candidates)
    ids: dict[str, list[int]] = {}

    def enc(t: str) -> list[int]:
        if t not in ids:
            ids[t] = build_completion_ids(tokenizer, t, pcfg)
        return ids[t]

    distractors = []
    for i in range(n):
        room = max_candidates - len(texts[i])
        # the other videos' comments round-robin from the next video on: 1st of each, then 2nd of each, ...
        others = [texts[(i + j) % n][k] for k in range(max(map(len, texts))) for j in range(1, n)
                  if k < len(texts[(i + j) % n])]
        taken = {text_key(t) for t in texts[i]}
        picked = _take(others, room - room // 2, taken)
        picked += _take(frequent, room - len(picked), taken)
        picked += _take(others, room - len(picked), taken)  # fewer frequent texts than their half
        distractors.append([enc(t) for t in picked])
    return ProbeSet(video_ids=[v.video_id for v in subset],
                    prompts=[video_prompt_ids(tokenizer, v, pcfg) for v in subset],
                    real=[[enc(t) for t in ts] for ts in texts], distractors=distractors,
                    partner=[(i + 1) % n if n > 1 else -1 for i in range(n)],
                    no_video=no_video_prompt_ids(tokenizer, pcfg), seed=seed, prompt_format=pcfg.prompt_format)


def _distinct(texts: Any) -> list[str]:
    """The stripped texts, one per `text_key` (its first spelling), empty ones left out, in order."""
    seen: set[str] = set()
    out = []
    for t in texts:
        if (k := text_key(t)) and k not in seen:
            seen.add(k)
            out.append(t.strip())
    return out


def _take(pool: Sequence[str], n: int, taken: set[str]) -> list[str]:
    """Up to `n` texts of `pool` whose key is not in `taken` (which they are added to), in order."""
    out: list[str] = []
    for t in pool:
        if len(out) >= n:
            break
        if text_key(t) not in taken:
            taken.add(text_key(t))
            out.append(t)
    return out


def rank_stats(gold: float, others: Sequence[float], k: int = RECALL_K) -> tuple[float, float]:
    """`(reciprocal rank, Recall@k)` of a gold score among `others` (higher = better), in expectation over random
    tie-breaks: with g others above and t tied (within `TIE_TOLERANCE`), the rank is uniform on g+1 .. g+t+1."""
    above = sum(o > gold + TIE_TOLERANCE for o in others)
    tied = sum(abs(o - gold) <= TIE_TOLERANCE for o in others)
    ranks = range(above + 1, above + tied + 2)
    return statistics.fmean(1.0 / r for r in ranks), statistics.fmean(r <= k for r in ranks)


def _score(model: Any, prompt: list[int], cands: Sequence[list[int]]) -> dict[tuple[int, ...], tuple[float, int]]:
    """`(sum log-prob in nats, tokens)` of each distinct candidate given `prompt`."""

    todo = list(dict.fromkeys(tuple(c) for c in cands))
    row = len(prompt) + max(512, max(len(c) for c in todo))
    return dict(zip(todo, score_candidates(model, prompt, [list(c) for c in todo], max_row_tokens=row,
                                           rows_per_batch=4)))


def _mean_lp(score: tuple[float, int]) -> float:
    return score[0] / score[1]


def _nll(scores: Sequence[tuple[float, int]]) -> float:
    return -math.fsum(s for s, _ in scores) / sum(n for _, n in scores)


def _ranking(real: Sequence[float], dis: Sequence[float]) -> tuple[float, float]:
    stats = [rank_stats(g, dis) for g in real]
    return statistics.fmean(s[0] for s in stats), statistics.fmean(s[1] for s in stats)


def run_probes(model: Any, tokenizer: Any, probes: ProbeSet, prec: Any) -> dict[str, Any]:
    """The probe metrics of `model` (keys and definitions in the module doc; None where a metric needs more videos or
    candidates than the probe has). prec: the run's `vrp.precision.Precision` (its autocast is used)."""
    import torch

    was_training = model.training
    model.eval()
    n = len(probes.prompts)
    cuda = [torch.cuda.current_device()] if prec.device == "cuda" and torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=cuda), torch.no_grad(), autocast_ctx(prec):
            t0 = time.perf_counter()
            guests = {p: i for i, p in enumerate(probes.partner) if p >= 0}
            own, other = [], [None] * n
            for j in range(n):
                guest = probes.real[guests[j]] if j in guests else []
                sc = _score(model, probes.prompts[j], probes.real[j] + probes.distractors[j] + guest)
                own.append(sc)
                if guest:
                    other[guests[j]] = [sc[tuple(c)] for c in guest]
            union = [c for j in range(n) for c in probes.real[j] + probes.distractors[j]]
            nv = _score(model, probes.no_video, union)
            t1 = time.perf_counter()
            gen = [generate_comments(model, tokenizer, probes.prompts[i], DEFAULT_PRESET, 1, GENERATE_MAX_NEW_TOKENS,
                                     seed=probes.seed + i, no_video_ids=probes.no_video,
                                     prompt_format=probes.prompt_format)[0] for i in range(n)]
            t2 = time.perf_counter()
    finally:
        model.train(was_training)
    gains = [_nll(other[i]) - _nll([own[i][tuple(c)] for c in probes.real[i]]) for i in range(n) if other[i]]
    lik, pmi = [], []
    for i in range(n):
        if not probes.distractors[i]:
            continue
        real, dis = [tuple(c) for c in probes.real[i]], [tuple(c) for c in probes.distractors[i]]
        lik.append(_ranking([_mean_lp(own[i][c]) for c in real], [_mean_lp(own[i][c]) for c in dis]))
        p = {c: _mean_lp(own[i][c]) - PMI_LAMBDA * _mean_lp(nv[c]) for c in real + dis}
        pmi.append(_ranking([p[c] for c in real], [p[c] for c in dis]))
    out: dict[str, Any] = dict.fromkeys(PROBE_KEYS)
    if gains:
        out["val_gain"] = statistics.fmean(gains)
    if lik:
        out["val_mrr"], out["val_recall_at_10"] = (statistics.fmean(x[k] for x in lik) for k in (0, 1))
        out["val_pmi_mrr"], out["val_pmi_recall_at_10"] = (statistics.fmean(x[k] for x in pmi) for k in (0, 1))
        if not probes.recall_defined():  # 10 or fewer candidates: Recall@10 would be 1 for any model
            out["val_recall_at_10"] = out["val_pmi_recall_at_10"] = None
    out["val_finished_rate"] = statistics.fmean(g.finished for g in gen)
    out["val_median_new_tokens"] = float(statistics.median(g.tokens for g in gen))
    out.update(val_probe_score_seconds=t1 - t0, val_probe_generate_seconds=t2 - t1, val_probe_seconds=t2 - t0)
    return out


def validate(s: Any, progress: bool = False) -> tuple[dict[str, float], dict[str, Any]]:
    """Validate the model of the run setup `s` (`vrp.train.setup.TrainSetup`): `(evaluate_nll's {nll, perplexity,
    tokens} over all validation rows, the `val_*` fields of a metrics.jsonl row)`: `val_nll`, `val_nll_seconds`,
    and with a probe set (`s.probes`) the probe metrics and seconds of `run_probes`."""

    t0 = time.perf_counter()
    dist = getattr(s, "dist", None)  # a launched run: every process scores its share of the validation rows
    rows = s.memory.micro_rows if getattr(s, "memory", None) is not None else s.cfg.batch_size  # `max_memory`
    res = evaluate_nll(s.model, s.val_rows, s.tokenizer.pad_token_id, s.prec, rows, progress, dist,
                       getattr(s, "val_packing", "shared_prefix"))
    row: dict[str, Any] = {"val_nll": res["nll"], "val_nll_seconds": time.perf_counter() - t0}
    if getattr(s, "probes", None) is not None and (dist is None or dist.is_main):  # rank 0 alone logs them
        row.update(run_probes(s.model, s.tokenizer, s.probes, s.prec))
    return res, row


def curve_summary(s: Any, state: Any) -> dict[str, Any]:
    """What `metrics.json` says about the learning curve and the best checkpoint, and `curve.png` drawn from the
    validation rows of `state.history` (against comments seen): `best_step`, `best_val_nll`, `best_checkpoint` (the
    path relative to the run dir, None without validation), `final_validation` (the `val_*` fields of the last
    validation row) and `curve` (`ProbeSet.describe`, None without probes)."""

    rows = [h for h in state.history if h.get("val_nll") is not None]
    best = getattr(state, "best", None) or {}
    ckpt = s.run.best_checkpoint()
    desc = s.probes.describe() if getattr(s, "probes", None) is not None else None
    if rows:
        learning_curve(rows, s.run.curve_png, desc)
    return {"best_step": best.get("step"), "best_val_nll": best.get("val_nll"),
            "best_checkpoint": str(ckpt.relative_to(s.run.path)) if ckpt else None,
            "final_validation": {k: v for k, v in rows[-1].items() if k.startswith("val_")} if rows else None,
            "curve": desc}


def validation_scalars(row: dict[str, Any]) -> dict[str, float]:
    """TensorBoard scalars of a history row: each numeric `val_<name>` as `validation/<name>` (None left out)."""
    return {f"validation/{k[4:]}": float(v) for k, v in row.items()
            if k.startswith("val_") and isinstance(v, (int, float)) and not isinstance(v, bool)}
