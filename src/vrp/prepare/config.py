"""`PrepareConfig`: the options of `vrp prepare` (the split), with their defaults and checks; the stage is
`vrp.prepare.run`."""
from __future__ import annotations

from dataclasses import dataclass

from vrp.errors import ConfigError
from vrp.options import coerce_fields, option


@dataclass
class PrepareConfig:
    """Options of `vrp prepare`; the field docs are its `--help`."""

    val_fraction: float = option("share of videos in validation.jsonl", 0.1)
    seed: int = option("seed of the split", 0)

    def __post_init__(self) -> None:
        coerce_fields(self)
        if not 0 <= self.val_fraction < 1:
            raise ConfigError("val_fraction", f"must be in [0, 1), got {self.val_fraction}")
