"""Candidate scoring: shared-prefix packed rows and the reused prompt KV cache both give the log-likelihood of a
plain per-candidate transformers forward, across several rows and batches, on a tiny random Llama (fp32)."""
from __future__ import annotations

import pytest
import torch
from helpers import tiny_llama

from vrp.errors import VrpError
from vrp.packing import make_rows
from vrp.prompts import EncodedVideo
from vrp.scoring import score_candidates

EOS = 2
SHARP = 0.2  # initializer_range: attention and logits far from uniform, so context/position bugs show


def data() -> tuple[list[int], list[list[int]]]:
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(3, 5000, (50,), generator=g).tolist()
    lengths = [1, 2, 14, 5, 9, 3, 12, 7, 1, 6, 11, 4, 8]        # 13 candidates, two of them EOS only
    cands = [torch.randint(3, 5000, (n - 1,), generator=g).tolist() + [EOS] for n in lengths]
    return prompt, cands


def reference(model, prompt: list[int], cand: list[int]) -> float:
    """Sum of log p(cand | prompt) from the full-vocabulary logits of a plain forward of prompt + cand."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + cand])).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
    return float(logp.gather(1, torch.tensor(cand)[:, None]).sum())


@pytest.mark.parametrize("impl", ["eager", "sdpa", "split_sdpa"])
@pytest.mark.parametrize("use_prompt_cache", [False, True])
def test_scores_match_per_candidate_forward(tokenizer, impl, use_prompt_cache):
    from vrp import attention

    prompt, cands = data()
    model = tiny_llama(tokenizer, attn_implementation=attention.register() if impl == "split_sdpa" else impl,
                       initializer_range=SHARP)  # split_sdpa: what `vrp evaluate` scores with on a CPU
    ref = [reference(model, prompt, c) for c in cands]
    # 80 tokens per row: the 13 candidates need 4 packed rows (2 batches of 2 rows, padded)
    assert len(make_rows([EncodedVideo("x", prompt, cands)], "shared_prefix", 80)) == 4
    got = score_candidates(model, prompt, cands, max_row_tokens=80, rows_per_batch=2,
                           use_prompt_cache=use_prompt_cache)
    assert [n for _, n in got] == [len(c) for c in cands]
    torch.testing.assert_close(torch.tensor([s for s, _ in got], dtype=torch.float64),
                               torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    assert max(ref) - min(ref) > 10  # candidates differ, so a mix-up of candidates would fail
    assert torch.is_grad_enabled()  # grad mode restored after the no_grad call


def test_scoring_with_lora_adapter_and_errors(tokenizer):
    from peft import LoraConfig, get_peft_model

    prompt, cands = data()
    cfg = LoraConfig(r=4, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(tiny_llama(tokenizer, initializer_range=SHARP), cfg).eval()
    ref = [reference(model, prompt, c) for c in cands[:5]]
    for cache in (False, True):
        got = [s for s, _ in score_candidates(model, prompt, cands[:5], max_row_tokens=70, use_prompt_cache=cache)]
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert score_candidates(model, prompt, []) == []
    with pytest.raises(VrpError, match="candidate 1 has no tokens"):
        score_candidates(model, prompt, [[5, EOS], []])
    for cache in (False, True):
        with pytest.raises(VrpError, match="max_row_tokens=55"):
            score_candidates(model, prompt, cands, max_row_tokens=55, use_prompt_cache=cache)
