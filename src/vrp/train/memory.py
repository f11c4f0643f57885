"""Memory budgets of training: what a step needs, how a run fits a budget, and what a run used.

Knows:
- budget strings (`max_memory`): `8GB`, `7.5 GiB`, `512MB` (a unit is required: a bare `512` is refused, not read as
  512 bytes), or `auto` (`AUTO_RAM_SHARE` of the RAM the kernel reports as available plus what this process already
  holds; on CUDA `AUTO_GPU_SHARE` of the free device memory plus what torch already allocated). kB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB of 1024;
- how many bytes a step's tensors need beyond what is already allocated (`allocated_peak`): on CUDA torch's peak
  counter (`torch.cuda.max_memory_allocated`); on a CPU the allocation events of the torch profiler
  (`profile_memory=True`: every allocation and free of the CPU allocator while profiling, with its running total),
  so the measure counts tensors only and repeats within ~1%, unlike the process's resident set;
- the cost model: peak = fixed + heap slack + rows x cost of one row of the run's longest row length. fixed = what
  the process holds after the model is loaded (resident set on a CPU, allocated bytes on CUDA) + LoRA gradients +
  AdamW's two moments (3 x the trainable fp32 bytes). A row's cost is measured at startup on one real row of the
  longest length (`measure_row_bytes`: forward + backward, RNG state restored, gradients dropped) times
  `ROW_FACTOR` (the allocator's slack). On a CPU glibc's heap fragments (freed activations interleaved with kept
  ones), so a step's resident set exceeds its live tensors by about a fixed
  number of row costs whatever the rows per micro-batch: `HEAP_SLACK_ROWS` row costs are added (calibrated on
  SmolLM2-135M runs with 1, 2 and 4 rows per micro-batch: docs/benchmarks-history.md, "--max-memory"). With
  gradient checkpointing the measured row cost is that of the checkpointed step (the layer inputs kept, one layer
  recomputed at a time: 100 MB instead of 341 MB for a 384-token SmolLM2 row), but the heap churns through every
  layer's activations as before, in the forward pass and again in the recomputation, so the slack is a larger
  multiple of that smaller cost: `HEAP_SLACK_ROWS_CHECKPOINTED` (calibrated on SmolLM2-135M, bf16 autocast, one
  thread, `--packing none --tiers`, measured peak RSS minus fixed part minus one row: 4.7 row costs at 384-token
  rows, 5.2 at 1,152-token rows, 2026-12-07; with 4 rows of 384 tokens the plan of 1.75 GB is 0.25 GB above the
  measured 1.50 GB). The other terms grow linearly with the rows at a fixed row length, so the worst micro-batch is
  `rows` rows of the longest length. What loading the model reached (`rss_high_water_bytes` when the plan is made:
  1.27 GB for SmolLM2 with 0.85 GB held afterwards) is not a training cost, but a budget below it cannot be kept:
  the plan says so;
- the plan (`plan_micro_batch`): the most rows per micro-batch that divide `batch_size` and fit, with the
  configured micro-batch split into `batch_size / rows` pieces, so an optimizer step still sees the same rows and
  the loss (normalised by the targets of the whole step) is the same up to float rounding; dropout masks differ;
- what the run used (`peak_memory`: peak RSS and CUDA's peak allocated bytes), whether that kept the budget
  (`check_peak`, said at the end of every run with a budget) and how an out-of-memory error reads
  (`out_of_memory_as_config_error`).
Does not know: the training loop (`vrp.train.loop`), how rows are built (`vrp.packing`).
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from vrp.errors import ConfigError
from vrp.loss import loss_sum
from vrp.packing import collate
from vrp.precision import autocast_ctx
from vrp.procmem import (
    available_ram_bytes,
    check_budget,
    fmt_bytes,
    parse_size,
    peak_rss_bytes,
    release_freed_memory,
    resident_bytes,
    rss_high_water_bytes,
)

AUTO_RAM_SHARE = 0.8
AUTO_GPU_SHARE = 0.9
ROW_FACTOR = 1.1
HEAP_SLACK_ROWS = 2.8
HEAP_SLACK_ROWS_CHECKPOINTED = 5.5  # row costs of heap slack with gradient checkpointing (module docstring)
TRIM_EVERY = 8
def in_use_bytes(device: str) -> int:
    """What this process holds now: the resident set on a CPU, torch's allocated bytes on CUDA."""
    if device == "cuda":
        import torch

        return int(torch.cuda.memory_allocated())
    return resident_bytes()


