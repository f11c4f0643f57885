"""Prompt formats (`vrp.prompt_format`): the plain layout of base models, `auto`, stop tokens, and a run dir that records
its format so that generation renders the prompts it was trained on.

Base tokenizers here are the real SmolLM2 tokenizer with its chat template removed (EOS `<|im_end|>` = 2, also its
pad token), optionally made to add its BOS (as Llama, Mistral and Gemma tokenizers do) or given EOS as BOS too.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import one_line_error, tiny_llama, write_splits

from vrp.errors import ConfigError
from vrp.prompt_format import bos_prefix, resolve_prompt_config, resolve_prompt_format
from vrp.prompts import (
    PromptConfig,
    build_completion_ids,
    build_prompt_ids,
    encode_video,
    no_video_prompt_ids,
    prompt_text,
    stop_token_ids,
)
from vrp.records import Comment, Video

PLAIN = PromptConfig(prompt_format="plain")
LAYOUT = "Title: My title\nTranscript: hello world\nComment:\n"


def base_tokenizer(tokenizer_dir: Path, add_bos: bool = False, bos_is_eos: bool = False) -> Any:
    """A fresh SmolLM2 tokenizer without chat template (a base model's); `add_bos`: it adds its BOS to a text;
    `bos_is_eos`: its BOS is its EOS (and its pad) token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.chat_template = None
    if bos_is_eos:
        tok.bos_token = tok.eos_token
    if add_bos:
        tok.add_bos_token = True
    return tok


def test_plain_prompt_text_and_ids(tokenizer_dir: Path) -> None:
    tok = base_tokenizer(tokenizer_dir)
    ids = build_prompt_ids(tok, "My title", "hello world", PLAIN)
    assert tok.convert_ids_to_tokens(ids) == ["Title", ":", "ĠMy", "Ġtitle", "Ċ", "Trans", "cript", ":", "Ġhello",
                                              "Ġworld", "Ċ", "Comment", ":", "Ċ"]
    assert tok.decode(ids) == LAYOUT == prompt_text(tok, "My title", "hello world", PLAIN)
    assert tok.decode(no_video_prompt_ids(tok, PLAIN)) == "Transcript: \nComment:\n"   # PMI / cad: no title line
    comp = build_completion_ids(tok, "  great video ", PLAIN)
    assert tok.convert_ids_to_tokens(comp) == ["great", "Ġvideo", "<|im_end|>"]     # the comment, then EOS
    # a tokenizer that adds its BOS gets exactly one, in front; the completion never has one
    bos = base_tokenizer(tokenizer_dir, add_bos=True)
    assert bos("x")["input_ids"][0] == bos.bos_token_id and bos_prefix(bos) == [bos.bos_token_id]
    with_bos = build_prompt_ids(bos, "My title", "hello world", PLAIN)
    assert with_bos == [bos.bos_token_id] + ids and with_bos.count(bos.bos_token_id) == 1
    assert prompt_text(bos, "My title", "hello world", PLAIN) == "<|im_start|>" + LAYOUT
    assert bos(prompt_text(bos, "My title", "hello world", PLAIN), add_special_tokens=False)["input_ids"] == with_bos
    assert build_completion_ids(bos, "great video", PLAIN) == comp[-3:]


def test_plain_also_works_for_a_chat_model_and_chat_is_unchanged(tokenizer) -> None:
    assert tokenizer.decode(build_prompt_ids(tokenizer, "My title", "hello world", PLAIN)) == LAYOUT
    chat = build_prompt_ids(tokenizer, "My title", "hello world", PromptConfig(prompt_format="chat"))
    assert chat == build_prompt_ids(tokenizer, "My title", "hello world", PromptConfig())  # the Python default
    assert chat == build_prompt_ids(tokenizer, "My title", "hello world", PromptConfig(prompt_format="auto"))
    assert tokenizer.decode(chat).endswith("<|im_start|>assistant\n")


def test_auto_picks_chat_with_a_template_and_plain_without_and_says_so(tokenizer, tokenizer_dir: Path,
                                                                        capsys) -> None:
    base = base_tokenizer(tokenizer_dir)
    assert resolve_prompt_format(tokenizer, "auto") == "chat" and resolve_prompt_format(base, "auto") == "plain"
    auto = PromptConfig(prompt_format="auto")
    assert resolve_prompt_config(tokenizer, auto).prompt_format == "chat"
    assert resolve_prompt_config(base, auto).prompt_format == "plain"
    err = capsys.readouterr().err.splitlines()
    assert err == [f"prompt format: chat (auto: the tokenizer of model {str(tokenizer_dir)!r} has a chat template)",
                   f"prompt format: plain (auto: the tokenizer of model {str(tokenizer_dir)!r} has no chat template)"]
    assert resolve_prompt_config(base, PLAIN) is PLAIN and capsys.readouterr().err == ""   # explicit: no notice
    assert build_prompt_ids(base, "My title", "hello world", auto) == build_prompt_ids(base, "My title",
                                                                                       "hello world", PLAIN)


def test_formats_a_tokenizer_cannot_use_are_one_line_errors_naming_the_model(tokenizer_dir: Path) -> None:
    base = base_tokenizer(tokenizer_dir)
    with pytest.raises(ConfigError, match=r"^prompt_format: model '.*': the tokenizer has no chat template, which "
                                          r"prompt format chat needs; set `prompt_format` plain") as e:
        build_prompt_ids(base, "t", "x", PromptConfig(prompt_format="chat"))
    assert str(tokenizer_dir) in e.value.message and "\n" not in str(e.value)
    no_eos = base_tokenizer(tokenizer_dir)
    no_eos.eos_token = None
    assert no_eos.eos_token_id is None
    for fmt in ("plain", "auto"):
        with pytest.raises(ConfigError, match=r"the tokenizer has no EOS token, which the plain prompt format needs"):
            build_completion_ids(no_eos, "yum", PromptConfig(prompt_format=fmt))
    with pytest.raises(ConfigError, match=r"^prompt_format: choose from auto, chat, plain, got 'xml'"):
        PromptConfig(prompt_format="xml")


@pytest.mark.parametrize("strategy", ["head", "head_tail"])
def test_plain_truncation_fits_the_budget(tokenizer_dir: Path, strategy: str) -> None:
    tok = base_tokenizer(tokenizer_dir, add_bos=True)
    transcript = " ".join(f"w{i}" for i in range(3000))
    cfg = PromptConfig(max_prompt_tokens=120, truncation=strategy, prompt_format="plain")
    ids = build_prompt_ids(tok, "T", transcript, cfg)
    assert 110 <= len(ids) <= 120 and ids[0] == tok.bos_token_id
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>Title: T\nTranscript: w0 w1 w2") and text.endswith("\nComment:\n")
    assert ("w2999" in text) == (strategy == "head_tail") and (" ... " in text) == (strategy == "head_tail")
    with pytest.raises(ConfigError, match=r"^max_prompt_tokens: the title and plain layout take \d+ tokens, more "
                                          r"than the prompt budget of 20"):
        build_prompt_ids(tok, "long title " * 20, "x", PromptConfig(max_prompt_tokens=20, prompt_format="plain"))


def test_stop_tokens_of_each_format(tokenizer, tokenizer_dir: Path) -> None:
    from transformers import GenerationConfig

    tok = base_tokenizer(tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<|eot_id|>"]})
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert stop_token_ids(tok, None, "plain") == stop_token_ids(tok) == [2]               # EOS
    assert stop_token_ids(tok, GenerationConfig(eos_token_id=[eot, 2]), "plain") == [2, eot]  # + generation_config's
    assert stop_token_ids(tokenizer, GenerationConfig(eos_token_id=[0, 2]), "plain") == [2, 0]
    with pytest.raises(ConfigError, match="has no chat template"):
        stop_token_ids(tok, None, "chat")


def test_eos_equal_to_bos_and_pad_stays_the_last_trained_label(tokenizer_dir: Path) -> None:
    from vrp.packing import collate, make_rows

    tok = base_tokenizer(tokenizer_dir, add_bos=True, bos_is_eos=True)
    eos = tok.eos_token_id
    assert tok.bos_token_id == eos == tok.pad_token_id
    ev = encode_video(tok, Video("v", "Bread", "today we bake bread", [Comment("yum"), Comment("so good")]), PLAIN)
    assert ev.prompt_ids[0] == eos and ev.prompt_ids.count(eos) == 1          # the BOS, once
    assert [c[-1] for c in ev.completions] == [eos, eos]
    for mode in ("shared_prefix", "none"):
        batch = collate(make_rows([ev], mode, 256), tok.pad_token_id, mode)
        targets = batch["target_ids"].tolist()
        assert targets == [t for c in ev.completions for t in c]               # EOS (= pad = BOS) kept as a target
        assert targets.count(eos) == 2


@pytest.mark.slow
def test_a_model_trained_on_plain_stops_at_eos_in_generation_scoring_and_serving(tokenizer_dir: Path) -> None:
    """Trained with vrp's own batches and loss on a tokenizer whose EOS is also its BOS and pad, the model learns to
    end 'Great video' with EOS (a model whose EOS was masked as padding would run on to the token budget)."""
    from vrp.decoding import generate_comments
    from vrp.loss import loss_sum
    from vrp.packing import collate, make_rows
    from vrp.scoring import score_candidates
    from vrp.serve.worker import GenerationWorker, Job

    tok = base_tokenizer(tokenizer_dir, add_bos=True, bos_is_eos=True)
    ev = encode_video(tok, Video("v", "Bread", "today we bake bread", [Comment("Great video")]), PLAIN)
    batch = collate(make_rows([ev], "none", 256), tok.pad_token_id, "none")
    model = tiny_llama(tok).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(60):
        s, n = loss_sum(model, batch)
        opt.zero_grad()
        (s / n).backward()
        opt.step()
    model.eval()
    model.generation_config.eos_token_id = None            # only the tokenizer's EOS can stop it
    out = generate_comments(model, tok, ev.prompt_ids, "greedy", 1, max_new_tokens=20, prompt_format="plain")[0]
    assert (out.text, out.tokens, out.finished, out.token_ids[-1]) == ("Great video", 3, True, tok.eos_token_id)
    (score, n), = score_candidates(model, ev.prompt_ids, [ev.completions[0]])
    assert n == 3 and score == pytest.approx(out.logprob, abs=1e-3)
    worker = GenerationWorker(model, tok, PLAIN, queue_size=1)
    try:
        res = worker.submit(Job(title="Bread", preset="greedy", num_comments=1, max_new_tokens=20,
                                transcript="today we bake bread"), threading.Event()).result(timeout=60)
    finally:
        worker.close()
    assert [(c.text, c.finished) for c in res.comments] == [("Great video", True)]


def test_tier_marker_follows_the_plain_cue(tokenizer_dir: Path) -> None:
    from vrp.tiers import encode_tiered_video, prompt_with_tier

    tok = base_tokenizer(tokenizer_dir)
    video = Video("v", "Bread", "today", [Comment("a", like_count=9), Comment("b", like_count=0)])
    enc = encode_tiered_video(tok, video, PLAIN, "likes")
    assert tok.decode(enc.prompt_ids + enc.contexts[0] + enc.completions[0]) == (
        "Title: Bread\nTranscript: today\nComment:\n[most liked comment]\na<|im_end|>")
    assert tok.decode(prompt_with_tier(tok, enc.prompt_ids, "low")).endswith("Comment:\n[least liked comment]\n")


def test_a_run_dir_without_a_recorded_format_is_chat(tmp_path: Path) -> None:
    from vrp.rundir import RunDir

    (tmp_path / "config.yaml").write_text("model: smollm2-135m\nmax_prompt_tokens: 300\n")
    assert RunDir(tmp_path).prompt_config().prompt_format == "chat"
    (tmp_path / "config.yaml").write_text("model: smollm2-135m\nprompt_format: plain\n")
    assert RunDir(tmp_path).prompt_config(200).prompt_format == "plain"


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A tiny random Llama saved with a tokenizer that has no chat template (a base model checkpoint)."""
    out = tmp_path_factory.mktemp("tiny-base")
    tok = base_tokenizer(tokenizer_dir)
    model = tiny_llama(tok)
    model.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.e2e
def test_train_records_plain_and_generate_renders_it(tmp_path: Path, base_model_dir: Path, tiny_model_dir: Path,
                                                     capsys) -> None:
    import pandas as pd
    import yaml
    from transformers import AutoTokenizer

    from vrp.cli import main

    videos = [Video(f"v{i}", f"video {i}", f"we talk about thing {i} " * 5,
                    [Comment(f"nice {i}"), Comment(f"great {i}")]) for i in range(3)]
    data = write_splits(tmp_path / "ds", videos[:2], videos[2:])
    args = ["train", "--data", str(data), "--max-steps", "1", "--precision", "fp32", "--max-prompt-tokens", "64",
            "--max-row-tokens", "256", "--lora-r", "2", "--curve-videos", "1"]
    assert main([*args, "--out", str(tmp_path / "run"), "--model", str(base_model_dir)]) == 0
    assert "prompt format: plain (auto: the tokenizer of model" in capsys.readouterr().err
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["prompt_format"] == "plain"
    base = AutoTokenizer.from_pretrained(base_model_dir)
    assert not base.chat_template
    # a chat model trained with --prompt-format plain: generate renders plain, not the chat template it also has
    assert main([*args, "--out", str(tmp_path / "chat-plain"), "--model", str(tiny_model_dir), "--prompt-format",
                 "plain"]) == 0
    assert "prompt format:" not in capsys.readouterr().err                      # explicit: nothing to announce
    chat_tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for run, tok in (("run", base), ("chat-plain", chat_tok)):
        out = tmp_path / f"{run}.jsonl"
        assert main(["generate", "--run", str(tmp_path / run), "--title", "Bread", "--transcript", "we bake bread",
                     "--preset", "greedy,cad", "--max-new-tokens", "3", "--precision", "fp32", "--out",
                     str(out)]) == 0
        rows = pd.read_json(out, lines=True)
        plain_len = len(build_prompt_ids(tok, "Bread", "we bake bread", PLAIN))
        assert list(rows["prompt_tokens"]) == [plain_len, plain_len] and len(rows) == 2
    assert plain_len != len(build_prompt_ids(chat_tok, "Bread", "we bake bread", PromptConfig()))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 1


def test_train_with_a_format_the_model_cannot_render_is_one_line_and_writes_nothing(tmp_path: Path, capsys,
                                                                                     base_model_dir: Path) -> None:
    videos = [Video(f"v{i}", "t", "words " * 5, [Comment("c")]) for i in range(2)]
    data = write_splits(tmp_path / "ds", videos[:1], videos[1:])
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--model", str(base_model_dir),
            "--max-steps", "1", "--precision", "fp32", "--max-prompt-tokens", "64", "--max-row-tokens", "256"]
    one_line_error(capsys, [*args, "--prompt-format", "chat"], "error: --prompt-format: model ",
                   "has no chat template", "set --prompt-format plain")
    assert not (tmp_path / "run").exists()
    one_line_error(capsys, [*args, "--prompt-format", "xml"], "--prompt-format: choose from auto, chat, plain")
    assert not (tmp_path / "run").exists()
