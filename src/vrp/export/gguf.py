"""GGUF export of a merged Llama-family model, written with the `gguf` package one tensor at a time.

Knows: which models this writer supports (`check_supported`: `model_type` llama with the default RoPE and no attention
or MLP biases, as SmolLM2, TinyLlama and LLaMA-2 are, and a byte-level BPE tokenizer whose pre-tokenizer llama.cpp
has a name for), the metadata llama.cpp reads for them (`general.*`, `llama.*`, `tokenizer.ggml.*`,
`tokenizer.chat_template`, the end-of-turn id `tokenizer.ggml.eot_token_id`, `add_bos_token` false since vrp's
prompt text carries any BOS itself, and the default preset's sampling as `general.sampling.*`), the tensor names
(`gguf.get_tensor_name_map`), the row order llama.cpp's RoPE wants for the q/k projections (`permute_qk`) and the
tensor types of each `--gguf-type` (`f16`, `bf16`, `q8_0`; 1-D tensors stay F32, and a q8_0 tensor whose rows are not
a multiple of 32 values long is written F16, as llama.cpp's converter does).
Does not know: merging the adapter (`vrp.export.hf`), prompts (`vrp.prompts`), where the file goes (`vrp.export.run`).

Sources: the GGUF format (ggml's docs/gguf.md, the `gguf` package's `Keys` and `GGUFWriter`); llama.cpp's
convert_hf_to_gguf.py (the Llama q/k permutation, token types of added tokens, `[PADn]` for ids without a token)
and src/llama-vocab.cpp (the pre-tokenizer names `gpt-2`, `smollm`, `llama-bpe` and their split regexes);
transformers' GGUF loader (modeling_gguf_pytorch_utils.py `LlamaTensorProcessor`, which undoes the permutation),
through which the tests read the file back.

The pre-tokenizer written is the one of the tokenizer vrp uses, not the one of the model's original release: the
bundled SmolLM2 tokenizer is read by transformers from a GGUF whose `smollm` pre-tokenizer it does not know, so it
splits text as GPT-2 does (digits in runs, not one by one); the export says `gpt-2`, and llama.cpp then cuts a prompt
into the same tokens as vrp.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from vrp.errors import VrpError

CONVERTER_HINT = ("export the merged model with `--format hf` and convert that with llama.cpp's convert_hf_to_gguf.py "
                  "(https://github.com/ggml-org/llama.cpp)")
# The split regex of Llama 3's tokenizer.json (its `Split` pre-tokenizer), which llama.cpp calls `llama-bpe`.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class GgufMeta:
    """What the file says besides the weights. name: `general.name`; chat_template: `tokenizer.chat_template`
    (None: none written); end_of_turn_id: `tokenizer.ggml.eot_token_id` (the token that ends a reply, vrp's first
    stop token); sampling: the default preset's `temperature`, `top_p`, `top_k` (0 = off), written as
    `general.sampling.*` (llama.cpp's defaults for the model)."""

    name: str
    chat_template: str | None
    end_of_turn_id: int
    sampling: dict[str, float]


def _tokenizer_state(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise VrpError(f"GGUF export needs a fast (tokenizers) tokenizer; {type(tokenizer).__name__} is not one: "
                       f"{CONVERTER_HINT}")
    return json.loads(backend.to_str())


def _is_byte_level(step: dict[str, Any] | None, use_regex: bool) -> bool:
    return (bool(step) and step.get("type") == "ByteLevel" and not step.get("add_prefix_space", False)
            and step.get("use_regex", True) == use_regex)


def pre_tokenizer_name(pre: dict[str, Any] | None) -> str | None:
    """llama.cpp's name (`tokenizer.ggml.pre`) for a tokenizers pre-tokenizer (its tokenizer.json form), or None.

    `ByteLevel` with its GPT-2 regex -> `gpt-2`; `Digits(individual_digits)` then that -> `smollm` (each digit its
    own piece, then GPT-2's regex; llama.cpp's SMOLLM type); Llama 3's `Split` regex then `ByteLevel` without regex
    -> `llama-bpe`. Anything else has no name here (None)."""
    if _is_byte_level(pre, use_regex=True):
        return "gpt-2"
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else []
    if len(steps) == 2:
        first, second = steps
        if first.get("type") == "Digits" and first.get("individual_digits") and _is_byte_level(second, True):
            return "smollm"
        pattern = (first.get("pattern") or {}).get("Regex")
        if (first.get("type") == "Split" and pattern == LLAMA3_SPLIT and not first.get("invert", False)
                and str(first.get("behavior", "")).lower() == "isolated" and _is_byte_level(second, False)):
            return "llama-bpe"
    return None


def check_supported(config: Any, tokenizer: Any) -> str:
    """Raise VrpError (one line naming the architecture or what the tokenizer lacks, and llama.cpp's converter as
    the alternative) unless this writer can export the model of `config` with `tokenizer`; return the tokenizer's
    llama.cpp pre-tokenizer name. Reads only the config and the tokenizer, so it runs before any weight is loaded."""
    model_type = getattr(config, "model_type", None)
    arch = (getattr(config, "architectures", None) or [model_type])[0]
    if model_type != "llama":
        raise VrpError(f"GGUF export: the model's architecture {model_type} ({arch}) is not supported; vrp writes "
                       f"GGUF for the Llama family (model_type llama: SmolLM2, TinyLlama, LLaMA-2); {CONVERTER_HINT}")
    kind = _rope(config)[1]
    if kind != "default":
        raise VrpError(f"GGUF export: the model uses RoPE scaling {kind!r}, which vrp's GGUF writer does not write; "
                       f"{CONVERTER_HINT}")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            raise VrpError(f"GGUF export: the model has {flag.replace('_', ' ')}es, which vrp's GGUF writer does not "
                           f"write; {CONVERTER_HINT}")
    state = _tokenizer_state(tokenizer)
    model = state.get("model") or {}
    decoder = state.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel" or state.get(
            "normalizer") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise VrpError(f"GGUF export: the tokenizer is not a byte-level BPE (GPT-2 style; model {model.get('type')}, "
                       f"decoder {decoder.get('type')}), the only kind vrp's GGUF writer writes; {CONVERTER_HINT}")
    pre = pre_tokenizer_name(state.get("pre_tokenizer"))
    if pre is None:
        raise VrpError(f"GGUF export: the tokenizer's pre-tokenizer {json.dumps(state.get('pre_tokenizer'))[:120]} "
                       f"is not one llama.cpp names; {CONVERTER_HINT}")
    if len(tokenizer) > config.vocab_size:
        raise VrpError(f"GGUF export: the tokenizer has {len(tokenizer)} tokens, more than the model's vocab_size "
                       f"{config.vocab_size}")
    return pre


def _rope(config: Any) -> tuple[float, str]:
    """(rope theta, RoPE type) from a transformers 5 `rope_parameters` or an older `rope_theta` / `rope_scaling`."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    scaling = dict(getattr(config, "rope_scaling", None) or {})
    theta = params.get("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    return float(theta), str(kind)


def vocabulary(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """`(tokens, token types, merges)` as llama.cpp's `gpt2` tokenizer model stores them: token i is the byte-level
    spelling of id i (added tokens as written), CONTROL for special added tokens, USER_DEFINED for other added tokens,
    NORMAL otherwise, and `[PADi]` (UNUSED) for an id the tokenizer lacks below the model's `vocab_size`; merges as
    "left right" strings in rank order."""
    from gguf import TokenType

    state = _tokenizer_state(tokenizer)
    by_id = {i: t for t, i in state["model"]["vocab"].items()}
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            tokens.append(added[i].content)
            types.append(int(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED))
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(int(TokenType.NORMAL))
        else:
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"].get("merges", [])]
    return tokens, types, merges


def permute_qk(w: Any, n_head: int) -> Any:
    """Reorder the rows of a q or k projection weight (n_head * head_dim, in) from Hugging Face's RoPE layout to
    GGML's. HF rotates dimension j of a head with j + head_dim/2 (`rotate_half`); GGML's RoPE for Llama rotates
    adjacent pairs (2j, 2j + 1). So within each head, row j goes to 2j and row j + head_dim/2 to 2j + 1: reshape to
    (n_head, 2, head_dim/2, in), swap the two middle axes, flatten back. n_head: the heads of this projection (the
    KV heads for k). Same result as llama.cpp's `LlamaModel.permute`; transformers' GGUF loader undoes it."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _plan(model: Any, gguf_type: str) -> list[tuple[str, str, tuple[int, ...], Any]]:
    """(gguf name, state-dict key, shape, GGMLQuantizationType) per tensor to write, in state-dict order."""
    from gguf import MODEL_ARCH, GGMLQuantizationType, get_tensor_name_map

    cfg = model.config
    names = get_tensor_name_map(MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    wanted = {"f16": GGMLQuantizationType.F16, "bf16": GGMLQuantizationType.BF16,
              "q8_0": GGMLQuantizationType.Q8_0}[gguf_type]
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    plan = []
    for key, t in model.state_dict().items():
        if key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight"):
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise VrpError(f"GGUF export: no GGUF name for tensor {key!r} of {type(model).__name__}; {CONVERTER_HINT}")
        shape = tuple(t.shape)
        if len(shape) == 1:
            qtype = GGMLQuantizationType.F32
        elif wanted == GGMLQuantizationType.Q8_0 and shape[-1] % 32:
            qtype = GGMLQuantizationType.F16  # Q8_0 packs 32 values of a row per block
        else:
            qtype = wanted
        plan.append((name, key, shape, qtype))
    return plan


def _encoded(array: Any, qtype: Any) -> Any:
    """A float32 numpy array in the bytes (or float16 values) of `qtype` (`gguf.quants.quantize`)."""
    from gguf import quants

    return quants.quantize(array, qtype)


def write_gguf(model: Any, tokenizer: Any, path: str | os.PathLike[str], gguf_type: str, meta: GgufMeta,
               pre: str) -> None:
    """Write `model` (a merged Llama-family `*ForCausalLM`, any float dtype) and `tokenizer` as one GGUF file of
    `gguf_type` at `path`. The header, metadata and tensor index are written first, then each tensor is converted
    and written on its own (memory: one tensor at a time besides the model). `pre`: from `check_supported`.
    Raises OSError when the file cannot be written (the caller owns the path and removes a partial file), VrpError
    for a tensor without a GGUF name."""
    import numpy as np
    import torch
    from gguf import GGML_QUANT_VERSION, GGUFWriter, LlamaFileType, quants

    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    theta, _ = _rope(cfg)
    plan = _plan(model, gguf_type)
    w = GGUFWriter(os.fspath(path), arch="llama")
    try:
        w.add_type("model")
        w.add_name(meta.name)
        w.add_context_length(int(cfg.max_position_embeddings))
        w.add_embedding_length(int(cfg.hidden_size))
        w.add_block_count(int(cfg.num_hidden_layers))
        w.add_feed_forward_length(int(cfg.intermediate_size))
        w.add_head_count(int(cfg.num_attention_heads))
        w.add_head_count_kv(int(n_kv))
        w.add_rope_freq_base(theta)
        w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        w.add_vocab_size(int(cfg.vocab_size))
        w.add_rope_dimension_count(int(head_dim))
        if head_dim != cfg.hidden_size // cfg.num_attention_heads:
            w.add_key_length(int(head_dim))
            w.add_value_length(int(head_dim))
        w.add_file_type({"f16": LlamaFileType.MOSTLY_F16, "bf16": LlamaFileType.MOSTLY_BF16,
                         "q8_0": LlamaFileType.MOSTLY_Q8_0}[gguf_type])
        w.add_quantization_version(GGML_QUANT_VERSION)
        tokens, types, merges = vocabulary(tokenizer, int(cfg.vocab_size))
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        for add, tok_id in ((w.add_bos_token_id, tokenizer.bos_token_id), (w.add_eos_token_id, tokenizer.eos_token_id),
                            (w.add_unk_token_id, tokenizer.unk_token_id), (w.add_pad_token_id, tokenizer.pad_token_id)):
            if tok_id is not None:
                add(int(tok_id))
        w.add_eot_token_id(int(meta.end_of_turn_id))
        # vrp's prompt text carries any BOS itself (the chat template writes it; the plain prompt text starts with
        # it where the tokenizer adds one), so llama.cpp must not add another: the same tokens on every path.
        w.add_add_bos_token(False)
        w.add_add_eos_token(False)
        if meta.chat_template:
            w.add_chat_template(meta.chat_template)
        w.add_sampling_temp(float(meta.sampling["temperature"]))
        w.add_sampling_top_p(float(meta.sampling["top_p"]))
        w.add_sampling_top_k(int(meta.sampling["top_k"]))
        for name, _, shape, qtype in plan:
            nbytes = int(np.prod(quants.quant_shape_to_byte_shape(shape, qtype)))
            w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        state = model.state_dict()
        for name, key, _, qtype in plan:
            array = state[key].detach().to(device="cpu", dtype=torch.float32).numpy()
            if name.endswith(("attn_q.weight", "attn_k.weight")):
                array = permute_qk(array, cfg.num_attention_heads if "attn_q" in name else n_kv)
            w.write_tensor_data(_encoded(np.ascontiguousarray(array), qtype))
        w.flush()
    finally:
        w.close()
