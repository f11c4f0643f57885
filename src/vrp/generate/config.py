"""`GenerateConfig`: the options of `vrp generate` (and of the generation step of `vrp evaluate` and the server's
defaults), with their help texts, defaults and validation. Imports nothing heavy (`--help` stays fast); the stage is
`vrp.generate.run`.
"""
from __future__ import annotations

from dataclasses import dataclass

from vrp.errors import ConfigError
from vrp.limits import COMMENTS, NEW_TOKENS, PROMPT_TOKENS, RERANK
from vrp.options import check_choice, check_no_repeats, check_range, coerce_fields, option
from vrp.precision import PRECISIONS
from vrp.presets import (
    DEFAULT_PRESET,
    DEFAULT_RERANK_LAMBDA,
    MAX_NEW_TOKENS,
    check_rerank,
    get_preset,
    single_output_presets,
)
from vrp.prompts import PromptConfig
from vrp.tiers import TIER_CHOICES
from vrp.transcripts import SUPPORTED_SUFFIXES

TRANSCRIPT_EXTS = SUPPORTED_SUFFIXES  # caption files `--input` accepts
PROMPT_BUDGET_HELP = (f"prompt token budget; the transcript is cut to fit (None: the run's, else "
                      f"{PromptConfig.max_prompt_tokens})")


@dataclass
class GenerateConfig:
    """Options of `vrp generate` (and of the generation step of `vrp evaluate`); the field docs are the `--help`."""

    model: str | None = option("base model (smollm2-135m, .gguf, HF dir or id); overrides the run's", None)
    run: str | None = option("run dir from `vrp train` (its base model + adapter)", None)
    checkpoint: str | None = option("use a checkpoint of the run instead of RUN/adapter (the last step's): "
                                    "step-000050, latest or best (the lowest validation NLL)", None)
    preset: str = option("decoding preset, or several separated by commas", DEFAULT_PRESET)
    num_comments: int = option(f"comments per video (a single-output preset, {', '.join(single_output_presets())}, "
                               f"always gives one)", 1, limit=COMMENTS)
    max_new_tokens: int = option("new tokens per comment at most", MAX_NEW_TOKENS, limit=NEW_TOKENS)
    max_prompt_tokens: int | None = option(PROMPT_BUDGET_HELP, None, limit=PROMPT_TOKENS)
    seed: int = option("sampling seed", 0)
    precision: str = option("auto, bf16 or fp32", "auto")
    tier: str = option("like tier of the comments for a run trained with tiers: top (the top comment), typical, low "
                       "(an ignored comment) or any (no marker: any comment, the only choice for an untiered model)",
                       "any")
    rerank: int = option("sample this many comments per video and preset, and keep the best `num_comments` by "
                         "PMI with the video, near-duplicates dropped (maximum mutual information reranking; 0 = off)",
                         0, limit=RERANK)
    rerank_lambda: float = option("weight of the no-video log-likelihood in the reranking score (mean log p(comment | "
                                  "video) - lambda * mean log p(comment | no video))", DEFAULT_RERANK_LAMBDA)

    def __post_init__(self) -> None:
        coerce_fields(self)
        check_choice(self, "tier", TIER_CHOICES)
        if not self.presets():
            raise ConfigError("preset", f"no preset named in {self.preset!r}")
        for name in self.presets():
            get_preset(name)  # ConfigError('preset') naming the valid ones
        check_no_repeats(self, "preset", self.presets())
        check_range(self, "num_comments", "max_new_tokens", low=1)
        check_range(self, "max_prompt_tokens", low=PROMPT_TOKENS.low)  # as `PromptConfig` checks it
        check_choice(self, "precision", PRECISIONS)
        if self.checkpoint and not self.run:
            raise ConfigError("checkpoint", "needs a `run` (it names a checkpoint of that run)")
        check_rerank(self.rerank, self.num_comments, self.presets())
        if not self.rerank_lambda >= 0:
            raise ConfigError("rerank_lambda", f"must be >= 0, got {self.rerank_lambda}")

    def presets(self) -> list[str]:
        """The preset names of `preset` (comma-separated), in order."""
        return [x.strip() for x in self.preset.split(",") if x.strip()]
