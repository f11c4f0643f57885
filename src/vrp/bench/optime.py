"""Time profile of one training step: where the seconds go, by kind of operation, against the FLOPs each kind does.

Knows: how to time one vrp training step (forward, backward, clipping, AdamW) with PyTorch's profiler
(`torch.profiler.profile`, CPU activity) and sort the self time of every operator into `KINDS`:
- attention kernel: SDPA and its backward (`aten::_scaled_dot_product_*`, the fused CPU flash-attention kernel);
- matmul: the linear layers, LoRA and the LM head (`aten::mm`, `addmm`, `bmm`, ...);
- loss: log-softmax and NLL of the chunked cross-entropy;
- optimizer: AdamW and gradient clipping (`_fused_adamw`, `_foreach_*`);
- elementwise and copies: every other aten operator (RMSNorm, SwiGLU, rotary, residual adds, dtype casts, masks);
- Python and autograd: time spent outside aten operators (autograd engine nodes, custom autograd functions).
For the two kinds that do the model's FLOPs it gives the rate reached, by the MFU formula (`vrp.bench.flops`):
attention = 12 * L * d_attn per scored query-key pair, matmul = everything else the formula counts (linear layers,
LoRA, LM head), each against the measured matmul peak. (The profiler's own `with_flops` is not used: recording
every operator's shapes made the step ~1.5x slower, all of it booked to the elementwise operators.) The profiled step follows an untimed warm-up step and
one step timed without the profiler (the profiler's own overhead is reported as the gap between the two).
Self times are those of the calling thread; intra-op threads work inside an operator's span.
Does not know: how the batch was chosen (`vrp.bench.train`) or memory (`vrp.bench.memory`).
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable

from vrp.bench.flops import executed_flops

KINDS = ("attention kernel", "matmul", "loss", "optimizer", "elementwise and copies", "Python and autograd")
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
              "aten::_addmm_activation"}


def op_kind(name: str) -> str:
    """The kind (`KINDS`) of a profiler event named `name` (e.g. 'aten::mm')."""
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention kernel"
    if name in MATMUL_OPS:
        return "matmul"
    if "log_softmax" in name or "nll_loss" in name or "cross_entropy" in name:
        return "loss"
    if "adam" in name or "_foreach" in name:
        return "optimizer"
    if name.startswith("aten::"):
        return "elementwise and copies"
    return "Python and autograd"


def time_step(step: Callable[[], None], attention_flops: float, other_flops: float) -> dict[str, Any]:
    """Time `step` (one full training step, already warmed up) twice: plain (`step_seconds`) and under
    `torch.profiler` (`profiled_seconds`); return the self seconds of each kind (`seconds`: {kind: s}) and the
    model FLOPs given by the caller: `attention_flops` (scored pairs x 12 L d_attn) and `other_flops` (everything
    else the MFU formula counts: the matmuls), both per step."""
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    step()
    plain = time.perf_counter() - t0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        step()
        profiled = time.perf_counter() - t0
    seconds = dict.fromkeys(KINDS, 0.0)
    for ev in prof.key_averages():
        seconds[op_kind(ev.key)] += ev.self_cpu_time_total / 1e6
    return {"step_seconds": plain, "profiled_seconds": profiled, "seconds": seconds, "attention_flops": attention_flops, "other_flops": other_flops}


def step_flops(dims: Any, row_lengths: list[int], head_positions: int, dense: bool, causal_prefix: int,
               pairs: float | None = None) -> tuple[float, float]:
    """(attention, everything else) of `vrp.bench.flops.executed_flops` for one batch, FLOPs."""

    total = executed_flops(dims, row_lengths, head_positions, dense, causal_prefix, pairs)
    without = executed_flops(replace(dims, d_attn=0), row_lengths, head_positions, dense, causal_prefix, pairs)
    return total - without, without


def format_time_profile(p: dict[str, Any], label: str, peak: float) -> str:
    """One time profile (`time_step`) as a Markdown table: seconds and share of the profiled step per kind, and
    for attention and matmul their FLOPs and rate as a share of `peak` (FLOP/s, the measured matmul peak)."""
    total = sum(p["seconds"].values()) or 1.0
    flops = {"attention kernel": p["attention_flops"], "matmul": p["other_flops"]}
    model = p["attention_flops"] + p["other_flops"]
    lines = [f"{label}: step {p['step_seconds']:.2f} s ({p['profiled_seconds']:.2f} s under the profiler); model "
             f"FLOPs {model / 1e12:.2f} T, of which attention {100 * p['attention_flops'] / max(model, 1):.0f}%", "",
             "| kind | seconds | share of step | GFLOP | GFLOP/s | share of matmul peak |", "|---|---|---|---|---|---|"]
    for k in KINDS:
        s = p["seconds"][k]
        rate = f"{flops[k] / 1e9:,.0f} | {flops[k] / max(s, 1e-9) / 1e9:,.0f} | " \
               f"{100 * flops[k] / max(s, 1e-9) / peak:.0f}%" if k in flops else " | | "
        lines.append(f"| {k} | {s:.2f} | {100 * s / total:.0f}% | {rate} |")
    return "\n".join(lines)
