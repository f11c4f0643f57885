"""Learning-curve probes: cheap, fixed measurements of whether the model in training uses the video and stops.

Knows: the fixed validation subset a run probes at every validation (its first `curve_videos` validation videos),
the candidate set of each subset video, and the probe metrics written to each validation row of `metrics.jsonl`
(keys `val_*`, next to the full-validation `val_nll`):
- `val_gain`: conditioning gain, nats per comment token: the NLL of a video's real comments under another subset
  video's prompt (a fixed derangement: video i borrows the prompt of video i + 1, the last the first's) minus under
  its own, token-weighted within a video, mean over videos (as `vrp evaluate`'s conditioning gain);
- `val_recall_at_10`, `val_mrr`: each real comment ranked by mean log-likelihood per token given its video's prompt
  among the video's distractors (the other real comments of the video are left out), tie-aware with `vrp evaluate`'s
  tie rule (equal scores tie, ties broken uniformly at random in exact expectation: `vrp.ranking.tie_aware_stats`),
  averaged over a video's real comments, then over videos (`vrp.ranking.summarize_ranks`); Recall@10 is None (not
  measured) when a video has 10 or fewer candidates, where every order puts each real comment within the top 10;
- `val_pmi_recall_at_10`, `val_pmi_mrr`: the same ranking by PMI, mean log p(c | video) - mean log p(c | no-video
  prompt), lambda = 1 (Holtzman et al. 2021, domain-conditional PMI; `vrp.ranking.pmi_score`,
  `prompts.no_video_prompt_ids`);
- `val_finished_rate`, `val_median_new_tokens`: one comment per subset video sampled with the default preset
  (`decoding.generate_comments`, one video at a time, at most `decoding.MAX_NEW_TOKENS` new tokens, seed `seed + i`
  for video i): the share that ended with a stop token and the median number of new tokens (the stop token counted);
- `val_probe_score_seconds`, `val_probe_generate_seconds`, `val_probe_seconds`: the wall time of the probe.
A subset video's candidates (at most `MAX_CANDIDATES`): its own real comments (up to half of the set), then
distractors, half the other subset videos' comments (taken round-robin from the next video on) and half the most
frequent training comments (`vrp.comment_pool.frequent_comments`, by count of `comment_pool.text_key`, ties by first
appearance), one source filling in for the other when it runs short; no distractor repeats a real comment's text
(`comment_pool.text_key`). No embeddings: `vrp evaluate` draws its 100 candidates by video similarity, this set is
only meant to be cheap and fixed, so its numbers are comparable along one run, not with `vrp evaluate`'s (the
statistics are the same functions, `vrp.ranking`). The analytic random baseline of the same sets is in
`ProbeSet.describe`.
Scoring is `scoring.score_candidates` (prompt KV cache) under `torch.no_grad()`, in eval mode and under the run's
autocast; the model's train/eval mode and torch's RNG states (CPU and CUDA) are restored afterwards, so probing does
not change the training that follows.
Does not know: when validation runs (`vrp.train.loop`), the best checkpoint (`vrp.train.checkpoint`), `vrp evaluate`
(which sits above training and is not imported), the rank statistics, NLL and PMI formulas (`vrp.ranking`), when two
comments are the same text (`vrp.comment_pool`).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from vrp.charts import learning_curve
from vrp.comment_pool import distinct_texts, frequent_comments, text_key
from vrp.decoding import generate_comments
from vrp.precision import Precision, autocast_ctx
from vrp.presets import DEFAULT_PRESET, MAX_NEW_TOKENS
from vrp.prompts import PromptConfig, build_completion_ids, no_video_prompt_ids, video_prompt_ids
from vrp.ranking import Score, distractor_ranks, mean_logprob, mean_nll, pmi_score, random_rank_stat, summarize_ranks
from vrp.records import Video
from vrp.scoring import score_candidates
from vrp.train.validate import evaluate_nll

if TYPE_CHECKING:  # vrp.train.setup imports this module
    import torch
    from transformers import PreTrainedTokenizerBase

    from vrp.train.setup import TrainSetup, TrainState

MAX_CANDIDATES = 50
GENERATE_MAX_NEW_TOKENS = MAX_NEW_TOKENS  # the generation budget of the finished-rate probe (tests shorten it)
RECALL_K = 10
PMI_LAMBDA = 1.0
PROBE_KEYS = ("val_gain", "val_recall_at_10", "val_mrr", "val_pmi_recall_at_10", "val_pmi_mrr", "val_finished_rate",
              "val_median_new_tokens")


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
        """Sizes of the probe and the analytic random baseline of its ranking (`vrp.ranking.random_rank_stat`, a
        uniformly random order: MRR H_n / n, Recall@10 min(10, n) / n for a real comment among n candidates (itself
        and its video's distractors), averaged as the probe's ranking is; None when a video has 10 or fewer
        candidates, where Recall@10 is 1 whatever the order)."""
        base = summarize_ranks([[random_rank_stat(len(d) + 1, (RECALL_K,))] for d in self.distractors if d],
                               (RECALL_K,))
        return {"videos": len(self.video_ids), "video_ids": self.video_ids,
                "real_comments": sum(len(r) for r in self.real),
                "mean_candidates": statistics.fmean(len(r) + len(d) for r, d in zip(self.real, self.distractors)),
                "random_mrr": base.get("mrr"), "random_recall_at_10": base.get(f"recall_at_{RECALL_K}"),
                "pmi_lambda": PMI_LAMBDA, "generation_seed": self.seed}


def build_probe_set(tokenizer: PreTrainedTokenizerBase, val_videos: Sequence[Video], train_videos: Sequence[Video],
                    pcfg: PromptConfig, n_videos: int, seed: int, max_candidates: int = MAX_CANDIDATES,
                    prompts: Sequence[Any] | None = None) -> ProbeSet | None:
    """The probe data of the first `n_videos` validation videos (None when `n_videos` is 0 or there are none).

    train_videos: iterated once (for the frequent comments); pcfg: the run's `PromptConfig`; seed: the generation
    seed; prompts: the validation split's encodings (`vrp.prompts.EncodedVideo`s, e.g. the token cache's) whose
    `prompt_ids` are taken instead of tokenizing the prompts again. Candidates as in the module doc. Raises VrpError
    from `prompts` for a prompt that does not fit (not after `setup`, which encoded the same videos)."""

    subset = list(val_videos[:n_videos])
    if not subset:
        return None
    n = len(subset)
    texts = [distinct_texts(c.text for c in v.comments)[: max(1, max_candidates // 2)] for v in subset]
    frequent = frequent_comments([c.text for v in train_videos for c in v.comments], max_candidates)
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
                    prompts=[prompts[i].prompt_ids if prompts is not None else video_prompt_ids(tokenizer, v, pcfg)
                             for i, v in enumerate(subset)],
                    real=[[enc(t) for t in ts] for ts in texts], distractors=distractors,
                    partner=[(i + 1) % n if n > 1 else -1 for i in range(n)],
                    no_video=no_video_prompt_ids(tokenizer, pcfg), seed=seed, prompt_format=pcfg.prompt_format)


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


def _score(model: torch.nn.Module, prompt: list[int], cands: Sequence[list[int]]) -> dict[tuple[int, ...], Score]:
    """`(sum log-prob in nats, tokens)` of each distinct candidate given `prompt`."""

    todo = list(dict.fromkeys(tuple(c) for c in cands))
    row = len(prompt) + max(512, max(len(c) for c in todo))
    return dict(zip(todo, score_candidates(model, prompt, [list(c) for c in todo], max_row_tokens=row,
                                           rows_per_batch=4)))


def ranking_metrics(videos: Sequence[tuple[Sequence[float], Sequence[float]]]) -> tuple[float | None, float | None]:
    """`(MRR, Recall@10)` of a probe ranking. videos: per subset video, `(scores of its real comments, scores of its
    distractors)`, higher = better. Each real comment is ranked among its video's distractors only
    (`vrp.ranking.distractor_ranks`, the tie rule of `vrp evaluate`), averaged over the video's real comments, then
    over videos (`vrp.ranking.summarize_ranks`); a video without distractors is left out. MRR is None when no video
    is ranked, Recall@10 also when a ranked video has 10 or fewer candidates (every order puts each real comment in
    the top 10 there)."""
    s = summarize_ranks([distractor_ranks(real, dis, (RECALL_K,)) for real, dis in videos], (RECALL_K,))
    mrr, recall = s.get("mrr"), s.get(f"recall_at_{RECALL_K}")
    return (None if mrr is None else float(mrr)), (None if recall is None else float(recall))


def run_probes(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, probes: ProbeSet,
               prec: Precision) -> dict[str, Any]:
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
            own: list[dict[tuple[int, ...], Score]] = []
            other: list[list[Score] | None] = [None] * n
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
    gains = [mean_nll(o) - mean_nll([own[i][tuple(c)] for c in probes.real[i]]) for i, o in enumerate(other) if o]
    lik: list[tuple[list[float], list[float]]] = []
    pmi: list[tuple[list[float], list[float]]] = []
    for i in range(n):
        real, dis = [tuple(c) for c in probes.real[i]], [tuple(c) for c in probes.distractors[i]]
        lik.append(([mean_logprob(own[i][c]) for c in real], [mean_logprob(own[i][c]) for c in dis]))
        p = {c: pmi_score(own[i][c], nv[c], PMI_LAMBDA) for c in real + dis}
        pmi.append(([p[c] for c in real], [p[c] for c in dis]))
    out: dict[str, Any] = dict.fromkeys(PROBE_KEYS)
    if gains:
        out["val_gain"] = statistics.fmean(gains)
    out["val_mrr"], out["val_recall_at_10"] = ranking_metrics(lik)
    out["val_pmi_mrr"], out["val_pmi_recall_at_10"] = ranking_metrics(pmi)
    out["val_finished_rate"] = statistics.fmean(g.finished for g in gen)
    out["val_median_new_tokens"] = float(statistics.median(g.tokens for g in gen))
    out.update(val_probe_score_seconds=t1 - t0, val_probe_generate_seconds=t2 - t1, val_probe_seconds=t2 - t0)
    return out


def validate(run_setup: TrainSetup, progress: bool = False) -> tuple[dict[str, float], dict[str, Any]]:
    """Validate the model of a run: `(evaluate_nll's {nll, perplexity, tokens} over all validation rows, the `val_*`
    fields of a metrics.jsonl row)`: `val_nll`, `val_nll_seconds`, and with a probe set (`run_setup.probes`) the
    probe metrics and seconds of `run_probes`. In a launched run every process scores its share of the validation
    rows and rank 0 alone runs the probes."""

    t0 = time.perf_counter()
    dist = run_setup.dist
    # rows per micro-batch: the memory plan's under `max_memory`, else the batch size
    rows = run_setup.memory.micro_rows if run_setup.memory is not None else run_setup.cfg.batch_size
    res = evaluate_nll(run_setup.model, run_setup.val_rows, run_setup.tokenizer.pad_token_id, run_setup.prec, rows,
                       progress, dist, run_setup.val_packing)
    row: dict[str, Any] = {"val_nll": res["nll"], "val_nll_seconds": time.perf_counter() - t0}
    if run_setup.probes is not None and dist.is_main:
        row.update(run_probes(run_setup.model, run_setup.tokenizer, run_setup.probes, run_setup.prec))
    return res, row


def curve_summary(run_setup: TrainSetup, state: TrainState) -> dict[str, Any]:
    """What `metrics.json` says about the learning curve and the best checkpoint, and `curve.png` drawn from the
    validation rows of `state.history` (against comments seen): `best_step`, `best_val_nll`, `best_checkpoint` (the
    path relative to the run dir, None without validation), `final_validation` (the `val_*` fields of the last
    validation row) and `curve` (`ProbeSet.describe`, None without probes)."""

    rows = [h for h in state.history if h.get("val_nll") is not None]
    best = state.best or {}
    run = run_setup.run
    ckpt = run.best_checkpoint()
    desc = run_setup.probes.describe() if run_setup.probes is not None else None
    if rows:
        learning_curve(rows, run.curve_png, desc)
    return {"best_step": best.get("step"), "best_val_nll": best.get("val_nll"),
            "best_checkpoint": str(ckpt.relative_to(run.path)) if ckpt else None,
            "final_validation": {k: v for k, v in rows[-1].items() if k.startswith("val_")} if rows else None,
            "curve": desc}


def validation_scalars(row: dict[str, Any]) -> dict[str, float]:
    """TensorBoard scalars of a history row: each numeric `val_<name>` as `validation/<name>` (None left out)."""
    return {f"validation/{k[4:]}": float(v) for k, v in row.items()
            if k.startswith("val_") and isinstance(v, (int, float)) and not isinstance(v, bool)}
