"""Regional compilation: `torch.compile` of each decoder layer of a (PEFT-wrapped) causal LM (`compile_layers`).

Knows: that the decoder layers are the repeated blocks of the decoder (`decoder.layers`, see
`vrp.loss.decoder_and_head`); that compiling each with `dynamic=True` makes one graph serve every row length, so rows
need no bucketing to repeat shapes (checked: lengths 100, 120, 140 ran without recompiling) and dynamo reuses the
compiled code for all layers (same class, the weights are graph inputs); that `vrp.attention`'s causal-prefix search
runs eagerly (one graph break per layer); that LoRA dropout (`vrp.lean.DropoutLinear`: a seed drawn with
`.item()` and a `torch.Generator` per call) breaks the graph around every LoRA layer, so compilation pays with
`lora_dropout` 0 only.
Measured (SmolLM2-135M, 4 shared-prefix rows x 1,103 tokens, bf16 autocast, lora_dropout 0, 1 CPU thread): 13.6 s
instead of 15.5 s of CPU per training step, after ~40 s of compilation in the first step (docs/benchmarks-history.md,
"Training memory and step time"). Also whether this machine can compile at all (`check_compiler`: inductor needs a
working C++ compiler on a CPU, Triton on a GPU), checked before a run loads its model or writes anything: the
compilation itself happens only at the first forward pass, after the run dir is written.
Does not know: training (`vrp.train`).
"""
from __future__ import annotations

from typing import Any

from vrp.errors import ConfigError, VrpError, first_line
from vrp.loss import decoder_and_head


def compile_decoder_layers(model: Any) -> int:
    """Compile every decoder layer of `model` in place (`nn.Module.compile(dynamic=True)`); returns how many.
    Raises VrpError when the model is not a causal LM (`decoder_and_head`) or its decoder has no `layers`."""

    decoder, _ = decoder_and_head(model)
    layers = getattr(decoder, "layers", None)
    if not layers:
        raise VrpError(f"{type(decoder).__name__}: no decoder layers to compile (`compile_layers`)")
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def check_compiler(device: str) -> None:
    """Raise ConfigError('compile_layers') unless `torch.compile` (inductor) can build and run code on `device` now:
    a one-line function with a constant drawn for this call (so that no kernel cached by an earlier process stands in
    for a compilation) is compiled with dynamic shapes and run on a small tensor. Takes a few seconds; the error
    gives the first line of what failed (e.g. inductor's `InvalidCxxCompiler` where no C++ compiler is installed)."""
    import logging
    import secrets
    import warnings

    import torch
    from torch._inductor import config as inductor_config

    scale = 1.0 + secrets.randbelow(10 ** 6) / 10 ** 7
    # a new code object with the constant as a literal: dynamo traces it afresh and inductor generates new source
    namespace: dict[str, Any] = {"torch": torch}
    exec(f"def probe(x):\n    return torch.nn.functional.silu(x) * {scale!r}\n", namespace)  # noqa: S102
    quiet = logging.getLogger("torch._inductor")  # says where it kept a failed compilation's files
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)
        # compile, never load an earlier process's kernel (torch warns that this turns off its profile-guided cache)
        with inductor_config.patch(force_disable_caches=True), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = torch.compile(namespace["probe"], dynamic=True)(torch.ones(8, device=device))
        ok = bool(torch.allclose(out.cpu(), torch.nn.functional.silu(torch.ones(8)) * scale))
        why = "" if ok else "the compiled code computed a wrong result"
    except Exception as e:  # noqa: BLE001 - inductor, Triton and the compiler fail in many types
        ok, why = False, f"{type(e).__name__}: {first_line(e)}"[:300]
    finally:
        quiet.setLevel(level)
    if not ok:
        need = "a C++ compiler (e.g. g++)" if device == "cpu" else "Triton and a C compiler"
        raise ConfigError("compile_layers", f"torch.compile cannot build code on this machine ({why}); it needs "
                                            f"{need}: install it, or train without `compile_layers`")

