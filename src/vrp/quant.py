"""4-bit NF4 base weights through bitsandbytes (QLoRA, Dettmers et al. 2023, arXiv:2305.14314) on CPU and CUDA.

Knows: how bitsandbytes is imported without reaching the network, the `BitsAndBytesConfig` a 4-bit run loads its
base model with (NF4, no double quantization, the run's compute dtype), how a model is prepared for LoRA training on
4-bit weights, and whether a loaded model holds 4-bit layers.
Does not know: precision choice or model loading in general (`vrp.model`), LoRA settings (`vrp.lora`), optimizers
(`vrp.train.optim`).

What bitsandbytes does where (0.50.2, read from its source and run on this project's CPU): `Linear4bit` stores NF4
weights (4 bits per weight plus one absmax per 64 weights) on CPU and CUDA alike; the forward dequantizes to the
compute dtype (bf16 or fp32) and multiplies; on a CPU with AVX512-BF16, in eval mode without gradients, it takes a
fused dequantize + matmul kernel in bf16 instead (`gemv_4bit`, on weights repacked for it). bitsandbytes' CPU backend loads that kernel, at
import, from the Hugging Face Hub through the `kernels` package (`kernels-community/quantization-bitsandbytes`) and
falls back to its own library when that fails; `import_bitsandbytes` keeps the attempt offline.
The fused CPU kernel has a catch: the first forward of a `Linear4bit` in eval mode without gradients (a validation
pass) repacks its weight in place for that kernel, and from then on every forward, in training too, takes the fused
kernel, which has no autograd formula: the gradient into the layer's input is silently dropped (torch warns
"an autograd kernel was not registered"), so LoRA layers below it learn from a wrong gradient; it also computes in
bf16 whatever the compute dtype. `set_cpu_packed_kernel` turns it off for training (`prepare_for_kbit_training`)
and, for inference, keeps it only where the compute dtype is bf16 and the layer's shape fits it.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from vrp.errors import ConfigError

# the version tested (0.50.2; the CPU backend of 4-bit layers and 8-bit optimizers is recent, older ones not tried)
MIN_BITSANDBYTES = "0.50"
INSTALL_HINT = f"pip install 'vrp[qlora]' (or pip install 'bitsandbytes>={MIN_BITSANDBYTES}')"
# loggers that announce the Hub attempt made while bitsandbytes is imported (see `hub_offline`)
_HUB_ATTEMPT_LOGGERS = ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub")


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Hold the Hugging Face Hub in offline mode for the duration, whatever HF_HUB_OFFLINE said, and quiet the
    warnings about a Hub kernel that could not be loaded.

    `huggingface_hub` reads HF_HUB_OFFLINE once, into `huggingface_hub.constants.HF_HUB_OFFLINE`, when it is first
    imported (transformers imports it long before bitsandbytes); `kernels.get_kernel` reads that constant at call
    time and then resolves kernels from the local Hub cache only, and every request of huggingface_hub is refused
    while it is set (huggingface_hub 2.5, kernels 0.19). So setting it here keeps bitsandbytes' import offline: a
    kernel already in the local cache is used, none is downloaded."""
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE
    loggers = [logging.getLogger(name) for name in _HUB_ATTEMPT_LOGGERS]
    levels = [lg.level for lg in loggers]
    constants.HF_HUB_OFFLINE = True
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = offline
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def import_bitsandbytes() -> ModuleType | None:
    """The `bitsandbytes` module, imported with the Hub offline (`hub_offline`), or None when it is not installed.

    Call this before anything else may import bitsandbytes: peft imports it while it attaches or loads any LoRA
    adapter when it is installed (`peft.import_utils.is_bnb_4bit_available`), and transformers when it loads a 4-bit
    model; `vrp.model.load_base_model` calls it first."""
    if "bitsandbytes" in sys.modules:
        return sys.modules["bitsandbytes"]  # None when an import was blocked
    try:
        with hub_offline():
            import bitsandbytes
    except ImportError:
        return None
    return bitsandbytes


def require_bitsandbytes(what: str = "4bit") -> ModuleType:
    """The imported bitsandbytes module. Raises ConfigError('quantization') naming the pip command when it is not
    installed; `what` is the option value that needs it."""
    bnb = import_bitsandbytes()
    if bnb is None:
        raise ConfigError("quantization", f"{what} needs the bitsandbytes package: {INSTALL_HINT}")
    return bnb


