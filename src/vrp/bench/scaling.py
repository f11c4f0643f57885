"""`vrp bench train --nproc N`: `vrp train` in 1 process against N processes on this machine (data parallel).

Knows: how to time the real training command in both forms on the same comments and the same global batch — 1
process with `grad_accum` N (`python -m vrp train`) and N processes with `grad_accum` 1 (`torchrun --standalone
--nproc-per-node N -m vrp train`, DDP over gloo on a CPU, NCCL on a GPU), each process with `threads` torch threads
(default 1), shared-prefix packing, no validation, one warm-up step and `steps` timed ones — and how to report
them: tokens/s and comments/s of the timed steps (the summed step times of rank 0's `metrics.jsonl`; a step of N
processes lasts until the slowest has all-reduced), speedup = tokens/s of N processes / that of 1, scaling
efficiency = speedup / N, and the last step's training loss of both (the same optimizer steps: they agree to float
rounding, a check that both runs did the same work).
Does not know: the training itself (`vrp train`, `vrp.train.distributed`), the other configurations of
`vrp bench train` (`vrp.bench.train`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from vrp.artifacts import DatasetDir
from vrp.bench.train import expand_comments, select_videos
from vrp.bench.train_report import cpu_model
from vrp.errors import ConfigError, VrpError
from vrp.model import load_tokenizer
from vrp.sources import load_source


def _train_args(opts: Any, data: Path, out: Path, grad_accum: int, steps: int) -> list[str]:
    """`vrp train` flags of one timed run (shared-prefix, no validation, no checkpoints but the last)."""
    lora = opts.lora
    return ["train", "--data", str(data), "--out", str(out), "--model", opts.model, "--packing", "shared_prefix",
            "--batch-size", str(opts.batch_size), "--grad-accum", str(grad_accum), "--max-steps", str(steps),
            "--max-prompt-tokens", str(opts.max_prompt_tokens), "--max-comment-tokens", str(opts.max_comment_tokens),
            "--max-row-tokens", str(opts.max_row_tokens), "--precision", opts.precision,
            "--attn-implementation", opts.attn_implementation, "--learning-rate", str(opts.learning_rate),
            "--lora-r", str(lora["r"]), "--lora-alpha", str(lora["alpha"]), "--lora-dropout", str(lora["dropout"]),
            "--target-modules", json.dumps(lora["target_modules"]), "--eval-every", str(10 ** 6),
            "--save-every", str(10 ** 6), "--curve-videos", "0", "--seed", "0", "--warmup-steps", "1"]


def _timed(run: Path, nproc: int, wall: float) -> dict[str, Any]:
    """Totals over the timed steps (all but the first) of a finished run dir's metrics.jsonl."""
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [h for h in steps if "loss" in h]
    if len(steps) < 2:
        raise VrpError(f"{run}: fewer than 2 optimizer steps were logged")
    timed = steps[1:]
    secs = [h["seconds"] for h in timed]
    return {"nproc": nproc, "steps_timed": len(timed), "seconds": sum(secs), "step_seconds": secs,
            "tokens": sum(h["tokens_per_s"] * h["seconds"] for h in timed),
            "comments": timed[-1]["comments_seen"] - steps[0]["comments_seen"], "loss_last": steps[-1]["loss"],
            "wall_s": wall, "world_size": json.loads((run / "metrics.json").read_text()).get("world_size", 1)}


