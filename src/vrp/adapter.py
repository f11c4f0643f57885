"""A trainable LoRA adapter on a base model (Hu et al. 2021, arXiv:2106.09685): which modules may get one, and
attaching it with PEFT (`attach_lora`), with QLoRA's k-bit preparation and vrp's lean LoRA forward. Knows PEFT and the
model; the hyper-parameters and their defaults are `vrp.lora.LoraSettings`. Loading a trained adapter for inference
is `vrp.model`'s.
"""
from __future__ import annotations

import re
from typing import Any

from vrp.errors import ConfigError, first_line
from vrp.lean import make_lean
from vrp.lora import LoraSettings
from vrp.precision import Precision
from vrp.quant import import_bitsandbytes, prepare_for_kbit_training


def check_lora_targets(model: Any, targets: Any) -> None:
    """Raise ConfigError('target_modules') when a listed name matches no module of `model` (PEFT only refuses a
    list none of whose names match), or when a target is the input or output embedding of a model whose two share
    one weight (tied embeddings, as SmolLM2): LoRA there would change both, and merging it for inference would not
    give the trained model. Names match the end of a module path and a string the whole path, as in PEFT."""
    if targets == "all-linear":
        return
    paths = [n for n, _ in model.named_modules() if n]
    if isinstance(targets, str):
        hits = [n for n in paths if re.fullmatch(targets, n)]
    else:
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in paths)]
        if missing:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
            raise ConfigError("target_modules", f"no module named {missing} in {type(model).__name__}; its linear "
                                                f"layers are {linear}")
        hits = [n for n in paths if any(n == t or n.endswith("." + t) for t in targets)]
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if inp is not None and out is not None and inp.weight is out.weight:
        tied = {n for n, m in model.named_modules() if m is inp or m is out}
        if tied & set(hits):
            raise ConfigError("target_modules", f"{sorted(tied & set(hits))}: this model's input and output "
                                                f"embeddings share one weight (tied), so LoRA cannot target them")


def attach_lora(model: Any, lora: LoraSettings, prec: Precision, gradient_checkpointing: bool = False,
                lean: bool = True) -> Any:
    """Wrap `model` in a trainable PEFT LoRA model; base weights frozen, adapter weights in fp32.

    With 4-bit weights, `vrp.quant.prepare_for_kbit_training` is applied first (QLoRA, Dettmers et al. 2023: peft's
    k-bit preparation without its fp32 cast of the 16-bit weights, which vrp's autocast makes unnecessary; see there).
    `lean` (default) applies `vrp.lean.make_lean`: LoRA dropout that stores no copy of the layer inputs and,
    under autocast, no fp32 copies of them (same maths; `lean=False` is PEFT's own forward, for comparison).
    """
    from peft import LoraConfig, get_peft_model

    import_bitsandbytes()  # before peft imports it (it does when installed), so that its import stays offline
    if prec.load_in_4bit:
        model = prepare_for_kbit_training(model, gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    check_lora_targets(model, lora.target_modules)
    widths = [max(m.in_features, m.out_features) for m in model.modules() if hasattr(m, "in_features")]
    if widths and lora.r > max(widths):  # a rank above every layer's width only allocates (r=1e12: a traceback)
        raise ConfigError("lora_r", f"{lora.r} is larger than any layer of the model is wide ({max(widths)})")
    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                     target_modules=lora.target_modules, task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, cfg)
    except ValueError as e:  # peft: target modules not found / not supported
        raise ConfigError("target_modules", f"{lora.target_modules!r}: {first_line(e)}") from None
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if lean:
        make_lean(model, prec.autocast_dtype is not None)
    return model
