"""Reporting of `vrp bench data` results: the Markdown table of how each cost grows with the number of videos, the
growth lines (measured exponents, the targets of issue 22: `vrp prepare` linear in rows, its peak RSS at most 2x
from 10^4 to 10^5 videos, a warm `vrp train` start-up under 30 s at 10^5), and the section for the benchmark
history. Knows the raw result dict of `vrp.bench.data.run_bench`. Does not run anything.
"""
from __future__ import annotations

import math
from typing import Any

MIB = 2 ** 20


def _mb(x: float | None) -> str:
    return "—" if x is None else f"{x / 1e9:,.1f} GB" if x >= 1e9 else f"{x / 1e6:,.1f} MB"


def _per_video(total: float | None, n: int) -> str:
    return "—" if total is None else f"{_mb(total)} ({total / n / 1e3:,.1f} kB/video)"


def _s(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f} s" if x >= 100 else f"{x:,.1f} s"


def _rss(x: float | None) -> str:
    return "—" if x is None else f"{x / MIB:,.0f} MiB"


def _n(x: float) -> str:
    return f"10^{round(math.log10(x))}" if x >= 10 ** 6 and math.log10(x).is_integer() else f"{x:,.0f}"


def _train_cells(r: dict[str, Any], train: list[dict[str, Any]] | None, procs: list[int]) -> list[str]:
    by = {(t["cache"], t["nproc"]): t for t in train or []}
    cells = []
    for key in [("cold", 1)] + [("warm", k) for k in procs]:
        t = by.get(key)
        if t is None:
            cells.append("—")
            continue
        total = t.get("tree_rss")
        tail = f" (all {_rss(total)})" if key[1] > 1 and total else ""
        cells.append(f"{_s(t['startup_s'])}, {_rss(t.get('startup_rss') or t['peak_rss'])}{tail}")
    return cells


def format_table(bench: dict[str, Any]) -> str:
    """The Markdown table: one row per measured size, then the extrapolated one (`~`)."""
    procs = bench["options"]["processes"]
    head = ["videos", "rows", "table", "`vrp prepare`", "prepare peak RSS", "dataset", "token cache", "cache build",
            "train start-up, RSS at start-up: cold, 1 process"] + [f"warm, {k} process{'es' if k > 1 else ''}"
                                                           for k in procs]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in bench["sizes"]:
        n = r["videos"]
        prep = _s(r["prepare_s"]) + (f" (CPU {_s(r['prepare_cpu_s'])})" if r.get("prepare_cpu_s") else "")
        out.append("| " + " | ".join([f"{n:,}", f"{r['rows']:,}", _mb(r["table_bytes"]), prep,
                                      _rss(r["prepare_rss"]), _per_video(r["dataset_bytes"], n),
                                      _per_video(r.get("cache_bytes"), n), _s(r.get("cache_build_s")),
                                      *_train_cells(r, r.get("train"), procs)]) + " |")
    x = bench.get("extrapolated")
    if x:
        n = x["videos"]
        train = [{**t, "tree_rss": None} for t in x.get("train") or [] if t["startup_s"] is not None]
        cells = ["~" + c if c != "—" else c for c in
                 [_n(x["rows"]) if x.get("rows") else "—", _mb(x.get("table_bytes")), _s(x.get("prepare_s")),
                  _rss(x.get("prepare_rss")), _per_video(x.get("dataset_bytes"), n),
                  _per_video(x.get("cache_bytes"), n), _s(x.get("cache_build_s")), *_train_cells(x, train, procs)]]
        out.append(f"| **{_n(n)}** (extrapolated) | " + " | ".join(cells) + " |")
    return "\n".join(out)


