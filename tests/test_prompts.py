"""Chat-template rendering, truncation budgets and completion-only labels with the real SmolLM2 tokenizer."""
from __future__ import annotations

import json

import pytest
from helpers import one_line_error

from vrp.errors import ConfigError, VrpError
from vrp.prompts import PromptConfig, build_completion_ids, build_prompt_ids, encode_video, encode_videos
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
    with pytest.raises(VrpError, match="truncation"):
        PromptConfig(truncation="middle")
    with pytest.raises(ConfigError, match=r"^max_prompt_tokens: the title and chat template take \d+ tokens, more "
                                          r"than the prompt budget of 40; raise it") as e:
        build_prompt_ids(tokenizer, "long title " * 50, "x", PromptConfig(max_prompt_tokens=40))
    assert e.value.field == "max_prompt_tokens"
    with pytest.raises(VrpError, match="no usable comment"):
        encode_video(tokenizer, Video("v1", "t", "x", [Comment("  ")]), PromptConfig())


def test_encode_video(tokenizer) -> None:
    ev = encode_video(tokenizer, Video("v1", "t", "some words", [Comment("a"), Comment("b c")]), PromptConfig())
    assert ev.video_id == "v1" and len(ev.completions) == 2
    assert [tokenizer.decode(c[:-1]) for c in ev.completions] == ["a", "b c"]


# --- cuts on character boundaries (issue 9 item 12) ------------------------------------------------------------------
JAPANESE = "今日はいい天気ですね。パンを焼きましょう。" * 12
EMOJI = "so good 😀 we bake 🍞🥖 today 🎉 " * 12


def byte_fallback_tokenizer():
    """A SentencePiece-style tokenizer as LLaMA-2's `tokenizer.json` is built (BPE with byte fallback, `▁` for
    spaces, decoder Replace + ByteFallback + Fuse + Strip) over a tiny vocabulary: every CJK character or emoji
    becomes 3-4 byte tokens `<0xE4>` ... A LLaMA-2-style chat template writes `[INST] ... [/INST]`."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for ch in "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,:!?'[]/<>0123456789\n":
        vocab.setdefault(ch, len(vocab))
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }}"
                         " [/INST]{% elif m['role'] == 'system' %}<<SYS>>{{ m['content'] }}<</SYS>>"
                         "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}")
    return tok


def kept_transcript(tok, ids: list[int], end: str) -> str:
    text = tok.decode(ids, clean_up_tokenization_spaces=False)
    return text.split("Transcript: ", 1)[1].split(end, 1)[0]


@pytest.mark.parametrize("strategy", ["head", "head_tail"])
@pytest.mark.parametrize("transcript", [JAPANESE, EMOJI], ids=["japanese", "emoji"])
@pytest.mark.parametrize("kind", ["byte-level BPE", "byte fallback"])
def test_truncation_cuts_on_a_character_boundary(tokenizer, kind: str, transcript: str, strategy: str) -> None:
    tok, end = (tokenizer, "<|im_end|>") if kind == "byte-level BPE" else (byte_fallback_tokenizer(), " [/INST]")
    t_ids = tok(transcript.strip(), add_special_tokens=False).input_ids
    overhead = len(build_prompt_ids(tok, "", "", PromptConfig()))
    naive_split = 0
    for extra in range(16, 44):
        cfg = PromptConfig(max_prompt_tokens=overhead + extra, truncation=strategy)
        ids = build_prompt_ids(tok, "", transcript, cfg)
        kept = kept_transcript(tok, ids, end)
        assert len(ids) <= cfg.max_prompt_tokens and "\ufffd" not in kept, kept
        head, _, tail = kept.partition(" ...") if strategy == "head_tail" else (kept, "", "")
        assert len(head) > 0 and transcript.startswith(head) and transcript.strip().endswith(tail.strip())
        naive_split += "\ufffd" in tok.decode(t_ids[:extra])    # cutting the token list here splits a character
    assert naive_split > 0


@pytest.mark.parametrize("kind", ["byte-level BPE", "byte fallback"])
def test_long_comment_is_cut_on_a_character_boundary(tokenizer, kind: str) -> None:
    tok = tokenizer if kind == "byte-level BPE" else byte_fallback_tokenizer()
    eot = tok.eos_token_id
    naive_split = 0
    for n in range(2, 14):
        ids = build_completion_ids(tok, EMOJI + JAPANESE, PromptConfig(max_comment_tokens=n))
        text = tok.decode(ids[:-1], clean_up_tokenization_spaces=False)
        assert ids[-1] == eot and len(ids) - 1 <= n and n - (len(ids) - 1) <= 3
        assert "\ufffd" not in text and (EMOJI + JAPANESE).startswith(text.strip())
        naive_split += "\ufffd" in tok.decode(tok(EMOJI, add_special_tokens=False).input_ids[:n])
    assert naive_split > 0


def test_a_video_whose_title_exceeds_the_budget_is_named(tokenizer) -> None:
    videos = [Video("fits", "short", "words", [Comment("a")]), Video("vid-long", "long title " * 50, "x",
                                                                     [Comment("b")])]
    with pytest.raises(ConfigError, match=r"^max_prompt_tokens: video 'vid-long': the title and chat template take") \
            as e:
        encode_videos(tokenizer, videos, PromptConfig(max_prompt_tokens=60))
    assert e.value.field == "max_prompt_tokens"  # so the CLI names --max-prompt-tokens


def test_overlong_title_names_the_video(tmp_path, capsys, tokenizer, tiny_model_dir) -> None:
    from vrp.prompts import PromptConfig, encode_video
    from vrp.records import Comment, Video

    long = Video("v-long", "long " * 300, "words", [Comment("c")])
    with pytest.raises(VrpError, match="video 'v-long': the title and chat template take"):
        encode_video(tokenizer, long, PromptConfig(max_prompt_tokens=64))
    src = tmp_path / "v.jsonl"
    src.write_text(json.dumps({"video_id": "ok", "title": "t", "transcript": "x"}) + "\n"
                   + json.dumps(long.to_json()) + "\n")
    one_line_error(capsys, ["generate", "--model", str(tiny_model_dir), "--input", str(src), "--precision", "fp32",
                            "--max-prompt-tokens", "64", "--max-new-tokens", "2", "--preset", "greedy", "--out",
                            str(tmp_path / "p.csv")], "video 'v-long'")
