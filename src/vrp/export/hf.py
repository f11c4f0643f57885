"""The Hugging Face export: the run's LoRA adapter merged into full-precision base weights, saved as a plain
transformers checkpoint (safetensors) with the tokenizer and a `generation_config.json` that stops where vrp stops.

Knows: how a run's model is merged (`merged_model`: the base in fp32 on the CPU, the adapter loaded with PEFT and
`merge_and_unload`, through `vrp.model.load_for_inference`, so the merged weights are those vrp generates with), what
the base weights are (`base_weights_note`: a GGUF base such as the bundled model is dequantized to fp32 once by
transformers; the NF4 base of a run trained in 4-bit (QLoRA) is dequantized to fp32 before the merge), which dtype
the files get (`hf_dtype`), and what goes into `generation_config.json` (`write_hf`).
Does not know: GGUF or Ollama (`vrp.export.gguf`, `vrp.export.ollama`), where the directory goes (`vrp.export.run`).

The directory loads with `AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` alone,
so `vllm serve DIR` and TGI take it as it is. `generation_config.json` lists vrp's stop ids as `eos_token_id`
(`vrp.prompts.stop_token_ids`: the end-of-turn token first), so `generate()` and servers that read the file stop
after the comment, and the default preset's sampling (`do_sample`, `temperature`, `top_p`, `top_k` 0 = off,
`max_new_tokens`); vrp's repetition guard over the comment's own tokens is not a transformers option and is left out.
The tokenizer keeps the chat template for a `chat` run; for a `plain` run it is removed, so that no server renders a
chat layout the run was not trained with (send the plain prompt text to a completions endpoint instead).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vrp.errors import ConfigError
from vrp.export.config import HF_DTYPES
from vrp.model import load_adapter, load_base_model, load_for_inference, resolve_model_path
from vrp.precision import resolve_precision


def merged_model(run: Any, checkpoint: str | None) -> tuple[Any, Any, dict[str, Any]]:
    """`(model, tokenizer, info)`: the run's base model in fp32 on the CPU with the adapter of `checkpoint`
    (`RunDir.adapter`) merged into its weights, in eval mode; info as `vrp.model.load_for_inference` gives it.

    A run trained on a 4-bit base (`quantization: 4bit`) is loaded on that NF4 base, whose weights are then
    dequantized to fp32 (transformers' `dequantize`) before the merge: the model the adapter was trained with, which
    `vrp generate` runs as the 4-bit base plus the unmerged adapter (merging into NF4 would round it).
    Raises ConfigError('run' / 'checkpoint') when the run or its adapter is missing, ConfigError('quantization')
    for a 4-bit run without bitsandbytes."""

    if str(run.config().get("quantization") or "none") != "4bit":
        return load_for_inference(run=run, checkpoint=checkpoint, precision="fp32", device="cpu", merge=True)
    adapter = run.adapter(checkpoint)
    base, tok = load_base_model(run.model_spec(), resolve_precision("fp32", "4bit", "cpu"))
    base = base.dequantize().float()
    if hasattr(base.config, "quantization_config"):
        del base.config.quantization_config
    model = load_adapter(base, adapter).merge_and_unload().eval()
    return model, tok, {"model": run.model_spec(), "adapter": str(adapter), "precision": "cpu-fp32 (from NF4)"}


def base_weights_note(run: Any) -> str:
    """One sentence on the weights the adapter is merged into (for export.json and the command's output)."""

    spec = run.model_spec()
    _, gguf = resolve_model_path(spec)
    if gguf:
        note = (f"the base model is the GGUF file {gguf}, dequantized to fp32 by transformers (vrp's cached "
                f"conversion); the adapter is merged into those weights")
    else:
        note = f"the adapter is merged into the fp32 weights of the base model {spec}"
    if str(run.config().get("quantization") or "none") == "4bit":
        note += ("; the run was trained on the 4-bit NF4 (QLoRA) base, so its NF4 weights were dequantized to fp32 "
                 "first and the adapter merged into those")
    return note


def resolve_dtype(hf_dtype: str, base_config: Any) -> Any:
    """The torch dtype of the saved weights: `fp32`, `bf16`, `fp16`, or for `auto` the base checkpoint's own dtype
    (`config.dtype` / `torch_dtype`) when it is bf16 or fp16, else fp32. Raises ConfigError('hf_dtype')."""
    import torch

    if hf_dtype not in HF_DTYPES:
        raise ConfigError("hf_dtype", f"choose from {', '.join(HF_DTYPES)}, got {hf_dtype!r}")
    if hf_dtype != "auto":
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[hf_dtype]
    own = getattr(base_config, "dtype", None) or getattr(base_config, "torch_dtype", None)
    own = getattr(torch, own, None) if isinstance(own, str) else own
    return own if own in (torch.bfloat16, torch.float16) else torch.float32


def write_hf(model: Any, tokenizer: Any, dest: str | os.PathLike[str], stops: list[int], sampling: dict[str, Any],
             max_new_tokens: int, dtype: Any, chat: bool) -> None:
    """Save the merged `model` (cast in place to `dtype`: call this last) and `tokenizer` to `dest` as a transformers
    checkpoint. generation_config.json: `eos_token_id` = `stops` (vrp's stop ids, end-of-turn first), the tokenizer's
    BOS and pad ids, and the default preset's `sampling` (`do_sample`, `temperature`, `top_p`, `top_k`) with
    `max_new_tokens`. chat: keep the tokenizer's chat template (False, for a plain-format run: remove it).
    Raises OSError when the files cannot be written (the caller removes the directory)."""
    from transformers import GenerationConfig

    dest = Path(dest)
    model.to(dtype)
    gc = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=list(stops),
                          pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0],
                          do_sample=bool(sampling.get("do_sample", False)), max_new_tokens=int(max_new_tokens),
                          **{k: sampling[k] for k in ("temperature", "top_p", "top_k") if k in sampling})
    model.generation_config = gc
    model.save_pretrained(dest)
    template = tokenizer.chat_template
    try:
        if not chat:
            tokenizer.chat_template = None
        tokenizer.save_pretrained(dest)
    finally:
        tokenizer.chat_template = template
