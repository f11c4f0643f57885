"""Writing the `vrp evaluate` outputs: report.md, metrics.json, per-video/generation JSONL and PNG bar charts.

Knows: the layout of the metrics dict built by `vrp.evaluate.run.evaluate_run`, how to render it as Markdown tables
and matplotlib bar charts (Agg backend, no display), the training-curve files of a run dir (`metrics.jsonl` lines with
`step`, `loss`, optional `val_nll`, or a ready `loss.png`), and atomic writing (`records.atomic_path`).
Does not know: how any number is computed (see `evaluate`, `metrics`).
"""
from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import Any, Sequence

from vrp.errors import VrpError
from vrp.io import atomic_path, write_json_atomic, write_jsonl_atomic, write_text_atomic

GEN_METRICS = [("distinct_1", "distinct-1"), ("distinct_2", "distinct-2"), ("repetition_rate", "repetition rate"),
               ("generic_rate", "generic rate"), ("length_mean", "length (tokens, mean)"),
               ("on_topic_r1", "on-topic Recall@1")]
RANK_METRICS = [("recall_at_1", "Recall@1"), ("recall_at_5", "Recall@5"), ("recall_at_10", "Recall@10"),
                ("mrr", "MRR"), ("mean_rank", "mean rank")]
OWN_FILES = ("report.md", "metrics.json", "per_video.jsonl", "generations.jsonl")


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty `out` unless `overwrite` (VrpError naming --overwrite) or a file at `out`."""
    if out.exists() and not out.is_dir():
        raise VrpError(f"--out: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise VrpError(f"--out: {out} is not empty; pass --overwrite to replace the report in it")


def _remove_previous(out: Path) -> None:
    """Delete the files a previous `vrp evaluate` listed in out/metrics.json (only those, never anything else)."""
    try:
        old = json.loads((out / "metrics.json").read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return
    for name in old:
        p = out / str(name)
        if p.parent == out and p.is_file() and (p.suffix == ".png" or p.name in OWN_FILES):
            p.unlink()


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


def bar_chart(path: Path, labels: Sequence[str], series: dict[str, Sequence[float | None]], title: str,
              ylabel: str, errors: dict[str, Sequence[tuple[float, float] | None]] | None = None,
              hline: tuple[float, str] | None = None) -> None:
    """Write a (grouped) bar chart PNG atomically: one group per label, one bar per series; None values are gaps.

    errors: per series, `(lower, upper)` interval per label (drawn as error bars). hline: `(y, legend label)`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = max(len(series), 1)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(labels) * max(1, n / 2) + 2), 4))
    x = np.arange(len(labels))
    for si, (name, vals) in enumerate(series.items()):
        ys = [np.nan if v is None else float(v) for v in vals]
        yerr = None
        if errors and errors.get(name):
            yerr = np.array([[y - lo, hi - y] if e else [0, 0] for y, e in zip(ys, errors[name])
                             for lo, hi in [e or (0, 0)]]).T
        ax.bar(x + (si - (n - 1) / 2) * width, ys, width, label=name, yerr=yerr, capsize=3)
    if hline:
        ax.axhline(hline[0], color="k", linestyle="--", linewidth=1, label=hline[1])
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(textwrap.fill(title, 60), fontsize=10)
    if len(series) > 1 or hline:
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def loss_curve(run: Path, out_png: Path) -> bool:
    """Plot `run/metrics.jsonl` (`step`, `loss`, optional `val_nll`) to `out_png`, or copy `run/loss.png`.
    Returns False when the run has neither."""
    rows = []
    if (run / "metrics.jsonl").is_file():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if isinstance(d, dict) and "step" in d and ("loss" in d or "val_nll" in d):
                rows.append(d)
    if rows:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for key, name in (("loss", "training loss"), ("val_nll", "validation NLL/token")):
            pts = [(d["step"], d[key]) for d in rows if d.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="." if key == "val_nll" else None, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("nats per token")
        ax.set_title(f"training curve: {run.name}")
        ax.legend()
        fig.tight_layout()
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, dpi=110)
        plt.close(fig)
        return True
    if (run / "loss.png").is_file():
        with atomic_path(out_png) as tmp:
            shutil.copyfile(run / "loss.png", tmp)
        return True
    return False


