"""Reporting of `vrp bench train` results: the Markdown table, the target lines and the BENCHMARKS.md section.

Knows: the raw result dict `vrp.bench.train.run_bench` returns (`options`, `env`, `peak_flops` in FLOP/s,
`results`: one dict per (comments per video K, configuration) with `comments`, `tokens`, `seconds` (timed steps),
`peak_rss_bytes`, `executed_flops`, `useful_flops`, row lengths in tokens; `val`: the validation check), and how to
turn it into comments/s, tokens/s, peak RSS (MiB), MFU and useful MFU (see `vrp.bench.flops`), the (c)/(a)
comments/s ratios and the targets (reported, never asserted). Does not run anything.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

CONFIGS = ("trl", "none", "shared_prefix")
LABELS = {"trl": "(a) TRL SFTTrainer, per example", "none": "(b) vrp --packing none",
          "shared_prefix": "(c) vrp --packing shared_prefix"}
TARGETS = {3: 2.5, 30: 8.0}            # (c)/(a) comments/s at K comments/video, reported not asserted
RSS_TARGET = 1.5                        # peak RSS at the largest K / at the smallest K, reported not asserted


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
    return {"comments_s": r["comments"] / s, "tokens_s": r["tokens"] / s, "mfu": r["executed_flops"] / s / p,
            "useful_mfu": r["useful_flops"] / s / p, "rss_mib": r["peak_rss_bytes"] / 2 ** 20}


def ratio(bench: dict[str, Any], k: int, num: str = "shared_prefix", den: str = "trl") -> float | None:
    """comments/s of configuration `num` / that of `den` at `k` comments per video (None if either is missing)."""
    by = {r["kind"]: r for r in bench["results"] if r["k"] == k and "error" not in r}
    if num not in by or den not in by:
        return None
    a, b = (by[x]["comments"] / max(by[x]["seconds"], 1e-9) for x in (num, den))
    return a / b


def format_table(bench: dict[str, Any]) -> str:
    """The results as a Markdown table (one line per comment count and configuration)."""
    head = ("| comments/video | configuration | videos | comments | timed steps | seconds | comments/s | tokens/s "
            "| row tokens mean/max | peak RSS MiB | MFU | useful MFU | comments/s vs (a) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in bench["results"]:
        if "error" in r:
            lines.append(f"| {r['k']} | {LABELS[r['kind']]} | {r['videos']} | failed: "
                         f"{r['error'].splitlines()[0]} |" + " |" * 9)
            continue
        m = _metrics(r, bench["peak_flops"])
        x = ratio(bench, r["k"], r["kind"], "trl")
        lines.append(f"| {r['k']} | {LABELS[r['kind']]} | {r['videos']} | {r['comments']} | {r['steps_timed']} "
                     f"| {r['seconds']:.1f} | {m['comments_s']:.3f} | {m['tokens_s']:.1f} "
                     f"| {r['row_tokens_mean']:.0f}/{r['row_tokens_max']} "
                     f"| {m['rss_mib']:.0f} | {100 * m['mfu']:.1f}% | {100 * m['useful_mfu']:.1f}% "
                     f"| {'' if x is None else f'{x:.2f}x'} |")
    return "\n".join(lines)


def summary_lines(bench: dict[str, Any]) -> list[str]:
    """Targets (reported, not asserted), the validation check, and as the last line the (c)/(a) ratios."""
    ks = bench["options"]["comments_per_video"]
    out = []
    for k, target in TARGETS.items():
        x = ratio(bench, k)
        if x is not None:
            out.append(f"target: (c)/(a) comments/s at {k} comments/video >= {target}x: {x:.2f}x "
                       f"({'met' if x >= target else 'NOT met'})")
    if len(ks) > 1:
        for kind in bench["options"]["configs"]:
            rss = {r["k"]: r["peak_rss_bytes"] for r in bench["results"] if r["kind"] == kind and "error" not in r}
            if min(ks) in rss and max(ks) in rss:
                x = rss[max(ks)] / rss[min(ks)]
                out.append(f"target: peak RSS of {LABELS[kind]} at {max(ks)} vs {min(ks)} comments/video <= "
                           f"{RSS_TARGET}x: {x:.2f}x ({'met' if x <= RSS_TARGET else 'NOT met'})")
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
    e = bench.get("env") or {}
    busy = max(e.get("load_start", [0])[0], e.get("load_end", [0])[0])
    if busy > 0.5:
        out.append(f"note: 1-minute load average {busy:.2f} on {e.get('cores')} cores: other processes used the CPU "
                   f"during the run, so the timings are noisy; rerun on an idle machine for final numbers")
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
        "Timed: every optimizer step after one warm-up step (data collation, forward, backward, clipping, AdamW). "
        "MFU = executed model FLOPs/s / measured matmul peak of the run's dtype; useful MFU counts only the "
        "per-example work (each comment with its own prompt, causal attention, LM head at its tokens), the same "
        "for (a), (b), (c), so it exceeds the executed MFU when packing avoids recomputing prompts (and can pass "
        "100%). FLOPs per token: 4*N_body + 6*N_lora + 12*L*d_attn*keys, plus 4*N_head per LM-head "
        "position (Kaplan et al. 2020; PaLM appendix B, with the frozen base's weight gradients left out); see "
        "`vrp.bench.flops`. Each configuration runs in its own process (peak RSS per configuration).", ""])


def append_section(path: Path, section: str) -> None:
    """Append `section` to the Markdown file at `path` by rewriting the whole file atomically (a temporary file
    renamed over it; the file's permission bits are kept, 0644 for a new file)."""
    from vrp.io import atomic_path

    old = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    mode = path.stat().st_mode & 0o777 if path.is_file() else 0o644
    with atomic_path(path) as tmp:
        tmp.write_text(old.rstrip("\n") + "\n\n" + section, encoding="utf-8")
        os.chmod(tmp, mode)
