"""The model families users bring, each through the real commands: prepare -> train (shared-prefix packing, a few
steps, with its packing self-check) -> generate -> evaluate (likelihood and ranking). Tiny random models built from
each family's config over the real SmolLM2 tokenizer; `base` variants have the chat template removed (a pretrained
checkpoint), so `--prompt-format auto` must choose plain; Gemma 3 and Mistral have sliding windows (8 tokens) shorter
than the prompt; one run loads its base in 4-bit NF4 (bitsandbytes on the CPU)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from vrp.cli import main

pytestmark = pytest.mark.e2e  # the whole chain through the real CLI (a lane of its own)

WINDOW = 8
SMALL = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
             max_position_embeddings=4096, tie_word_embeddings=True, pad_token_id=None)
# family -> (transformers config class, model class, extra config, keep the chat template, 4-bit)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}, True, False),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}, True, False),
    "qwen3-base": ("Qwen3Config", "Qwen3ForCausalLM", {}, False, False),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(sliding_window=WINDOW, query_pre_attn_scalar=8,
                    layer_types=["sliding_attention", "full_attention"]), True, False),
    "mistral-base": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=WINDOW), False, False),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}, True, False),
    "llama-4bit": ("LlamaConfig", "LlamaForCausalLM", {}, True, True),
}


def save_family(family: str, tokenizer_dir: Path, out: Path) -> Path:
    """Write a tiny random checkpoint of `family` (2 layers, hidden 32) with the real tokenizer into `out`."""
    import torch
    import transformers as tf
    from transformers import AutoTokenizer

    cfg_name, cls_name, extra, chat, _ = FAMILIES[family]
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if not chat:
        tok.chat_template = None
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cfg = getattr(tf, cfg_name)(**SMALL, **ids, num_hidden_layers=2, **extra)
    torch.manual_seed(0)
    model = getattr(tf, cls_name)(cfg)
    model.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tok.save_pretrained(out)
    if not chat:  # save_pretrained may still write the template file it was loaded with
        (out / "chat_template.jinja").unlink(missing_ok=True)
    return out


def write_table(path: Path, n_videos: int = 10) -> Path:
    """A comments table as people export it: one row per comment, 3 distinct comments per video."""
    rows = [{"video_id": f"v{v}", "title": f"Video {v} about topic {v}",
             "transcript": f"today we talk about topic {v} and why it matters " * 4,
             "comment": f"comment {k} on topic {v}, {'great' if k else 'thanks'}"}
            for v in range(n_videos) for k in range(3)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_prepares_trains_generates_and_evaluates(family: str, tmp_path: Path, tokenizer_dir: Path,
                                                        capsys) -> None:
    from transformers import AutoTokenizer

    from vrp.prompts import PromptConfig, build_prompt_ids

    _, _, _, chat, four_bit = FAMILIES[family]
    model_dir = save_family(family, tokenizer_dir, tmp_path / "model")
    ds, run = tmp_path / "ds", tmp_path / "run"
    assert main(["prepare", str(write_table(tmp_path / "comments.csv")), "--out", str(ds), "--val-fraction", "0.3",
                 "--seed", "0"]) == 0
    train = ["train", "--data", str(ds), "--out", str(run), "--model", str(model_dir), "--max-steps", "2",
             "--precision", "fp32", "--max-prompt-tokens", "64", "--max-row-tokens", "256", "--lora-r", "4",
             "--learning-rate", "1e-2", "--curve-videos", "0", "--packing", "shared_prefix"]
    if four_bit:
        train += ["--quantization", "4bit"]
    assert main(train) == 0
    err = capsys.readouterr().err
    fmt = "chat" if chat else "plain"
    assert f"prompt format: {fmt} (auto:" in err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["prompt_format"] == fmt and saved["quantization"] == ("4bit" if four_bit else "none")
    m = json.loads((run / "metrics.json").read_text())
    assert m["steps"] == 2 and math.isfinite(m["final_val_nll"])
    check = m["packing_check"]
    assert check["n_tokens"] > 0 and check["max_abs_diff"] <= check["tolerance"]

    out = tmp_path / "pred.jsonl"
    assert main(["generate", "--run", str(run), "--title", "Bread", "--transcript", "we bake bread today",
                 "--preset", "greedy", "--max-new-tokens", "4", "--precision", "fp32", "--out", str(out)]) == 0
    rows = pd.read_json(out, lines=True)
    tok = AutoTokenizer.from_pretrained(model_dir)
    want = build_prompt_ids(tok, "Bread", "we bake bread today",
                            PromptConfig(max_prompt_tokens=64, prompt_format=fmt))
    assert len(rows) == 1 and rows["prompt_tokens"][0] == len(want) and 1 <= rows["new_tokens"][0] <= 4

    report = tmp_path / "report"
    assert main(["evaluate", "--data", str(ds), "--run", str(run), "--out", str(report), "--presets", "none",
                 "--num-candidates", "6", "--ranking", "likelihood", "--precision", "fp32", "--quiet"]) == 0
    ev = json.loads((report / "metrics.json").read_text())
    assert sorted(ev["models"]) == ["base:model", "run"]                         # the base and the fine-tuned run
    base, tuned = ev["models"]["base:model"], ev["models"]["run"]
    for mm in (base, tuned):
        assert mm["likelihood"]["comments"] == 9 and math.isfinite(mm["likelihood"]["nll_own"])
        assert 1 <= mm["ranking"]["own_prompt"]["mean_rank"] <= 6
    assert tuned["likelihood"]["nll_own"] != base["likelihood"]["nll_own"]       # the adapter was applied
