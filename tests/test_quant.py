"""QLoRA on a CPU: a tiny random Llama loaded in 4-bit NF4 through bitsandbytes, trained through `vrp train`,
reloaded in 4-bit for generation and scoring; the optimizer fallback without CUDA; bitsandbytes' import kept off the
network; the one-line errors without bitsandbytes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import one_line_error, tiny_llama, tiny_train_config, write_splits

from vrp.errors import ConfigError
from vrp.records import Comment, Video

bnb = pytest.importorskip("bitsandbytes")  # `make test` installs the qlora extra

COMMENTS = ["great video", "i love this song", "first!", "so helpful thanks"]


@pytest.fixture(scope="module")
def model64(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """A tiny Llama whose linear layers are multiples of 64 wide (bitsandbytes' quantization block; the fused CPU
    kernel needs it), saved with the real tokenizer."""
    out = tmp_path_factory.mktemp("llama64")
    tiny_llama(tokenizer, hidden_size=64, intermediate_size=128).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    videos = [Video(f"v{i}", f"title {i}", f"transcript number {i} " * 5, [Comment(c)]) for i, c in enumerate(COMMENTS)]
    val = [Video(f"val{i}", "t", f"held out {i} " * 5, [Comment("nice one"), Comment("cool")]) for i in range(2)]
    return write_splits(tmp_path / "data", videos, val)


def test_4bit_load_quantizes_every_linear_layer_to_nf4_within_its_bound(model64: Path) -> None:
    from transformers import AutoModelForCausalLM

    from vrp.model import load_base_model
    from vrp.precision import resolve_precision
    from vrp.quant import count_4bit_layers

    prec = resolve_precision("fp32", "4bit", "cpu")
    assert prec.load_in_4bit and prec.name == "cpu-nf4-fp32"
    model, _ = load_base_model(str(model64), prec)
    source = AutoModelForCausalLM.from_pretrained(model64, dtype=torch.float32)
    assert count_4bit_layers(model) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    layer = model.model.layers[1].mlp.down_proj
    assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.dtype == torch.uint8
    assert layer.weight.quant_state.quant_type == "nf4" and model.model.embed_tokens.weight.dtype == torch.float32
    # NF4 (Dettmers et al. 2023): 16 levels in [-1, 1] times each block's absmax; the widest gap between two levels
    # is -0.6962 - (-1), so rounding to the nearest level errs by at most 0.1519 x the block's absmax
    w = source.model.layers[1].mlp.down_proj.weight.detach()
    deq = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    blocks, err = w.reshape(-1, 64), (deq - w).reshape(-1, 64)
    assert deq.shape == w.shape and 0 < err.abs().max()
    assert (err.abs().amax(1) <= 0.1519 * blocks.abs().amax(1) + 1e-6).all()


def test_4bit_cpu_compute_dtype_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import vrp.precision as vp
    from vrp.quant import bnb_config

    monkeypatch.setattr(vp, "cpu_supports_bf16", lambda: True)
    bf = vp.resolve_precision("auto", "4bit", "cpu")
    monkeypatch.setattr(vp, "cpu_supports_bf16", lambda: False)
    fp = vp.resolve_precision("auto", "4bit", "cpu")
    assert bnb_config(bf).bnb_4bit_compute_dtype == torch.bfloat16 and bf.autocast_dtype == torch.bfloat16
    assert bnb_config(fp).bnb_4bit_compute_dtype == torch.float32 and fp.autocast_dtype is None
    assert bnb_config(fp).bnb_4bit_quant_type == "nf4"


def _lora_grads(model_dir: Path, prec, validation_first: bool, packed_kernel: bool) -> tuple[torch.Tensor, int]:
    """LoRA gradients of one training forward/backward on the 4-bit model (after a validation-style forward: eval
    mode, no gradients, when `validation_first`), and the number of layers allowed bitsandbytes' fused kernel."""
    from vrp.adapter import attach_lora
    from vrp.lora import LoraSettings
    from vrp.model import load_base_model
    from vrp.precision import autocast_ctx
    from vrp.quant import set_cpu_packed_kernel

    model, _ = load_base_model(str(model_dir), prec)
    torch.manual_seed(0)
    model = attach_lora(model, LoraSettings(8, 16, 0.0, "all-linear"), prec)
    packed = set_cpu_packed_kernel(model, packed_kernel)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # nonzero B, so that gradients reach the layers below
            torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(1))
    ids = torch.arange(3, 35).reshape(2, 16)
    if validation_first:
        model.eval()
        with torch.no_grad(), autocast_ctx(prec):
            model(input_ids=ids)
    model.train()
    with autocast_ctx(prec):
        model(input_ids=ids, labels=ids).loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]), packed


