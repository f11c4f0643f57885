"""The optimizer of a training run: `optimizer` names (those of transformers' `TrainingArguments.optim` for the
same optimizers) and what each builds on which device.

Knows: AdamW (Loshchilov & Hutter 2019, arXiv:1711.05101) from torch (`adamw`, fused over the fp32 LoRA weights) or
from bitsandbytes (Dettmers et al. 2022, arXiv:2110.02861): `adamw_8bit` keeps both moments in 8 bits per value
(block-wise quantized; tensors under 4,096 values keep them in 32 bits), the `paged_*` ones let CUDA page their state
to CPU memory under memory pressure (unified memory), which only CUDA can do. On a CPU a paged optimizer is replaced
by its unpaged equivalent, with a notice: `paged_adamw_32bit` by torch's AdamW (the same update; bitsandbytes 0.50
itself runs it unpaged on a CPU, within 1.2e-7 of torch's after 5 steps here), `paged_adamw_8bit` by bitsandbytes'
`AdamW8bit` (bitsandbytes 0.50 has a CPU kernel for it).
Does not know: the schedule or the step loop (`vrp.train.setup`, `vrp.train.loop`).
"""
from __future__ import annotations

import sys
from typing import Any

from vrp.errors import ConfigError
from vrp.quant import INSTALL_HINT, import_bitsandbytes

OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_32bit", "paged_adamw_8bit")
# what a paged optimizer becomes without CUDA
CPU_EQUIVALENT = {"paged_adamw_32bit": "adamw", "paged_adamw_8bit": "adamw_8bit"}


def resolve_optimizer(name: str, device: str) -> tuple[str, str | None]:
    """`(the optimizer a run on `device` uses, a notice when it is not `name`)`. Raises ConfigError('optimizer') for
    an unknown name, or for a bitsandbytes optimizer when bitsandbytes is not installed (naming the pip command),
    before anything is loaded or written."""
    if name not in OPTIMIZERS:
        raise ConfigError("optimizer", f"choose from {', '.join(OPTIMIZERS)}, got {name!r}")
    used, notice = name, None
    if device != "cuda" and name in CPU_EQUIVALENT:
        used = CPU_EQUIVALENT[name]
        notice = (f"notice: optimizer {name} pages its state between GPU and CPU memory, which needs CUDA; this "
                  f"{device} run uses {used} (the same update, state in CPU memory)")
    if used != "adamw":
        if import_bitsandbytes() is None:
            raise ConfigError("optimizer", f"{used} needs the bitsandbytes package: {INSTALL_HINT}; or use adamw")
    return used, notice


def build_optimizer(model: Any, name: str, device: str, lr: float, weight_decay: float,
                    notify: bool = True) -> Any:
    """The optimizer `name` (resolved for `device` by `resolve_optimizer`, whose notice is printed to stderr when
    `notify`) over the trainable parameters of `model`, learning rate `lr`, decoupled weight decay
    `weight_decay`; betas (0.9, 0.999) and eps 1e-8 in every implementation."""
    import torch

    used, notice = resolve_optimizer(name, device)
    if notice and notify:
        print(notice, file=sys.stderr, flush=True)
    params = [p for p in model.parameters() if p.requires_grad]
    if used == "adamw":
        # the fused kernel: one pass over all LoRA weights (5 ms instead of 15 ms per step for SmolLM2's 5.9M on a
        # CPU thread); plain fp32 tensors only (FSDP's sharded DTensor parameters keep the default implementation)
        fused = all(type(p.data) is torch.Tensor and p.dtype == torch.float32 for p in params)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)

    bnb = import_bitsandbytes()
    cls = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_32bit": bnb.optim.PagedAdamW32bit,
           "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}[used]
    return cls(params, lr=lr, weight_decay=weight_decay)
