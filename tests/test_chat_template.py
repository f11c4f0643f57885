"""Chat formats of models other than SmolLM2 (`vrp.chat_template`, `vrp.prompts`): end-of-turn and stop tokens taken from the chat template and
`generation_config`, and chat templates that refuse or drop a system message.

The tokenizers are the real SmolLM2 tokenizer with other models' special tokens added and a chat template written
here in the format of Llama-3, Gemma, Phi-3-mini, Mistral v0.1 and LLaMA-2 (the turn markup of each family as its
`tokenizer_config.json` renders it); the models are tiny random Llamas, some trained for a second to memorise one
reply followed by an invented user turn, so that a model that does not stop at its end-of-turn token shows it.
"""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from helpers import FORMATS, LLAMA3, chat_tokenizer

from vrp.decoding import generate_comments
from vrp.errors import VrpError
from vrp.prompts import (
    PromptConfig,
    build_completion_ids,
    build_prompt_ids,
    chat_format,
    encode_video,
    end_of_turn_id,
    stop_token_ids,
)
from vrp.records import Comment, Video


def names(tok, ids: list[int]) -> list[str]:
    return tok.convert_ids_to_tokens(ids)


@pytest.mark.parametrize("name", list(FORMATS))
def test_end_of_turn_is_what_the_template_writes_after_a_reply(tokenizer_dir: Path, name: str) -> None:
    tok = chat_tokenizer(tokenizer_dir, name)
    _, _, _, eos, eot, system_role = FORMATS[name]
    assert names(tok, [end_of_turn_id(tok)]) == [eot]
    assert chat_format(tok).system_role is system_role
    ids = build_completion_ids(tok, "Great video", PromptConfig())
    # the target ends at the end-of-turn token: nothing the template writes after it (newline, EOS) is trained
    assert ids[-1] == end_of_turn_id(tok) and ids.count(ids[-1]) == 1
    assert tok.decode(ids[:-1]).strip() == "Great video"
    assert names(tok, stop_token_ids(tok)) == list(dict.fromkeys([eot, eos]))


def test_issue_example_targets_end_at_im_end(tokenizer_dir: Path) -> None:
    tok = chat_tokenizer(tokenizer_dir, "chatml-eos-endoftext")
    ids = build_completion_ids(tok, "Great video", PromptConfig())
    assert names(tok, ids) == ["Great", "Ġvideo", "<|im_end|>"]       # was Great, Ġvideo, <|im_end|>, Ċ, <|endoftext|>


def test_stop_tokens_take_every_generation_config_eos(tokenizer_dir: Path) -> None:
    from transformers import GenerationConfig

    tok = chat_tokenizer(tokenizer_dir, "llama3")
    eot, eom, eos = tok.convert_tokens_to_ids(["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"])
    assert stop_token_ids(tok, GenerationConfig(eos_token_id=[eos, eom, eot])) == [eot, eos, eom]  # Llama-3.1 style
    assert stop_token_ids(tok, GenerationConfig(eos_token_id=eom)) == [eot, eom, eos]               # an int
    smol = chat_tokenizer(tokenizer_dir, "chatml-eos-endoftext")
    assert stop_token_ids(smol, GenerationConfig(eos_token_id=[0, 2])) == [2, 0]                    # the issue's