def bnb_config(prec: Any) -> Any:
    """The `transformers.BitsAndBytesConfig` of a 4-bit run: NF4 weights (the QLoRA paper's 4-bit NormalFloat), no
    double quantization (it saves 0.37 bits per weight at some speed), matmuls in the run's compute dtype:
    `prec.autocast_dtype` (bf16 on CPUs with AVX512-BF16/AMX and on GPUs, fp16 on GPUs without bf16), fp32 when
    the run has no autocast. Modules transformers keeps unquantized (the output embedding) stay in
    `prec.weight_dtype`."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False,
                              bnb_4bit_compute_dtype=prec.autocast_dtype or torch.float32)


def device_map(prec: Any) -> dict[str, Any]:
    """`from_pretrained`'s device_map for a 4-bit model: the whole model on this process's GPU (the current device
    is the LOCAL_RANK's under torchrun, `vrp.train.distributed.start`) or on the CPU."""
    import torch

    return {"": torch.cuda.current_device() if prec.device == "cuda" else "cpu"}


def count_4bit_layers(model: Any) -> int:
    """Number of bitsandbytes `Linear4bit` modules in `model` (0 for a model without any, or without
    bitsandbytes). A PEFT LoRA layer around one counts once (its `base_layer`)."""
    bnb = sys.modules.get("bitsandbytes")
    if bnb is None:
        return 0
    return sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def prepare_for_kbit_training(model: Any, gradient_checkpointing: bool) -> Any:
    """Prepare a 4-bit model for LoRA training as `peft.prepare_model_for_kbit_training` does, except its cast of
    every 16-bit parameter (embeddings, norms, the LM head) to fp32: freeze every weight and, with
    `gradient_checkpointing`, turn it on (non-reentrant, so no input needs a gradient). Returns the model.

    Why no fp32 cast: in QLoRA as published (and peft's helper) it protects fp16/bf16 norms and the LM head's
    softmax when training runs in half precision without autocast. vrp trains 16-bit weights under `torch.autocast`
    (`vrp.precision.autocast_ctx`), its RMSNorms (the model's and `vrp.lean.LeanRMSNorm`) reduce in fp32 and its
    loss takes the log-softmax in fp32 (`vrp.loss`), so the cast would only turn the residual stream fp32 (the
    embedding's output takes its weight's dtype): more activation memory and other rounding than vrp's 16-bit
    runs of the same model, with which a 4-bit run should be compared. In a fp32 run there is nothing to cast.
    bitsandbytes' fused CPU kernel is turned off (`set_cpu_packed_kernel`): it would drop gradients after the first
    validation pass."""
    for p in model.parameters():
        p.requires_grad = False
    set_cpu_packed_kernel(model, False)
    if gradient_checkpointing:  # the method's name since transformers 5.23, the old one before
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.enable_input_require_grads()
    return model


def check_4bit(model: Any, spec: str) -> None:
    """Raise ConfigError('quantization') when a model loaded in 4-bit has no `Linear4bit` layer (transformers
    quantizes only `nn.Linear` layers, and leaves some architectures' alone), so a run never claims a 4-bit base it
    does not have."""
    if count_4bit_layers(model) == 0:
        raise ConfigError("quantization", f"4bit: model {spec} ({type(model).__name__}) has no linear layer that "
                                          f"bitsandbytes quantized; use none")


def set_cpu_packed_kernel(model: Any, allowed: bool) -> int:
    """Allow or forbid bitsandbytes' fused AVX512-BF16 kernel (`gemv_4bit` on weights repacked in place, bitsandbytes
    0.50 `Linear4bit.forward`) for each `Linear4bit` of `model`; returns how many layers may use it.

    Forbidden, a layer dequantizes its weight to the compute dtype and multiplies, in eval as in training (the
    kernel has no backward, see the module docstring). Allowed (inference with bf16 compute: the kernel computes in
    bf16) only where the layer's shape fits the repacking (out_features a multiple of 32, in_features a multiple of
    the quantization block, 64), which otherwise fails with a reshape error. A layer that was already repacked
    stays so; call this before the first forward."""
    bnb = sys.modules.get("bitsandbytes")
    n = 0
    if bnb is None:
        return n
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit) and hasattr(m, "support_avx512bf16_for_cpu"):
            state = getattr(m.weight, "quant_state", None)
            block = getattr(state, "blocksize", 64) or 64
            fits = m.out_features % 32 == 0 and m.in_features % block == 0
            m.support_avx512bf16_for_cpu = bool(allowed and fits and bnb.functional.has_avx512bf16())
            n += m.support_avx512bf16_for_cpu
    return n
