"""What vrp needs to know about a tokenizer's chat template, found once per tokenizer by rendering probe messages:
whether it renders a system message, and which token it writes right after an assistant message (the end-of-turn
token). See `vrp.prompts` for why these two facts matter (chat templates differ in both).
Does not know: prompt budgets, truncation, completion labels or the plain format (see `vrp.prompts`,
`vrp.prompt_format`).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from vrp.errors import VrpError
from vrp.prompt_format import resolve_prompt_format


def token_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` without special tokens added (rendered templates already hold any BOS they want)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class ChatFormat:
    """What vrp needs to know about a tokenizer's chat template (see the module docstring).

    system_role: the template renders a system message (False: it raises or drops it; the system text then goes
    into the user turn). end_of_turn_id: the token the template writes right after an assistant message's content
    (the training target that ends a comment), or the tokenizer's EOS when the template writes no added token there.
    """

    system_role: bool
    end_of_turn_id: int


_PROBE_SYSTEM, _PROBE_USER, _PROBE_ASSISTANT = "vrpprobesystem", "vrpprobeuser", "vrpprobeassistant"
_FORMATS: weakref.WeakKeyDictionary[Any, tuple[Any, ChatFormat]] = weakref.WeakKeyDictionary()


def model_name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def _try_render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> tuple[str, str]:
    """`(rendered text, "")`, or `("", first line of the error)` when the template raises. Templates are user code
    (jinja `raise_exception`, undefined variables, type errors), so any exception is a refusal here."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=add_generation_prompt), ""
    except Exception as e:  # noqa: BLE001 - see docstring
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        return "", f"{type(e).__name__}: {lines[0].strip() if lines else ''}"


def _is_blank_token(tokenizer: Any, tok_id: int) -> bool:
    return not tokenizer.decode([tok_id], skip_special_tokens=False).strip()


def _probe(tokenizer: Any) -> ChatFormat:
    name = model_name(tokenizer)
    resolve_prompt_format(tokenizer, "chat")  # no chat template: ConfigError('prompt_format') naming the model
    user = [{"role": "user", "content": _PROBE_USER}]
    prompt, err = _try_render(tokenizer, user, True)
    if err or _PROBE_USER not in prompt:
        raise VrpError(f"model {name!r}: its chat template does not render a user message "
                       f"({err or 'the message text is missing from the output'}); vrp needs a template that renders "
                       f"a user message and an assistant reply")
    full, err = _try_render(tokenizer, user + [{"role": "assistant", "content": _PROBE_ASSISTANT}], False)
    if err or _PROBE_ASSISTANT not in full or not full.startswith(prompt):
        why = err or ("the reply text is missing from the output" if _PROBE_ASSISTANT not in full else
                      "the chat with the reply does not start with the generation prompt")
        raise VrpError(f"model {name!r}: its chat template does not render an assistant reply after the generation "
                       f"prompt ({why}); cannot separate prompt and completion")
    with_system, err = _try_render(tokenizer, [{"role": "system", "content": _PROBE_SYSTEM}] + user, True)
    system_role = not err and _PROBE_SYSTEM in with_system and _PROBE_USER in with_system
    tail = token_ids(tokenizer, full[full.rindex(_PROBE_ASSISTANT) + len(_PROBE_ASSISTANT):])
    added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {}) | set(tokenizer.all_special_ids)
    eot = None
    for t in tail:  # the first added token after the reply, past whitespace (LLaMA-2 writes ' ' + '</s>')
        if t in added:
            eot = t
            break
        if not _is_blank_token(tokenizer, t):
            break
    if eot is None:
        if tokenizer.eos_token_id is None:
            raise VrpError(f"model {name!r}: its chat template writes no end-of-turn token after a reply and the "
                           f"tokenizer has no EOS token; cannot mark where a comment ends")
        eot = tokenizer.eos_token_id
    return ChatFormat(system_role=system_role, end_of_turn_id=int(eot))


def chat_format(tokenizer: Any) -> ChatFormat:
    """Probe the tokenizer's chat template once (cached per tokenizer object; re-probed when its `chat_template` or
    EOS changes): render a user message, a user message + assistant reply, and a system + user message.

    Raises VrpError naming the model (`tokenizer.name_or_path`) when there is no template, when it cannot render a
    user message, or when the chat with a reply does not extend the generation prompt.
    """
    key = (tokenizer.chat_template, tokenizer.eos_token_id, len(tokenizer))
    cached = _FORMATS.get(tokenizer)
    if cached is not None and cached[0] == key:
        return cached[1]
    fmt = _probe(tokenizer)
    _FORMATS[tokenizer] = (key, fmt)
    return fmt


def end_of_turn_id(tokenizer: Any) -> int:
    """The token id that ends an assistant turn: what the chat template writes right after the reply's content
    (`<|im_end|>` for ChatML/SmolLM2, `<|eot_id|>` for Llama-3, `<end_of_turn>` for Gemma, `<|end|>` for Phi-3,
    `</s>` for LLaMA-2/Mistral), else the tokenizer's EOS. Raises VrpError as `chat_format` does."""
    return chat_format(tokenizer).end_of_turn_id
