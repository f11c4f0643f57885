"""Decoding presets, the shared prefill, per-comment log-probabilities and determinism."""
from __future__ import annotations

import pytest
import torch

from vrp.decoding import generate_comments
from vrp.errors import VrpError
from vrp.presets import PRESETS


@pytest.fixture(scope="module")
def model(tokenizer):
    from helpers import tiny_llama

    return tiny_llama(tokenizer, seed=1)


def prompt(tokenizer) -> list[int]:
    return tokenizer("<|im_start|>user\nTranscript: hello there<|im_end|>\n<|im_start|>assistant\n",
                     add_special_tokens=False).input_ids


def no_video(tokenizer) -> list[int]:
    return tokenizer("<|im_start|>user\nTranscript: <|im_end|>\n<|im_start|>assistant\n",
                     add_special_tokens=False).input_ids


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_runs_and_shared_prefill_matches_plain_generate(model, tokenizer, name: str) -> None:
    k = 1 if name == "greedy" else 3
    nv = no_video(tokenizer)  # used by `cad`, ignored by the others
    torch.manual_seed(0)
    shared = generate_comments(model, tokenizer, prompt(tokenizer), name, k, max_new_tokens=12, share_prefill=True,
                               no_video_ids=nv)
    torch.manual_seed(0)
    plain = generate_comments(model, tokenizer, prompt(tokenizer), name, k, max_new_tokens=12, share_prefill=False,
                              no_video_ids=nv)
    assert len(shared) == k
    assert [c.text for c in shared] == [c.text for c in plain]
    assert [c.logprob for c in shared] == pytest.approx([c.logprob for c in plain], abs=1e-3)
    for c in shared:
        assert 1 <= c.tokens <= 12 and c.logprob < 0


def test_greedy_logprob_is_model_logprob(model, tokenizer) -> None:
    """Greedy decoding done by hand (argmax of a plain forward pass, up to 5 tokens or a stop token) gives the token
    count and the summed log-probability that `generate_comments` reports."""
    from vrp.prompts import stop_token_ids

    p = prompt(tokenizer)
    c = generate_comments(model, tokenizer, p, "greedy", 1, max_new_tokens=5)[0]
    stops, seq, expected = set(stop_token_ids(tokenizer, model.generation_config)), list(p), 0.0
    with torch.no_grad():
        for _ in range(5):
            lp = torch.log_softmax(model(torch.tensor([seq])).logits[0, -1].float(), -1)
            tok = int(lp.argmax())
            expected += float(lp[tok])
            seq.append(tok)
            if tok in stops:
                break
    assert c.tokens == len(seq) - len(p)
    assert c.finished == (seq[-1] in stops)
    assert c.logprob == pytest.approx(expected, abs=1e-3)


def test_beam_returns_distinct_deterministic_sequences(model, tokenizer) -> None:
    out = generate_comments(model, tokenizer, prompt(tokenizer), "beam", 5, max_new_tokens=8)
    assert len({c.text for c in out}) == 5
    again = generate_comments(model, tokenizer, prompt(tokenizer), "beam", 5, max_new_tokens=8, seed=123)
    assert [(c.text, c.tokens) for c in again] == [(c.text, c.tokens) for c in out]  # beam search never samples
    assert [c.logprob for c in again] == pytest.approx([c.logprob for c in out], abs=1e-5)


def test_errors(model, tokenizer) -> None:
    with pytest.raises(VrpError, match="greedy gives exactly one"):
        generate_comments(model, tokenizer, prompt(tokenizer), "greedy", 2)
    with pytest.raises(VrpError, match="unknown preset 'fast'"):
        generate_comments(model, tokenizer, prompt(tokenizer), "fast", 1)


def test_original_presets_are_unchanged() -> None:
    """The 2023 presets pass exactly the original arguments (and no guard of ours)."""
    assert PRESETS["beam-temperature"].kwargs == {"do_sample": False, "num_beams": 5, "temperature": 0.7,
                                                  "top_k": 50, "top_p": 0.9}
    assert PRESETS["beam"].kwargs == {"do_sample": False, "num_beams": 5}
    assert PRESETS["beam-sample"].kwargs == {"do_sample": True, "num_beams": 5}
    for name in ("greedy", "beam", "beam-temperature", "beam-sample"):
        p = PRESETS[name]
        assert (p.repetition_penalty, p.no_repeat_ngram_size, p.cad_alpha) == (1.0, 0, None)


