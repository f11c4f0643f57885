"""The options of `vrp bench train`, `vrp bench serve`, `vrp bench generate` and `vrp bench data` (`BenchTrainConfig`,
`BenchServeConfig`, `BenchGenerateConfig`, `BenchDataConfig`), with their help texts, defaults and checks. Imports
nothing heavy, so that `vrp bench --help` stays fast; each benchmark lives in its own module (`train`, `serve`,
`generate`, `data`).
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vrp.errors import ConfigError
from vrp.limits import (
    BENCH_COMMENTS,
    COMMENTS,
    CONCURRENCY,
    MATRIX,
    NEW_TOKENS,
    PROCESSES,
    PROMPT_TOKENS,
    QUEUE,
    REPEATS,
    REQUESTS,
    ROWS,
    STEPS,
    THREADS,
    TOKENS,
)
from vrp.lora import LoraSettings
from vrp.options import (
    build_config,
    check_choice,
    check_positive,
    check_range,
    coerce_fields,
    load_yaml,
    option,
    option_like,
)
from vrp.presets import DEFAULT_PRESET, MAX_NEW_TOKENS, PRESETS, get_preset, single_output_presets
from vrp.prompts import PromptConfig
from vrp.train.config import TrainConfig

QUICK = {"comments_per_video": [3], "vrp_only_comments_per_video": [], "max_prompt_tokens": 256, "batch_size": 2,
         "min_comments": 6, "steps": 2, "val_train_videos": 2, "val_videos": 1, "val_steps": 1, "peak_repeats": 3,
         "memory_row_tokens": 300}

CONFIGS = ("trl", "none", "shared_prefix")


VRP_CONFIGS = ("none", "shared_prefix")


@dataclass
class BenchTrainConfig:
    """Options of `vrp bench train`; the field docs are its `--help`, `__post_init__` their one validation. Token
    counts in tokens. Shared-prefix rows are capped at 2x the prompt budget by default, the ratio of both shipped
    recipes (`configs/smollm2-cpu-*.yaml`: prompts 512, rows 1,024; `vrp train`'s own default rows of 2,048 tokens
    at 1,024-token prompts), so the bench times the rows `vrp train` builds."""

    model: str = option_like(TrainConfig, "model")
    data: str | None = option("source of videos: any file `vrp prepare` reads (required)", None)
    comments_per_video: list[int] = option("comment counts K per video; above a video's own count, real comments of "
                                           "the following videos are added", [3, 10, 30], limit=BENCH_COMMENTS)
    vrp_only_comments_per_video: list[int] = option("more comment counts, timed for (b) and (c) only (TRL's rows are "
                                                    "the same per-example rows at any count)", [100],
                                                    limit=BENCH_COMMENTS)
    configs: list[str] = option("configurations to time: subset of " + ",".join(CONFIGS), list(CONFIGS))
    videos: int = option("videos per comment count (0 = automatic: the fewest with >= `min_comments` comments whose "
                         "shared-prefix rows fill `steps` batches)", 0)
    steps: int = option("timed optimizer steps per configuration, after one warm-up step (the table shows their "
                        "median and spread)", 3, limit=STEPS)
    min_comments: int = option("comments per comment count at least (with `videos` 0)", 24)
    batch_size: int = option("rows per optimizer step, all configurations", 4, limit=ROWS)
    max_prompt_tokens: int = option_like(PromptConfig, "max_prompt_tokens")
    max_comment_tokens: int = option_like(PromptConfig, "max_comment_tokens")
    max_row_tokens: int = option("longest shared-prefix row in tokens; longer videos are split into rows (0 = "
                                 "automatic: 2 x `max_prompt_tokens`, as the shipped recipes, at least prompt + one longest comment)", 0,
                                 limit=TOKENS.from_(0))
    precision: str = option("auto, bf16 or fp32", "auto")
    attn_implementation: str = option_like(TrainConfig, "attn_implementation")
    lean: bool = option("memory-lean LoRA of `vrp train` (vrp.lean); off = PEFT's own LoRA forward, for "
                        "before/after comparisons", True)
    gradient_checkpointing: bool = option_like(TrainConfig, "gradient_checkpointing")
    compile_layers: bool = option_like(TrainConfig, "compile_layers")
    memory: bool = option("instead of timing: profile one training step of each configuration at one shape "
                          "(`batch_size` rows x `memory_row_tokens` tokens; (c) holds the first `comments_per_video` "
                          "count of comments per row): the memory of all three, and where the time of (b) and (c) "
                          "goes by kind of operation; written to the output file like a timed run (a few minutes)",
                          False)
    memory_row_tokens: int = option("row length of the memory profile, tokens", 1100, limit=TOKENS)
    write_when_busy: bool = option("append to the Markdown file even when the 1-minute load average at the start "
                                   "exceeded the core count (the section then says so in bold)", False)
    learning_rate: float = option_like(TrainConfig, "learning_rate")
    lora: dict[str, Any] = option("LoRA settings of every configuration (r, alpha, dropout, target_modules)",
                                  asdict(LoraSettings()), cli=False)
    val_check: bool = option("check that packing none and shared_prefix reach the same validation NLL", True)
    val_train_videos: int = option("training videos of the validation check", 4)
    val_videos: int = option("validation videos of the validation check", 4)
    val_steps: int = option("epochs of the validation check", 1, limit=STEPS)
    val_learning_rate: float = option("learning rate of the validation check", 1e-3)
    peak_size: int = option("matrix size of the matmul-peak measurement", 4096, limit=MATRIX)
    peak_repeats: int = option("repeats of the matmul-peak measurement (the best counts)", 5, limit=REPEATS)
    threads: int = option("torch CPU threads in every configuration (0 = torch's own, one per core; on a busy "
                          "machine 1 thread can be much faster)", 0, limit=THREADS)
    nproc: int = option("N >= 2: instead of the configurations, time `vrp train` (shared_prefix) in 1 process and "
                        "in N processes (torchrun, `threads` threads each, default 1) on the same global batch and "
                        "report the scaling efficiency (vrp.bench.scaling)", 1, limit=PROCESSES)
    quick: bool = option("small smoke run (" + ", ".join(f"{k}={v}" for k, v in QUICK.items()) + "; about 2 "
                         "minutes on an idle 2-core machine)", False)

    def __post_init__(self) -> None:
        coerce_fields(self)
        if not self.max_row_tokens:
            self.max_row_tokens = max(self.max_prompt_tokens * 2,
                                      self.max_prompt_tokens + self.max_comment_tokens + 1)
        check_range(self, "batch_size", "steps", "peak_size", "peak_repeats", "max_comment_tokens",
                    "memory_row_tokens", low=1)
        check_range(self, "max_prompt_tokens", low=PROMPT_TOKENS.low)  # as `PromptConfig` checks it
        check_range(self, "videos", "threads", "min_comments", low=0)
        check_range(self, "nproc", low=1)
        if not self.comments_per_video or min(self.comments_per_video) < 1:
            raise ConfigError("comments_per_video", f"expected positive integers, got {self.comments_per_video}")
        if self.vrp_only_comments_per_video and min(self.vrp_only_comments_per_video) < 1:
            raise ConfigError("vrp_only_comments_per_video", f"expected positive integers, got "
                                                             f"{self.vrp_only_comments_per_video}")
        bad = [c for c in self.configs if c not in CONFIGS]
        if bad or not self.configs:
            raise ConfigError("configs", f"choose from {','.join(CONFIGS)}, got {','.join(self.configs)}")
        check_choice(self, "precision", ("auto", "bf16", "fp32"))
        check_range(self, "val_train_videos", "val_videos", "val_steps", low=1)
        if not self.val_learning_rate > 0:
            raise ConfigError("val_learning_rate", f"must be > 0, got {self.val_learning_rate}")
        self._check_training_options()
        if self.max_row_tokens < self.max_prompt_tokens + 2:
            raise ConfigError("max_row_tokens", f"({self.max_row_tokens}) must exceed `max_prompt_tokens` "
                                                f"({self.max_prompt_tokens}) so that a comment fits behind the prompt")

    def _check_training_options(self) -> None:
        """`lora` completed with `LoraSettings`' defaults, and it, `model`, `learning_rate` and
        `attn_implementation` checked as `vrp train` checks them (`TrainConfig`); ConfigError('lora') or the field."""
        keys = {f.name for f in fields(LoraSettings)}
        if not isinstance(self.lora, dict) or set(self.lora) - keys:
            raise ConfigError("lora", f"expected a mapping with keys among {sorted(keys)}, got {self.lora!r}")
        self.lora = {**asdict(LoraSettings()), **self.lora}
        bad = [k for k in ("r", "alpha") if not isinstance(self.lora[k], int) or isinstance(self.lora[k], bool)]
        if bad or isinstance(self.lora["dropout"], bool) or not isinstance(self.lora["dropout"], (int, float)):
            raise ConfigError("lora", f"r and alpha must be integers and dropout a number, got {self.lora!r}")
        try:
            TrainConfig(model=self.model, learning_rate=self.learning_rate, attn_implementation=self.attn_implementation,
                        lora_r=self.lora["r"], lora_alpha=self.lora["alpha"], lora_dropout=self.lora["dropout"],
                        target_modules=self.lora["target_modules"])
        except ConfigError as e:
            lora_field = e.field.startswith("lora_") or e.field == "target_modules"
            raise ConfigError("lora" if lora_field else e.field, e.message) from None


def bench_train_config(source: str | Path | None = None, overrides: dict[str, Any] | None = None) -> BenchTrainConfig:
    """The config of one run: the defaults, then the `QUICK` values when `quick` is set (in the YAML `source` or in
    `overrides`), then the YAML file, then `overrides`."""

    values = load_yaml(source) if source else {}
    quick = bool((overrides or {}).get("quick", values.get("quick", False)))
    return build_config(BenchTrainConfig, {**(QUICK if quick else {}), **values}, overrides,
                        where=str(source) if source else "the quick preset" if quick else None)


MAX_REQUESTS = int(REQUESTS.high)


MAX_CONCURRENCY = int(CONCURRENCY.high)


DEFAULT_TITLE = "Three tips for better sourdough bread"


DEFAULT_TRANSCRIPT = ("Hi everyone, welcome back to the kitchen. Today I will show you three simple tricks for a "
                      "better sourdough loaf: feed your starter the night before, use less water than you think, "
                      "and bake it in a very hot covered pot. Let me know in the comments how yours turns out!")


@dataclass
class BenchServeConfig:
    """Options of `vrp bench serve`; the field docs are its `--help`, `__post_init__` their one validation."""

    url: str | None = option("a running server, e.g. http://127.0.0.1:8000 (loopback only); or give `model`/`run` "
                             "to start one", None)
    server_pid: int | None = option("pid of the `url` server, to read its RSS", None)
    model: str | None = option("start `vrp serve --model MODEL` for the check", None)
    run: str | None = option("start `vrp serve --run RUN` for the check", None)
    checkpoint: str | None = option("with `run`: serve this checkpoint", None)
    queue_size: int = option("queue size of the started server", 8, limit=QUEUE)
    threads: int | None = option("threads of the started server (None: its own default)", None,
                                 limit=THREADS.from_(1))
    requests: int = option("requests to send", 50, limit=REQUESTS)
    concurrency: int = option("requests in flight", 4, limit=CONCURRENCY)
    max_seconds: float = option("start no request after this many seconds", 900.0)
    request_timeout_s: float = option("client timeout per request in seconds", 300.0)
    warmup: bool = option("send one uncounted warm-up request first", True)
    title: str | None = option("video title (None: a short built-in one)", None)
    transcript: str | None = option("transcript text (None: a short built-in one)", None)
    num_comments: int = option("comments per request", 1, limit=COMMENTS)
    max_new_tokens: int = option("new tokens per comment", 40, limit=NEW_TOKENS)
    preset: str = option("decoding preset", DEFAULT_PRESET)

    def __post_init__(self) -> None:
        coerce_fields(self)
        if bool(self.url) == bool(self.model or self.run):
            raise ConfigError("url", "give either a `url` (a running server) or a `model`/`run` (start one)")
        if self.url:
            self.url = require_loopback_url(self.url)
        if self.checkpoint and not self.run:
            raise ConfigError("checkpoint", "needs a `run` (it names a checkpoint of that run)")
        check_range(self, "requests", low=1, high=MAX_REQUESTS)
        check_range(self, "concurrency", low=1, high=MAX_CONCURRENCY)
        check_range(self, "queue_size", low=0)
        check_range(self, "threads", "num_comments", "max_new_tokens", low=1)
        check_positive(self, "max_seconds", "request_timeout_s")

    def payload(self) -> dict[str, Any]:
        """The JSON body of every request."""
        return {"title": DEFAULT_TITLE if self.title is None else self.title,
                "transcript": self.transcript or DEFAULT_TRANSCRIPT, "num_comments": self.num_comments,
                "max_new_tokens": self.max_new_tokens, "preset": self.preset}

    def server_args(self) -> list[str]:
        """Extra `vrp serve` flags of a started server."""
        return ["--queue-size", str(self.queue_size)] + (["--threads", str(self.threads)] if self.threads else [])


def engine_presets() -> list[str]:
    """Presets `vrp bench generate` can run in both engines: llama.cpp decodes one sequence at a time from one
    prompt, so no beam search (`Preset.beams` > 1) and no second prompt (`Preset.needs_no_video_prompt`)."""
    return [n for n, p in PRESETS.items() if p.beams == 1 and not p.needs_no_video_prompt]


@dataclass
class BenchGenerateConfig:
    """Options of `vrp bench generate`; the field docs are its `--help`."""

    run: str | None = option("run dir to benchmark (its base model + adapter in vrp, its exported GGUF in llama.cpp)",
                             None)
    checkpoint: str | None = option("a checkpoint of the run instead of RUN/adapter: step-N, latest or best", None)
    gguf: str | None = option("the run's GGUF from `vrp export` (None: export one into a temporary directory)", None)
    gguf_type: str = option("tensor type when the GGUF is exported here: f16, bf16 or q8_0", "f16")
    input: str | None = option("videos to take the prompts from (a dataset dir's validation split, a table, a "
                               "transcript file; None: one built-in video)", None)
    max_videos: int = option("prompts: the first N videos of `input`", 4)
    preset: str = option(f"decoding preset: {' or '.join(engine_presets())}", DEFAULT_PRESET)
    num_comments: int = option(f"comments per prompt (K; a single-output preset, {', '.join(single_output_presets())}"
                               f", gives one)", 5, limit=COMMENTS)
    max_new_tokens: int = option("new tokens per comment at most", MAX_NEW_TOKENS, limit=NEW_TOKENS)
    max_prompt_tokens: int | None = option("prompt token budget (None: the run's)", None, limit=PROMPT_TOKENS)
    precision: str = option("vrp's precision: auto (as vrp generate), bf16 or fp32", "auto")
    threads: int = option("CPU threads of each engine (torch threads; llama.cpp n_threads)", 1,
                          limit=THREADS.from_(1))
    seed: int = option("sampling seed", 0)
    write_when_busy: bool = option("append to the Markdown file even when the load average before the run exceeded "
                                   "the core count", False)

    def __post_init__(self) -> None:
        coerce_fields(self)
        if not self.run:
            raise ConfigError("run", "is required")
        check_choice(self, "preset", engine_presets())
        check_choice(self, "gguf_type", ("f16", "bf16", "q8_0"))
        check_choice(self, "precision", ("auto", "bf16", "fp32"))
        check_range(self, "max_videos", "num_comments", "max_new_tokens", "threads", low=1)
        check_range(self, "max_prompt_tokens", low=16)
        if get_preset(self.preset).single_output and self.num_comments != 1:
            raise ConfigError("num_comments", f"{self.preset} gives exactly one comment per prompt; set it to 1")
        if self.checkpoint and self.gguf:
            raise ConfigError("checkpoint", "with `gguf` the GGUF file holds the weights; export that checkpoint "
                                            "(vrp export --checkpoint) or leave `gguf` out to export it here")


def require_loopback_url(url: str) -> str:
    """Return `url` without a trailing slash if it is `http://<loopback host>:<port>`; raise ConfigError('url')
    otherwise. A host name must resolve only to loopback addresses (checked with the local resolver)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError("url", f"expected http://127.0.0.1:PORT, got {url!r}")
    host = parts.hostname
    try:
        addrs = {ipaddress.ip_address(host)}
    except ValueError:
        if host != "localhost":
            raise ConfigError("url", f"only loopback targets are allowed (127.0.0.1, ::1, localhost), got {host!r}")
        addrs = {ipaddress.ip_address(ai[4][0].split("%")[0]) for ai in socket.getaddrinfo(host, None)}
    if not addrs or not all(a.is_loopback for a in addrs):
        raise ConfigError("url", f"{host} is not a loopback address; the load check only targets this machine")
    return url.rstrip("/")


