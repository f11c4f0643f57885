"""`.gguf` models of other quantization types than the bundled Q4_1: a tiny Llama written with the `gguf` package in
Q8_0, Q4_K and Q6_K, loaded through vrp (transformers dequantizes, vrp caches safetensors), weights compared with
what the file holds; a GGUF of an architecture transformers cannot load is one line naming file and architecture.

gguf-py (0.19) quantizes Q8_0 (and Q4_0/Q4_1/Q5_0/Q5_1) but implements only the dequantization of the K-quants
(Q4_K, Q6_K raise NotImplementedError in `gguf.quants.quantize`), so their blocks are written from random bytes with
fixed scales, and the reference is gguf-py's own dequantization of those bytes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_line_error, tiny_llama

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402

HEADS, KV_HEADS, HIDDEN, FFN, LAYERS = 4, 2, 256, 512, 2  # K-quant rows are 256 values (QK_K)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face q/k rows -> llama.cpp's order (rotary halves interleaved per head); llama.cpp
    convert_hf_to_gguf.py `LlamaModel.permute`, which transformers undoes when it loads a GGUF."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute`."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_kquant_rows(qtype: QT, rows: int, cols: int, seed: int) -> np.ndarray:
    """(rows, bytes per row) uint8 blocks of `qtype` (Q4_K or Q6_K) from random bytes, with finite fp16 super-block
    scales set (Q4_K: d, dmin first; Q6_K: d last), so that values stay of the order of 0.01."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.random.default_rng(seed).integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    if qtype == QT.Q4_K:
        raw[..., 0:2] = np.array([2e-4], np.float16).view(np.uint8)  # d
        raw[..., 2:4] = np.array([1e-4], np.float16).view(np.uint8)  # dmin
    else:
        raw[..., size - 2:] = np.array([1e-4], np.float16).view(np.uint8)  # d
    return raw.reshape(rows, -1)


def byte_level_tokens() -> list[str]:
    """A minimal GPT-2 style byte-level BPE vocabulary: the 256 byte symbols, one merge's result, and the SmolLM2
    chat markers (ids 257, 258: BOS, EOS). Small, so that writing and reading the GGUF takes no time."""
    from tokenizers.pre_tokenizers import ByteLevel

    return [*sorted(ByteLevel.alphabet()), "ab", "<|im_start|>", "<|im_end|>"]


def write_tiny_gguf(path: Path, source, qtype: QT, arch: str = "llama") -> dict[str, np.ndarray]:
    """Write `source` (a tiny `LlamaForCausalLM` over `byte_level_tokens`) as a GGUF whose linear layers are `qtype`,
    token embedding F16, norms F32. Returns the weights a loader must produce: the dequantized file contents in
    Hugging Face layout (for the K-quants, the random blocks' values)."""
    tokens = byte_level_tokens()
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(4096)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(source.config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * (len(tokens) - 2) + [gguf.TokenType.CONTROL] * 2)
    writer.add_token_merges(["a b"])
    writer.add_bos_token_id(len(tokens) - 2)
    writer.add_eos_token_id(len(tokens) - 1)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, LAYERS)
    expected = {}
    for i, (hf, p) in enumerate(source.state_dict().items()):
        if hf == "lm_head.weight":  # tied to the input embedding
            continue
        w = p.detach().float().numpy()
        name = names.get_name(hf, try_suffixes=(".weight",))
        heads = HEADS if "q_proj" in hf else KV_HEADS if "k_proj" in hf else 0
        if w.ndim == 1:
            writer.add_tensor(name, w)
            expected[hf] = w
        elif "embed_tokens" in hf:
            writer.add_tensor(name, w.astype(np.float16))
            expected[hf] = w.astype(np.float16).astype(np.float32)
        else:
            g = permute(w, heads) if heads else w
            raw = (gguf.quants.quantize(g, qtype) if qtype == QT.Q8_0
                   else random_kquant_rows(qtype, *g.shape, seed=i))
            writer.add_tensor(name, raw, raw_dtype=qtype)
            deq = gguf.quants.dequantize(raw, qtype).reshape(g.shape)
            expected[hf] = unpermute(deq, heads) if heads else deq
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


@pytest.fixture(scope="module")
def source(tokenizer):
    n = len(byte_level_tokens())
    return tiny_llama(tokenizer, vocab_size=n, bos_token_id=n - 2, eos_token_id=n - 1, hidden_size=HIDDEN,
                      intermediate_size=FFN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                      num_key_value_heads=KV_HEADS)


def test_k_quants_are_not_quantizable_with_this_gguf_package() -> None:
    """Why Q4_K and Q6_K are written from random blocks (this test fails once gguf-py quantizes them: then the
    round trip from the source model, as for Q8_0, should cover them too)."""
    x = np.zeros((1, 256), np.float32)
    for qtype in (QT.Q4_K, QT.Q6_K):
        with pytest.raises(NotImplementedError, match="^$"):  # gguf-py's `quantize_blocks` stub, without a message
            gguf.quants.quantize(x, qtype)


@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_K, QT.Q6_K], ids=lambda q: q.name)
def test_gguf_types_load_to_the_weights_the_file_holds(qtype: QT, source, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import vrp.model as vm

    monkeypatch.setenv("VRP_CACHE", str(tmp_path / "cache"))
    path = tmp_path / f"tiny-{qtype.name}.gguf"
    expected = write_tiny_gguf(path, source, qtype)
    model, tok = vm.load_base_model(str(path), vm.Precision("cpu", torch.float32, None))
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", source.config.eos_token_id)
    assert tok.decode(tok("a cab").input_ids) == "a cab"
    got = {k: v.float() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert set(got) == set(expected)
    for name, want in expected.items():  # q/k rows back in Hugging Face order, every type dequantized exactly
        torch.testing.assert_close(got[name], torch.from_numpy(want), rtol=0, atol=1e-6, msg=name)
    if qtype == QT.Q8_0:  # and against the source: Q8_0 is 8-bit codes x one fp16 scale (absmax / 127) per 32 values
        for name, w in source.state_dict().items():
            if name in expected and "layers" in name and w.ndim == 2:
                blocks = w.reshape(-1, 32)
                err = (got[name] - w).reshape(-1, 32).abs().amax(1)
                assert (err <= blocks.abs().amax(1) * (0.5 / 127 + 2 ** -11)).all(), name
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied, as the source


def test_gguf_of_an_architecture_transformers_cannot_load_is_one_line(source, tmp_path: Path, capsys,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VRP_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "odd.gguf"
    write_tiny_gguf(path, source, QT.Q8_0, arch="rwkv7")
    one_line_error(capsys, ["generate", "--model", str(path), "--title", "t", "--transcript", "x",
                            "--out", str(tmp_path / "o.jsonl")], "--model", str(path), "architecture 'rwkv7'")
    assert not (tmp_path / "o.jsonl").exists() and not any((tmp_path / "cache").rglob("*.safetensors"))
