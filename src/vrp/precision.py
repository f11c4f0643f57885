"""Precision: which device and dtypes a run computes in (`resolve_precision`, chosen at run time), and the autocast
context for them. Imports torch only inside its functions, so that configs can name the choices (`PRECISIONS`,
`QUANTIZATIONS`) and `--help` stays fast. Does not load models (`vrp.model`) or quantize weights (`vrp.quant`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vrp.errors import ConfigError
from vrp.quant import require_bitsandbytes

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
QUANTIZATIONS = ("none", "4bit")


@dataclass
class Precision:
    """Resolved numeric setup. device: 'cpu' or 'cuda'; weight_dtype: dtype of frozen base weights;
    autocast_dtype: dtype for `torch.autocast` (None = no autocast); load_in_4bit: NF4 QLoRA via bitsandbytes."""

    device: str
    weight_dtype: Any
    autocast_dtype: Any
    load_in_4bit: bool = False

    @property
    def name(self) -> str:
        """Short label such as `cpu-bf16-autocast`."""
        ac = {None: "fp32"}.get(self.autocast_dtype, str(self.autocast_dtype).replace("torch.", ""))
        return f"{self.device}-{'nf4-' if self.load_in_4bit else ''}{ac}"


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matmul (AVX512-BF16 or AMX-BF16), per /proc/cpuinfo flags."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str = "auto", quantization: str = "none", device: str = "auto") -> Precision:
    """Choose device and dtypes at run time.

    precision: auto|bf16|fp16|fp32; quantization: none|4bit; device: auto|cpu|cuda.
    Raises ConfigError (naming the option) for fp16 on a CPU, bf16 on a CPU without bf16 support, device cuda
    without CUDA, or 4-bit without bitsandbytes (`vrp.quant.require_bitsandbytes`, imported here, before a run
    writes anything). 4-bit computes in the autocast dtype (bf16 where the device supports it), or fp32.
    """
    import torch

    if precision not in PRECISIONS:
        raise ConfigError("precision", f"choose from {', '.join(PRECISIONS)}, got {precision!r}")
    if quantization not in QUANTIZATIONS:
        raise ConfigError("quantization", f"choose from {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    has_cuda = torch.cuda.is_available()
    if device == "auto":
        device = "cuda" if has_cuda else "cpu"
    if device == "cuda" and not has_cuda:
        raise ConfigError("device", "cuda: no CUDA device is available")
    if quantization == "4bit":
        require_bitsandbytes()
    if device == "cpu":
        if precision == "fp16":
            raise ConfigError("precision", "fp16 is not supported on a CPU; use bf16 (if the CPU supports it) or fp32")
        if precision == "bf16" and not cpu_supports_bf16():
            raise ConfigError("precision", "bf16: this CPU has no AVX512-BF16/AMX; use fp32")
        if precision == "fp32" or (precision == "auto" and not cpu_supports_bf16()):
            return Precision("cpu", torch.float32, None, quantization == "4bit")
        return Precision("cpu", torch.bfloat16, torch.bfloat16, quantization == "4bit")
    if precision in ("auto", "bf16"):
        dt = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if precision == "bf16" and dt != torch.bfloat16:
            raise ConfigError("precision", "bf16: this GPU does not support bf16; use fp16")
    elif precision == "fp16":
        dt = torch.float16
    else:
        return Precision("cuda", torch.float32, None, quantization == "4bit")
    return Precision("cuda", dt, dt, quantization == "4bit")


def autocast_ctx(prec: Any) -> contextlib.AbstractContextManager:
    """`torch.autocast` for the resolved precision, or a null context for fp32."""
    import torch

    if prec.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(prec.device, dtype=prec.autocast_dtype)
