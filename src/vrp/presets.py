"""Decoding presets as data: each named preset's `transformers.GenerationConfig` arguments, its repetition guard and
context-aware decoding weight, and what it can and needs (one comment or several, the no-video prompt); the checks of
options that depend on a preset (`check_rerank`). Every consumer (the CLI, `vrp evaluate`, the server and its page
through `/v1/info`) asks a preset here instead of comparing names. Imports nothing heavy.

Does not know: how comments are generated (`vrp.decoding`) or reranked (`vrp.rerank`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vrp.errors import ConfigError

DEFAULT_RERANK_LAMBDA = 1.0  # plain PMI until `vrp evaluate` chooses lambda on validation
MAX_NEW_TOKENS = 150  # as the original project


@dataclass(frozen=True)
class Preset:
    """A decoding setup: keyword arguments for `transformers.GenerationConfig`, its repetition guard and
    context-aware decoding weight, and what it can and needs. Consumers ask these fields and properties
    (`single_output`, `rerankable`, `needs_no_video_prompt`, `samples`, `beams`, `deterministic`,
    `comment_count`, `capabilities`), never the name. Raises ValueError when `single_output` contradicts the
    decoding: a preset that neither samples nor searches several beams gives one comment and must say so."""

    name: str
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    repetition_penalty: float = 1.0   # over the generated tokens only, stop tokens exempt (1.0 = off)
    no_repeat_ngram_size: int = 0     # over the generated tokens only, stop tokens exempt (0 = off)
    cad_alpha: float | None = None    # context-aware decoding weight alpha (None = off); needs `no_video_ids`
    single_output: bool = False       # exactly one comment whatever is asked (greedy); nothing to rerank

    def __post_init__(self) -> None:
        if not self.samples and self.beams == 1 and not self.single_output:
            raise ValueError(f"preset {self.name}: decoding without sampling or beams gives one comment; declare "
                             f"single_output=True")

    @property
    def samples(self) -> bool:
        """True when tokens are sampled (`do_sample`)."""
        return bool(self.kwargs.get("do_sample", False))

    @property
    def beams(self) -> int:
        """Beams of beam search (1 = no beam search)."""
        return int(self.kwargs.get("num_beams", 1))

    @property
    def deterministic(self) -> bool:
        """True when repeated calls give the same output (no sampling)."""
        return not self.samples

    @property
    def needs_no_video_prompt(self) -> bool:
        """True when decoding itself needs the no-video prompt (context-aware decoding, `cad_alpha`)."""
        return self.cad_alpha is not None

    @property
    def rerankable(self) -> bool:
        """True when the preset gives several comments to rerank from (`vrp.rerank`): not `single_output`."""
        return not self.single_output

    def comment_count(self, asked: int) -> int:
        """Comments this preset gives when `asked` are asked for: 1 for a `single_output` preset, else `asked`."""
        return 1 if self.single_output else asked

    def capabilities(self) -> dict[str, Any]:
        """What a client may rely on (`GET /v1/info` lists it per preset; the page reads it): `deterministic`,
        `samples`, `beams`, `single_output`, `rerankable`, `needs_no_video_prompt`."""
        return {"deterministic": self.deterministic, "samples": self.samples, "beams": self.beams,
                "single_output": self.single_output, "rerankable": self.rerankable,
                "needs_no_video_prompt": self.needs_no_video_prompt}


_NUCLEUS = {"do_sample": True, "num_beams": 1, "top_p": 0.9, "top_k": 0, "temperature": 0.8}
PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("greedy", "greedy decoding (one comment)", {"do_sample": False, "num_beams": 1}, single_output=True),
    Preset("beam", "beam search, 5 beams", {"do_sample": False, "num_beams": 5}),
    Preset("beam-temperature", "5 beams with temperature 0.7, top-k 50, top-p 0.9 passed as the original did "
           "(without do_sample, so transformers ignores them: deterministic beam search)",
           {"do_sample": False, "num_beams": 5, "temperature": 0.7, "top_k": 50, "top_p": 0.9}),
    Preset("beam-sample", "beam search with do_sample (beam-search multinomial sampling), 5 beams",
           {"do_sample": True, "num_beams": 5}),
    Preset("nucleus", "nucleus (top-p 0.9) sampling at temperature 0.8 with a repetition guard over the "
           "comment's own tokens (repetition penalty 1.15, no repeated 4-gram; the prompt and the stop tokens are "
           "exempt); the default", _NUCLEUS, repetition_penalty=1.15, no_repeat_ngram_size=4),
    Preset("cad", "context-aware decoding (Shi et al. 2023): next-token scores (1 + a) log p(video prompt) - a log "
           "p(no-video prompt), a = 0.5, then nucleus sampling with nucleus's repetition guard", _NUCLEUS,
           repetition_penalty=1.15, no_repeat_ngram_size=4, cad_alpha=0.5),
]}
DEFAULT_PRESET = "nucleus"


def get_preset(name: str) -> Preset:
    """Look up a preset by name. Raises ConfigError('preset') listing the valid names."""
    if name not in PRESETS:
        raise ConfigError("preset", f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


def single_output_presets() -> list[str]:
    """Names of the presets that give exactly one comment (`Preset.single_output`), for help texts."""
    return [n for n, p in PRESETS.items() if p.single_output]


def check_rerank(rerank: int, num_comments: int, presets: Sequence[str | Preset]) -> None:
    """Validate a `rerank` option (0 = off, else the number of samples) against the comments asked for and the presets
    (names or `Preset`s). Raises ConfigError('rerank') for a negative value, fewer samples than `num_comments`, or a
    preset that is not `rerankable` (a single-output one such as `greedy`); ConfigError('preset') for an unknown
    name."""
    if rerank < 0:
        raise ConfigError("rerank", f"must be >= 0 (0 = off), got {rerank}")
    if rerank and rerank < num_comments:
        raise ConfigError("rerank", f"must be at least `num_comments` ({num_comments}), got {rerank}")
    if not rerank:
        return
    for preset in presets:
        p = get_preset(preset) if isinstance(preset, str) else preset
        if not p.rerankable:
            several = ", ".join(n for n, q in PRESETS.items() if q.rerankable)
            raise ConfigError("rerank", f"preset {p.name} gives a single comment; rerank needs a preset that samples "
                                        f"or searches several ({several})")


def needs_no_video_prompt(preset: str | Preset, rerank: int = 0) -> bool:
    """True when generating with `preset` (and `rerank`) needs the no-video prompt: context-aware decoding
    (`Preset.needs_no_video_prompt`) or reranking."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    return p.needs_no_video_prompt or rerank > 0
