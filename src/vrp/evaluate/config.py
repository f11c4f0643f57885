"""`EvaluateConfig`: the options of `vrp evaluate`, with their help texts, defaults and validation.

Knows: names, defaults (the generation defaults come from `vrp.generate.config.GenerateConfig`, defined once there) and valid
values of the evaluation options. Does not know: how they are used (`vrp.evaluate.run`); which data, runs and report
dir are evaluated (arguments of the command, `vrp.artifacts`).
"""
from __future__ import annotations

from dataclasses import dataclass

from vrp.errors import ConfigError
from vrp.generate.config import GenerateConfig
from vrp.limits import CANDIDATES, COMMENTS, NEW_TOKENS, PROMPT_TOKENS, RERANK, ROWS, THREADS, TOKENS
from vrp.options import check_choice, check_no_repeats, check_range, coerce_fields, option, option_like
from vrp.precision import PRECISIONS
from vrp.presets import MAX_NEW_TOKENS, check_rerank, get_preset, single_output_presets

RANKINGS = ("likelihood", "pmi", "both")
EVAL_MAX_NEW_TOKENS = 64  # generation budget of `vrp evaluate` (docs/evaluation.md#speed)


@dataclass
class EvaluateConfig:
    """Options of `vrp evaluate`; the field docs are its `--help`, `__post_init__` their one validation."""

    model: str | None = option("base model (smollm2-135m, .gguf, HF dir or id); default: the first run's base", None)
    checkpoint: str | None = option("evaluate this checkpoint of every run instead of its adapter/ (the last "
                                    "step's): step-000050, latest or best (the lowest validation NLL)", None)
    presets: str = option("comma-separated decoding presets for the generation metrics ('none' = skip generation)",
                          "nucleus,beam")
    num_comments: int = option(f"generated comments per video and preset (MAUVE wants >= 5 per video; "
                               f"a single-output preset ({', '.join(single_output_presets())}) gives one)", 5,
                               limit=COMMENTS)
    max_new_tokens: int = option(f"generation budget per comment in tokens ({EVAL_MAX_NEW_TOKENS}: above most real "
                                 f"comments, whose median is ~25 tokens; the original and `vrp generate` use "
                                 f"{MAX_NEW_TOKENS}, a base model that never stops runs every comment to it)",
                                 EVAL_MAX_NEW_TOKENS, limit=NEW_TOKENS)
    max_prompt_tokens: int | None = option_like(GenerateConfig, "max_prompt_tokens")
    num_candidates: int = option("ranking candidates per video; must exceed the real comments of every video (at "
                                 "most 25 count), so that each is ranked against distractors", 100, limit=CANDIDATES)
    ranking: str = option("candidate ranking: likelihood (mean log-prob per token given the video's prompt), pmi "
                          "(minus lambda times that given the no-video prompt, lambda cross-fitted over videos) or "
                          "both, side by side", "both")
    rerank: list[int] = option("also generate with reranking from N samples per video (maximum mutual information; "
                               "comma-separated N, each >= `num_comments`; 0 = plain generation)", [0], limit=RERANK)
    rerank_lambda: float = option_like(GenerateConfig, "rerank_lambda")
    seed: int = option("seed of candidates, derangement, bootstrap and sampling", 0)
    precision: str = option("auto (bf16 on CPUs with AVX512-BF16/AMX), bf16 or fp32", "auto")
    score_row_tokens: int = option("candidate tokens per packed scoring row (the prompt comes on top)", 512,
                                   limit=TOKENS)
    score_rows_per_batch: int = option("scoring rows per forward pass", 1, limit=ROWS)
    max_videos: int = option("evaluate only the first N held-out videos (0 = all)", 0)
    max_gen_videos: int = option("generate for the first N held-out videos (0 = all; on-topic retrieval still "
                                 "searches all evaluated videos). Each preset takes ~5-7 s per video and model on a 2-core CPU at "
                                 "64 new tokens", 24)
    seed_results: str | None = option("dir of the original 2023 project's outputs (its seed_results: *.xlsx, column "
                                      "text); needs `seed_test`", None)
    seed_test: str | None = option("the original test set (test_dataset.xlsx): ours are generated for its videos and "
                                   "compared with `seed_results`", None)
    threads: int = option("torch CPU threads (0 = torch's default; 1 can be much faster when other processes share "
                          "the CPU)", 0, limit=THREADS)
    quiet: bool = option("no progress bars", False)

    def __post_init__(self) -> None:
        coerce_fields(self)
        check_range(self, "threads", "max_videos", "max_gen_videos", low=0)
        check_range(self, "num_candidates", low=2)
        check_range(self, "max_prompt_tokens", low=PROMPT_TOKENS.low)  # as `PromptConfig` checks it
        check_range(self, "num_comments", "max_new_tokens", "score_row_tokens",
                    "score_rows_per_batch", low=1)
        check_choice(self, "precision", PRECISIONS)
        check_choice(self, "ranking", RANKINGS)
        for name in self.preset_list():  # known names first: `check_rerank` asks each preset
            try:
                get_preset(name)
            except ConfigError as e:
                raise ConfigError("presets", e.message) from None
        if not self.rerank:
            raise ConfigError("rerank", "give at least one value (0 = plain generation)")
        for n in self.rerank:  # the rule of `vrp generate`: a single-output preset is never reranked, never dropped
            check_rerank(n, self.num_comments, self.preset_list())
        if not self.rerank_lambda >= 0:
            raise ConfigError("rerank_lambda", f"must be >= 0, got {self.rerank_lambda}")
        if self.seed_results and not self.seed_test:
            raise ConfigError("seed_results", "needs `seed_test` (the test set whose videos the outputs belong to)")
        check_no_repeats(self, "presets", self.preset_list())

    def preset_list(self) -> list[str]:
        """The presets to generate with ([] for 'none')."""
        if self.presets.strip().lower() == "none":
            return []
        return [s.strip() for s in self.presets.split(",") if s.strip()]

    def setups(self) -> list[tuple[str, str, int]]:
        """`(label, preset, rerank)` of every generation setup: each preset without reranking (label = the preset)
        and with each `rerank` N > 0 (label `preset+rerankN`). A single-output preset (greedy) cannot be reranked:
        `__post_init__` refuses it with any N > 0 (`vrp.presets.check_rerank`, as `vrp generate` does), so every
        preset and N asked for is a setup."""
        return [(p if n == 0 else f"{p}+rerank{n}", p, n)
                for p in self.preset_list() for n in dict.fromkeys(self.rerank)]

    def ranking_list(self) -> list[str]:
        """The rankings to compute: ['likelihood'], ['pmi'] or both."""
        return ["likelihood", "pmi"] if self.ranking == "both" else [self.ranking]

    def generate_config(self, preset: str, rerank: int = 0) -> GenerateConfig:
        """The `GenerateConfig` of the generation metrics for one preset (a single-output preset gives one comment
        per video, `Preset.comment_count`)."""
        return GenerateConfig(preset=preset, num_comments=self.num_comments, max_new_tokens=self.max_new_tokens,
                              max_prompt_tokens=self.max_prompt_tokens, seed=self.seed, precision=self.precision,
                              rerank=rerank, rerank_lambda=self.rerank_lambda)