@dataclass
class BenchDataConfig:
    """Options of `vrp bench data` (how the cost of `vrp prepare` and of `vrp train`'s start-up grows with the
    number of videos, `vrp.bench.data`); the field docs are its `--help`."""

    videos: list[int] = option("numbers of synthetic videos to measure, smallest first", [1000, 10000, 100000])
    min_comments: int = option("comments per video at least (one table row per comment)", 3)
    max_comments: int = option("comments per video at most (drawn uniformly)", 20)
    transcript_chars: int = option("mean transcript length in characters (each drawn from 0.6x to 1.4x)", 5000)
    seed: int = option("seed of the synthetic data", 0)
    train: bool = option("also time `vrp train --max-steps 1` to its first optimizer step (token cache built, then "
                         "reused) with each of `processes`", True)
    train_max_videos: int = option("time `vrp train` only at sizes up to this many videos (0 = every size)", 0)
    processes: list[int] = option("training process counts to time (N > 1 runs torchrun)", [1, 2],
                                  limit=PROCESSES)
    model: str = option("model of the `vrp train` runs", "smollm2-135m")
    max_prompt_tokens: int = option("prompt token budget of the `vrp train` runs", 512, limit=PROMPT_TOKENS)
    threads: int = option("torch threads per training process", 1, limit=THREADS.from_(1))
    work_dir: str | None = option("directory for the temporary data (tables, datasets, runs; deleted at the end; "
                                  "default: the system's temporary directory). 10^5 videos need about 9 GB", None)
    timeout_s: float = option("give up on one command after this many seconds", 3600.0)
    write_when_busy: bool = option("append to the Markdown file even when the 1-minute load average at the start "
                                   "exceeded the core count (the section then says so in bold)", False)

    def __post_init__(self) -> None:
        coerce_fields(self)
        if not self.videos or min(self.videos) < 2 or max(self.videos) > 10 ** 7:
            raise ConfigError("videos", f"expected video counts from 2 to 10,000,000, got {self.videos}")
        self.videos = sorted(set(self.videos))
        check_range(self, "min_comments", low=1)
        if self.max_comments < self.min_comments:
            raise ConfigError("max_comments", f"must be >= min_comments ({self.min_comments}), got "
                                              f"{self.max_comments}")
        check_range(self, "transcript_chars", low=10)
        check_range(self, "train_max_videos", low=0)
        check_range(self, "max_prompt_tokens", low=PROMPT_TOKENS.low)  # as `PromptConfig` checks it
        check_range(self, "threads", low=1)
        if not self.processes or min(self.processes) < 1:
            raise ConfigError("processes", f"expected positive integers, got {self.processes}")
        check_positive(self, "timeout_s")
