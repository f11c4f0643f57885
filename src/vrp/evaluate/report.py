"""Writing the `vrp evaluate` outputs: report.md, metrics.json, per-video/generation JSONL and PNG bar charts.

Knows: the layout of the metrics dict built by `vrp.evaluate.run.evaluate_run` and how to render it as Markdown tables
and bar charts (`vrp.charts`); a run's training curve is its `loss.png`, or drawn from its history by the function
`vrp train` uses. The report dir's files are named by `vrp.artifacts.ReportDir`.
Does not know: how any number is computed (see `vrp.evaluate.run`, `vrp.evaluate.metrics`).
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Sequence

from vrp.artifacts import ReportDir
from vrp.charts import bar_chart, loss_curve
from vrp.evaluate.metrics import METRICS_VERSION
from vrp.evaluate.tier_ranking import tier_markdown
from vrp.files import atomic_path, write_json_atomic, write_jsonl_atomic, write_text_atomic
from vrp.rundir import RunDir

GEN_METRICS = [("finished_rate", "finished rate"), ("median_new_tokens", "median new tokens"),
               ("distinct_1", "distinct-1"), ("distinct_2", "distinct-2"), ("repetition_rate", "repetition rate"),
               ("generic_rate", "generic rate"), ("length_mean", "length (tokens, mean)"),
               ("on_topic_r1", "on-topic Recall@1"), ("mauve", "MAUVE vs real comments")]
RANKINGS = (("own video (likelihood)", "own_prompt"), ("own video (PMI)", "pmi"), ("title only", "title_only"),
            ("random baseline", "random_baseline"))
RANK_METRICS = [("recall_at_1", "Recall@1"), ("recall_at_5", "Recall@5"), ("recall_at_10", "Recall@10"),
                ("mrr", "MRR"), ("mean_rank", "mean rank")]


def _gen_value(m: dict[str, Any], key: str) -> float | None:
    if key == "length_mean":
        return (m.get("length_tokens") or {}).get("mean")
    if key == "on_topic_r1":
        return (m.get("on_topic") or {}).get("recall_at_1")
    return m.get(key)


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def run_loss_curve(run: RunDir, out_png: Path) -> bool:
    """The training curve of `run` as `out_png`: a copy of its `loss.png`, else drawn from its `metrics.jsonl` with
    the same function `vrp train` uses (`vrp.charts.loss_curve`). False when the run has neither."""
    if run.loss_png.is_file():
        with atomic_path(out_png) as tmp:
            shutil.copyfile(run.loss_png, tmp)
        return True
    history = [h for h in run.history() if "step" in h]
    if not history:
        return False
    loss_curve(history, out_png)
    return True


def _charts(out: Path, res: dict[str, Any], runs: dict[str, RunDir | None]) -> list[str]:
    files: list[str] = []
    models = list(res["models"])
    lik = {k: res["models"][k]["likelihood"] for k in models}
    files.append("likelihood_nll.png")
    bar_chart(out / files[-1], models, {"own video": [lik[k].get("nll_own") for k in models],
                                        "title only": [lik[k].get("nll_title") for k in models],
                                        "another video": [lik[k].get("nll_other") for k in models]},
              "NLL per comment token of real held-out comments", "nats / token")
    gains = {"another video - own": "conditioning_gain", "title only - own": "title_only_gain"}
    files.append("conditioning_gain.png")
    bar_chart(out / files[-1], models, {n: [(lik[k].get(g) or {}).get("mean") for k in models] for n, g in gains.items()},
              "video-conditioning gain (95% bootstrap CI)", "Δ NLL, nats / token",
              errors={n: [tuple((lik[k].get(g) or {}).get("ci95") or ()) or None for k in models]
                      for n, g in gains.items()}, hline=(0.0, "no gain"))
    for key, name in RANK_METRICS:
        files.append(f"ranking_{key}.png")
        rk = {k: res["models"][k]["ranking"] for k in models}
        shown = [(p, f) for p, f in RANKINGS if any(f in rk[k] and _shown(res, f) for k in models)]
        bar_chart(out / files[-1], models, {p: [(rk[k].get(f) or {}).get(key) for k in models] for p, f in shown},
                  f"ranking: {name} (likelihood: mean log-prob/token; PMI: minus λ × no-video)", name)
    for group, prefix in (("generation", "gen"), ("seed_generation", "seed")):
        entries: dict[str, dict[str, Any]] = {}
        if group == "seed_generation":
            entries = dict(res["seed_comparison"])
        else:
            for k in models:
                entries.update({f"{k}/{p}": m for p, m in res["models"][k][group].items()})
            if entries and res["references"].get("real_held_out"):
                entries["real comments"] = res["references"]["real_held_out"]
        if not entries:
            continue
        for key, name in GEN_METRICS:
            if all(_gen_value(m, key) is None for m in entries.values()):
                continue
            files.append(f"{prefix}_{key}.png")
            chance = None
            if key == "on_topic_r1":
                c = next((m["on_topic"]["chance"] for m in entries.values() if m.get("on_topic")), None)
                chance = (c, "chance 1/N") if c is not None else None
            where = "held-out videos" if prefix == "gen" else "the original test videos"
            bar_chart(out / files[-1], list(entries), {name: [_gen_value(m, key) for m in entries.values()]},
                      f"{name} on {where}", name, hline=chance)
    for label, run in runs.items():
        if run is not None and run_loss_curve(run, out / f"loss_{label}.png"):
            files.append(f"loss_{label}.png")
    return files


def _shown(res: dict[str, Any], key: str) -> bool:
    """Whether ranking `key` is reported: `settings.ranking` likelihood hides PMI, pmi hides the likelihood."""
    ranking = res.get("settings", {}).get("ranking", "both")
    return not ((key == "pmi" and ranking == "likelihood") or (key == "own_prompt" and ranking == "pmi"))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _gen_rows(entries: dict[str, dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for name, m in entries.items():
        ot = m.get("on_topic") or {}
        med, ratio = m.get("median_new_tokens"), m.get("length_ratio_to_real")
        rows.append([name, m["outputs"], m.get("finished_rate"),
                     None if med is None else f"{med:g}" + ("" if ratio is None else f" ({ratio:.2f}x)"),
                     m["distinct_1"], m["distinct_2"], m["repetition_rate"], m["generic_rate"],
                     (m["length_tokens"] or {}).get("mean"), f"{_fmt(ot.get('recall_at_1'))} (chance "
                     f"{_fmt(ot.get('chance'))})" if ot else None, m.get("mauve")])
    return rows


GEN_HEADER = ["outputs", "n", "finished", "median new tokens (x real)", "distinct-1", "distinct-2", "repetition rate",
              "generic rate", "length (tokens)", "on-topic Recall@1", "MAUVE"]


def _cell(text: str) -> str:
    """Text for a Markdown table cell: one line, `|` escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _examples(examples: Sequence[dict[str, Any]]) -> list[str]:
    """The side-by-side table: one row per video, its first real comment and each setup's first comment."""
    setups = list(dict.fromkeys(k for e in examples for k in e["predicted"]))
    rows = [[_cell(e["video"]), _cell(e["real"])] + [_cell(e["predicted"].get(k, "")) for k in setups]
            for e in examples]
    return [_table(["video (title or transcript start)", "a real comment"] + [f"`{k}`" for k in setups], rows), ""]