def total_memory_bytes(device: str) -> tuple[int | None, str]:
    """`(bytes, what)`: the total memory a budget on `device` draws from: CUDA device 0's memory
    (`torch.cuda.get_device_properties`), else the physical RAM (`SC_PHYS_PAGES` x page size); None when unknown."""
    if device == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory), "GPU memory"
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "RAM"
    except (OSError, ValueError):
        return None, "RAM"


def resolve_budget(spec: str, device: str) -> int | None:
    """The budget in bytes of `max_memory` value `spec` ('' = None: no budget). `auto` = what the process holds
    now + `AUTO_RAM_SHARE` of the available RAM (CPU) or `AUTO_GPU_SHARE` of the free device memory (CUDA)."""
    check_budget(spec)
    if not spec:
        return None
    if spec != "auto":
        budget = parse_size(spec)
        total, what = total_memory_bytes(device)
        if total and budget > total:
            print(f"warning: the memory budget {fmt_bytes(budget)} is more than the {fmt_bytes(total)} of {what} this "
                  f"machine has; it cannot keep the run from running out of memory", file=sys.stderr, flush=True)
        return budget
    if device == "cuda":
        import torch

        return in_use_bytes(device) + int(AUTO_GPU_SHARE * torch.cuda.mem_get_info()[0])
    return in_use_bytes(device) + int(AUTO_RAM_SHARE * available_ram_bytes())


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 pointed at /dev/null for the block (what C++ code prints there); Python's own `sys.stderr`
    is flushed first. Does nothing where stderr has no file descriptor."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def allocated_peak(fn: Callable[[], Any], device: str) -> int:
    """Peak bytes of tensors allocated while `fn()` runs, above what was allocated before it (see the module
    docstring: CUDA's peak counter, or the CPU allocator's running total in the torch profiler's events)."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return max(0, int(torch.cuda.max_memory_allocated()) - base)
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _native_stderr_silenced():  # kineto prints `USDT: ... profiler_start` / `profiler_stop` lines on fd 2
        prof.start()
    try:
        fn()
    finally:
        with _native_stderr_silenced():
            prof.stop()
    peak, stack = 0, list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            peak = max(peak, int(event.extra_fields.total_allocated))
        stack.extend(event.children)
    return peak


def trainable_bytes(model: Any) -> int:
    """Bytes of the trainable parameters (the LoRA weights)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def fixed_bytes(model: Any, device: str) -> int:
    """The part of a step's peak that does not grow with the batch: what the process holds now + gradients and
    AdamW's two moments of the trainable parameters (allocated at the first step)."""
    return in_use_bytes(device) + 3 * trainable_bytes(model)


def measure_row_bytes(model: Any, row: Any, pad_id: int, packing: str, prec: Any) -> int:
    """Peak bytes a training forward + backward of the single row `row` (`vrp.packing.Row`) allocates, times
    `ROW_FACTOR`. Runs in train mode under the run's autocast; the RNG state is restored and the gradients are
    dropped afterwards, so the run that follows is the same as without the measurement."""
    import torch

    batch = {k: v.to(prec.device) if hasattr(v, "to") else v for k, v in collate([row], pad_id, packing).items()}
    was_training = model.training
    model.train()

    def step() -> None:
        with autocast_ctx(prec):
            loss, n = loss_sum(model, batch)
        (loss / max(n, 1)).backward()
        del loss

    devices = [torch.cuda.current_device()] if prec.device == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        peak = allocated_peak(step, prec.device)
    for p in model.parameters():
        p.grad = None
    model.train(was_training)
    return int(peak * ROW_FACTOR)


