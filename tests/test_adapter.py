"""Attaching a LoRA adapter (`vrp.adapter.attach_lora`) and the `target_modules` setting: names, a regular
expression, unknown names, tied embeddings and a rank wider than the model, each a ConfigError naming the field."""
from __future__ import annotations

import re

import pytest
from helpers import tiny_llama

from vrp.errors import ConfigError


@pytest.mark.slow
def test_target_modules_names_regex_and_tied_embeddings(tokenizer) -> None:
    """One string of names becomes a list; a broken list or regex, an unknown name in a list and a tied embedding
    are ConfigErrors naming `target_modules` (were a re.error traceback, a silent partial adapter, and a merge that
    changed the input embeddings too)."""
    import torch

    from vrp.adapter import attach_lora
    from vrp.lora import LoraSettings
    from vrp.precision import Precision
    from vrp.train.config import TrainConfig

    assert TrainConfig(target_modules="q_proj, v_proj").target_modules == ["q_proj", "v_proj"]
    assert TrainConfig(target_modules=r".*\.(q|v)_proj").target_modules == r".*\.(q|v)_proj"
    for bad, needle in (("[q_proj", "is not a JSON list"), ("(q_proj", "neither module names nor a regular exp")):
        with pytest.raises(ConfigError, match=re.escape(needle)) as e:
            TrainConfig(target_modules=bad)
        assert e.value.field == "target_modules"
    fp32 = Precision("cpu", torch.float32, None)
    with pytest.raises(ConfigError, match=r"no module named \['nonexistent'\] in LlamaForCausalLM; its linear layers "
                                          r"are \[.*'q_proj'"):
        attach_lora(tiny_llama(tokenizer), LoraSettings(target_modules=["q_proj", "nonexistent"]), fp32)
    for targets in (["lm_head"], ["embed_tokens", "q_proj"], "lm_head"):
        with pytest.raises(ConfigError, match="share one weight"):
            attach_lora(tiny_llama(tokenizer), LoraSettings(target_modules=targets), fp32)
    with pytest.raises(ConfigError, match=r"^lora_r: 1000000000000 is larger than any layer of the model is wide \(\d+\)"):
        attach_lora(tiny_llama(tokenizer), LoraSettings(r=10 ** 12), fp32)
    untied = attach_lora(tiny_llama(tokenizer, tie_word_embeddings=False), LoraSettings(target_modules=["lm_head"]),
                         fp32)
    assert any("lm_head.lora_A" in n for n, _ in untied.named_parameters())
