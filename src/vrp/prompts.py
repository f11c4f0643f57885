"""Prompt rendering with the base model's chat template, transcript truncation and completion-only labels.

Knows: how a (title, transcript) pair becomes a chat (system + user message), how the transcript is cut to a token
budget (`head` keeps the start, as the original project did; `head_tail` keeps the start and the end), and how a
comment becomes the assistant turn's token ids ending in the end-of-turn token (EOS), so that only the comment and
its end-of-turn token are trained (completion-only loss).
Does not know: batching, packing or models (see `packing`, `train`).

Tokenization rule (no double BOS): the chat template already writes any BOS it wants, so the rendered text is
tokenized with `add_special_tokens=False`. The prompt is the template rendered with `add_generation_prompt=True`;
the completion is what the full chat adds after it, cut right after the first end-of-turn token. Prompt and
completion are tokenized separately, exactly as generation sees them (prompt ids in, completion ids out).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vrp.errors import VrpError
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
                                                                    "(system + title + transcript + template)"})
    truncation: str = field(default="head", metadata={"help": "transcript truncation: head (keep the start, as "
                                                               "the original project) or head_tail (start and end)"})
    system_prompt: str = field(default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "system message of the chat"})
    max_comment_tokens: int = field(default=128, metadata={"help": "longer comments are cut to this many tokens "
                                                                    "(the end-of-turn token is kept)"})

    def __post_init__(self) -> None:
        import dataclasses

        from vrp.options import coerce_values

        for k, v in coerce_values(type(self), dataclasses.asdict(self)).items():
            setattr(self, k, v)
        if self.truncation not in TRUNCATION_STRATEGIES:
            raise VrpError(f"--truncation: unknown strategy {self.truncation!r}; choose from {TRUNCATION_STRATEGIES}")
        if self.max_prompt_tokens < 16:
            raise VrpError(f"--max-prompt-tokens must be at least 16, got {self.max_prompt_tokens}")
        if self.max_comment_tokens < 1:
            raise VrpError(f"--max-comment-tokens must be at least 1, got {self.max_comment_tokens}")


@dataclass
class EncodedVideo:
    """One video tokenized for training or scoring.

    prompt_ids: (prompt_len,) token ids of the rendered prompt, ending with the assistant header.
    completions: one list of token ids per comment, each ending with the end-of-turn (EOS) token.
    """

    video_id: str
    prompt_ids: list[int]
    completions: list[list[int]]


def user_message(title: str, transcript: str) -> str:
    """The user turn's text for a video."""
    title = title.strip()
    head = f"Title: {title}\n" if title else ""
    return f"{head}Transcript: {transcript.strip()}"


def _messages(cfg: PromptConfig, title: str, transcript: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": cfg.system_prompt},
            {"role": "user", "content": user_message(title, transcript)}]


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise VrpError("the tokenizer has no chat template; use an instruct/chat model or a tokenizer with "
                       "`chat_template` set")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def end_of_turn_id(tokenizer: Any) -> int:
    """The token id that ends an assistant turn: the tokenizer's EOS (`<|im_end|>` for SmolLM2, `</s>` for
    LLaMA-2). Raises VrpError when the tokenizer has none."""
    if tokenizer.eos_token_id is None:
        raise VrpError("the tokenizer has no EOS token; cannot mark where a comment ends")
    return int(tokenizer.eos_token_id)


ELLIPSIS = " ... "


def _truncated_text(tokenizer: Any, ids: list[int], budget: int, strategy: str) -> str:
    """Decode the kept part of transcript `ids` (budget in tokens); `head_tail` joins start and end with ' ... '."""
    if strategy == "head" or budget < 8:
        return tokenizer.decode(ids[:budget], skip_special_tokens=True)
    budget -= len(_ids(tokenizer, ELLIPSIS))
    head = (budget + 1) // 2
    return (tokenizer.decode(ids[:head], skip_special_tokens=True) + ELLIPSIS
            + tokenizer.decode(ids[len(ids) - (budget - head):], skip_special_tokens=True))


