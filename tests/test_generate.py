"""Decoding presets, the shared prefill and prediction files."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from vrp.decoding import PRESETS, generate_comments
from vrp.errors import VrpError
from vrp.predict import load_inputs, predict, write_predictions
from vrp.records import Video


@pytest.fixture(scope="module")
def model(tokenizer):
    from conftest import tiny_llama

    return tiny_llama(tokenizer, seed=1)


def prompt(tokenizer) -> list[int]:
    return tokenizer("<|im_start|>user\nTranscript: hello there<|im_end|>\n<|im_start|>assistant\n",
                     add_special_tokens=False).input_ids


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_runs_and_shared_prefill_matches_plain_generate(model, tokenizer, name: str) -> None:
    k = 1 if name == "greedy" else 3
    torch.manual_seed(0)
    shared = generate_comments(model, tokenizer, prompt(tokenizer), name, k, max_new_tokens=12, share_prefill=True)
    torch.manual_seed(0)
    plain = generate_comments(model, tokenizer, prompt(tokenizer), name, k, max_new_tokens=12, share_prefill=False)
    assert len(shared) == k
    assert [c.text for c in shared] == [c.text for c in plain]
    assert [c.logprob for c in shared] == pytest.approx([c.logprob for c in plain], abs=1e-3)
    for c in shared:
        assert 1 <= c.tokens <= 12 and c.logprob < 0


def test_greedy_logprob_is_model_logprob(model, tokenizer) -> None:
    p = prompt(tokenizer)
    c = generate_comments(model, tokenizer, p, "greedy", 1, max_new_tokens=5)[0]
    ids = tokenizer(c.text, add_special_tokens=False).input_ids
    # re-score the generated tokens with a plain forward pass
    seq = torch.tensor([p + ids[:5]])
    with torch.no_grad():
        lp = torch.log_softmax(model(seq).logits[0, len(p) - 1:-1].float(), -1)
    expected = lp.gather(1, seq[0, len(p):, None]).sum().item()
    if c.tokens == len(ids[:5]):
        assert c.logprob == pytest.approx(expected, abs=1e-3)


def test_beam_returns_distinct_sequences(model, tokenizer) -> None:
    out = generate_comments(model, tokenizer, prompt(tokenizer), "beam", 5, max_new_tokens=8)
    assert len({c.text for c in out}) == 5
    assert [c.logprob for c in out] != sorted(c.logprob for c in out) or len(out) == 5


def test_errors(model, tokenizer) -> None:
    with pytest.raises(VrpError, match="greedy gives exactly one"):
        generate_comments(model, tokenizer, prompt(tokenizer), "greedy", 2)
    with pytest.raises(VrpError, match="unknown preset 'fast'"):
        generate_comments(model, tokenizer, prompt(tokenizer), "fast", 1)


def test_predict_rows_and_output_formats(model, tokenizer, tmp_path: Path) -> None:
    videos = [Video("a", "t1", "one two"), Video("b", "", "three four")]
    rows = predict(videos, presets=["greedy", "nucleus"], num_comments=2, max_new_tokens=6, progress=False,
                   loaded=(model, tokenizer, {"model": "tiny", "adapter": None}))
    assert [(r["video_id"], r["preset"], r["comment_index"]) for r in rows] == [
        ("a", "greedy", 1), ("a", "nucleus", 1), ("a", "nucleus", 2),
        ("b", "greedy", 1), ("b", "nucleus", 1), ("b", "nucleus", 2)]
    for ext in (".csv", ".xlsx", ".jsonl"):
        write_predictions(rows, tmp_path / f"p{ext}")
    df = pd.read_json(tmp_path / "p.jsonl", lines=True)
    assert list(df.columns[:7]) == ["video_id", "title", "model", "adapter", "preset", "comment_index", "comment"]
    assert len(pd.read_csv(tmp_path / "p.csv")) == len(pd.read_excel(tmp_path / "p.xlsx")) == 6
    with pytest.raises(VrpError, match="unknown extension"):
        write_predictions(rows, tmp_path / "p.txt")
    assert not (tmp_path / "p.txt").exists()


def test_load_inputs(tmp_path: Path) -> None:
    assert load_inputs(None, "T", "some words")[0].title == "T"
    (tmp_path / "t.txt").write_text("a transcript")
    assert load_inputs(str(tmp_path / "t.txt"))[0].transcript == "a transcript"
    with pytest.raises(VrpError, match="exactly one"):
        load_inputs(str(tmp_path / "t.txt"), transcript="x")
    with pytest.raises(VrpError, match="exactly one"):
        load_inputs(None)
    (tmp_path / "e.txt").write_text("  ")
    with pytest.raises(VrpError, match="empty transcript"):
        load_inputs(str(tmp_path / "e.txt"))