@dataclass
class MemoryPlan:
    """Rows per micro-batch under a budget. budget/fixed/row/slack in bytes (slack: the CPU heap's allowance, see the
    module docstring); row_tokens: the longest row the cost was measured at; micro_rows: rows per micro-batch; batch_size: the configured rows per micro-batch (a divisor
    multiple of micro_rows); splits: micro-batches each configured micro-batch becomes."""

    budget: int
    fixed: int
    row: int
    row_tokens: int
    micro_rows: int
    batch_size: int
    slack: int = 0

    @property
    def splits(self) -> int:
        """Micro-batches each configured micro-batch of `batch_size` rows is cut into."""
        return self.batch_size // self.micro_rows

    @property
    def predicted_peak(self) -> int:
        """fixed + slack + micro_rows x row, bytes."""
        return self.fixed + self.slack + self.micro_rows * self.row

    def describe(self, grad_accum: int) -> str:
        """One line saying what was chosen and why."""
        return (f"max_memory {fmt_bytes(self.budget)}: {self.micro_rows} row(s) per micro-batch x "
                f"{self.splits * grad_accum} accumulation step(s) (global batch {self.batch_size * grad_accum} "
                f"rows), predicted peak {fmt_bytes(self.predicted_peak)} = {fmt_bytes(self.fixed)} fixed + "
                + (f"{fmt_bytes(self.slack)} heap slack + " if self.slack else "")
                + f"{self.micro_rows} x {fmt_bytes(self.row)} per row of {self.row_tokens} tokens")

    def to_json(self) -> dict[str, int]:
        """The plan as a JSON-ready dict (bytes and counts)."""
        return {"budget_bytes": self.budget, "fixed_bytes": self.fixed, "slack_bytes": self.slack, "row_bytes": self.row,
                "row_tokens": self.row_tokens, "micro_rows": self.micro_rows, "splits": self.splits,
                "predicted_peak_bytes": self.predicted_peak}


def plan_micro_batch(budget: int, fixed: int, row: int, row_tokens: int, batch_size: int,
                     slack: int = 0, checkpointing: bool = False) -> MemoryPlan:
    """The most rows per micro-batch (a divisor of `batch_size`) with fixed + slack + rows x row <= budget (bytes).

    Raises ConfigError('max_memory') when not even one row of `row_tokens` tokens fits, saying what it needs (and,
    unless `checkpointing` is already on, that gradient checkpointing would help)."""
    fits = [d for d in range(batch_size, 0, -1) if batch_size % d == 0 and fixed + slack + d * row <= budget]
    if not fits:
        need = fixed + slack + row
        heap = f" + {fmt_bytes(slack)} of heap slack" if slack else ""
        raise ConfigError("max_memory", f"{fmt_bytes(budget)} cannot fit one row of {row_tokens} tokens: that needs "
                                        f"about {fmt_bytes(need)} ({fmt_bytes(fixed)} for the model and optimizer + "
                                        f"{fmt_bytes(row)} for the row{heap}); raise it, or lower `max_row_tokens` / "
                                        f"`max_prompt_tokens`" + ("" if checkpointing
                                                                  else ", or turn on `gradient_checkpointing`"))
    return MemoryPlan(budget, fixed, row, row_tokens, fits[0], batch_size, slack)


def plan_memory(model: Any, rows: list[Any], pad_id: int, cfg: Any, prec: Any) -> MemoryPlan:
    """The plan of a training run with `cfg.max_memory` set: the fixed part measured now, one row of the longest
    training row measured (`measure_row_bytes`), the rows per micro-batch chosen (`plan_micro_batch`) and said on
    stderr. Raises ConfigError('max_memory') when one row does not fit."""
    budget = resolve_budget(cfg.max_memory, prec.device)
    assert budget is not None
    loaded = loading_peak(prec.device)
    if loaded > budget:
        print(f"warning: loading the model already reached {fmt_bytes(loaded)}, more than max_memory "
              f"{fmt_bytes(budget)}: the run's peak cannot stay within it", file=sys.stderr, flush=True)
    release_freed_memory()  # heap left free by loading (e.g. a GGUF conversion in this process) is not fixed cost
    fixed = fixed_bytes(model, prec.device)
    longest = max(rows, key=lambda r: r.num_tokens)
    row = measure_row_bytes(model, longest, pad_id, cfg.packing, prec)
    release_freed_memory()
    checkpointing = bool(getattr(cfg, "gradient_checkpointing", False))
    slack = int(heap_slack_rows(checkpointing) * row) if prec.device == "cpu" else 0
    plan = plan_micro_batch(budget, fixed, row, longest.num_tokens, cfg.batch_size, slack, checkpointing)
    print(plan.describe(cfg.grad_accum), file=sys.stderr, flush=True)
    return plan


