"""`TrainConfig`: every `vrp train` option, with its help text and default (loadable from YAML).

Knows: names, defaults and validation of training options. Does not know: how they are used (`vrp.train.loop`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vrp.errors import VrpError
from vrp.prompts import PromptConfig

# transformers.get_scheduler names that need no extra arguments (reduce_lr_on_plateau needs a metric per step,
# the *_min_lr ones a min_lr, warmup_stable_decay its phase lengths).
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _h(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class TrainConfig:
    """Training options; the field docs are `vrp train --help`."""

    model: str = _h("base model: smollm2-135m (bundled), a .gguf file, a local HF checkpoint dir or an HF id",
                    default="smollm2-135m")
    # prompts
    max_prompt_tokens: int = _h("token budget of the rendered prompt (title + transcript)", default=1024)
    truncation: str = _h("transcript truncation: head or head_tail", default="head")
    max_comment_tokens: int = _h("comments are cut to this many tokens (+ end-of-turn)", default=128)
    # packing
    packing: str = _h("shared_prefix (all comments of a video in one row, one pass over the transcript) or none "
                      "(one row per comment, as TRL SFTTrainer)", default="shared_prefix")
    max_row_tokens: int = _h("longest packed row in tokens; a video with more comments is split into rows that "
                             "repeat the prompt", default=2048)
    # LoRA
    lora_r: int = _h("LoRA rank r", default=16)
    lora_alpha: int = _h("LoRA alpha (scaling = alpha / r)", default=32)
    lora_dropout: float = _h("dropout on the LoRA input", default=0.05)
    target_modules: Any = _h("modules that get LoRA: all-linear or a JSON list such as [\"q_proj\",\"v_proj\"]",
                             default="all-linear")
    # optimisation
    learning_rate: float = _h("peak learning rate of AdamW", default=2e-4)
    weight_decay: float = _h("AdamW weight decay", default=0.0)
    lr_scheduler: str = _h("learning-rate schedule after warmup (transformers.get_scheduler name: cosine, "
                           "linear, constant_with_warmup, ...)", default="cosine")
    warmup_ratio: float = _h("warmup steps as a fraction of all steps (ignored if warmup_steps > 0)", default=0.03)
    warmup_steps: int = _h("warmup steps (0 = use warmup_ratio)", default=0)
    max_grad_norm: float = _h("gradient clipping norm", default=1.0)
    optimizer: str = _h("adamw, or paged_adamw_32bit (CUDA + bitsandbytes)", default="adamw")
    batch_size: int = _h("rows per micro-batch (a row = one video's prompt and comments with shared_prefix; one "
                         "comment with none)", default=4)
    grad_accum: int = _h("micro-batches per optimizer step", default=1)
    max_steps: int = _h("optimizer steps to run (-1 = run `epochs` epochs)", default=-1)
    epochs: int = _h("epochs when max_steps is -1", default=1)
    group_by_length: bool = _h("batch rows of similar length together (less padding)", default=False)
    seed: int = _h("random seed (data order, LoRA init, dropout)", default=0)
    max_train_videos: int = _h("use only the first N training videos (0 = all)", default=0)
    # precision and memory
    precision: str = _h("auto (bf16 autocast on CPUs with AVX512-BF16/AMX and on GPUs, else fp32), bf16, fp16 "
                        "(CUDA only) or fp32", default="auto")
    quantization: str = _h("none, or 4bit (NF4 QLoRA, CUDA + bitsandbytes)", default="none")
    device: str = _h("auto, cpu or cuda", default="auto")
    attn_implementation: str = _h("attention kernel: sdpa or eager", default="sdpa")
    gradient_checkpointing: bool = _h("recompute activations in backward (less memory, slower)", default=False)
    # evaluation and checkpoints
    eval_every: int = _h("validation NLL every N steps (and at the start and the end)", default=50)
    max_eval_videos: int = _h("validate on the first N validation videos (0 = all)", default=0)
    save_every: int = _h("checkpoint every N steps (and at the end)", default=50)
    save_total_limit: int = _h("keep the newest N checkpoints (0 = all)", default=2)

    def __post_init__(self) -> None:
        import dataclasses

        from vrp.options import coerce_values

        for k, v in coerce_values(type(self), dataclasses.asdict(self)).items():
            setattr(self, k, v)
        if self.packing not in ("shared_prefix", "none"):
            raise VrpError(f"--packing: choose shared_prefix or none, got {self.packing!r}")
        for name in ("batch_size", "grad_accum", "eval_every", "save_every", "lora_r", "lora_alpha", "epochs"):
            if getattr(self, name) < 1:
                raise VrpError(f"{_flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "max_train_videos", "max_eval_videos", "save_total_limit"):
            if getattr(self, name) < 0:
                raise VrpError(f"{_flag(name)} must be >= 0, got {getattr(self, name)}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise VrpError(f"--max-steps must be >= 1, or -1 to run --epochs epochs; got {self.max_steps}")
        if not self.learning_rate > 0:
            raise VrpError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if not self.max_grad_norm > 0:
            raise VrpError(f"--max-grad-norm must be > 0, got {self.max_grad_norm}")
        if self.weight_decay < 0:
            raise VrpError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_ratio <= 1:
            raise VrpError(f"--warmup-ratio must be in [0, 1], got {self.warmup_ratio}")
        if not 0 <= self.lora_dropout < 1:
            raise VrpError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise VrpError(f"--lr-scheduler: choose from {', '.join(LR_SCHEDULERS)}, got {self.lr_scheduler!r}")
        if self.optimizer not in ("adamw", "paged_adamw_32bit"):
            raise VrpError(f"--optimizer: choose adamw or paged_adamw_32bit, got {self.optimizer!r}")
        for name, choices in (("precision", ("auto", "bf16", "fp16", "fp32")), ("quantization", ("none", "4bit")),
                              ("device", ("auto", "cpu", "cuda"))):
            if getattr(self, name) not in choices:
                raise VrpError(f"{_flag(name)}: choose from {', '.join(choices)}, got {getattr(self, name)!r}")
        if not self.model.strip():
            raise VrpError("--model is empty")
        tm = self.target_modules
        if not ((isinstance(tm, str) and tm.strip()) or (isinstance(tm, list) and tm
                                                          and all(isinstance(x, str) and x for x in tm))):
            raise VrpError(f"--target-modules: give all-linear, a module name or a non-empty list of names, "
                           f"got {tm!r}")
        if self.max_row_tokens < self.max_prompt_tokens + 2:
            raise VrpError(f"--max-row-tokens ({self.max_row_tokens}) must exceed --max-prompt-tokens "
                           f"({self.max_prompt_tokens}) so that a comment fits behind the prompt")
        self.prompt_config()

    def prompt_config(self) -> PromptConfig:
        """The prompt settings of this config."""
        return PromptConfig(max_prompt_tokens=self.max_prompt_tokens, truncation=self.truncation,
                            max_comment_tokens=self.max_comment_tokens)