def run_scaling(opts: Any, progress: bool = True) -> dict[str, Any]:
    """Time `vrp train` with 1 and with `opts.nproc` processes (see the module docstring) and return the raw results
    (JSON-ready): `options`, `env` (date, CPU, cores, load averages), `runs` (per process count: timed steps, their
    seconds, tokens, comments, last loss, wall seconds), `rows_per_step` (global), `scaling` (speedup,
    efficiency). Raises ConfigError('data') without a source, VrpError when a run fails (with its output's tail)."""

    if not opts.data:
        raise ConfigError("data", "no source of videos given")
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    n, k, steps = opts.nproc, opts.comments_per_video[0], max(opts.steps, 2) + 1  # + the warm-up step
    videos, _ = load_source(opts.data)
    tok = load_tokenizer(opts.model)
    # enough shared-prefix rows that no step of either run wraps into the next epoch
    enc = select_videos(videos, k, tok, replace(opts, videos=0, steps=steps * n))
    env = dict(os.environ, OMP_NUM_THREADS=str(opts.threads or 1), TOKENIZERS_PARALLELISM="false",
               HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error")
    env.setdefault("HF_HUB_OFFLINE", "1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    load_start, t_start = os.getloadavg(), time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="vrp-bench-scaling-") as tmpdir:
        data = Path(tmpdir) / "data"
        DatasetDir(data).write(expand_comments(videos, k, len(enc)), [], {"source": "vrp bench train --nproc"})
        for p in (1, n):
            out = Path(tmpdir) / f"run-{p}"
            args = _train_args(opts, data, out, n // p, steps)
            cmd = ([sys.executable, "-m", "vrp", *args] if p == 1 else
                   [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(p),
                    "-m", "vrp", *args])
            say(f"vrp train in {p} process(es), {opts.threads or 1} thread(s) each, {steps} steps of "
                f"{opts.batch_size * n} rows ...")
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise VrpError(f"vrp train in {p} process(es) failed (exit {proc.returncode}):\n"
                               f"{(proc.stdout + proc.stderr)[-3000:]}")
            runs.append(_timed(out, p, time.perf_counter() - t0))
            r = runs[-1]
            say(f"    {r['tokens'] / r['seconds']:.1f} tokens/s over {r['steps_timed']} timed steps "
                f"({r['seconds']:.1f} s)")
    one, many = runs
    speedup = (many["tokens"] / many["seconds"]) / (one["tokens"] / one["seconds"])
    env_info = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpu": cpu_model(), "cores": os.cpu_count(),
                "threads_per_process": opts.threads or 1, "load_start": load_start, "load_end": os.getloadavg(),
                "wall_s": time.perf_counter() - t_start}
    return {"options": asdict(opts), "env": env_info, "runs": runs, "rows_per_step": opts.batch_size * n,
            "videos": len(enc), "scaling": {"nproc": n, "speedup": speedup, "efficiency": speedup / n}}


def format_scaling(bench: dict[str, Any]) -> str:
    """The result table and the summary line (the last line: the scaling efficiency)."""
    rows = ["| processes | timed steps | rows/step | tokens/s | comments/s | last loss |", "|---|---|---|---|---|---|"]
    for r in bench["runs"]:
        s = max(r["seconds"], 1e-9)
        rows.append(f"| {r['nproc']} | {r['steps_timed']} | {bench['rows_per_step']} | {r['tokens'] / s:.1f} | "
                    f"{r['comments'] / s:.3f} | {r['loss_last']:.4f} |")
    sc, env = bench["scaling"], bench["env"]
    rows += ["", (f"load average at start/end: {env['load_start'][0]:.2f} / {env['load_end'][0]:.2f} "
                  f"({env['cores']} cores, {env['threads_per_process']} thread(s) per process)"),
             (f"scaling efficiency with {sc['nproc']} processes: {sc['efficiency']:.2f} (speedup "
              f"{sc['speedup']:.2f}x over 1 process)")]
    return "\n".join(rows)


def scaling_busy(bench: dict[str, Any]) -> str | None:
    """Why the timings are not worth writing down (the 1-minute load at the start above the core count), or None."""
    load, cores = bench["env"]["load_start"][0], bench["env"]["cores"] or 1
    return f"the load average at the start was {load:.2f} on {cores} cores." if load > cores else None


def scaling_section(bench: dict[str, Any], command: str) -> str:
    """A Markdown section for BENCHMARKS.md: the command, the machine, the table and the efficiency."""
    env, why = bench["env"], scaling_busy(bench)
    note = f"**Busy machine: {why} The timings are not representative.**\n\n" if why else ""
    return (f"\n## Training in several processes ({env['date']})\n\n{note}`{command}` on {env['cpu']} "
            f"({env['cores']} cores), {bench['videos']} videos, model `{bench['options']['model']}`.\n\n"
            f"{format_scaling(bench)}\n")
