"""Prompt formats: which layout a model's prompts and completions use (`chat`, `plain`, or `auto` to choose).

Knows: the format names (`PROMPT_FORMATS`), how `auto` is resolved for a tokenizer (`resolve_prompt_format`: the
chat template when the tokenizer has one, else `plain`) and how that choice is announced and put into a prompt config
(`resolve_prompt_config`), and what the plain layout is made of (`plain_prompt_text`, `bos_prefix`, `plain_eos_id`).
Does not know: chat templates (`vrp.prompts.chat_format`), transcript truncation or tokenizing whole videos
(`vrp.prompts`, which renders every prompt through these functions).

`chat`: the model's chat template renders a system + user message and the comment as the assistant turn, which ends
with the template's end-of-turn token (see `vrp.prompts`). This is what instruct/chat models were tuned on.

`plain`: a fixed text layout for base (pretrained) models, which have no chat template. TRL's SFTTrainer and
LLaMA-Factory fine-tune such models on plain text in the same way (a fixed layout, the target ended with the
tokenizer's EOS). The prompt is

    [BOS]Title: <title>
    Transcript: <transcript>
    Comment:
    <comment><EOS>

that is: the tokenizer's BOS once at the start when the tokenizer adds one to a text of its own
(`bos_prefix`: Llama, Mistral and Gemma tokenizers do, GPT-2/Qwen/SmolLM2-style ones do not), the `Title:` line
(left out when the title is empty, as in the chat format's user message), the `Transcript:` line, and the cue
`Comment:` followed by a newline; the completion is the comment's tokens then the tokenizer's EOS token
(`plain_eos_id`). The system prompt is not used (it addresses a chat assistant). Prompt and completion are tokenized
separately without special tokens, as generation sees them. The EOS stays a training target even when the tokenizer's
pad or BOS token is the same id: `vrp.packing.collate` takes targets from the completion ids, never from a padding
mask. Generation stops at the EOS and at every `eos_token_id` of the model's `generation_config`
(`vrp.prompts.stop_token_ids`).

`auto` resolves per tokenizer; a run dir records the resolved format (`config.yaml` `prompt_format`), so every later
stage renders prompts the way the run was trained. A run dir written before prompt formats existed has none and was
trained with its chat template (`vrp.rundir.RunDir.prompt_config` reads it as `chat`).
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any

from vrp.errors import ConfigError

PROMPT_FORMATS = ("auto", "chat", "plain")
PROMPT_FORMAT_HELP = ("prompt layout: auto (the model's chat template when its tokenizer has one, else plain), chat "
                      "(the chat template) or plain (Title/Transcript/Comment text ending with EOS, for base models; "
                      "docs/models.md); a run records the resolved one")
PLAIN_CUE = "Comment:"


def model_name(tokenizer: Any) -> str:
    """How errors name the model of `tokenizer`: its `name_or_path`, else its class name."""
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def check_prompt_format(prompt_format: str) -> None:
    """Raise ConfigError('prompt_format') for a name outside `PROMPT_FORMATS`."""
    if prompt_format not in PROMPT_FORMATS:
        raise ConfigError("prompt_format", f"choose from {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")


def plain_eos_id(tokenizer: Any, model: str | None = None) -> int:
    """The token that ends a plain-format completion: the tokenizer's EOS. Raises ConfigError('prompt_format')
    naming the model (`model`, else `model_name`) when the tokenizer has no EOS token (nothing could mark where a
    comment ends)."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ConfigError("prompt_format", f"model {model or model_name(tokenizer)!r}: the tokenizer has no EOS token, "
                                           f"which the plain prompt format needs to end each comment; set "
                                           f"`eos_token` in its tokenizer_config.json, or use a model with a chat "
                                           f"template")
    return int(eos)


def resolve_prompt_format(tokenizer: Any, prompt_format: str, model: str | None = None) -> str:
    """`chat` or `plain` for `prompt_format` (`auto`, `chat`, `plain`) with `tokenizer`: `auto` is `chat` when the
    tokenizer has a chat template (`tokenizer.chat_template` set), else `plain`. Raises ConfigError('prompt_format')
    for an unknown name, for `chat` with a tokenizer without a chat template, and for `plain` (explicit or chosen)
    with a tokenizer without EOS (`plain_eos_id`); the message names the model (`model`, the spec the user gave,
    else the tokenizer's `name_or_path`)."""
    check_prompt_format(prompt_format)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    fmt = ("chat" if has_template else "plain") if prompt_format == "auto" else prompt_format
    if fmt == "chat" and not has_template:
        raise ConfigError("prompt_format", f"model {model or model_name(tokenizer)!r}: the tokenizer has no chat "
                                           f"template, which prompt format chat needs; set `prompt_format` plain (or "
                                           f"auto) to use the plain text prompt of base models")
    if fmt == "plain":
        plain_eos_id(tokenizer, model)
    return fmt


def resolve_prompt_config(tokenizer: Any, cfg: Any, announce: bool = True, model: str | None = None) -> Any:
    """`cfg` (a `vrp.prompts.PromptConfig`, or any dataclass with a `prompt_format` field) with its `prompt_format`
    resolved for `tokenizer` (`resolve_prompt_format`). When it was `auto` and `announce` is true, one line on stderr
    says which format was chosen and why, naming the model as `model` (the spec the user gave) or the tokenizer's
    `name_or_path`. Raises as `resolve_prompt_format` does."""
    fmt = resolve_prompt_format(tokenizer, cfg.prompt_format, model)
    if cfg.prompt_format == "auto" and announce:
        why = "has a chat template" if fmt == "chat" else "has no chat template"
        print(f"prompt format: {fmt} (auto: the tokenizer of model {model or model_name(tokenizer)!r} {why})",
              file=sys.stderr, flush=True)
    return cfg if fmt == cfg.prompt_format else dataclasses.replace(cfg, prompt_format=fmt)


def bos_prefix(tokenizer: Any) -> list[int]:
    """`[BOS]` when the tokenizer adds its BOS token to a text it tokenizes with special tokens (Llama, Mistral,
    Gemma), else `[]`: the plain prompt then starts with exactly one BOS, as the model saw in pretraining."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    with_special = list(tokenizer("x", add_special_tokens=True)["input_ids"])
    without = list(tokenizer("x", add_special_tokens=False)["input_ids"])
    return [int(bos)] if with_special[:1] == [bos] and without[:1] != [bos] else []


def plain_prompt_text(body: str) -> str:
    """The plain prompt's text (without BOS) around `body`, the title and transcript lines
    (`vrp.prompts.user_message`): `body` + newline + `Comment:` + newline."""
    return f"{body}\n{PLAIN_CUE}\n"
