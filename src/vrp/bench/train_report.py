"""Reporting of `vrp bench train` results: the Markdown table, the target lines and the BENCHMARKS.md section.

Knows: the raw result dict `vrp.bench.train.run_bench` returns (`options`, `env`, `peak_flops` in FLOP/s,
`results`: one dict per (comments per video K, configuration) with `comments`, `tokens`, `seconds` (timed steps),
`per_step` (each timed step's seconds, comments, tokens, rows and padded row length), `peak_rss_bytes`,
`executed_flops`, `useful_flops`, row lengths in tokens; `val`: the validation check; or, from a memory run,
`memory`: one profile per configuration, see `vrp.bench.memory`), and how to turn it into comments/s (over all
timed steps, and the median and range of the steps' own rates), tokens/s, peak RSS (MiB, with the largest step's
shape: peak RSS is compared between configurations only at equal shapes, in the memory profile), MFU and useful
MFU (see `vrp.bench.flops`), the (c)/(a) comments/s ratios and the targets (reported, never asserted), and when a
run was too busy to be written to BENCHMARKS.md (`busy`). Does not run anything.
"""
from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path
from typing import Any

from vrp.bench.memory import format_profile
from vrp.bench.optime import format_time_profile
from vrp.files import atomic_path

LABELS = {"trl": "(a) TRL SFTTrainer, per example", "none": "(b) vrp --packing none",
          "shared_prefix": "(c) vrp --packing shared_prefix"}
TARGETS = {3: 8.0, 30: 25.0}           # (c)/(a) comments/s at K comments/video, reported not asserted
MFU_TARGET = (3, 0.45)                  # (c) executed MFU at K comments/video, reported not asserted


