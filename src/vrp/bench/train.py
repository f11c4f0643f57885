"""`vrp bench train`: training throughput of TRL's per-example SFTTrainer vs vrp's loop, unpacked and shared-prefix.

Knows: how to build the benchmark's data from a real source (the first videos of e.g. the seed xlsx, prompts cut to
`max_prompt_tokens`; a video's comment count raised to K with real comments of the following videos, never the
same text twice in a video), how many videos to use so that every configuration learns the same comments, how to
run each configuration in its own process (`vrp.bench.train_worker`), and how to report comments/s, tokens/s,
peak RSS and MFU (the options: `BenchTrainConfig`), and how to build the equal-shape rows of the memory profile
(`memory_rows`).
Does not know: FLOP formulas or the matmul peak (`vrp.bench.flops`), how a configuration is timed (the worker),
how results are formatted (`vrp.bench.train_report`).

Run time: `quick` about 2 minutes on an idle 2-core machine; the default run (3, 10 and 30 comments per video for
all three configurations and 100 for (b) and (c), 1,024-token prompts, batch 4, 3 timed steps each) about 13
minutes there (13.2 measured on 2026-11-30; TRL's steps dominate: ~20 s each). `memory` profiles one step of each
configuration at one shape instead (`vrp.bench.memory`; for (b) and (c) also the time per kind of operation,
`vrp.bench.optime`; a few minutes).

Terms. comments/s: training comments (examples) learned per second of timed optimizer steps; tokens/s: real
(non-pad) tokens run through the model per second (prompt tokens count once per row, so packing lowers the
tokens needed for the same comments); peak RSS: the configuration process's peak resident memory (bytes, shown in
MiB; compared between configurations only at equal shapes, i.e. in the memory profile); MFU: model FLOPs per
second / measured matmul peak (see `vrp.bench.flops` for the formula and both counts);
packing: `none` = one row per comment (as TRL), `shared_prefix` = one row = one prompt + the comments of a video
(split into rows of at most `max_row_tokens` tokens that repeat the prompt).
The timings are only as good as the machine is quiet: the load average at start and end is recorded, and the
report refuses to be appended to BENCHMARKS.md when the load at the start exceeded the core count (see
`write_when_busy`).
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from vrp.artifacts import DatasetDir
from vrp.bench.config import VRP_CONFIGS, BenchTrainConfig
from vrp.bench.flops import matmul_peak
from vrp.bench.train_report import LABELS, cpu_model
from vrp.errors import ConfigError, VrpError
from vrp.model import load_tokenizer
from vrp.packing import make_rows
from vrp.prompts import PromptConfig, encode_video
from vrp.records import Comment, Video
from vrp.sources import load_source
from vrp.train.compile import check_compiler


def expand_video(videos: list[Video], i: int, k: int) -> Video:
    """Video `i` with exactly `k` comments: its own first ones, then real comments of videos i+1, i+2, ...
    (wrapping around), in order, skipping texts already present. Deterministic. Raises VrpError when the source
    has fewer than `k` distinct comment texts."""
    v = videos[i]
    seen: set[str] = set()
    out: list[Comment] = []
    for j in range(len(videos)):
        for c in videos[(i + j) % len(videos)].comments:
            text = c.text.strip()
            if text and text not in seen:
                seen.add(text)
                out.append(Comment(text=c.text, rank=len(out) + 1))
                if len(out) == k:
                    return Video(video_id=v.video_id, title=v.title, transcript=v.transcript, comments=out)
    raise ConfigError("comments_per_video", f"{k}: the source has only {len(out)} distinct comments")


def expand_comments(videos: list[Video], k: int, n: int) -> list[Video]:
    """The first `n` videos, each with exactly `k` comments (see `expand_video`)."""
    return [expand_video(videos, i, k) for i in range(min(n, len(videos)))]


def select_videos(videos: list[Video], k: int, tok: Any, opts: BenchTrainConfig) -> list[Any]:
    """Encoded videos (`EncodedVideo`) for comment count `k`: `opts.videos` of them, or automatically the fewest
    with >= `min_comments` comments whose shared-prefix rows fill `steps` batches of `batch_size`."""

    pcfg = PromptConfig(max_prompt_tokens=opts.max_prompt_tokens, max_comment_tokens=opts.max_comment_tokens,
                        prompt_format="auto")  # a base model (no chat template) gets the plain layout
    enc: list[Any] = []
    for i in range(len(videos)):
        enc.append(encode_video(tok, expand_video(videos, i, k), pcfg))
        if opts.videos:
            if len(enc) == opts.videos:
                return enc
        elif (len(enc) * k >= opts.min_comments
              and len(make_rows(enc, "shared_prefix", opts.max_row_tokens)) >= opts.steps * opts.batch_size):
            return enc
    if opts.videos and len(enc) < opts.videos:
        raise ConfigError("videos", f"{opts.videos}: the source has only {len(enc)} videos")
    return enc


def _run_worker(spec: dict[str, Any], tmp: Path, name: str) -> dict[str, Any]:
    """Run one configuration in a fresh Python process; VrpError with the output's tail on failure."""
    spec_path, out_path = tmp / f"{name}.spec.json", tmp / f"{name}.result.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error",
               HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    proc = subprocess.run([sys.executable, "-m", "vrp.bench.train_worker", str(spec_path), str(out_path)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not out_path.is_file():
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise VrpError(f"bench configuration {name} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(out_path.read_text())


def _spec(opts: BenchTrainConfig, kind: str, enc: list[Any]) -> dict[str, Any]:
    return {"kind": kind, "model": opts.model, "precision": opts.precision, "batch_size": opts.batch_size,
            "threads": opts.threads, "lora": opts.lora, "learning_rate": opts.learning_rate,
            "max_row_tokens": opts.max_row_tokens, "seed": 0, "steps": opts.steps,
            "attn_implementation": opts.attn_implementation, "lean": opts.lean,
            "gradient_checkpointing": opts.gradient_checkpointing, "compile_layers": opts.compile_layers,
            "videos": [{"video_id": e.video_id, "prompt_ids": e.prompt_ids, "completions": e.completions}
                       for e in enc]}


def _val_check(opts: BenchTrainConfig, videos: list[Video], k: int, tok: Any, tmp: Path) -> dict[str, Any]:
    """Validation NLL after the same training comments with `vrp.train.loop.train`, packing none vs shared_prefix."""

    n_train = opts.val_train_videos
    if len(videos) < n_train + opts.val_videos:
        raise VrpError(f"validation check: needs {n_train + opts.val_videos} videos, the source has {len(videos)}")
    train = expand_comments(videos, k, n_train)
    enc = select_videos(videos, k, tok, replace(opts, videos=n_train))
    rows = len(make_rows(enc, "shared_prefix", opts.max_row_tokens))
    comments = sum(len(e.completions) for e in enc)
    data = tmp / "val-data"
    DatasetDir(data).write(train, videos[-opts.val_videos:], {"source": "vrp bench train: validation check"})
    spec = _spec(opts, "val", [])
    spec.update(data_dir=str(data), val={
        "max_prompt_tokens": opts.max_prompt_tokens, "max_comment_tokens": opts.max_comment_tokens,
        "learning_rate": opts.val_learning_rate, "steps": opts.val_steps,
        "grad_accum": {"none": math.ceil(comments / opts.batch_size),
                       "shared_prefix": math.ceil(rows / opts.batch_size)}})
    res = _run_worker(spec, tmp, "val")
    res.update(k=k, train_videos=n_train, comments=comments)
    return res


def memory_rows(videos: list[Video], tok: Any, opts: BenchTrainConfig, mode: str) -> list[dict[str, Any]]:
    """`batch_size` rows of exactly `memory_row_tokens` tokens each, for the memory profile of packing `mode`: the
    first videos' real comments (K = the first of `comments_per_video` for shared_prefix, one for none and trl)
    behind their real prompt, cut (or repeated) to fill the row. Every configuration thus has the same shape.
    Raises ConfigError('memory_row_tokens') when K comments leave no room for a prompt."""

    pcfg = PromptConfig(max_prompt_tokens=opts.max_prompt_tokens, max_comment_tokens=opts.max_comment_tokens,
                        prompt_format="auto")  # a base model (no chat template) gets the plain layout
    k = opts.comments_per_video[0] if mode == "shared_prefix" else 1
    rows = []
    for i in range(opts.batch_size):
        e = encode_video(tok, expand_video(videos, i % len(videos), k), pcfg)
        comments = [list(c) for c in e.completions[:k]]
        room = opts.memory_row_tokens - sum(map(len, comments))
        if room < 1:
            raise ConfigError("memory_row_tokens", f"{opts.memory_row_tokens} tokens leave no room for a prompt "
                                                   f"before {k} comments of {sum(map(len, comments))} tokens")
        prompt = (list(e.prompt_ids) * (room // len(e.prompt_ids) + 1))[:room]
        rows.append({"prompt_ids": prompt, "completions": comments})
    return rows


def run_memory_bench(opts: BenchTrainConfig, videos: list[Video], tok: Any, tmp: Path,
                     say: Any) -> list[dict[str, Any]]:
    """The memory profile of each configuration (`vrp.bench.train_worker.run_memory`) at the same shape."""
    out = []
    for kind in opts.configs:
        say(f"memory profile: {LABELS[kind]}, {opts.batch_size} rows x {opts.memory_row_tokens} tokens ...")
        spec = _spec(opts, "memory", [])
        spec.update(mode=kind, rows=memory_rows(videos, tok, opts, kind))
        try:
            r = _run_worker(spec, tmp, f"memory-{kind}")
        except VrpError as e:
            r = {"kind": "memory", "mode": kind, "error": str(e)}
            say(f"    {e}")
        out.append(r)
    return out


def require_bench_extra() -> None:
    """Raise VrpError saying what to install when TRL or datasets (the `bench` extra) is missing."""
    import importlib.util

    missing = [m for m in ("trl", "datasets") if importlib.util.find_spec(m) is None]
    if missing:
        raise VrpError(f"the TRL configuration of `vrp bench train` needs {' and '.join(missing)}: "
                       f"pip install 'vrp[bench]'")


def run_bench(opts: BenchTrainConfig, progress: bool = True) -> dict[str, Any]:
    """Run every (comments per video, configuration) pair and return the raw results (JSON-ready dict). Raises
    ConfigError('data') when the config names no source, VrpError when the `trl` configuration is asked for
    without the `bench` extra."""
    import torch

    if not opts.data:
        raise ConfigError("data", "no source of videos given")
    if "trl" in opts.configs:
        require_bench_extra()
    if opts.compile_layers:  # before any worker starts: one line naming the option, not a worker's traceback

        check_compiler("cuda" if torch.cuda.is_available() else "cpu")
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    t_start = time.perf_counter()
    videos, _ = load_source(opts.data)
    tok = load_tokenizer(opts.model)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    load_start = os.getloadavg()
    say(f"matmul peak ({opts.peak_size}x{opts.peak_size}, best of {opts.peak_repeats}) ...")
    peak = {d: matmul_peak(d, opts.peak_size, opts.peak_repeats) for d in ("bfloat16", "float32")}
    if opts.memory:
        with tempfile.TemporaryDirectory(prefix="vrp-bench-memory-") as tmpdir:
            memory = run_memory_bench(opts, videos, tok, Path(tmpdir), say)
        return {"options": asdict(opts), "env": _env(load_start, t_start), "memory": memory, "peak_flops": peak}
    results: list[dict[str, Any]] = []
    plan = [(k, kind) for k in opts.comments_per_video for kind in opts.configs]
    plan += [(k, kind) for k in opts.vrp_only_comments_per_video for kind in opts.configs if kind in VRP_CONFIGS]
    encoded: dict[int, list[Any]] = {}
    with tempfile.TemporaryDirectory(prefix="vrp-bench-train-") as tmpdir:
        tmp = Path(tmpdir)
        for k, kind in plan:
            enc = encoded[k] = encoded.get(k) or select_videos(videos, k, tok, opts)
            say(f"[{len(results) + 1}/{len(plan)}] {k} comments/video, {len(enc)} videos: {LABELS[kind]} ...")
            t0 = time.perf_counter()
            try:
                r = _run_worker(_spec(opts, kind, enc), tmp, f"{kind}-{k}")
            except VrpError as e:        # e.g. killed for memory: report it, measure the rest
                r = {"kind": kind, "error": str(e)}
                say(f"    {e}")
            r.update(k=k, videos=len(enc), wall_s=time.perf_counter() - t0)
            results.append(r)
            if "error" not in r:
                say(f"    {r['comments'] / r['seconds']:.3f} comments/s, {r['tokens'] / r['seconds']:.1f} "
                    f"tokens/s ({r['steps_timed']} timed steps, {r['seconds']:.1f} s)")
        val = None
        if opts.val_check and "none" in opts.configs and "shared_prefix" in opts.configs:
            say(f"validation check: vrp.train.loop.train, packing none vs shared_prefix, {opts.comments_per_video[0]} "
                f"comments/video ...")
            t0 = time.perf_counter()
            try:
                val = _val_check(opts, videos, opts.comments_per_video[0], tok, tmp)
            except VrpError as e:
                val = {"error": str(e)}
                say(f"    {e}")
            val["wall_s"] = time.perf_counter() - t0
    return {"options": asdict(opts), "env": _env(load_start, t_start), "peak_flops": peak, "results": results,
            "val": val}


def _env(load_start: tuple[float, float, float], t_start: float) -> dict[str, Any]:
    """Date, machine, versions, load averages at start and now, wall seconds since `t_start`."""
    import importlib.metadata

    import peft
    import torch
    import transformers

    try:
        trl_version = importlib.metadata.version("trl")
    except importlib.metadata.PackageNotFoundError:
        trl_version = "not installed"
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpu": cpu_model(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl_version,
            "peft": peft.__version__, "load_start": load_start, "load_end": os.getloadavg(),
            "wall_s": time.perf_counter() - t_start}
