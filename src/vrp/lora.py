"""LoRA's hyper-parameters and their defaults (`LoraSettings`, Hu et al. 2021, arXiv:2106.09685), which every
stage's config takes from here. Imports nothing heavy, so that every command's `--help` stays fast.

Does not know: attaching an adapter to a model (`vrp.adapter`), loading models or saved adapters (`vrp.model`).
Errors about a value are `ConfigError`s naming the option (`target_modules`, `lora_r`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vrp.limits import LORA_RANK
from vrp.options import option


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (Hu et al. 2021, arXiv:2106.09685) and their defaults, which every stage's config
    takes from here (`TrainConfig.lora_*`, the benchmark). target_modules: 'all-linear' or a list of names."""

    r: int = option("LoRA rank r", 16, limit=LORA_RANK)
    alpha: int = option("LoRA alpha (scaling = alpha / r)", 32)
    dropout: float = option("dropout on the LoRA input (0 = none, as PEFT's default: without it a CPU step takes ~19% "
                            "less time at the same validation NLL, docs/sweep.md)", 0.0)
    target_modules: Any = option("modules that get LoRA: all-linear, names (q_proj,v_proj or a JSON list such as "
                                 "[\"q_proj\",\"v_proj\"]) or a regular expression matching whole module paths",
                                 "all-linear")
