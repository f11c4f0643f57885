"""The allowed range of every size a user gives vrp: one table for all commands and for the server's caps.

Knows: for each kind of size (comments generated per video, samples to rerank, ranking candidates, new tokens,
prompt and row tokens, rows per batch, steps, threads, processes, queue places, ...) its range and why its upper bound
is where it is; which field of which config has which range is declared next to the field
(`vrp.options.option(..., limit=COMMENTS)`), so the range is checked by the config's `__post_init__` (through
`vrp.options.coerce_fields`, before any model or data is loaded), shown in `--help` and listed in docs/limits.md. The
server's caps (`vrp serve --max-num-comments` ...) are fields with these same ranges: a server cannot be configured
past what `vrp generate` allows, and a request past the server's cap is a 422.
Does not know: what fits a given machine's memory (a size inside its range can still be too much for a small
machine: `vrp train --max-memory` plans training; generation is bounded by these ranges and the model's context).
The bounds are far above the defaults and the seed data (20 comments per video, 1,024-token prompts, 150 new tokens)
and low enough that a mistyped number (`--num-comments 1000000` asked the allocator for 34 GB) is one line, not a
traceback.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vrp.errors import ConfigError


@dataclass(frozen=True)
class Limit:
    """An allowed range `low..high` (inclusive) of one kind of size; `what` says what is counted (for messages),
    `why` why the upper bound is where it is (docs/limits.md)."""

    name: str
    low: float
    high: float
    what: str
    why: str = ""

    def span(self) -> str:
        """The range as `--help` and docs/limits.md show it: `1..100`."""
        return f"{num(self.low)}..{num(self.high)}"

    def from_(self, low: float) -> "Limit":
        """The same limit with another lower bound (`THREADS.from_(1)` where 0 has no meaning)."""
        return dataclasses.replace(self, low=low)


def num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


COMMENTS = Limit("comments", 1, 100, "comments generated per video or request",
                 "all comments of a prompt are decoded in one batch, its KV cache repeated for each")
RERANK = Limit("rerank", 0, 200, "samples reranked per video or request", "decoded in one batch, as comments are")
CANDIDATES = Limit("candidates", 2, 1000, "ranking candidates per video",
                   "the LiveBot protocol uses 100; each is scored under three or four prompts")
NEW_TOKENS = Limit("new_tokens", 1, 2048, "new tokens per generated comment",
                   "real comments are rarely longer than 200 tokens")
PROMPT_TOKENS = Limit("prompt_tokens", 16, 131_072, "prompt tokens",
                      "128k, more than most models' context (a model's own context is checked when it is loaded)")
TOKENS = Limit("tokens", 1, 131_072, "tokens of a comment, a packed row or a scoring row",
               "128k, as prompt tokens")
ROWS = Limit("rows", 1, 1024, "rows per micro-batch or scoring pass, or micro-batches per step",
             "activations grow with the rows of a batch")
STEPS = Limit("steps", 1, 10_000_000, "optimizer steps, epochs or step intervals",
              "far past any run on one machine; catches a mistyped number")
THREADS = Limit("threads", 0, 1024, "torch CPU threads", "more threads than any machine's cores only slow it down")
PROCESSES = Limit("processes", 1, 64, "training processes a benchmark starts",
                  "each process loads the model")
QUEUE = Limit("queue", 0, 1000, "requests waiting in the server's queue", "each waiting request holds its body")
BODY_MB = Limit("body_mb", 0.001024, 1000, "MB of a request body", "the body is read whole into memory")
TITLE_CHARS = Limit("title_chars", 1, 100_000, "characters of a title the server accepts",
                    "titles on YouTube have at most 100")
COLLECT_COMMENTS = Limit("collect_comments", 1, 10_000, "top-level comments fetched per video",
                         "yt-dlp fetches them page by page, a request per page")
RETRIES = Limit("retries", 0, 100, "attempts after a transient network error", "with doubling waits")
LORA_RANK = Limit("lora_rank", 1, 1024, "LoRA rank r", "a rank past the layer width adds nothing")
MATRIX = Limit("matrix", 1, 16_384, "rows of the square matrix of `vrp bench train`'s peak measurement",
               "3 n^2 floats: 3.2 GB at the bound")
REPEATS = Limit("repeats", 1, 1000, "repeats of a benchmark measurement", "the best of them counts")
BENCH_COMMENTS = Limit("bench_comments", 1, 1000, "comments per video in a `vrp bench train` row",
                       "a row holds all of them")
REQUESTS = Limit("requests", 1, 10_000, "requests one `vrp bench serve` sends", "a load check is bounded")
CONCURRENCY = Limit("concurrency", 1, 64, "requests `vrp bench serve` keeps in flight", "a load check is bounded")

LIMITS: tuple[Limit, ...] = (COMMENTS, RERANK, CANDIDATES, NEW_TOKENS, PROMPT_TOKENS, TOKENS, ROWS, STEPS, THREADS,
                             PROCESSES, QUEUE, BODY_MB, TITLE_CHARS, COLLECT_COMMENTS, RETRIES, LORA_RANK, MATRIX,
                             REPEATS, BENCH_COMMENTS, REQUESTS, CONCURRENCY)


def check_value(field: str, value: Any, limit: Limit, low: bool = True) -> None:
    """Raise ConfigError(field) unless `value` (a number, or each number of a list; None passes) lies in `limit`'s
    range (only under its upper bound when `low` is False). The message names the bound and what it counts:
    `must be <= 100 (vrp's bound for comments generated per video or request ...; docs/limits.md), got 1000000`."""
    for x in value if isinstance(value, list) else [value]:
        if x is None or isinstance(x, bool) or not isinstance(x, (int, float)):
            continue
        if low and x < limit.low:
            raise ConfigError(field, f"must be >= {num(limit.low)}, got {x}")
        if x > limit.high:
            raise ConfigError(field, f"must be <= {num(limit.high)} (vrp's bound for {limit.what}; "
                                     f"docs/limits.md), got {x}")


def check_limits(obj: Any) -> None:
    """The upper bound of every field of dataclass instance `obj` declared with a limit (`metadata["limit"]`). The
    lower bound is each config's own check in its `__post_init__`, whose message can say what a special value means
    (`max_steps`: "must be >= 1, or -1 to run `epochs` epochs"); tests/test_limits.py checks that both agree."""
    for f in dataclasses.fields(obj):
        limit = f.metadata.get("limit")
        if limit is not None:
            check_value(f.name, getattr(obj, f.name), limit, low=False)


def field_limits(cls: type) -> dict[str, Limit]:
    """`{field: Limit}` of the fields of dataclass `cls` declared with a limit (for docs and tests)."""
    return {f.name: f.metadata["limit"] for f in dataclasses.fields(cls) if f.metadata.get("limit") is not None}