def heap_slack_rows(checkpointing: bool) -> float:
    """Row costs of CPU heap slack in the plan: `HEAP_SLACK_ROWS_CHECKPOINTED` with gradient checkpointing (the row
    cost is then the checkpointed one, the heap churn is not smaller), else `HEAP_SLACK_ROWS`."""
    return HEAP_SLACK_ROWS_CHECKPOINTED if checkpointing else HEAP_SLACK_ROWS


def loading_peak(device: str) -> int:
    """What the process reached so far (loading the model): its resident high-water mark on a CPU
    (`rss_high_water_bytes`), torch's peak allocated bytes on CUDA."""
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    return rss_high_water_bytes()


def trim_after_step(step: int, budgeted: bool) -> bool:
    """Whether training on a CPU gives freed heap memory back (`release_freed_memory`) after optimizer step `step`
    (1, 2, ...): after every step when the run has a memory budget, else after every `TRIM_EVERY`-th. Rows of varying
    length leave freed activations scattered in glibc's heap and the resident set creeps up step after step
    (SmolLM2-135M, rows of 500-1,000 tokens: 4.1 GB after one step, 5.8 GB after 8, a 2-epoch run past 10 GB);
    trimming after every step keeps it at ~0.9 GB between steps and lowers the peak by ~1 GB (5.0 instead of
    5.95 GB), but the pages are then faulted in again: +9% CPU time per step (measured, see
    docs/benchmarks-history.md, "Training memory and step time")."""
    return budgeted or step % TRIM_EVERY == 0


def peak_memory(device: str) -> dict[str, int]:
    """What the process used at its peak so far: `peak_rss_bytes`, plus `cuda_max_allocated_bytes` on CUDA."""
    out = {"peak_rss_bytes": peak_rss_bytes()}
    if device == "cuda":
        import torch

        out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


def check_peak(plan: MemoryPlan | None, peak: dict[str, int], device: str) -> dict[str, Any]:
    """Whether a run kept its memory budget, as `metrics.json` fields: `memory_budget_exceeded` (None without a
    budget) and `memory_over_budget_bytes` (how far the peak went past it, 0 when kept). The peak is what the budget
    limits: the process's peak resident set on a CPU (`peak_rss_bytes`), torch's peak allocated bytes on CUDA
    (`cuda_max_allocated_bytes`). A run past its budget says so on stderr in one line, with the plan's prediction."""
    if plan is None:
        return {"memory_budget_exceeded": None, "memory_over_budget_bytes": 0}
    key, what = (("cuda_max_allocated_bytes", "CUDA allocated") if device == "cuda" else ("peak_rss_bytes", "RSS"))
    used = int(peak.get(key) or 0)
    over = max(0, used - plan.budget)
    if over:
        print(f"warning: the run's peak memory {fmt_bytes(used)} ({what}) went past max_memory {fmt_bytes(plan.budget)}"
              f" by {fmt_bytes(over)} (the plan predicted {fmt_bytes(plan.predicted_peak)}); set a lower max_memory "
              f"to leave that much room", file=sys.stderr, flush=True)
    return {"memory_budget_exceeded": bool(over), "memory_over_budget_bytes": over}


OOM_PATTERNS = ("out of memory", "can't allocate memory", "cannot allocate memory")


@contextlib.contextmanager
def out_of_memory_as_config_error(rows: int, tokens: int, budget: str) -> Iterator[None]:
    """Turn torch's out-of-memory errors (CUDA `OutOfMemoryError`, the CPU allocator's `can't allocate memory`,
    MemoryError) raised inside the block into ConfigError('max_memory') naming the micro-batch (`rows` x `tokens`)
    and what to change. Other errors pass unchanged."""
    try:
        yield
    except (RuntimeError, MemoryError) as e:
        text = str(e).lower()
        if not isinstance(e, MemoryError) and not any(p in text for p in OOM_PATTERNS):
            raise
        what = ("set a budget (e.g. auto or 8GB) so that micro-batches are cut to fit" if not budget
                else f"the budget {budget} was more than this machine could give: set a smaller one")
        raise ConfigError("max_memory", f"out of memory in a micro-batch of {rows} row(s) x {tokens} tokens; "
                                        f"{what}, or lower `batch_size` (raising `grad_accum` keeps the global "
                                        f"batch), or turn on `gradient_checkpointing`") from None