@pytest.mark.slow
def test_a_validation_pass_does_not_change_the_gradients_of_later_steps(model64: Path) -> None:
    """bitsandbytes 0.50 repacks a Linear4bit for its fused AVX512-BF16 kernel at the first eval forward without
    gradients, and that kernel has no backward: vrp turns it off for training (vrp.quant.set_cpu_packed_kernel)."""
    from vrp.precision import resolve_precision

    if not bnb.functional.has_avx512bf16():
        pytest.skip("bitsandbytes' fused kernel exists only on CPUs with AVX512-BF16")
    prec = resolve_precision("fp32", "4bit", "cpu")
    want, _ = _lora_grads(model64, prec, validation_first=False, packed_kernel=False)
    got, packed = _lora_grads(model64, prec, validation_first=True, packed_kernel=False)
    assert packed == 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    with pytest.warns(UserWarning, match="autograd kernel was not registered"):  # what the kernel would do
        dropped, packed = _lora_grads(model64, prec, validation_first=True, packed_kernel=True)
    assert packed == 2 * 7 and (dropped - want).abs().max() > 1e-3


@pytest.mark.slow
def test_4bit_run_trains_falls_back_from_paged_adamw_and_reloads_in_4bit(tmp_path: Path, data: Path, model64: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    from vrp.cli import main
    from vrp.model import load_for_inference
    from vrp.packing import make_rows
    from vrp.prompts import encode_videos
    from vrp.quant import count_4bit_layers
    from vrp.rundir import RunDir
    from vrp.train.loop import train
    from vrp.train.validate import evaluate_nll

    cfg = tiny_train_config(model64, quantization="4bit", optimizer="paged_adamw_32bit", batch_size=2, max_steps=6,
                            eval_every=6, save_every=6, curve_videos=0, gradient_checkpointing=True)
    m = train(cfg, data, tmp_path / "run", progress=False)
    err = capsys.readouterr().err
    assert "notice: optimizer paged_adamw_32bit pages its state between GPU and CPU memory" in err
    assert "uses adamw" in err
    assert m["final_val_nll"] < m["base_val_nll"] - 0.05  # 6 LoRA steps on the 4-bit base learnt something
    run = RunDir(tmp_path / "run")
    assert run.config()["quantization"] == "4bit"

    model, tok, info = load_for_inference(run=str(tmp_path / "run"), precision="fp32")
    assert info["precision"] == "cpu-nf4-fp32" and count_4bit_layers(model) == 2 * 7
    assert type(model).__name__.startswith("Peft")  # unmerged: merging would round W + BA back to NF4
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and max(float(p.abs().max()) for p in lora_b) > 0  # B starts at zero: the adapter was trained
    # the reloaded model is the trained one: its validation NLL is the run's last one, which the same adapter on
    # the unquantized base does not give
    from vrp.artifacts import DatasetDir
    from vrp.model import load_adapter, load_base_model
    from vrp.precision import resolve_precision

    val = make_rows(encode_videos(tok, DatasetDir(data).validation_videos(), run.prompt_config()), "shared_prefix",
                    cfg.max_row_tokens)
    nll = evaluate_nll(model, val, tok.pad_token_id, resolve_precision("fp32", "4bit", "cpu"))["nll"]
    assert nll == pytest.approx(m["final_val_nll"], rel=1e-5)
    fp32 = resolve_precision("fp32", "none", "cpu")
    unquantized = load_adapter(load_base_model(str(model64), fp32)[0], run.adapter())
    assert evaluate_nll(unquantized, val, tok.pad_token_id, fp32)["nll"] != pytest.approx(nll, rel=1e-4)

    out = tmp_path / "pred.jsonl"
    assert main(["generate", "--run", str(tmp_path / "run"), "--title", "title 1", "--transcript",
                 "transcript number 1 " * 5, "--preset", "greedy", "--max-new-tokens", "4", "--precision", "fp32",
                 "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["adapter"].endswith("adapter")


def test_paged_optimizers_fall_back_on_a_cpu(tiny_model_dir: Path) -> None:
    from vrp.train.optim import build_optimizer, resolve_optimizer

    assert resolve_optimizer("adamw", "cpu") == ("adamw", None)
    assert resolve_optimizer("adamw_8bit", "cpu") == ("adamw_8bit", None)
    used, notice = resolve_optimizer("paged_adamw_8bit", "cpu")
    assert used == "adamw_8bit" and "paged_adamw_8bit" in notice and "uses adamw_8bit" in notice
    assert resolve_optimizer("paged_adamw_32bit", "cuda") == ("paged_adamw_32bit", None)
    with pytest.raises(ConfigError, match="optimizer: choose from adamw, adamw_8bit, paged_adamw_32bit"):
        resolve_optimizer("adafactor", "cpu")
    layer = torch.nn.Linear(64, 64)
    assert type(build_optimizer(layer, "paged_adamw_32bit", "cpu", 1e-3, 0.0, notify=False)) is torch.optim.AdamW
    assert type(build_optimizer(layer, "paged_adamw_8bit", "cpu", 1e-3, 0.0, notify=False)) is bnb.optim.AdamW8bit


def test_without_bitsandbytes_4bit_is_one_line_naming_the_option_and_nothing_is_written(
        tmp_path: Path, data: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError
    base = ["train", "--data", str(data), "--model", str(tiny_model_dir), "--precision", "fp32", "--max-steps", "1"]
    line = one_line_error(capsys, [*base, "--out", str(tmp_path / "r1"), "--quantization", "4bit"],
                          "--quantization", "bitsandbytes", "pip install 'vrp[qlora]'")
    assert "4bit" in line
    one_line_error(capsys, [*base, "--out", str(tmp_path / "r2"), "--optimizer", "paged_adamw_8bit"],
                   "--optimizer", "adamw_8bit needs the bitsandbytes package", "or use adamw")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


# Run in a fresh interpreter: bitsandbytes is imported once per process, and the tests' HF_HUB_OFFLINE=1 must be
# absent for the check to mean anything. Every socket connection and name lookup is refused and recorded.
_OFFLINE_PROBE = r"""
import json, socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args[:2])[:80])
    raise OSError("network refused by the test")
socket.getaddrinfo = refuse
socket.create_connection = refuse
socket.socket.connect = refuse
import transformers  # imports huggingface_hub with HF_HUB_OFFLINE unset
from huggingface_hub import constants
assert "bitsandbytes" not in sys.modules and constants.HF_HUB_OFFLINE is False
from vrp.quant import hub_offline, import_bitsandbytes
bnb = import_bitsandbytes()
from bitsandbytes.backends.cpu import ops
from kernels import get_kernel
during = list(attempts)
with hub_offline():
    try:
        get_kernel("kernels-community/quantization-bitsandbytes", version=1)
    except Exception:
        pass
offline = list(attempts)
try:  # the control: without hub_offline the same call goes for the network
    get_kernel("kernels-community/quantization-bitsandbytes", version=1)
except Exception:
    pass
print(json.dumps({"import": during, "offline": offline, "control": len(attempts) - len(offline),
                  "restored": constants.HF_HUB_OFFLINE, "avx512bf16": bool(bnb.functional.has_avx512bf16()),
                  "hub_kernel": repr(getattr(ops, "gemm_4bit_forward_kernel", None))}))
"""


@pytest.mark.slow
def test_bitsandbytes_import_never_reaches_the_network() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    proc = subprocess.run([sys.executable, "-c", _OFFLINE_PROBE], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["import"] == [] and got["offline"] == []
    assert got["control"] > 0  # the probe does see a Hub request when one is made
    assert got["restored"] is False  # the user's own setting is back after the import
    if got["avx512bf16"]:  # bitsandbytes asked the Hub for its CPU kernel and fell back to its own
        assert got["hub_kernel"] == "None"
    assert "Failed to load CPU gemm_4bit_forward" not in proc.stderr