DEFINITIONS = f"""## Definitions (metrics version {METRICS_VERSION})

Version history: 1 = likelihood ranking and reference-free metrics of generated comments; 2 = adds the PMI ranking
with cross-fitted λ, the finished rate, the median length next to the real comments' and MAUVE; generated comments
are 5 per video by default, and the real-comment reference holds every real comment of the generation videos.

- **NLL per token** (nats): −Σ log p(token | prompt, earlier tokens) over the tokens of every real held-out comment
  *and its end-of-turn token*, divided by their number (token-weighted over all comments). **Perplexity** =
  exp(NLL per token). Prompts are the training prompts (chat template or plain layout, transcript cut to
  `max_prompt_tokens`).
- **Video-conditioning gain**: per video, NLL/token of its real comments given *another* held-out video's prompt (a
  fixed random derangement) minus NLL/token given its own prompt; mean over videos with a 95% percentile bootstrap
  CI over videos (Efron 1979; 10,000 resamples). > 0 means the model uses the video; a model that ignores its input
  scores 0. The **title-only** variant uses the prompt with an empty transcript instead of another video.
- **Ranking** (LiveBot protocol, Ma et al., AAAI 2019, with an analytic random baseline and no test videos in
  training): each held-out video gets up to `num_candidates` candidates (100 by default; section 3 gives this
  report's target and the counts used) = its real comments (at most 25; `num_candidates` must exceed them, so that
  there are distractors) + comments of the most similar other held-out videos (MiniLM cosine of title + transcript,
  up to 30) + the 20 most frequent training comments (ties in count broken by closeness to the mean training-comment
  embedding, i.e. the most typical ones) + random comments of other held-out videos and of the training split.
  **Likelihood** ranks candidates by mean log-prob per token (length-normalised) given the video's prompt, computed
  with shared-prefix scoring. **PMI** (domain-conditional PMI, Holtzman et al. 2021) ranks them by that minus λ ×
  their mean log-prob per token given the *no-video prompt* (the same chat with an empty title and transcript, one
  prompt for all videos; for untitled videos it equals the title-only prompt). λ comes from the grid 0, 0.1, …, 1.5
  by 2-fold cross-fitting: the videos are split in two halves (seeded), λ with the best MRR on one half (smaller λ on
  ties) ranks the other half, and vice versa; the two λ are reported, and no video is ranked with a λ chosen on
  itself. **Each real comment is ranked against the distractors only** (the video's other real comments are removed);
  **Recall@k** = P(rank ≤ k), **MRR** = mean 1/rank, **mean rank** (1 = best) are averaged over a video's real
  comments, then over videos; ties count as a uniformly random tie-break (exact expectation). A real comment is
  ranked among itself + the distractors; Recall@k is not reported (–) when some real comment has k or fewer of them,
  where it would be 1 whatever the scores, and a video that got no distractor is left out. **Random baseline**: for n
  candidates, Recall@k = min(k, n)/n, MRR = H_n/n, mean rank = (n+1)/2, averaged the same way over exactly these
  candidate counts.
- **distinct-n** (Li et al., NAACL 2016): distinct word n-grams / all word n-grams over all outputs of a row.
  **Repetition rate**: share of outputs in which some word n-gram or emoji occurs 3+ times in a row (punctuation-only
  runs such as "!!!" excluded). **Generic rate**: share of outputs with MiniLM cosine ≥ 0.9 to one of the 50 most
  frequent training comments. **Length**: tokens of the evaluated model's tokenizer. **On-topic Recall@1**: each
  output's MiniLM embedding retrieves, among the evaluated videos' title + transcript embeddings (mean of 128-word
  chunks of the first 768 words), its own video first; chance = 1/N.
- **Finished rate**: share of generated comments that ended with a stop token (the chat template's end-of-turn
  token or an EOS) within `max_new_tokens`. **Median new tokens**: median of the generated tokens per comment, stop
  token included; **(x real)** divides it by the median of the real comments of the same videos, counted the same
  way (their tokens + 1 end-of-turn token).
- **MAUVE** (Pillutla et al., NeurIPS 2021; PyPI `mauve-text`): between the MiniLM embeddings of every real comment
  of the generation videos (P) and of the generated comments (Q), quantised into min(|P|, |Q|)/10 k-means clusters
  (at least 2), scaling factor 5; 1 = indistinguishable. Needs ≥ 10 comments on each side (else –) and is coarse
  below ~100. A `+rerankN` setup samples N comments per video and keeps the best by PMI (`vrp.rerank`).
"""