def _charts(out: Path, res: dict[str, Any], runs: dict[str, str | None]) -> list[str]:
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
        bar_chart(out / files[-1], models, {p: [rk[k][f].get(key) for k in models] for p, f in
                                            (("own video", "own_prompt"), ("title only", "title_only"),
                                             ("random baseline", "random_baseline"))},
                  f"ranking: {name} (candidates ranked by mean log-prob/token)", name)
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
            files.append(f"{prefix}_{key}.png")
            chance = None
            if key == "on_topic_r1":
                c = next((m["on_topic"]["chance"] for m in entries.values() if m.get("on_topic")), None)
                chance = (c, "chance 1/N") if c is not None else None
            where = "held-out videos" if prefix == "gen" else "the original test videos"
            bar_chart(out / files[-1], list(entries), {name: [_gen_value(m, key) for m in entries.values()]},
                      f"{name} on {where}", name, hline=chance)
    for label, run in runs.items():
        if run and loss_curve(Path(run), out / f"loss_{label}.png"):
            files.append(f"loss_{label}.png")
    return files


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _gen_rows(entries: dict[str, dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for name, m in entries.items():
        ot = m.get("on_topic") or {}
        rows.append([name, m["outputs"], m["distinct_1"], m["distinct_2"], m["repetition_rate"], m["generic_rate"],
                     (m["length_tokens"] or {}).get("mean"), f"{_fmt(ot.get('recall_at_1'))} (chance "
                     f"{_fmt(ot.get('chance'))})" if ot else None])
    return rows


GEN_HEADER = ["outputs", "n", "distinct-1", "distinct-2", "repetition rate", "generic rate", "length (tokens)",
              "on-topic Recall@1"]

DEFINITIONS = """## Definitions

- **NLL per token** (nats): −Σ log p(token | prompt, earlier tokens) over the tokens of every real held-out comment
  *and its end-of-turn token*, divided by their number (token-weighted over all comments). **Perplexity** =
  exp(NLL per token). Prompts are the training prompts (chat template, transcript cut to `max_prompt_tokens`).
- **Video-conditioning gain**: per video, NLL/token of its real comments given *another* held-out video's prompt (a
  fixed random derangement) minus NLL/token given its own prompt; mean over videos with a 95% percentile bootstrap
  CI over videos (Efron 1979; 10,000 resamples). > 0 means the model uses the video; a model that ignores its input
  scores 0. The **title-only** variant uses the prompt with an empty transcript instead of another video.
- **Ranking** (LiveBot protocol, Ma et al., AAAI 2019, with an analytic random baseline and no test videos in
  training): each held-out video gets up to 100 candidates = its real comments + comments of the most similar other
  held-out videos (MiniLM cosine of title + transcript, up to 30) + the 20 most frequent training comments (ties in
  count broken by closeness to the mean training-comment embedding, i.e. the most typical ones) + random comments of
  other held-out videos and of the training split. Candidates are ranked by mean log-prob per token
  (length-normalised), computed with shared-prefix scoring. **Each real comment is ranked against the distractors
  only** (the video's other real comments are removed); **Recall@k** = P(rank ≤ k), **MRR** = mean 1/rank, **mean
  rank** (1 = best) are averaged over a video's real comments, then over videos; ties count as a uniformly random
  tie-break (exact expectation). **Random baseline**: for n candidates, Recall@k = min(k, n)/n, MRR = H_n/n, mean
  rank = (n+1)/2, averaged the same way over exactly these candidate counts.
- **distinct-n** (Li et al., NAACL 2016): distinct word n-grams / all word n-grams over all outputs of a row.
  **Repetition rate**: share of outputs in which some word n-gram or emoji occurs 3+ times in a row (punctuation-only
  runs such as "!!!" excluded). **Generic rate**: share of outputs with MiniLM cosine ≥ 0.9 to one of the 50 most
  frequent training comments. **Length**: tokens of the evaluated model's tokenizer. **On-topic Recall@1**: each
  output's MiniLM embedding retrieves, among the evaluated videos' title + transcript embeddings (mean of 128-word
  chunks of the first 768 words), its own video first; chance = 1/N.
"""


def render_markdown(res: dict[str, Any], gen_rows: Sequence[dict[str, Any]], charts: Sequence[str]) -> str:
    """The report.md text for the metrics dict `res` (see `evaluate.evaluate_run`)."""
    d, cand, models = res["data"], res["candidates"], res["models"]
    out = ["# vrp evaluate report", "",
           f"Held-out videos: **{d['videos']}** ({d['real_comments']} real comments) from `{d['source']}`; "
           f"{d['train_comments']} training comments. Models: " + ", ".join(
               f"`{k}` ({m['model']}{' + ' + m['adapter'] if m['adapter'] else ''}, {m['precision']}, prompt ≤ "
               f"{m['max_prompt_tokens']} tokens)" for k, m in models.items()) + "."]
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
               if cand["videos_short"] else ""), ""]
    rows = []
    for k, m in models.items():
        for name, key in (("own video", "own_prompt"), ("title only", "title_only"),
                          ("random baseline", "random_baseline")):
            r = m["ranking"][key]
            rows.append([k, name] + [r.get(x) for x, _ in RANK_METRICS])
    out += [_table(["model", "prompt"] + [n for _, n in RANK_METRICS], rows), ""]
    gen = {f"{k}/{p}": g for k, m in models.items() for p, g in m["generation"].items()}
    if gen:
        gen["real held-out comments"] = res["references"]["real_held_out"]
        out += ["## 4. Generated comments (held-out videos)", "", _table(GEN_HEADER, _gen_rows(gen)), ""]
    if res["seed_comparison"]:
        out += ["## 5. Side by side with the original project (its 8 test videos)", "",
                "`original/*` are the published outputs of the 2023 project (LLaMA-2-7B-chat base, and its fine-tune "
                "with beam search / beam + do_sample), cut at 150 LLaMA tokens; the others are ours on the same "
                "videos.", "", _table(GEN_HEADER, _gen_rows(res["seed_comparison"])), ""]
    if gen_rows:
        out += ["### Examples", ""]
        first = list(dict.fromkeys(r["video_id"] for r in gen_rows if r["set"] == "held_out"))[:3]
        for vid in first:
            out.append(f"- video `{vid}`:")
            out += [f"  - {r['model']}/{r['preset']}: {r['comment'][:200]!r}" for r in gen_rows
                    if r["video_id"] == vid and r["set"] == "held_out" and r["comment_index"] == 1]
        out.append("")
    out += ["## 6. Timing (seconds)", "", _table(["model", "load", "ranking + likelihood (own prompts)",
                                                 "title-only prompts", "ranking total", "per video", "generation"],
                                                [[k, t.get("load_s"), t.get("score_own_prompt_s"),
                                                  t.get("score_title_only_s"), t.get("ranking_total_s"),
                                                  t.get("seconds_per_video"),
                                                  sum((t.get("generation_s") or {}).values())
                                                  + sum((t.get("seed_generation_s") or {}).values())]
                                                 for k, t in ((k, m["timing_s"]) for k, m in models.items())]),
            "", f"Total {res['timing_s']['total_s']:.0f} s (embeddings and candidates "
                f"{res['timing_s']['embed_and_candidates_s']:.1f} s).", "", DEFINITIONS, "## Charts", ""]
    out += [f"![{c}]({c})" for c in charts]
    return "\n".join(out) + "\n"


def write_outputs(out: Path, res: dict[str, Any], per_video: list[dict[str, Any]], gen_rows: list[dict[str, Any]],
                  runs: dict[str, str | None], overwrite: bool) -> list[str]:
    """Write charts, per_video.jsonl, generations.jsonl, report.md and, last, metrics.json (its `files` lists them).
    Each file is written atomically; files of a previous report in `out` are removed first. Returns file names."""
    check_out_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    _remove_previous(out)
    charts = _charts(out, res, runs)
    write_jsonl_atomic(out / "per_video.jsonl", per_video)
    write_jsonl_atomic(out / "generations.jsonl", gen_rows)
    write_text_atomic(out / "report.md", render_markdown(res, gen_rows, charts))
    files = list(OWN_FILES) + charts
    write_json_atomic(out / "metrics.json", {**res, "files": files})
    return files
