"""`vrp bench train`: training throughput of TRL's per-example SFTTrainer vs vrp's loop, unpacked and shared-prefix.

Knows: how to build the benchmark's data from a real source (the first videos of e.g. the seed xlsx, prompts cut to
`--max-prompt-tokens`; a video's comment count raised to K with real comments of the following videos, never the
same text twice in a video), how many videos to use so that every configuration learns the same comments, how to
run each configuration in its own process (`vrp.bench.train_worker`), and how to report comments/s, tokens/s,
peak RSS and MFU as a table on stdout and a section appended to BENCHMARKS.md.
Does not know: FLOP formulas or the matmul peak (`vrp.bench.flops`), how a configuration is timed (the worker),
how results are formatted (`vrp.bench.train_report`).

Run time: `--quick` about 2 minutes on an idle 2-core machine; the full default run (3, 10 and 30 comments per video,
1,024-token prompts, batch 4) roughly 40 minutes there (the per-example configurations dominate: TRL ~115 tokens/s).

Terms. comments/s: training comments (examples) learned per second of timed optimizer steps; tokens/s: real
(non-pad) tokens run through the model per second (prompt tokens count once per row, so packing lowers the
tokens needed for the same comments); peak RSS: the configuration process's peak resident memory (bytes, shown in
MiB); MFU: model FLOPs per second / measured matmul peak (see `vrp.bench.flops` for the formula and both counts);
packing: `none` = one row per comment (as TRL), `shared_prefix` = one row = one prompt + the comments of a video
(split into rows of at most `--max-row-tokens` tokens that repeat the prompt).
The timings are only as good as the machine is quiet: the load average at start and end is recorded.
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vrp.bench.train_report import (
    CONFIGS,
    LABELS,
    append_section,
    cpu_model,
    format_table,
    markdown_section,
    summary_lines,
)
from vrp.errors import VrpError
from vrp.records import Comment, Video

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class BenchOptions:
    """Settings of one `vrp bench train` run. Token counts in tokens; `videos` 0 = choose automatically: the fewest
    videos whose comments number >= `min_comments` and whose shared-prefix rows fill `steps` batches.
    `max_row_tokens` 0 = automatic: 1.5 x `max_prompt_tokens` (at least prompt + one longest comment). Activation
    memory (~1.3-2 MB per token for SmolLM2-135M with bf16 autocast and LoRA) dominates peak RSS, so capping
    shared-prefix rows at 1.5x the prompt keeps the peak RSS at 30 comments/video within ~1.5x of that at 3."""

    model: str = "smollm2-135m"
    data: str = ""
    comments_per_video: list[int] = field(default_factory=lambda: [3, 10, 30])
    configs: list[str] = field(default_factory=lambda: list(CONFIGS))
    videos: int = 0
    steps: int = 1
    min_comments: int = 24
    batch_size: int = 4
    max_prompt_tokens: int = 1024
    max_comment_tokens: int = 128
    max_row_tokens: int = 0
    precision: str = "auto"
    learning_rate: float = 2e-4
    lora: dict[str, Any] = field(default_factory=lambda: {"r": 16, "alpha": 32, "dropout": 0.05,
                                                          "target_modules": "all-linear"})
    val_check: bool = True
    val_train_videos: int = 4
    val_videos: int = 4
    val_steps: int = 2
    val_learning_rate: float = 1e-3
    peak_size: int = 4096
    peak_repeats: int = 5
    threads: int = 0
    quick: bool = False


def resolved(opts: BenchOptions) -> BenchOptions:
    """`opts` with the automatic `max_row_tokens` (0) replaced by its value."""
    if opts.max_row_tokens:
        return opts
    return replace(opts, max_row_tokens=max(opts.max_prompt_tokens * 3 // 2,
                                            opts.max_prompt_tokens + opts.max_comment_tokens + 1))


QUICK = {"comments_per_video": [3], "max_prompt_tokens": 256, "batch_size": 2, "min_comments": 6,
         "val_train_videos": 2, "val_videos": 1, "val_steps": 1, "peak_repeats": 3}


def default_data() -> str:
    """The real seed dataset next to the repository (`../shared/data/uos2023/train_dataset.xlsx`), or ''."""
    p = REPO_ROOT.parent / "shared" / "data" / "uos2023" / "train_dataset.xlsx"
    return str(p) if p.is_file() else ""


def default_output() -> Path:
    """BENCHMARKS.md at the repository root (a source checkout), else in the current directory."""
    return REPO_ROOT / "BENCHMARKS.md" if (REPO_ROOT / "pyproject.toml").is_file() else Path("BENCHMARKS.md")


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
    raise VrpError(f"--comments-per-video {k}: the source has only {len(out)} distinct comments")


def expand_comments(videos: list[Video], k: int, n: int) -> list[Video]:
    """The first `n` videos, each with exactly `k` comments (see `expand_video`)."""
    return [expand_video(videos, i, k) for i in range(min(n, len(videos)))]


def select_videos(videos: list[Video], k: int, tok: Any, opts: BenchOptions) -> list[Any]:
    """Encoded videos (`EncodedVideo`) for comment count `k`: `opts.videos` of them, or automatically the fewest
    with >= `min_comments` comments whose shared-prefix rows fill `steps` batches of `batch_size`."""
    from vrp.packing import make_rows
    from vrp.prompts import PromptConfig, encode_video

    pcfg = PromptConfig(max_prompt_tokens=opts.max_prompt_tokens, max_comment_tokens=opts.max_comment_tokens)
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
        raise VrpError(f"--videos {opts.videos}: the source has only {len(enc)} videos")
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


def _spec(opts: BenchOptions, kind: str, enc: list[Any]) -> dict[str, Any]:
    return {"kind": kind, "model": opts.model, "precision": opts.precision, "batch_size": opts.batch_size,
            "threads": opts.threads, "lora": opts.lora, "learning_rate": opts.learning_rate,
            "max_row_tokens": opts.max_row_tokens, "seed": 0,
            "videos": [{"video_id": e.video_id, "prompt_ids": e.prompt_ids, "completions": e.completions}
                       for e in enc]}


def _val_check(opts: BenchOptions, videos: list[Video], k: int, tok: Any, tmp: Path) -> dict[str, Any]:
    """Validation NLL after the same training comments with `vrp.train.loop.train`, packing none vs shared_prefix."""
    from vrp.io import write_jsonl_atomic
    from vrp.packing import make_rows

    n_train = opts.val_train_videos
    if len(videos) < n_train + opts.val_videos:
        raise VrpError(f"validation check: needs {n_train + opts.val_videos} videos, the source has {len(videos)}")
    train = expand_comments(videos, k, n_train)
    enc = select_videos(videos, k, tok, replace(opts, videos=n_train))
    rows = len(make_rows(enc, "shared_prefix", opts.max_row_tokens))
    comments = sum(len(e.completions) for e in enc)
    data = tmp / "val-data"
    data.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(data / "train.jsonl", (v.to_json() for v in train))
    write_jsonl_atomic(data / "validation.jsonl", (v.to_json() for v in videos[-opts.val_videos:]))
    spec = _spec(opts, "val", [])
    spec.update(data_dir=str(data), val={
        "max_prompt_tokens": opts.max_prompt_tokens, "max_comment_tokens": opts.max_comment_tokens,
        "learning_rate": opts.val_learning_rate, "steps": opts.val_steps,
        "grad_accum": {"none": math.ceil(comments / opts.batch_size),
                       "shared_prefix": math.ceil(rows / opts.batch_size)}})
    res = _run_worker(spec, tmp, "val")
    res.update(k=k, train_videos=n_train, comments=comments)
    return res


def run_bench(opts: BenchOptions, progress: bool = True) -> dict[str, Any]:
    """Run every (comments per video, configuration) pair and return the raw results (JSON-ready dict)."""
    import torch

    from vrp.bench.flops import matmul_peak
    from vrp.dataset import load_source
    from vrp.model import load_tokenizer

    opts = resolved(opts)
    bad = [c for c in opts.configs if c not in CONFIGS]
    if bad or not opts.configs:
        raise VrpError(f"--configs: choose from {','.join(CONFIGS)}, got {','.join(opts.configs)}")
    if not opts.data:
        raise VrpError("--data: no source given and the seed dataset ../shared/data/uos2023/train_dataset.xlsx "
                       "is not there")
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    t_start = time.perf_counter()
    videos, _ = load_source(opts.data)
    tok = load_tokenizer(opts.model)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    load_start = os.getloadavg()
    say(f"matmul peak ({opts.peak_size}x{opts.peak_size}, best of {opts.peak_repeats}) ...")
    peak = {d: matmul_peak(d, opts.peak_size, opts.peak_repeats) for d in ("bfloat16", "float32")}
    results: list[dict[str, Any]] = []
    total = len(opts.comments_per_video) * len(opts.configs)
    with tempfile.TemporaryDirectory(prefix="vrp-bench-train-") as tmpdir:
        tmp = Path(tmpdir)
        for k in opts.comments_per_video:
            enc = select_videos(videos, k, tok, opts)
            for kind in opts.configs:
                say(f"[{len(results) + 1}/{total}] {k} comments/video, {len(enc)} videos: {LABELS[kind]} ...")
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
    import peft
    import transformers
    import trl

    env = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpu": cpu_model(), "cores": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
           "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
           "peft": peft.__version__, "load_start": load_start, "load_end": os.getloadavg(),
           "wall_s": time.perf_counter() - t_start}
    return {"options": asdict(opts), "env": env, "peak_flops": peak, "results": results, "val": val}


def _int_list(text: str, flag: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise VrpError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise VrpError(f"{flag}: expected positive integers, got {text!r}")
    return vals


def options_from_args(args: Any) -> BenchOptions:
    """`BenchOptions` from parsed `vrp bench train` flags: the defaults (or the `--quick` ones), then the flags
    that were given. Raises VrpError naming the flag for an impossible value."""
    opts = BenchOptions(data=default_data())
    if getattr(args, "quick", False):
        opts = replace(opts, quick=True, **QUICK)
    over: dict[str, Any] = {k: getattr(args, k) for k in (
        "model", "data", "videos", "steps", "batch_size", "max_prompt_tokens", "max_row_tokens", "precision",
        "peak_size", "threads") if getattr(args, k, None) is not None}
    if getattr(args, "comments_per_video", None):
        over["comments_per_video"] = _int_list(args.comments_per_video, "--comments-per-video")
    if getattr(args, "configs", None):
        over["configs"] = [c.strip() for c in args.configs.split(",") if c.strip()]
    if getattr(args, "no_val_check", False):
        over["val_check"] = False
    opts = resolved(replace(opts, **over))
    for name in ("batch_size", "steps", "peak_size"):
        if getattr(opts, name) < 1:
            raise VrpError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(opts, name)}")
    for name in ("videos", "threads"):
        if getattr(opts, name) < 0:
            raise VrpError(f"--{name} must be >= 0 (0 = automatic), got {getattr(opts, name)}")
    if opts.max_row_tokens < opts.max_prompt_tokens + 2:
        raise VrpError(f"--max-row-tokens ({opts.max_row_tokens}) must exceed --max-prompt-tokens "
                       f"({opts.max_prompt_tokens}) so that a comment fits behind the prompt")
    return opts


def run_cli(args: Any, command: str) -> int:
    """`vrp bench train`: run, print the table and summary (the last stdout line is the (c)/(a) comments/s
    ratio), append the section to BENCHMARKS.md unless `--no-write`, optionally write the raw results as JSON."""
    from vrp.io import write_json_atomic

    bench = run_bench(options_from_args(args))
    print(format_table(bench))
    print()
    print("\n".join(summary_lines(bench)), flush=True)
    if getattr(args, "json_out", None):
        write_json_atomic(args.json_out, bench)
    if not getattr(args, "no_write", False):
        path = Path(args.output) if getattr(args, "output", None) else default_output()
        append_section(path, markdown_section(bench, command))
        print(f"appended a section to {path}", file=sys.stderr)
    return 0