def growth_lines(bench: dict[str, Any]) -> list[str]:
    """The measured growth between the two largest sizes, the cost per video behind the extrapolation, and the
    targets (reported, never asserted)."""
    sizes, x = bench["sizes"], bench.get("extrapolated")
    if len(sizes) < 2:
        return []
    a, b = sizes[-2], sizes[-1]
    lines = [f"From {a['videos']:,} to {b['videos']:,} videos ({b['videos'] / a['videos']:g}x): `vrp prepare` time "
             f"x{b['prepare_s'] / a['prepare_s']:.2f} (rows x{b['rows'] / a['rows']:.2f}), peak RSS "
             f"x{b['prepare_rss'] / a['prepare_rss']:.2f}."]
    if x:
        lines.append(f"Extrapolated to {_n(x['videos'])} videos as a fixed part plus the measured cost per video "
                     f"between {x['from'][0]:,} and {x['from'][1]:,}: `vrp prepare` "
                     f"{x['prepare_s_per_video'] * 1e3:.2f} ms and {x['prepare_rss_per_video'] / 1e3:.2f} kB of "
                     f"peak RSS per video (growth exponents {x['prepare_s_exponent']:.2f} and "
                     f"{x['prepare_rss_exponent']:.2f}; 1 = linear, 0 = flat); dataset "
                     f"{x['dataset_bytes'] / x['videos'] / 1e3:.1f} kB per video on disk"
                     + (f", token cache {x['cache_bytes'] / x['videos'] / 1e3:.1f} kB" if x.get("cache_bytes") else "")
                     + ".")
        for t in x.get("train") or []:
            lines.append(f"`vrp train` start-up, {t['cache']} cache, {t['nproc']} process(es), from "
                         f"{t['startup_s_from'][0]:,} and {t['startup_s_from'][1]:,} videos: "
                         f"{t['startup_s_per_video'] * 1e3:.2f} ms and "
                         + (f"{t['startup_rss_per_video'] / 1e3:.1f} kB of RSS at start-up per video (exponents "
                            f"{t['startup_s_exponent']:.2f} and {t['startup_rss_exponent']:.2f})."
                            if t.get("startup_rss_per_video") is not None else
                            f"{t['peak_rss_per_video'] / 1e3:.1f} kB of peak RSS per video (exponents "
                            f"{t['startup_s_exponent']:.2f} and {t['peak_rss_exponent']:.2f})."))
    have = {r["videos"]: r for r in sizes}
    if 10 ** 4 in have and 10 ** 5 in have:
        ratio = have[10 ** 5]["prepare_rss"] / have[10 ** 4]["prepare_rss"]
        lines.append(f"Target: peak RSS of `vrp prepare` at most 2x from 10^4 to 10^5 videos: x{ratio:.2f}, "
                     f"{'met' if ratio <= 2 else 'NOT met'}.")
        warm = next((t for t in have[10 ** 5].get("train") or [] if t["cache"] == "warm" and t["nproc"] == 1), None)
        warm4 = next((t for t in have[10 ** 4].get("train") or [] if t["cache"] == "warm" and t["nproc"] == 1), None)
        if warm and warm4 and warm.get("startup_rss") and warm4.get("startup_rss"):
            r = warm["startup_rss"] / warm4["startup_rss"]
            lines.append(f"Target: RSS of a warm `vrp train` start-up at most 2x from 10^4 to 10^5 videos: x{r:.2f}, "
                         f"{'met' if r <= 2 else 'NOT met'}.")
        lines.append("Target: a warm `vrp train` reaches its first step at 10^5 videos in under 30 s: " +
                     (f"{warm['startup_s']:.1f} s, {'met' if warm['startup_s'] < 30 else 'NOT met'}." if warm
                      else "not measured at 10^5 videos."))
    return lines


def busy(bench: dict[str, Any]) -> str | None:
    """Why the timings cannot be trusted (the 1-minute load average at the start above the core count), or None."""
    e = bench["env"]
    load, cores = e["load_start"][0], e["cores"] or 1
    if load > cores:
        return (f"The 1-minute load average before the run was {load:.2f} on {cores} cores: other processes used "
                f"the CPU, so these timings are not comparable with runs on an idle machine.")
    return None


def markdown_section(bench: dict[str, Any], command: str) -> str:
    """The benchmark-history section: heading with date and machine, command, load, data, table, growth lines."""
    e, o = bench["env"], bench["options"]
    why = busy(bench)
    train = ("`vrp train --max-steps 1 --batch-size 1 --max-eval-videos 1 --curve-videos 0 --max-prompt-tokens "
             f"{o['max_prompt_tokens']}` with model `{o['model']}`, {o['threads']} torch thread(s) per process"
             if e["token_cache"] and o["train"] else
             "`vrp train` not timed" + ("" if e["token_cache"] else " (this vrp has no token cache)"))
    ram = f", {e['ram_bytes'] / 2 ** 30:.0f} GiB RAM" if e.get("ram_bytes") else ""
    out = [f"## vrp bench data ({e['date']}, {e['cpu']}, {e['cores']} cores{ram})", ""]
    if why:
        out += [f"**Busy machine: {why}**", ""]
    out += [(f"- command: `{command}`; 1-minute load average {e['load_start'][0]:.2f} at the start, "
             f"{e['load_end'][0]:.2f} at the end; {e['wall_s'] / 60:.1f} min in all; Python {e['python']}"),
            (f"- data: synthetic JSONL tables, one row per comment with the video's title and transcript (about "
             f"{o['transcript_chars']:,} characters), {o['min_comments']}-{o['max_comments']} comments per video, "
             f"seed {o['seed']}; `vrp prepare` with its defaults; {train}"),
            ("- start-up: seconds from the launch to the training loop (just before the first optimizer step); "
             "cold: the run that builds the token cache, warm: a later run that reuses it; cache build = cold - "
             "warm start-up; peak RSS: the largest process (all: the sampled total of the processes)"), "",
            format_table(bench), ""]
    out += [f"- {line}" for line in growth_lines(bench)]
    return "\n".join(out) + "\n"
