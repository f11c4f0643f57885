"""`ServeConfig`: the options of `vrp serve` — model source, network, limits — with help texts, defaults and checks.

Knows: names, units (sizes in MB, times in seconds, budgets in tokens), defaults and valid values of the server's
options, and the values derived from them (`max_body_bytes`, the defaults of a request). The field names are the
flags (`--max-body-mb`, `--timeout-s`); the app reads the same names.
Does not know: routes or scheduling (`vrp.serve.app`, `vrp.serve.worker`), how the model is loaded (`vrp.model`).
"""
from __future__ import annotations

from dataclasses import dataclass

from vrp.errors import ConfigError
from vrp.generate.config import PROMPT_BUDGET_HELP, GenerateConfig
from vrp.limits import BODY_MB, COMMENTS, NEW_TOKENS, PROMPT_TOKENS, QUEUE, RERANK, THREADS, TITLE_CHARS
from vrp.options import check_choice, check_positive, check_range, coerce_fields, option, option_like
from vrp.precision import PRECISIONS
from vrp.presets import DEFAULT_PRESET, MAX_NEW_TOKENS, PRESETS

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclass
class ServeConfig:
    """Options of `vrp serve`; the field docs are its `--help`, `__post_init__` their one validation."""

    run: str | None = option("run dir from `vrp train` (its base model + adapter)", None)
    checkpoint: str | None = option("use a checkpoint of the run instead of RUN/adapter (the last step's): "
                                    "step-000050, latest or best (the lowest validation NLL)", None)
    model: str | None = option("base model (smollm2-135m, .gguf, HF dir or id); alone: serve the base model", None)
    precision: str = option("auto, bf16 or fp32", "auto")
    threads: int | None = option("torch CPU threads for generation (None: CPU cores - 1, at least 1, leaving a core "
                                 "for the event loop, tokenization and clients; on a busy 2-core machine 2 threads "
                                 "were 6-20x slower than 1)", None, limit=THREADS.from_(1))
    host: str = option("bind address (127.0.0.1 = loopback only; anything else prints a warning: there is no "
                       "authentication)", "127.0.0.1")
    port: int = option("TCP port", 8000)
    max_body_mb: float = option("request body limit in MB (10^6 bytes)", 2.0, limit=BODY_MB)
    max_prompt_tokens: int | None = option(PROMPT_BUDGET_HELP, None, limit=PROMPT_TOKENS)
    max_num_comments: int = option("most comments per request", 20, limit=COMMENTS)
    default_num_comments: int | None = option("comments when a request does not say (None: 5, at most "
                                              "`max_num_comments`)", None, limit=COMMENTS)
    max_new_tokens: int = option("most new tokens per comment a request may ask for", 256, limit=NEW_TOKENS)
    default_max_new_tokens: int | None = option(f"new tokens per comment when a request does not say (None: "
                                                f"{MAX_NEW_TOKENS}, at most `max_new_tokens`)", None, limit=NEW_TOKENS)
    max_title_chars: int = option("longest title in characters", 500, limit=TITLE_CHARS)
    default_preset: str = option("decoding preset when a request does not say", DEFAULT_PRESET)
    max_rerank: int = option("most samples a request may ask to rerank from (its `rerank` field; 0 disables "
                             "reranking)", 40, limit=RERANK)
    rerank_lambda: float = option_like(GenerateConfig, "rerank_lambda")
    queue_size: int = option("requests that may wait while one generates; more get 503", 8, limit=QUEUE)
    timeout_s: float = option("per-request time limit in seconds, waiting included; then 504", 120.0)
    log_level: str = option("uvicorn and vrp log level: " + ", ".join(LOG_LEVELS), "info")

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.default_num_comments is None:
            self.default_num_comments = min(5, self.max_num_comments)
        if self.default_max_new_tokens is None:
            self.default_max_new_tokens = min(MAX_NEW_TOKENS, self.max_new_tokens)
        check_range(self, "threads", low=1)
        check_range(self, "port", low=1, high=65535)
        if self.max_body_bytes < 1024:
            raise ConfigError("max_body_mb", f"must be at least 0.001024 (1024 bytes), got {self.max_body_mb}")
        check_range(self, "max_num_comments", "max_new_tokens", "max_title_chars", low=1)
        check_range(self, "max_prompt_tokens", low=PROMPT_TOKENS.low)  # as `PromptConfig` checks it
        check_range(self, "default_num_comments", low=1, high=self.max_num_comments, note=" (`max_num_comments`)")
        check_range(self, "default_max_new_tokens", low=1, high=self.max_new_tokens, note=" (`max_new_tokens`)")
        check_range(self, "queue_size", "max_rerank", low=0)
        if not self.rerank_lambda >= 0:
            raise ConfigError("rerank_lambda", f"must be >= 0, got {self.rerank_lambda}")
        check_positive(self, "timeout_s")
        check_choice(self, "default_preset", PRESETS)
        check_choice(self, "precision", PRECISIONS)
        check_choice(self, "log_level", LOG_LEVELS)
        if self.checkpoint and not self.run:
            raise ConfigError("checkpoint", "needs a `run` (it names a checkpoint of that run)")

    @property
    def max_body_bytes(self) -> int:
        """The request body limit in bytes."""
        return int(self.max_body_mb * 1_000_000)