def cpu_model() -> str:
    """The CPU's `model name` from /proc/cpuinfo (or `platform.processor()`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _metrics(r: dict[str, Any], peak: dict[str, float]) -> dict[str, float]:
    p = peak["bfloat16"] if "bfloat16" in r["precision"] else peak["float32"]
    s = max(r["seconds"], 1e-9)
    rates = sorted(x["comments"] / max(x["seconds"], 1e-9) for x in r.get("per_step") or [])
    return {"comments_s": r["comments"] / s, "tokens_s": r["tokens"] / s, "mfu": r["executed_flops"] / s / p,
            "useful_mfu": r["useful_flops"] / s / p, "rss_mib": r["peak_rss_bytes"] / 2 ** 20,
            "median_comments_s": statistics.median(rates) if rates else r["comments"] / s,
            "min_comments_s": rates[0] if rates else r["comments"] / s,
            "max_comments_s": rates[-1] if rates else r["comments"] / s}


def ratio(bench: dict[str, Any], k: int, num: str = "shared_prefix", den: str = "trl") -> float | None:
    """comments/s of configuration `num` / that of `den` at `k` comments per video (None if either is missing)."""
    by = {r["kind"]: r for r in bench["results"] if r["k"] == k and "error" not in r}
    if num not in by or den not in by:
        return None
    a, b = (by[x]["comments"] / max(by[x]["seconds"], 1e-9) for x in (num, den))
    return a / b


def _largest_step(r: dict[str, Any]) -> str:
    """`rows x T` of the timed step with the most padded positions (the one that sets the peak RSS)."""
    steps = r.get("per_step") or []
    if not steps:
        return f"? x {r['row_tokens_max']}"
    big = max(steps, key=lambda x: x["rows"] * x["row_tokens"])
    return f"{big['rows']} x {big['row_tokens']:,}"


def format_table(bench: dict[str, Any]) -> str:
    """The results as a Markdown table (one line per comment count and configuration)."""
    head = ("| comments/video | configuration | videos | comments | timed steps | seconds | comments/s "
            "| per step: median [min-max] | tokens/s | row tokens mean/max | largest step rows x T | peak RSS MiB "
            "| MFU | useful MFU | comments/s vs (a) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in bench["results"]:
        if "error" in r:
            lines.append(f"| {r['k']} | {LABELS[r['kind']]} | {r['videos']} | failed: "
                         f"{r['error'].splitlines()[0]} |" + " |" * 11)
            continue
        m = _metrics(r, bench["peak_flops"])
        x = ratio(bench, r["k"], r["kind"], "trl")
        lines.append(f"| {r['k']} | {LABELS[r['kind']]} | {r['videos']} | {r['comments']} | {r['steps_timed']} "
                     f"| {r['seconds']:.1f} | {m['comments_s']:.3f} | {m['median_comments_s']:.3f} "
                     f"[{m['min_comments_s']:.3f}-{m['max_comments_s']:.3f}] | {m['tokens_s']:.1f} "
                     f"| {r['row_tokens_mean']:.0f}/{r['row_tokens_max']} | {_largest_step(r)} "
                     f"| {m['rss_mib']:.0f} | {100 * m['mfu']:.1f}% | {100 * m['useful_mfu']:.1f}% "
                     f"| {'' if x is None else f'{x:.2f}x'} |")
    return "\n".join(lines)


def busy(bench: dict[str, Any]) -> str | None:
    """Why the run's timings cannot be trusted, or None: the 1-minute load average before the run exceeded the
    number of cores (other processes competed for the CPU)."""
    e = bench.get("env") or {}
    load, cores = (e.get("load_start") or [0])[0], e.get("cores") or 1
    if load > cores:
        return (f"The 1-minute load average before the run was {load:.2f} on {cores} cores: other processes used "
                f"the CPU, so these timings are not comparable with runs on an idle machine.")
    return None


def summary_lines(bench: dict[str, Any]) -> list[str]:
    """Targets (reported, not asserted), the validation check, and as the last line the (c)/(a) ratios."""
    ks = bench["options"]["comments_per_video"]
    out = []
    for k, target in TARGETS.items():
        x = ratio(bench, k)
        if x is not None:
            out.append(f"target: (c)/(a) comments/s at {k} comments/video >= {target}x: {x:.2f}x "
                       f"({'met' if x >= target else 'NOT met'})")
    k_mfu, mfu_target = MFU_TARGET
    c = next((r for r in bench["results"] if r["k"] == k_mfu and r["kind"] == "shared_prefix" and "error" not in r),
             None)
    if c is not None:
        mfu = _metrics(c, bench["peak_flops"])["mfu"]
        out.append(f"target: (c) executed MFU at {k_mfu} comments/video >= {100 * mfu_target:.0f}%: {100 * mfu:.1f}% "
                   f"({'met' if mfu >= mfu_target else 'NOT met'})")
    v = bench.get("val")
    if v and "error" in v:
        out.append(f"validation check failed: {v['error'].splitlines()[0]}")
    elif v:
        a, b = v["none"]["final_val_nll"], v["shared_prefix"]["final_val_nll"]
        base = v["none"]["base_val_nll"]
        change = abs(base - (a + b) / 2)
        out.append(f"validation NLL/token after the same {v['comments']} comments ({v['k']}/video, "
                   f"{v['none']['steps']} optimizer step(s), vrp.train.loop.train): base {base:.4f}, (b) none {a:.4f}, "
                   f"(c) shared_prefix {b:.4f}, difference {abs(a - b):.2e} nats"
                   + (f" ({100 * abs(a - b) / change:.1f}% of the change from base)" if change > 0 else ""))
    wall = (bench.get("env") or {}).get("wall_s")
    if wall is not None:
        out.append(f"run time: {wall / 60:.1f} minutes, model loads, matmul peak and validation check included")
    why = busy(bench)
    if why:
        out.append(f"**{why}**")
    parts = [f"{k}/video {x:.2f}x" for k in ks if (x := ratio(bench, k)) is not None]
    out.append("comments/s ratio (c) shared_prefix / (a) TRL: " + ("; ".join(parts) if parts else "n/a"))
    return out


def markdown_section(bench: dict[str, Any], command: str) -> str:
    """The BENCHMARKS.md section: heading with date, machine, versions, exact command; settings; table; notes."""
    e, o, p = bench["env"], bench["options"], bench["peak_flops"]
    lora = o["lora"]
    return "\n".join([
        f"## vrp bench train ({e['date']}, {e['cpu']}, {e['cores']} cores)", "",
        f"- machine: {e['cpu']}, {e['cores']} cores, {e['torch_threads']} torch threads; 1-minute load average at "
        f"start {e['load_start'][0]:.2f}, at end {e['load_end'][0]:.2f}",
        f"- versions: Python {e['python']}, torch {e['torch']}, transformers {e['transformers']}, trl {e['trl']}, "
        f"peft {e['peft']}",
        f"- command: `{command}`",
        f"- model {o['model']}, precision {o['precision']}, LoRA r={lora['r']} alpha={lora['alpha']} "
        f"{lora['target_modules']} dropout {lora['dropout']}, batch {o['batch_size']} rows, prompts <= "
        f"{o['max_prompt_tokens']} tokens, comments <= {o['max_comment_tokens']}, shared-prefix rows <= "
        f"{o['max_row_tokens']}, AdamW lr {o['learning_rate']}, data {Path(o['data']).name}",
        f"- measured matmul peak ({o['peak_size']}x{o['peak_size']}, best of {o['peak_repeats']}): bf16 "
        f"{p['bfloat16'] / 1e9:.0f} GFLOP/s, fp32 {p['float32'] / 1e9:.0f} GFLOP/s", "",
        format_table(bench), "",
        *[f"- {line}" for line in summary_lines(bench)], "",
        f"Timed: the first {o.get('steps', 1)} optimizer steps of each configuration after one warm-up step (data "
        "collation, forward, backward, clipping, AdamW); comments/s = comments of the timed steps / their seconds, "
        "and the median and range of the steps' own comments/s (steps differ in their comments, so part of the "
        "range is content, not noise). Peak RSS belongs to each row's largest step (its rows x T): compare it "
        "between configurations only at equal shapes (`vrp bench train --memory`). "
        "MFU = executed model FLOPs/s / measured matmul peak of the run's dtype; useful MFU counts only the "
        "per-example work (each comment with its own prompt, causal attention, LM head at its tokens), the same "
        "for (a), (b), (c), so it exceeds the executed MFU when packing avoids recomputing prompts (and can pass "
        "100%). FLOPs per token: 4*N_body + 6*N_lora + 12*L*d_attn*keys, plus 4*N_head per LM-head "
        "position (Kaplan et al. 2020; PaLM appendix B, with the frozen base's weight gradients left out); see "
        "`vrp.bench.flops`. Each configuration runs in its own process (peak RSS per configuration).", ""])


def append_section(path: Path, section: str) -> None:
    """Append `section` to the Markdown file at `path` by rewriting the whole file atomically (a temporary file
    renamed over it; the file's permission bits are kept, 0644 for a new file)."""

    old = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    mode = path.stat().st_mode & 0o777 if path.is_file() else 0o644
    with atomic_path(path) as tmp:
        tmp.write_text(old.rstrip("\n") + "\n\n" + section, encoding="utf-8")
        os.chmod(tmp, mode)


def memory_section(bench: dict[str, Any], command: str) -> str:
    """The BENCHMARKS.md section of a memory run (`memory` option): machine, command, shape, each configuration's
    peak RSS at that shape, and the breakdown of (b) and (c) (`vrp.bench.memory.format_profile`)."""

    e, o = bench["env"], bench["options"]
    lora = o["lora"]
    out = [f"## vrp bench train --memory ({e['date']}, {e['cpu']}, {e['cores']} cores)", "",
           f"- command: `{command}`; 1-minute load average at start {e['load_start'][0]:.2f} (memory figures do not "
           f"depend on it)",
           f"- versions: Python {e['python']}, torch {e['torch']}, transformers {e['transformers']}, peft {e['peft']}",
           f"- model {o['model']}, precision {o['precision']}, LoRA r={lora['r']} alpha={lora['alpha']} "
           f"{lora['target_modules']} dropout {lora['dropout']}, attention {o.get('attn_implementation')}, lean LoRA "
           f"{'on' if o.get('lean', True) else 'off (PEFT forward)'}, gradient checkpointing "
           f"{'on' if o.get('gradient_checkpointing') else 'off'}; every configuration at {o['batch_size']} rows x "
           f"{o['memory_row_tokens']} tokens ((c): {o['comments_per_video'][0]} comments per row)", "",
           "| configuration | rows x T | peak RSS MiB |", "|---|---|---|"]
    for r in bench["memory"]:
        if "error" in r:
            out.append(f"| {LABELS[r['mode']]} | | failed: {r['error'].splitlines()[0]} |")
        else:
            out.append(f"| {LABELS[r['mode']]} | {r['rows']} x {r['row_tokens']:,} | "
                       f"{r['peak_rss_bytes'] / 2 ** 20:,.0f} |")
    for r in bench["memory"]:
        if "profile" in r:
            out += ["", format_profile(r["profile"], LABELS[r["mode"]])]
    timed = [r for r in bench["memory"] if "time" in r]
    if timed:
        load = e["load_start"][0]
        note = (f"**the 1-minute load average at the start was {load:.2f}, above the {e['cores']} cores: the seconds "
                f"are not trustworthy**" if busy(bench) else f"1-minute load average at the start {load:.2f}")
        peaks = bench["peak_flops"]
        out += ["", f"Where the time of one step goes (`vrp.bench.optime`: torch.profiler self time per kind of "
                    f"operator, the same batch as above; {note}; measured matmul peak bf16 "
                    f"{peaks['bfloat16'] / 1e9:,.0f} GFLOP/s, fp32 {peaks['float32'] / 1e9:,.0f} GFLOP/s):"]
        for r in timed:
            p = bench["peak_flops"]["bfloat16" if "bfloat16" in r.get("precision", "") else "float32"]
            out += ["", format_time_profile(r["time"], LABELS[r["mode"]], p)]
    return "\n".join(out) + "\n"
