"""Chat-template rendering, truncation budgets and completion-only labels with the real SmolLM2 tokenizer."""
from __future__ import annotations

import pytest

from vrp.errors import VrpError
from vrp.prompts import (
    PromptConfig,
    build_completion_ids,
    build_prompt_ids,
    encode_video,
)
from vrp.records import Comment, Video


def test_prompt_uses_chat_template_with_single_bos(tokenizer) -> None:
    ids = build_prompt_ids(tokenizer, "My title", "hello world", PromptConfig())
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a viewer")
    assert "<|im_start|>user\nTitle: My title\nTranscript: hello world<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    # SmolLM2's BOS is <|im_start|>: exactly one per turn (3 turns), never a doubled BOS at the start
    assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 3


def test_completion_is_comment_plus_eos_even_though_pad_equals_eos(tokenizer) -> None:
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the classic "never stops" trap
    ids = build_completion_ids(tokenizer, "  great video 😀 ", PromptConfig())
    assert ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.eos_token_id) == 1
    assert tokenizer.decode(ids[:-1]) == "great video 😀"
    assert tokenizer.bos_token_id not in ids


def test_long_comment_is_cut_but_keeps_eos(tokenizer) -> None:
    ids = build_completion_ids(tokenizer, "word " * 500, PromptConfig(max_comment_tokens=10))
    assert len(ids) == 11 and ids[-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("strategy", ["head", "head_tail"])
def test_truncation_fits_budget(tokenizer, strategy: str) -> None:
    transcript = " ".join(f"w{i}" for i in range(3000))
    cfg = PromptConfig(max_prompt_tokens=120, truncation=strategy)
    ids = build_prompt_ids(tokenizer, "T", transcript, cfg)
    assert 100 <= len(ids) <= 120
    text = tokenizer.decode(ids)
    assert "w0 w1 w2" in text
    assert ("w2999" in text) == (strategy == "head_tail")
    assert text.endswith("<|im_start|>assistant\n")


def test_short_transcript_is_not_changed(tokenizer) -> None:
    ids = build_prompt_ids(tokenizer, "", "just this", PromptConfig(max_prompt_tokens=1024))
    assert "Transcript: just this<|im_end|>" in tokenizer.decode(ids)
    assert "Title:" not in tokenizer.decode(ids)


def test_errors(tokenizer) -> None:
    with pytest.raises(VrpError, match="--truncation"):
        PromptConfig(truncation="middle")
    with pytest.raises(VrpError, match="more than --max-prompt-tokens"):
        build_prompt_ids(tokenizer, "long title " * 50, "x", PromptConfig(max_prompt_tokens=40))
    with pytest.raises(VrpError, match="no usable comment"):
        encode_video(tokenizer, Video("v1", "t", "x", [Comment("  ")]), PromptConfig())


def test_encode_video(tokenizer) -> None:
    ev = encode_video(tokenizer, Video("v1", "t", "some words", [Comment("a"), Comment("b c")]), PromptConfig())
    assert ev.video_id == "v1" and len(ev.completions) == 2
    assert [tokenizer.decode(c[:-1]) for c in ev.completions] == ["a", "b c"]
