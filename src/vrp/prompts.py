"""Prompt rendering with the base model's chat template, transcript truncation and completion-only labels.

Knows: how a (title, transcript) pair becomes a chat (system + user message), how the transcript is cut to a token
budget (`head` keeps the start, as the original project did; `head_tail` keeps the start and the end) on a character
boundary, and how a comment becomes the assistant turn's token ids ending in the end-of-turn token, so that only the
comment and its end-of-turn token are trained (completion-only loss). What it needs to know about a tokenizer's chat
template is found once per tokenizer by rendering probe messages (`chat_format`): whether it renders a system
message, and which token it writes right after an assistant message (the end-of-turn token); `stop_token_ids` adds
the model's `generation_config.eos_token_id` and the tokenizer's EOS, for generation.
Does not know: batching, packing or models (see `packing`, `train`), nor how generation stops (see `decoding`).

Chat templates differ in two ways that matter here (transformers "Chat templates" docs; the templates in the models'
`tokenizer_config.json`):
- End of turn. The token after an assistant message is not always the tokenizer's EOS: ChatML (SmolLM2, Qwen)
  writes `<|im_end|>`, Llama-3 `<|eot_id|>`, Gemma `<end_of_turn>`, Phi-3 `<|end|>`, while their EOS may be
  `<|endoftext|>` / `<|end_of_text|>` / `<eos>`; LLaMA-2 and Mistral `[INST]` templates write the EOS `</s>` itself.
  Training targets end with the token the template writes; generation stops at any of `stop_token_ids`.
- System messages. Some templates refuse one (Gemma: `raise_exception('System role not supported')`; Mistral v0.1:
  "Conversation roles must alternate") and some drop it silently (Phi-3-mini's first template). For those the system
  text is folded into the first user turn, separated by a blank line, as Gemma 3's own template and common
  fine-tuning tools do, in training and inference alike (every caller renders through this module).

Tokenization rule (no double BOS): the chat template already writes any BOS it wants, so the rendered text is
tokenized with `add_special_tokens=False`. The prompt is the template rendered with `add_generation_prompt=True`;
the completion is what the full chat adds after it, cut right after the first end-of-turn token. Prompt and
completion are tokenized separately, exactly as generation sees them (prompt ids in, completion ids out).

Prompt formats (`PromptConfig.prompt_format`, `vrp.prompt_format`): all of the above is the `chat` format. The `plain`
format (base models without a chat template) renders `[BOS]Title: ...\nTranscript: ...\nComment:\n` and ends each
completion with the tokenizer's EOS; `auto` picks `chat` when the tokenizer has a chat template, else `plain`. Every
function here takes the format from its `PromptConfig` (`stop_token_ids` from its `prompt_format` argument), so a
run's prompts, scores, stops and no-video prompt all follow the format it was trained with. `PromptConfig()` keeps
`chat` (the behaviour before formats existed); the command-line stages default to `auto`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vrp.chat_template import chat_format, end_of_turn_id  # ChatFormat: re-exported
from vrp.chat_template import model_name as _model_name
from vrp.chat_template import token_ids as _ids
from vrp.errors import ConfigError, VrpError
from vrp.limits import PROMPT_TOKENS, TOKENS, check_limits
from vrp.options import coerce_values
from vrp.prompt_format import (
    PROMPT_FORMAT_HELP,
    bos_prefix,
    check_prompt_format,
    plain_eos_id,
    plain_prompt_text,
    resolve_prompt_format,
)
from vrp.records import Video

DEFAULT_SYSTEM_PROMPT = (
    "You are a viewer of a YouTube video. Given the video's title and transcript, "
    "write one comment that a viewer would post under the video."
)
TRUNCATION_STRATEGIES = ("head", "head_tail")


@dataclass
class PromptConfig:
    """How prompts are built. Field docs are the `--help` of the matching flags."""

    max_prompt_tokens: int = field(default=1024, metadata={"help": "token budget of the whole rendered prompt "
                                                                    "(system + title + transcript + template)",
                                                            "limit": PROMPT_TOKENS})
    truncation: str = field(default="head", metadata={"help": "transcript truncation: head (keep the start, as "
                                                               "the original project) or head_tail (start and end)"})
    system_prompt: str = field(default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "system message of the chat"})
    max_comment_tokens: int = field(default=128, metadata={"help": "longer comments are cut to this many tokens "
                                                                    "(the end-of-turn token is kept)",
                                                            "limit": TOKENS})
    prompt_format: str = field(default="chat", metadata={"help": PROMPT_FORMAT_HELP})  # stages default to auto

    def __post_init__(self) -> None:
        import dataclasses

        for k, v in coerce_values(type(self), dataclasses.asdict(self)).items():
            setattr(self, k, v)
        if self.truncation not in TRUNCATION_STRATEGIES:
            raise ConfigError("truncation", f"unknown strategy {self.truncation!r}; choose from {TRUNCATION_STRATEGIES}")
        if self.max_prompt_tokens < 16:
            raise ConfigError("max_prompt_tokens", f"must be at least 16, got {self.max_prompt_tokens}")
        if self.max_comment_tokens < 1:
            raise ConfigError("max_comment_tokens", f"must be at least 1, got {self.max_comment_tokens}")
        check_limits(self)  # the upper bounds (`vrp.limits`)
        check_prompt_format(self.prompt_format)


@dataclass
class EncodedVideo:
    """One video tokenized for training or scoring.

    prompt_ids: (prompt_len,) token ids of the rendered prompt, ending with the assistant header (plain: the cue).
    completions: one list of token ids per comment, each ending with the chat template's end-of-turn token
    (`end_of_turn_id`; plain: the tokenizer's EOS). contexts: [] or, per comment, token ids between the prompt and
    the comment that are inputs but not targets (a tier marker, `vrp.tiers`; see `vrp.packing.Row`).
    """

    video_id: str
    prompt_ids: list[int]
    completions: list[list[int]]
    contexts: list[list[int]] = field(default_factory=list)


def user_message(title: str, transcript: str) -> str:
    """The user turn's text for a video."""
    title = title.strip()
    head = f"Title: {title}\n" if title else ""
    return f"{head}Transcript: {transcript.strip()}"


def _messages(tokenizer: Any, cfg: PromptConfig, title: str, transcript: str) -> list[dict[str, str]]:
    """System + user message, or one user message holding both when the template has no system role."""
    user = user_message(title, transcript)
    if chat_format(tokenizer).system_role:
        return [{"role": "system", "content": cfg.system_prompt}, {"role": "user", "content": user}]
    return [{"role": "user", "content": f"{cfg.system_prompt.strip()}\n\n{user}"}]


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    chat_format(tokenizer)  # a template that cannot render our chats fails here with one clear VrpError
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _prompt_ids(tokenizer: Any, cfg: PromptConfig, title: str, transcript: str) -> list[int]:
    """The prompt of (title, transcript), untruncated, in the format of `cfg` (see the module docstring)."""
    if resolve_prompt_format(tokenizer, cfg.prompt_format) == "plain":
        return bos_prefix(tokenizer) + _ids(tokenizer, plain_prompt_text(user_message(title, transcript)))
    return _ids(tokenizer, _render(tokenizer, _messages(tokenizer, cfg, title, transcript), True))


def prompt_text(tokenizer: Any, title: str, transcript: str, cfg: PromptConfig) -> str:
    """The prompt of (title, transcript) as text, untruncated, special tokens written out (`<|im_start|>`, a BOS):
    the chat template's rendering, or the plain layout with the BOS text in front when the tokenizer adds one. What
    `build_prompt_ids` tokenizes (without special tokens) when the transcript fits. Raises as `build_prompt_ids`."""
    if resolve_prompt_format(tokenizer, cfg.prompt_format) == "plain":
        bos = tokenizer.bos_token if bos_prefix(tokenizer) else ""
        return bos + plain_prompt_text(user_message(title, transcript))
    return _render(tokenizer, _messages(tokenizer, cfg, title, transcript), True)


def _eos_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def completion_end_id(tokenizer: Any, prompt_format: str = "auto") -> int:
    """The token that ends every completion (the last training target) in `prompt_format` (`auto` resolved with
    `vrp.prompt_format.resolve_prompt_format`): `end_of_turn_id` for chat, the tokenizer's EOS for plain. Raises
    ConfigError('prompt_format') / VrpError naming the model as those do."""
    if resolve_prompt_format(tokenizer, prompt_format) == "plain":
        return plain_eos_id(tokenizer)
    return end_of_turn_id(tokenizer)


def stop_token_ids(tokenizer: Any, generation_config: Any = None, prompt_format: str = "auto") -> list[int]:
    """Every token id that ends a generated comment, without repeats, the end-of-turn token first: the token that
    ends a completion in `prompt_format` (`completion_end_id`: the chat template's end-of-turn token, or the EOS for
    plain), all of `generation_config.eos_token_id` (an int or a list, as transformers' `GenerationConfig` allows;
    None or a missing config adds nothing) and the tokenizer's EOS.

    Example: a Llama-3-style chat (`<|eot_id|>` ends a turn, EOS `<|end_of_text|>`, `generation_config.json` lists
    both) gives `[<|eot_id|>, <|end_of_text|>]`, and in the plain format `[<|end_of_text|>, <|eot_id|>]`. Raises
    ConfigError('prompt_format') / VrpError as `completion_end_id` does.
    """
    ids = [completion_end_id(tokenizer, prompt_format)] + _eos_list(getattr(generation_config, "eos_token_id", None))
    ids += _eos_list(tokenizer.eos_token_id)
    return list(dict.fromkeys(ids))


def head_boundary(tokenizer: Any, ids: list[int], k: int, text: str | None = None) -> int:
    """The largest `j <= k` such that `ids[:j]` ends on a character boundary.

    Byte-level BPE (GPT-2, SmolLM2, Llama-3) and SentencePiece byte fallback (LLaMA-2, Gemma) split a multi-byte
    UTF-8 character (CJK, emoji) over several tokens, and decoding only some of them gives U+FFFD. A cut is on a
    boundary when the decoded prefix is a prefix of the decoded whole (`text`, given to save a decode); a character
    has at most 4 bytes, so at most 3 tokens are given back.
    """
    k = max(0, min(k, len(ids)))
    if k in (0, len(ids)):
        return k
    whole = text if text is not None else _decode(tokenizer, ids)
    for j in range(k, max(k - 4, 0), -1):
        if whole.startswith(_decode(tokenizer, ids[:j])):
            return j
    return max(k - 4, 0)


def tail_boundary(tokenizer: Any, ids: list[int], start: int, text: str | None = None) -> int:
    """The smallest `j >= start` such that `ids[j:]` starts on a character boundary (see `head_boundary`)."""
    start = max(0, min(start, len(ids)))
    if start in (0, len(ids)):
        return start
    whole = text if text is not None else _decode(tokenizer, ids)
    for j in range(start, min(start + 4, len(ids))):
        if whole.endswith(_decode(tokenizer, ids[j:])):
            return j
    return min(start + 4, len(ids))


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


ELLIPSIS = " ... "


def _truncated_text(tokenizer: Any, ids: list[int], budget: int, strategy: str) -> str:
    """Decode the kept part of transcript `ids` (budget in tokens), cut on character boundaries; `head_tail` joins
    start and end with ' ... '."""
    whole = _decode(tokenizer, ids)
    if strategy == "head" or budget < 8:
        return _decode(tokenizer, ids[:head_boundary(tokenizer, ids, budget, whole)])
    budget -= len(_ids(tokenizer, ELLIPSIS))
    head = (budget + 1) // 2
    tail = tail_boundary(tokenizer, ids, len(ids) - (budget - head), whole)
    return (_decode(tokenizer, ids[:head_boundary(tokenizer, ids, head, whole)]) + ELLIPSIS
            + _decode(tokenizer, ids[tail:]))


def build_prompt_ids(tokenizer: Any, title: str, transcript: str, cfg: PromptConfig) -> list[int]:
    """Render and tokenize the prompt of one video, truncating the transcript so the prompt fits the budget.

    Returns prompt token ids, length <= `cfg.max_prompt_tokens` (tokens). The transcript is tokenized once,
    cut with `cfg.truncation` between two characters (`head_boundary`, `tail_boundary`), decoded and re-rendered;
    a second pass trims further if re-tokenization at the cut grew the prompt. The system prompt is a system message,
    or opens the user message when the template has no system role (`chat_format`); `cfg.prompt_format` plain uses
    the plain layout instead (module docstring). Raises ConfigError('max_prompt_tokens') if the title and template
    alone exceed the budget (or the transcript cannot be cut to fit), VrpError naming the model when its chat template
    is unusable, ConfigError('prompt_format') when the format does not suit the tokenizer.
    """
    return _fit_prompt(tokenizer, title, transcript, cfg)[0]


def fitted_transcript(tokenizer: Any, title: str, transcript: str, cfg: PromptConfig) -> str:
    """The transcript as `build_prompt_ids` renders it: `transcript` when the prompt fits `cfg.max_prompt_tokens`,
    else its cut (`cfg.truncation`, on character boundaries). `prompt_text(tokenizer, title, <this>, cfg)` is then the
    text whose tokens (without special tokens added) are `build_prompt_ids(tokenizer, title, transcript, cfg)`: the
    exact prompt another program must send (`vrp generate --print-prompt`, `vrp export`). Raises as
    `build_prompt_ids`."""
    return _fit_prompt(tokenizer, title, transcript, cfg)[1]


def _fit_prompt(tokenizer: Any, title: str, transcript: str, cfg: PromptConfig) -> tuple[list[int], str]:
    """`(prompt ids, transcript text rendered)`: the work of `build_prompt_ids` (see there)."""
    overhead = len(_prompt_ids(tokenizer, cfg, title, ""))
    budget = cfg.max_prompt_tokens - overhead
    if budget < 1:
        layout = "chat template" if resolve_prompt_format(tokenizer, cfg.prompt_format) == "chat" else "plain layout"
        raise ConfigError("max_prompt_tokens", f"the title and {layout} take {overhead} tokens, more than the "
                                               f"prompt budget of {cfg.max_prompt_tokens}; raise it or shorten the "
                                               f"title {title[:60]!r}")
    t_ids = _ids(tokenizer, transcript.strip())
    for _ in range(4):
        text = _truncated_text(tokenizer, t_ids, budget, cfg.truncation) if len(t_ids) > budget else transcript
        ids = _prompt_ids(tokenizer, cfg, title, text)
        if len(ids) <= cfg.max_prompt_tokens:
            return ids, text
        budget -= len(ids) - cfg.max_prompt_tokens
    raise ConfigError("max_prompt_tokens", f"could not fit the transcript of {title[:60]!r} into the prompt budget of "
                                           f"{cfg.max_prompt_tokens} tokens")


def video_prompt_ids(tokenizer: Any, video: Video, cfg: PromptConfig, transcript: str | None = None) -> list[int]:
    """`build_prompt_ids` of `video` (its title and `transcript`, by default its own), with the video's id in front
    of the message of any error it raises (`video 'ID': ...`; a ConfigError keeps its field), so that one video whose
    title does not fit the budget is named among a dataset's."""
    try:
        return build_prompt_ids(tokenizer, video.title, video.transcript if transcript is None else transcript, cfg)
    except ConfigError as e:
        raise ConfigError(e.field, f"video {video.video_id!r}: {e.message}") from None
    except VrpError as e:
        raise VrpError(f"video {video.video_id!r}: {e}") from None


def no_video_prompt_ids(tokenizer: Any, cfg: PromptConfig) -> list[int]:
    """The prompt of no video: the same prompt (in `cfg.prompt_format`) with an empty title and an empty transcript
    (one prompt for every video). Context-aware decoding (`decoding`, preset `cad`) contrasts it with a video's prompt, and PMI scoring
    (`rerank`, `vrp evaluate`) divides by a comment's likelihood under it. Raises VrpError as `build_prompt_ids`."""
    return build_prompt_ids(tokenizer, "", "", cfg)


def build_completion_ids(tokenizer: Any, comment: str, cfg: PromptConfig) -> list[int]:
    """Token ids of one comment as the assistant's turn: comment tokens then the end-of-turn token.

    The text is what the chat template writes after the generation prompt, cut before the template's end-of-turn
    token (`end_of_turn_id`: `<|im_end|>`, `<|eot_id|>`, ... even when the tokenizer's EOS is another token;
    anything the template writes after it, such as a newline or an EOS, is not trained). In the plain format
    (`cfg.prompt_format`) the text is the comment itself and the end token is the tokenizer's EOS. Comments longer than
    `cfg.max_comment_tokens` are cut to at most that many tokens, on a character boundary (`head_boundary`), and
    the end-of-turn token is appended, so it is always the last label even when the tokenizer's pad token (or, plain,
    its BOS) equals it. Raises VrpError on an empty comment, or naming the model when the template cannot render a
    reply or the format does not suit the tokenizer (ConfigError('prompt_format')).
    """
    comment = comment.strip()
    if not comment:
        raise VrpError("empty comment")
    if resolve_prompt_format(tokenizer, cfg.prompt_format) == "plain":
        ids, eot = _ids(tokenizer, comment), plain_eos_id(tokenizer)
    else:
        ids, eot = _chat_completion_ids(tokenizer, comment), end_of_turn_id(tokenizer)
    if eot in ids:
        ids = ids[: ids.index(eot)]
    if len(ids) > cfg.max_comment_tokens:
        ids = ids[: head_boundary(tokenizer, ids, cfg.max_comment_tokens)]
    return ids + [eot]


def _chat_completion_ids(tokenizer: Any, comment: str) -> list[int]:
    """Token ids of what the chat template writes after the generation prompt for an assistant reply `comment`."""
    msgs = [{"role": "user", "content": "x"}]
    prompt = _render(tokenizer, msgs, True)
    full = _render(tokenizer, msgs + [{"role": "assistant", "content": comment}], False)
    if not full.startswith(prompt):
        raise VrpError(f"model {_model_name(tokenizer)!r}: its chat template renders the assistant turn in a way "
                       f"that does not extend the generation prompt; cannot separate prompt and completion")
    return _ids(tokenizer, full[len(prompt):])


def encode_video(tokenizer: Any, video: Video, cfg: PromptConfig) -> EncodedVideo:
    """Tokenize one video and all its comments. Comments that are empty after stripping are skipped.

    Raises VrpError when the video has no usable comment.
    """
    prompt_ids = video_prompt_ids(tokenizer, video, cfg)
    completions = [build_completion_ids(tokenizer, c.text, cfg) for c in video.comments if c.text.strip()]
    if not completions:
        raise VrpError(f"video {video.video_id!r} has no usable comment")
    return EncodedVideo(video_id=video.video_id, prompt_ids=prompt_ids, completions=completions)


def encode_videos(tokenizer: Any, videos: list[Video], cfg: PromptConfig) -> list[EncodedVideo]:
    """Tokenize a list of videos (see `encode_video`)."""
    return [encode_video(tokenizer, v, cfg) for v in videos]
