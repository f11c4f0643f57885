"""Regional compilation: `torch.compile` of each decoder layer of a (PEFT-wrapped) causal LM (`compile_layers`).

Knows: that the decoder layers are the repeated blocks of the decoder (`decoder.layers`, see
`vrp.loss.decoder_and_head`); that compiling each with `dynamic=True` makes one graph serve every row length, so rows
need no bucketing to repeat shapes (checked: lengths 100, 120, 140 ran without recompiling) and dynamo reuses the
compiled code for all layers (same class, the weights are graph inputs); that `vrp.attention`'s causal-prefix search
runs eagerly (one graph break per layer); that LoRA dropout (`vrp.train.lean.DropoutLinear`: a seed drawn with
`.item()` and a `torch.Generator` per call) breaks the graph around every LoRA layer, so compilation pays with
`lora_dropout` 0 only.
Measured (SmolLM2-135M, 4 shared-prefix rows x 1,103 tokens, bf16 autocast, lora_dropout 0, 1 CPU thread): 13.6 s
instead of 15.5 s of CPU per training step, after ~40 s of compilation in the first step (BENCHMARKS.md,
"Training memory and step time"). Does not know: training (`vrp.train`).
"""
from __future__ import annotations

from typing import Any


def compile_decoder_layers(model: Any) -> int:
    """Compile every decoder layer of `model` in place (`nn.Module.compile(dynamic=True)`); returns how many.
    Raises VrpError when the model is not a causal LM (`decoder_and_head`) or its decoder has no `layers`."""
    from vrp.errors import VrpError
    from vrp.loss import decoder_and_head

    decoder, _ = decoder_and_head(model)
    layers = getattr(decoder, "layers", None)
    if not layers:
        raise VrpError(f"{type(decoder).__name__}: no decoder layers to compile (`compile_layers`)")
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