def memorising_model(tok, reply: str, seed: int = 0, steps: int = 120):
    """A tiny Llama trained to answer the prompt of Video('v', 'Bread', 'today we bake bread') with `reply`, its
    end-of-turn token, and then an invented user turn (what a model that is not stopped goes on to write)."""
    from helpers import tiny_llama

    cfg = PromptConfig()
    prompt = build_prompt_ids(tok, "Bread", "today we bake bread", cfg)
    invented = tok.apply_chat_template([{"role": "user", "content": "thanks a lot"}], tokenize=False)
    seq = prompt + build_completion_ids(tok, reply, cfg) + tok(invented, add_special_tokens=False).input_ids
    model = tiny_llama(tok, seed=seed, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    x = torch.tensor([seq])
    labels = x.clone()
    labels[0, :len(prompt)] = -100
    for _ in range(steps):
        loss = model(input_ids=x, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), prompt


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama3", "chatml-eos-endoftext"])
def test_generation_scoring_and_serving_stop_at_the_end_of_turn(tokenizer_dir: Path, tmp_path: Path,
                                                                  name: str) -> None:
    """Saved like a Hub checkpoint (generation_config.json lists only the EOS `<|end_of_text|>` / `<|endoftext|>`),
    loaded by vrp, the model stops after 'Great video' + its end-of-turn token, which is not the tokenizer's EOS."""
    from vrp.model import load_base_model
    from vrp.precision import Precision
    from vrp.scoring import score_candidates
    from vrp.serve.worker import GenerationWorker, Job

    tok = chat_tokenizer(tokenizer_dir, name)
    model, prompt = memorising_model(tok, "Great video")
    model.generation_config.eos_token_id = [tok.eos_token_id]
    model.save_pretrained(tmp_path)
    model.generation_config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, tok = load_base_model(str(tmp_path), Precision("cpu", torch.float32, None))
    assert model.generation_config.eos_token_id == [tok.eos_token_id] != [end_of_turn_id(tok)]
    for preset, k in (("greedy", 1), ("beam", 2)):
        out = generate_comments(model, tok, prompt, preset, k, max_new_tokens=40)
        assert (out[0].text, out[0].tokens, out[0].finished) == ("Great video", 3, True)
    # scoring the same completion (training targets) gives the generated log-probability: both end at the same token
    (score, n), = score_candidates(model, prompt, [build_completion_ids(tok, "Great video", PromptConfig())])
    assert n == 3 and score == pytest.approx(out[0].logprob, abs=1e-3)
    worker = GenerationWorker(model, tok, PromptConfig(), queue_size=1)
    try:
        res = worker.submit(Job(title="Bread", preset="greedy", num_comments=1, max_new_tokens=40,
                                transcript="today we bake bread"), threading.Event()).result(timeout=60)
    finally:
        worker.close()
    assert [(c.text, c.finished) for c in res.comments] == [("Great video", True)]


@pytest.mark.slow
def test_unfinished_comment_drops_a_cut_character(tokenizer_dir: Path) -> None:
    tok = chat_tokenizer(tokenizer_dir, "llama3")
    model, prompt = memorising_model(tok, "yum 😀😀😀", steps=150)
    full = generate_comments(model, tok, prompt, "greedy", 1, max_new_tokens=40)[0]
    assert (full.text, full.finished) == ("yum 😀😀😀", True)
    ids = tok("yum 😀😀😀", add_special_tokens=False).input_ids
    cut = next(k for k in range(1, len(ids)) if "\ufffd" in tok.decode(ids[:k]))   # the budget ends mid-emoji
    out = generate_comments(model, tok, prompt, "greedy", 1, max_new_tokens=cut)[0]
    assert out.tokens == cut and not out.finished
    assert out.text == tok.decode(ids[:cut]).rstrip("\ufffd").strip() and "\ufffd" not in out.text


@pytest.mark.parametrize("name", ["gemma", "mistral", "phi3"])
def test_system_text_is_folded_into_the_user_turn(tokenizer_dir: Path, tokenizer, name: str) -> None:
    """Gemma raises 'System role not supported', Mistral v0.1 'Conversation roles must alternate', Phi-3-mini's first
    template drops the system message without a word: all three get the system text at the top of the user turn."""
    from helpers import tiny_llama

    from vrp.generate.config import GenerateConfig
    from vrp.generate.run import predict

    tok = chat_tokenizer(tokenizer_dir, name)
    cfg = PromptConfig(system_prompt="Write as a baker.")
    text = tok.decode(build_prompt_ids(tok, "Bread", "today we bake bread", cfg))
    assert "Write as a baker.\n\nTitle: Bread\nTranscript: today we bake bread" in text
    assert text.count("Write as a baker.") == 1
    ev = encode_video(tok, Video("v", "Bread", "today we bake bread", [Comment("yum")]), cfg)   # training
    assert tok.decode(ev.prompt_ids) == text and ev.completions[0][-1] == end_of_turn_id(tok)
    rows = predict([Video("v", "Bread", "today we bake bread")], GenerateConfig(preset="greedy", max_new_tokens=3),
                   progress=False, loaded=(tiny_llama(tok), tok, {"model": name, "adapter": None}))  # inference
    assert len(rows) == 1 and rows[0]["prompt_tokens"] == len(build_prompt_ids(tok, "Bread", "today we bake bread",
                                                                                PromptConfig()))
    # a template that renders a system message keeps it as its own turn
    smol = tokenizer.decode(build_prompt_ids(tokenizer, "Bread", "x", cfg))
    assert "<|im_start|>system\nWrite as a baker.<|im_end|>" in smol


def test_template_is_probed_once_per_tokenizer(tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = chat_tokenizer(tokenizer_dir, "gemma")
    calls: list[int] = []
    real = tok.apply_chat_template

    def counting(messages, **kw):
        calls.append(sum(m["role"] == "system" for m in messages))
        return real(messages, **kw)

    monkeypatch.setattr(tok, "apply_chat_template", counting)
    for _ in range(3):
        build_prompt_ids(tok, "Bread", "today", PromptConfig())
    assert sum(calls) == 1          # one system-message probe (it raised), then only user-turn renders
    tok.chat_template = LLAMA3.replace("<|eot_id|>", "<end_of_turn>")  # a changed template is probed again
    assert chat_format(tok).system_role is True


@pytest.mark.parametrize("template, why", [
    ("{% for m in messages %}<start_of_turn>{{ m['role'] }}\n<end_of_turn>\n{% endfor %}", "does not render a user"),
    ("{{ raise_exception('Only tool calls are supported') }}", "Only tool calls are supported"),
    ("{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}\n{% endif %}{% endfor %}",
     "does not render an assistant reply"),
])
def test_unusable_template_is_one_clear_error_naming_the_model(tokenizer_dir: Path, template: str, why: str) -> None:
    tok = chat_tokenizer(tokenizer_dir, "gemma")
    tok.chat_template = template
    with pytest.raises(VrpError, match=why) as e:
        build_prompt_ids(tok, "Bread", "today", PromptConfig())
    assert str(tokenizer_dir) in str(e.value) and "\n" not in str(e.value)
    tok.chat_template = None
    with pytest.raises(VrpError, match="has no chat template"):
        build_completion_ids(tok, "yum", PromptConfig())