def _ranked_among(models: dict[str, Any]) -> str:
    """The candidate counts the rankings actually used (each real comment among itself + its video's distractors)
    and which Recall@k were left out because some real comment had k or fewer candidates."""
    own = next((m["ranking"].get("own_prompt") or {} for m in models.values()), {})
    if not own.get("items"):
        return " No real comment could be ranked (no video has a distractor)."
    missing = [n for key, n in RANK_METRICS if key.startswith("recall_at_") and own.get(key) is None]
    return (f" Each real comment is ranked among itself and its video's distractors: {own['mean_candidates']:.1f} "
            f"candidates on average, {own['min_candidates']} at least ({own['items']} comments of {own['videos']} "
            f"videos)." + (f" {', '.join(missing)} not reported (–): with {own['min_candidates']} candidates a rank "
                           f"is always within k." if missing else ""))


def render_markdown(res: dict[str, Any], gen_rows: Sequence[dict[str, Any]], charts: Sequence[str]) -> str:
    """The report.md text for the metrics dict `res` (see `evaluate.evaluate_run`)."""
    d, cand, models = res["data"], res["candidates"], res["models"]
    out = ["# vrp evaluate report", "", f"Metrics version {res.get('metrics_version', METRICS_VERSION)} (see "
           "Definitions).", "",
           f"Held-out videos: **{d['videos']}** ({d['real_comments']} real comments) from `{d['source']}`; "
           f"{d['train_comments']} training comments. Models: " + ", ".join(
               f"`{k}` ({m['model']}{' + ' + m['adapter'] if m['adapter'] else ''}, {m['precision']}, prompt ≤ "
               f"{m['max_prompt_tokens']} tokens, {m.get('prompt_format', 'chat')} prompt format)"
               for k, m in models.items()) + "."]
    out += [f"- note: {n}" for n in d["notes"]]
    out += ["", "## 1. Likelihood of the real held-out comments", "",
            _table(["model", "NLL/token (own video)", "perplexity", "NLL/token title only", "NLL/token another video",
                    "comments", "tokens"],
                   [[k, m["likelihood"].get("nll_own"), m["likelihood"].get("perplexity_own"),
                     m["likelihood"].get("nll_title"), m["likelihood"].get("nll_other"), m["likelihood"]["comments"],
                     m["likelihood"]["tokens"]] for k, m in models.items()]),
            "", "## 2. Video-conditioning gain (nats/token; > 0 = the model uses the video)", ""]

    def gain(g: dict[str, Any] | None) -> str:
        return "–" if not g else f"{g['mean']:+.3f} [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}]"

    out += [_table(["model", "another video − own (95% CI)", "videos with gain > 0", "title only − own (95% CI)"],
                   [[k, gain(m["likelihood"].get("conditioning_gain")),
                     (m["likelihood"].get("conditioning_gain") or {}).get("share_of_videos_positive"),
                     gain(m["likelihood"].get("title_only_gain"))] for k, m in models.items()]), ""]
    src = cand["mean_by_source"]
    out += ["## 3. Ranking real comments among candidates (LiveBot-style)", "",
            f"Candidates per video: mean {cand['mean']:.1f} (min {cand['min']}; target {cand['target']}): "
            f"{cand['mean_real']:.2f} real + {src['similar_videos']:.1f} from similar videos + "
            f"{src['frequent_training']:.1f} frequent training comments + {src['random']:.1f} random."
            + (f" **{cand['videos_short']} videos have fewer than {cand['target']} candidates** (pool too small)."
               if cand["videos_short"] else "")
            + _ranked_among(models), ""]
    rows = []
    for k, m in models.items():
        for name, key in RANKINGS:
            r = m["ranking"].get(key)
            if r is None or not _shown(res, key):
                continue
            lams = f" (λ {', '.join(f'{x:g}' for x in r['lambdas'])})" if key == "pmi" else ""
            rows.append([k, name + lams] + [r.get(x) for x, _ in RANK_METRICS])
    out += [_table(["model", "scoring"] + [n for _, n in RANK_METRICS], rows), ""]
    if any("pmi" in m["ranking"] for m in models.values()) and _shown(res, "pmi"):
        out += ["PMI's λ was chosen on one half of the videos and applied to the other, and vice versa (the two λ "
                "shown: chosen on half 1, on half 2); see Definitions.", ""]
    gen = {f"{k}/{p}": g for k, m in models.items() for p, g in m["generation"].items()}
    if gen:
        gen["real held-out comments"] = res["references"]["real_held_out"]
        out += ["## 4. Generated comments (held-out videos)", "", _table(GEN_HEADER, _gen_rows(gen)), ""]
    if res.get("examples"):
        out += ["### Side by side (first comment of each setup)", ""] + _examples(res["examples"])
    if res["seed_comparison"]:
        out += ["## 5. Side by side with the original project (its 8 test videos)", "",
                "`original/*` are the published outputs of the 2023 project (LLaMA-2-7B-chat base, and its fine-tune "
                "with beam search / beam + do_sample), cut at 150 LLaMA tokens; the others are ours on the same "
                "videos.", "", _table(GEN_HEADER, _gen_rows(res["seed_comparison"])), ""]
    out += tier_markdown(res.get("tiers"))  # vrp.evaluate.tier_ranking: only for runs trained with like tiers
    out += ["## 7. Timing (seconds)", "", _table(["model", "load", "ranking + likelihood (own prompts)",
                                                 "title-only prompts", "no-video prompt", "ranking total",
                                                 "per video", "generation"],
                                                [[k, t.get("load_s"), t.get("score_own_prompt_s"),
                                                  t.get("score_title_only_s"), t.get("score_no_video_s"),
                                                  t.get("ranking_total_s"),
                                                  t.get("seconds_per_video"),
                                                  sum((t.get("generation_s") or {}).values())
                                                  + sum((t.get("seed_generation_s") or {}).values())]
                                                 for k, t in ((k, m["timing_s"]) for k, m in models.items())]),
            "", f"Total {res['timing_s']['total_s']:.0f} s (embeddings and candidates "
                f"{res['timing_s']['embed_and_candidates_s']:.1f} s).", "", DEFINITIONS, "## Charts", ""]
    out += [f"![{c}]({c})" for c in charts]
    numbers = iter(range(1, 100))  # sections without data (side by side, tiers) are left out: number the rest 1, 2, ..
    return re.sub(r"(?m)^## \d+\. ", lambda _: f"## {next(numbers)}. ", "\n".join(out)) + "\n"


def write_outputs(report: ReportDir, res: dict[str, Any], per_video: list[dict[str, Any]],
                  gen_rows: list[dict[str, Any]], runs: dict[str, RunDir | None], overwrite: bool,
                  inputs: list[tuple[str, Any]] | None = None) -> list[str]:
    """Write charts, per_video.jsonl, generations.jsonl, report.md and, last, metrics.json (its `files` lists them).
    Each file is written atomically; files of a previous report in the dir are removed first, and only in a report
    dir that is none of the command's `inputs` ((field, path) pairs; `ReportDir.check_new`). Returns file names."""
    report.check_new(overwrite, inputs=inputs or ())
    out = report.path
    out.mkdir(parents=True, exist_ok=True)
    report.remove_previous()
    charts = _charts(out, res, runs)
    write_jsonl_atomic(out / report.PER_VIDEO, per_video)
    write_jsonl_atomic(out / report.GENERATIONS, gen_rows)
    write_text_atomic(out / report.REPORT, render_markdown(res, gen_rows, charts))
    files = list(report.OWN_FILES) + charts
    write_json_atomic(out / report.METRICS, {**res, "files": files})
    return files
