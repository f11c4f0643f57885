"""The table of docs/limits.md, written from the configs of every command (`vrp.limits` holds the ranges; each
config declares which field has which range). Knows every command's config; does not check anything itself.
"""
from __future__ import annotations

from vrp.bench.config import BenchDataConfig, BenchGenerateConfig, BenchServeConfig, BenchTrainConfig
from vrp.collect.config import CollectConfig
from vrp.evaluate.config import EvaluateConfig
from vrp.generate.config import GenerateConfig
from vrp.limits import LIMITS, field_limits, num
from vrp.serve.config import ServeConfig
from vrp.train.config import TrainConfig


def command_configs() -> list[tuple[str, type]]:
    """`(command, config dataclass)` of every command whose flags come from a config."""
    return [("vrp collect", CollectConfig), ("vrp train", TrainConfig), ("vrp generate", GenerateConfig),
            ("vrp evaluate", EvaluateConfig), ("vrp serve", ServeConfig), ("vrp bench serve", BenchServeConfig),
            ("vrp bench train", BenchTrainConfig), ("vrp bench generate", BenchGenerateConfig),
            ("vrp bench data", BenchDataConfig)]


def limits_markdown() -> str:
    """The table of docs/limits.md: each limit's range, what it counts, why, and the flags that have it (a flag
    whose lower bound differs says so). tests/test_limits.py checks that the page holds exactly this table."""
    uses: dict[str, list[str]] = {lim.name: [] for lim in LIMITS}
    for command, cls in command_configs():
        for name, lim in field_limits(cls).items():
            own = next(x for x in LIMITS if x.name == lim.name)
            note = f" (from {num(lim.low)})" if lim.low != own.low else ""
            uses[lim.name].append(f"`{command} --{name.replace('_', '-')}`{note}")
    rows = ["| range | what | why the bound | flags |", "|---|---|---|---|"]
    rows += [f"| {lim.span()} | {lim.what} | {lim.why} | {', '.join(uses[lim.name]) or '–'} |" for lim in LIMITS]
    return "\n".join(rows) + "\n"
