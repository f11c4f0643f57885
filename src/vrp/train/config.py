"""`TrainConfig`: every `vrp train` option, with its help text and default (loadable from YAML).

Knows: names, help texts and validation of training options; the prompt defaults come from `vrp.prompts.PromptConfig`
and the LoRA defaults from `vrp.lora.LoraSettings` (defined once there). Does not know: how they are used
(`vrp.train.loop`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vrp.errors import ConfigError
from vrp.limits import ROWS, STEPS, TOKENS
from vrp.lora import LoraSettings
from vrp.options import check_choice, check_positive, check_range, coerce_fields, option, option_like
from vrp.precision import PRECISIONS, QUANTIZATIONS
from vrp.procmem import check_budget
from vrp.prompt_format import PROMPT_FORMAT_HELP
from vrp.prompts import PromptConfig
from vrp.tiers import TIER_SOURCES
from vrp.train.launch import STRATEGIES, resolve_strategy
from vrp.train.optim import OPTIMIZERS

# transformers.get_scheduler names that need no extra arguments (reduce_lr_on_plateau needs a metric per step,
# the *_min_lr ones a min_lr, warmup_stable_decay its phase lengths).
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt")


def module_names_or_regex(text: str) -> Any:
    """`target_modules` given as one string: names (`q_proj` or `q_proj,v_proj`) become a list of names, which PEFT
    matches against the end of each module path; anything else must be a regular expression, which PEFT matches
    against the whole path. Raises ConfigError('target_modules') for a broken JSON list or regular expression."""
    import re

    t = text.strip()
    if t.startswith("["):
        raise ConfigError("target_modules", f"{text!r} is not a JSON list of names (write e.g. [\"q_proj\",\"v_proj\"])")
    if re.fullmatch(r"[\w.]+(\s*,\s*[\w.]+)*", t):
        return [x.strip() for x in t.split(",")]
    try:
        re.compile(t)
    except re.error as e:
        raise ConfigError("target_modules", f"{text!r} is neither module names nor a regular expression ({e})") from None
    return t


@dataclass
class TrainConfig:
    """Training options; the field docs are `vrp train --help`, `__post_init__` is their one validation."""

    model: str = option("base model: smollm2-135m (bundled), a .gguf file, a local HF checkpoint dir or an HF id",
                        "smollm2-135m")
    # prompts
    max_prompt_tokens: int = option_like(PromptConfig, "max_prompt_tokens")
    truncation: str = option_like(PromptConfig, "truncation")
    max_comment_tokens: int = option_like(PromptConfig, "max_comment_tokens")
    prompt_format: str = option(PROMPT_FORMAT_HELP, "auto")
    # packing
    packing: str = option("shared_prefix (all comments of a video in one row, one pass over the transcript) or none "
                          "(one row per comment, as TRL SFTTrainer)", "shared_prefix")
    max_row_tokens: int = option("longest packed row in tokens; a video with more comments is split into rows that "
                                 "repeat the prompt", 2048, limit=TOKENS)
    # like tiers (vrp.tiers)
    tiers: bool = option("train with like tiers: a marker ([most liked comment], [typical comment], [least liked "
                         "comment]) opens each comment's turn as context without loss, so `vrp generate` can ask for "
                         "a tier (needs like counts or like ranks in the data)", False)
    tier_source: str = option("with `tiers`: auto (like counts when the data has them, else the ranks of a "
                              "seed-format dataset), likes, or rank (rank 1 = most liked); saved resolved", "auto")
    tier_marker_dropout: float = option("with `tiers`: share of tiered training comments trained without their "
                                        "marker, so that tier 'any' (no marker) stays in distribution", 0.2)
    # LoRA
    lora_r: int = option_like(LoraSettings, "r")
    lora_alpha: int = option_like(LoraSettings, "alpha")
    lora_dropout: float = option_like(LoraSettings, "dropout")
    target_modules: Any = option_like(LoraSettings, "target_modules")
    # optimisation
    learning_rate: float = option("peak learning rate of AdamW", 2e-4, aliases=("--lr",))
    weight_decay: float = option("AdamW weight decay", 0.0)
    lr_scheduler: str = option("learning-rate schedule after warmup (transformers.get_scheduler name: cosine, "
                               "linear, constant_with_warmup, ...)", "cosine")
    warmup_ratio: float = option("warmup steps as a fraction of all steps (ignored if warmup_steps > 0)", 0.03)
    warmup_steps: int = option("warmup steps (0 = use warmup_ratio)", 0, limit=STEPS.from_(0))
    max_grad_norm: float = option("gradient clipping norm", 1.0)
    optimizer: str = option("adamw (torch), adamw_8bit (8-bit states), paged_adamw_32bit or paged_adamw_8bit (CUDA "
                            "pages their state; on a CPU they become adamw / adamw_8bit, with a notice); all but "
                            "adamw need bitsandbytes", "adamw")
    batch_size: int = option("rows per micro-batch (a row = one video's prompt and comments with shared_prefix; one "
                             "comment with none)", 4, limit=ROWS)
    grad_accum: int = option("micro-batches per optimizer step", 1, limit=ROWS)
    max_steps: int = option("optimizer steps to run (-1 = run `epochs` epochs)", -1, limit=STEPS.from_(-1))
    epochs: int = option("epochs when max_steps is -1", 1, limit=STEPS)
    group_by_length: bool = option("batch rows of similar length together (less padding)", False)
    seed: int = option("random seed (data order, LoRA init, dropout)", 0)
    max_train_videos: int = option("use only the first N training videos (0 = all)", 0)
    token_cache: bool = option("read the tokenized videos from the dataset's token cache (DATASET/.cache/, built "
                               "once per tokenizer and prompt settings, memory-mapped, shared by every process; "
                               "docs/training.md); off: tokenize in memory at every start", True)
    # precision and memory
    precision: str = option("auto (bf16 autocast on CPUs with AVX512-BF16/AMX and on GPUs, else fp32), bf16, fp16 "
                            "(CUDA only) or fp32", "auto")
    quantization: str = option("none, or 4bit (QLoRA: base weights in NF4 through bitsandbytes, on CPU or CUDA; "
                               "docs/models.md)", "none")
    device: str = option("auto, cpu or cuda", "auto")
    attn_implementation: str = option("attention kernel: split_sdpa (PyTorch SDPA, with the causal kernel on the part "
                                      "of a masked batch that is plain causal attention; vrp.attention), sdpa or "
                                      "eager", "split_sdpa")
    gradient_checkpointing: bool = option("recompute activations in backward (less memory, slower)", False)
    compile_layers: bool = option("torch.compile each decoder layer (one compilation for all row lengths, ~40 s at "
                                  "the start on a 2-core CPU; ~10% shorter steps there with `lora_dropout` 0, little "
                                  "gain with dropout, whose random masks break the compiled graphs)", False)
    max_memory: str = option("memory budget of the run: a size (8GB, 6GiB, 512MB) or auto (80% of the available RAM, "
                             "90% of the free GPU memory); rows per micro-batch are lowered to a divisor of "
                             "`batch_size` (with more accumulation, so each optimizer step sees the same rows) until "
                             "the peak measured at startup fits. Empty = no budget", "", metavar="SIZE")
    # several processes (torchrun / accelerate launch; vrp.train.distributed)
    distributed_strategy: str = option("when started by torchrun or accelerate launch: ddp (every process holds the "
                                       "model, LoRA gradients are all-reduced), fsdp (FSDP2: the base model and LoRA "
                                       "are sharded across the processes, for models that do not fit one device), "
                                       "or auto (fsdp under `accelerate launch --use_fsdp`, else ddp); `batch_size` "
                                       "is per process, so a step takes batch_size x grad_accum x processes rows",
                                       "auto")
    # evaluation and checkpoints
    eval_every: int = option("validation (NLL, learning-curve probes, best checkpoint) every N steps (and at the "
                             "start and the end)", 50, limit=STEPS)
    max_eval_videos: int = option("validate on the first N validation videos (0 = all)", 0)
    curve_videos: int = option("learning-curve probes at each validation on the first N validation videos: "
                               "conditioning gain, Recall@10 and MRR by likelihood and by PMI among at most 50 "
                               "candidates, finished rate and median length of one sampled comment per video "
                               "(0 = off; see vrp.train.probes)", 16)
    save_every: int = option("checkpoint every N steps (and at the end)", 50, limit=STEPS)
    save_total_limit: int = option("keep the newest N checkpoints (0 = all)", 2)

    def __post_init__(self) -> None:
        coerce_fields(self)
        check_choice(self, "packing", ("shared_prefix", "none"))
        check_range(self, "batch_size", "grad_accum", "eval_every", "save_every", "lora_r", "lora_alpha", "epochs",
                    low=1)
        check_range(self, "warmup_steps", "max_train_videos", "max_eval_videos", "save_total_limit", "weight_decay",
                    "curve_videos", low=0)
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError("max_steps", f"must be >= 1, or -1 to run `epochs` epochs; got {self.max_steps}")
        check_positive(self, "learning_rate", "max_grad_norm")
        if not 0 <= self.warmup_ratio <= 1:
            raise ConfigError("warmup_ratio", f"must be in [0, 1], got {self.warmup_ratio}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError("lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        check_choice(self, "tier_source", TIER_SOURCES)
        if not 0 <= self.tier_marker_dropout < 1:
            raise ConfigError("tier_marker_dropout", f"must be in [0, 1), got {self.tier_marker_dropout}")
        check_choice(self, "lr_scheduler", LR_SCHEDULERS)
        check_choice(self, "optimizer", OPTIMIZERS)
        check_choice(self, "precision", PRECISIONS)
        check_choice(self, "quantization", QUANTIZATIONS)
        check_choice(self, "device", ("auto", "cpu", "cuda"))
        check_budget(self.max_memory)
        check_choice(self, "distributed_strategy", STRATEGIES)
        if self.distributed_strategy == "fsdp" and self.quantization == "4bit":
            resolve_strategy("fsdp", "4bit")  # raises ConfigError('distributed_strategy') saying why
        if not self.model.strip():
            raise ConfigError("model", "is empty")
        tm = self.target_modules
        if not ((isinstance(tm, str) and tm.strip()) or (isinstance(tm, list) and tm
                                                          and all(isinstance(x, str) and x for x in tm))):
            raise ConfigError("target_modules", f"give all-linear, a module name or a non-empty list of names, "
                                                f"got {tm!r}")
        if isinstance(tm, str) and tm.strip() != "all-linear":
            self.target_modules = module_names_or_regex(tm)
        if self.max_row_tokens < self.max_prompt_tokens + 2:
            raise ConfigError("max_row_tokens", f"({self.max_row_tokens}) must exceed `max_prompt_tokens` "
                                                f"({self.max_prompt_tokens}) so that a comment fits behind the prompt")
        self.prompt_config()

    def schedule_uses_total(self) -> bool:
        """True when the learning rate at a step depends on the run's total steps: for every scheduler but `constant`,
        and for `constant_with_warmup` / `inverse_sqrt` when the warmup is a share of the total (`warmup_ratio` > 0,
        `warmup_steps` 0). Source: transformers.optimization's get_*_schedule_with_warmup functions (which of them
        read `num_training_steps`)."""
        if self.lr_scheduler == "constant":
            return False
        if self.lr_scheduler in ("constant_with_warmup", "inverse_sqrt"):
            return self.warmup_steps == 0 and self.warmup_ratio > 0
        return True

    def lora(self) -> LoraSettings:
        """The LoRA settings of this config."""
        return LoraSettings(self.lora_r, self.lora_alpha, self.lora_dropout, self.target_modules)

    def prompt_config(self) -> PromptConfig:
        """The prompt settings of this config."""
        return PromptConfig(max_prompt_tokens=self.max_prompt_tokens, truncation=self.truncation,
                            max_comment_tokens=self.max_comment_tokens, prompt_format=self.prompt_format)


# options that name a local path; config.yaml keeps them resolved (`resolve_path_option`)
PATH_OPTIONS = ("model",)


def resolve_path_option(value: str) -> str:
    """A path-valued option as config.yaml keeps it: a value naming an existing local path becomes absolute (`~`
    expanded, symlinks resolved), so that `generate --run` works from any directory; any other value (a bundled model
    name, a Hugging Face id) is kept as it is."""
    p = Path(value).expanduser()
    return str(p.resolve()) if p.exists() else value


# options a resumed run may change; the data position is global, so also the number of processes, and grad_accum
# keeps the global batch (batch_size x grad_accum x processes) when that changes; max_steps and epochs only when the
# learning-rate schedule does not depend on the total (`TrainConfig.schedule_uses_total`, checked by the training setup)
RESUMABLE = ("max_steps", "epochs", "distributed_strategy", "grad_accum", "max_memory", "token_cache")
# options whose `auto` a run resolves when it starts and saves resolved in config.yaml
RESOLVED_AT_START = ("prompt_format", "tier_source")


def check_resumable(run_cfg: TrainConfig, cfg: TrainConfig, where: str) -> None:
    """Raise ConfigError naming the first option of `cfg` that differs from `run_cfg` (the run's config.yaml, read from
    `where`) outside `RESUMABLE`: a resumed run continues with its own options, whether it is resumed by `vrp train
    --resume` or by `vrp.train.loop.train(cfg, resume=True)` from Python. `prompt_format` `auto` matches the format
    the run resolved it to, as do the other `RESOLVED_AT_START` options."""
    changed = [f.name for f in dataclasses.fields(TrainConfig)
               if f.name not in RESUMABLE and getattr(cfg, f.name) != getattr(run_cfg, f.name)
               and not (f.name in RESOLVED_AT_START and getattr(cfg, f.name) == "auto")]
    if changed:
        listed = ", ".join(f"{k} {getattr(cfg, k)!r} (run: {getattr(run_cfg, k)!r})" for k in changed)
        raise ConfigError(changed[0], f"a resumed run continues with the options in {where}; changed: {listed}. Only "
                                      f"{', '.join(RESUMABLE)} may differ (max_steps / epochs with a constant "
                                      f"learning-rate schedule). Start a new run, or overwrite this one")