def test_repetition_guard_never_penalises_the_stop_token(model, tokenizer) -> None:
    """The prompt holds `<|im_end|>` (the end-of-turn token). transformers' repetition penalty over the whole
    input lowered its logit (3.0 -> 3.0 / 1.15) and its no-repeat 4-gram rule banned it after a comment ending like
    the user turn; the `nucleus` guard looks at the generated tokens only and leaves the stop tokens alone."""
    from transformers import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

    from vrp.decoding import logits_processors
    from vrp.prompts import stop_token_ids

    p = prompt(tokenizer)
    stops = stop_token_ids(tokenizer, model.generation_config)
    eot = stops[0]
    assert eot in p
    tail = p[p.index(eot) - 3:p.index(eot)]          # the comment repeats the 3 tokens before the first <|im_end|>
    only_in_prompt = next(t for t in p if t not in tail and t not in stops)
    ids = torch.tensor([p + tail])
    scores = torch.zeros(1, len(tokenizer))
    scores[0, [eot, tail[0], only_in_prompt]] = torch.tensor([3.0, 2.0, 2.0])
    old = NoRepeatNGramLogitsProcessor(4)(ids, RepetitionPenaltyLogitsProcessor(1.15)(ids, scores.clone()))
    assert old[0, eot] == float("-inf")                                      # banned by the prompt's 4-gram
    assert RepetitionPenaltyLogitsProcessor(1.15)(ids, scores.clone())[0, eot] == pytest.approx(3.0 / 1.15)
    procs = logits_processors(model, PRESETS["nucleus"], len(p), stops)
    new = scores.clone()
    for proc in procs:
        new = proc(ids, new)
    assert new[0, eot] == 3.0                                                # untouched
    assert new[0, tail[0]] == pytest.approx(2.0 / 1.15)                      # a generated token is penalised
    assert new[0, only_in_prompt] == 2.0                                     # a prompt-only token is not
    # the 4-gram ban still works within the comment: "d a b c" ... "d a b" -> c is banned, the stop token is not
    a, b, c = tail
    d = only_in_prompt
    ids2 = torch.tensor([p + [d, a, b, c, d, a, b]])
    guarded = procs[0](ids2, scores.clone())
    assert guarded[0, c] == float("-inf") and guarded[0, eot] == 3.0


def test_cad_scores_equal_the_formula_for_every_row(model, tokenizer) -> None:
    """One processor prefills the no-video prompt once and advances K rows in one forward: its scores equal
    (1 + a) z_c - a z_u up to a per-row constant, z_u from a plain forward of no-video prompt + the row's tokens."""
    from vrp.processors import ContextAwareLogitsProcessor

    p, nv, a = prompt(tokenizer), no_video(tokenizer), 0.5
    proc = ContextAwareLogitsProcessor(model, nv, len(p), a)

    def last_logits(seq):
        with torch.no_grad():
            return model(torch.tensor([seq])).logits[0, -1].float()

    rows = [[], [], []]
    with torch.no_grad():
        for step, new in enumerate([None, [11, 12, 13], [21, 22, 23]]):
            if new is not None:
                rows = [r + [t] for r, t in zip(rows, new)]
            ids = torch.tensor([p + r for r in rows])
            z_c = torch.stack([last_logits(p + r) for r in rows])
            z_u = torch.stack([last_logits(nv + r) for r in rows])
            got = proc(ids, z_c.clone())
            diff = got - ((1 + a) * z_c - a * z_u)
            assert (diff - diff[:, :1]).abs().max() < 1e-4, step               # a constant per row
            plain = got - z_c.log_softmax(-1)
            assert (plain - plain[:, :1]).abs().max() > 1e-2                   # and not plain sampling
    assert proc.fed == 2


def test_cad_needs_the_no_video_prompt(model, tokenizer) -> None:
    with pytest.raises(VrpError, match="preset cad needs the no-video prompt"):
        generate_comments(model, tokenizer, prompt(tokenizer), "cad", 2, max_new_tokens=3)


def test_cpu_decoding_step_packs_grouped_query_heads_with_the_same_tokens(tokenizer, tiny_model_dir,
                                                                         monkeypatch) -> None:
    """Inference on a CPU (`load_for_inference`) runs `split_sdpa`, whose unmasked one-query decoding step packs the
    query heads onto their key/value heads (`attention.decode_step_attention`): the same attention as SDPA's
    `enable_gqa` up to float rounding, so greedy, beam and sampled comments keep their tokens (fp32)."""
    from vrp import attention
    from vrp.model import load_for_inference

    torch.manual_seed(0)
    q, k, v = torch.randn(3, 4, 1, 8), torch.randn(3, 2, 9, 8), torch.randn(3, 2, 9, 8)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True).transpose(1, 2)
    assert torch.allclose(attention.decode_step_attention(q, k, v, None, 2), ref, atol=1e-6)

    m, tok, _ = load_for_inference(str(tiny_model_dir), precision="fp32")  # 4 query heads on 2 key/value heads
    assert m.config._attn_implementation == attention.NAME
    calls = []
    real = attention.decode_step_attention
    monkeypatch.setattr(attention, "decode_step_attention", lambda *a: calls.append(a[0].shape) or real(*a))
    for name, n in (("greedy", 1), ("beam", 3), ("nucleus", 3)):
        torch.manual_seed(0)
        packed = generate_comments(m, tok, prompt(tokenizer), name, n, max_new_tokens=8, seed=5)
        m.set_attn_implementation("sdpa")
        plain = generate_comments(m, tok, prompt(tokenizer), name, n, max_new_tokens=8, seed=5)
        m.set_attn_implementation(attention.NAME)
        assert [c.token_ids for c in packed] == [c.token_ids for c in plain], name
        assert [c.logprob for c in packed] == pytest.approx([c.logprob for c in plain], abs=1e-4)
    assert calls and all(s[2] == 1 for s in calls)  # every packed call was one decoding step