def build_prompt_ids(tokenizer: Any, title: str, transcript: str, cfg: PromptConfig) -> list[int]:
    """Render and tokenize the prompt of one video, truncating the transcript so the prompt fits the budget.

    Returns prompt token ids, length <= `cfg.max_prompt_tokens` (tokens). The transcript is tokenized once,
    cut with `cfg.truncation`, decoded and re-rendered; a second pass trims further if re-tokenization at the
    cut grew the prompt. Raises VrpError if the title and template alone exceed the budget.
    """
    overhead = len(_ids(tokenizer, _render(tokenizer, _messages(cfg, title, ""), True)))
    budget = cfg.max_prompt_tokens - overhead
    if budget < 1:
        raise VrpError(f"the title and chat template take {overhead} tokens, more than --max-prompt-tokens="
                       f"{cfg.max_prompt_tokens}; raise the budget or shorten the title {title[:60]!r}")
    t_ids = _ids(tokenizer, transcript.strip())
    for _ in range(4):
        text = _truncated_text(tokenizer, t_ids, budget, cfg.truncation) if len(t_ids) > budget else transcript
        ids = _ids(tokenizer, _render(tokenizer, _messages(cfg, title, text), True))
        if len(ids) <= cfg.max_prompt_tokens:
            return ids
        budget -= len(ids) - cfg.max_prompt_tokens
    raise VrpError(f"could not fit the transcript of {title[:60]!r} into {cfg.max_prompt_tokens} tokens")


def build_completion_ids(tokenizer: Any, comment: str, cfg: PromptConfig) -> list[int]:
    """Token ids of one comment as the assistant's turn: comment tokens then the end-of-turn token.

    The text is what the chat template writes after the generation prompt, cut after the end-of-turn token
    (anything the template writes after it, such as a newline, is not trained). Comments longer than
    `cfg.max_comment_tokens` are cut to that many tokens and the end-of-turn token is appended, so EOS is always
    the last label even when the tokenizer's pad token equals EOS. Raises VrpError on an empty comment.
    """
    comment = comment.strip()
    if not comment:
        raise VrpError("empty comment")
    msgs = [{"role": "user", "content": "x"}]
    prompt = _render(tokenizer, msgs, True)
    full = _render(tokenizer, msgs + [{"role": "assistant", "content": comment}], False)
    if not full.startswith(prompt):
        raise VrpError("the chat template renders the assistant turn in a way that does not extend the "
                       "generation prompt; cannot separate prompt and completion")
    ids = _ids(tokenizer, full[len(prompt):])
    eot = end_of_turn_id(tokenizer)
    if eot in ids:
        ids = ids[: ids.index(eot)]
    ids = ids[: cfg.max_comment_tokens]
    return ids + [eot]


def encode_video(tokenizer: Any, video: Video, cfg: PromptConfig) -> EncodedVideo:
    """Tokenize one video and all its comments. Comments that are empty after stripping are skipped.

    Raises VrpError when the video has no usable comment.
    """
    try:
        prompt_ids = build_prompt_ids(tokenizer, video.title, video.transcript, cfg)
    except VrpError as e:
        raise VrpError(f"video {video.video_id!r}: {e}") from None
    completions = [build_completion_ids(tokenizer, c.text, cfg) for c in video.comments if c.text.strip()]
    if not completions:
        raise VrpError(f"video {video.video_id!r} has no usable comment")
    return EncodedVideo(video_id=video.video_id, prompt_ids=prompt_ids, completions=completions)


def encode_videos(tokenizer: Any, videos: list[Video], cfg: PromptConfig) -> list[EncodedVideo]:
    """Tokenize a list of videos (see `encode_video`)."""
    return [encode_video(tokenizer, v, cfg) for v in videos]
