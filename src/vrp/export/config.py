"""`ExportConfig`: the options of `vrp export`, with their help texts, defaults and checks, and the choices they take
(`FORMATS`, `GGUF_TYPES`, `HF_DTYPES`). Imports nothing heavy; the stage is `vrp.export.run`.
"""
from __future__ import annotations

from dataclasses import dataclass

from vrp.errors import ConfigError
from vrp.options import check_choice, check_no_repeats, coerce_fields, option
from vrp.tiers import TIER_CHOICES

GGUF_TYPES = ("f16", "bf16", "q8_0")  # tensor types `vrp.export.gguf` writes
HF_DTYPES = ("auto", "fp32", "bf16", "fp16")  # dtypes `vrp.export.hf` saves
FORMATS = ("hf", "gguf", "ollama")


@dataclass
class ExportConfig:
    """Options of `vrp export`; the field docs are the `--help`."""

    run: str | None = option("run dir from `vrp train` to export (its base model + adapter)", None)
    out: str | None = option("export directory to write (hf/, model-TYPE.gguf, Modelfile, export.json)", None)
    checkpoint: str | None = option("export a checkpoint of the run instead of RUN/adapter (the last step's): "
                                    "step-000050, latest or best (the lowest validation NLL)", None)
    format: str = option("what to write, comma-separated: hf (merged safetensors + tokenizer), gguf (one GGUF file "
                         "for llama.cpp), ollama (the GGUF + a Modelfile)", "hf,gguf,ollama")
    gguf_type: str = option("tensor type of the GGUF file: f16, bf16 or q8_0 (1-D tensors stay f32)", "f16")
    hf_dtype: str = option("dtype of the hf weights: auto (the base checkpoint's bf16/fp16, else fp32), fp32, bf16, "
                           "fp16", "auto")
    tier: str = option("like tier whose marker ends the Modelfile's template, for a run trained with tiers: top, "
                       "typical, low or any (no marker)", "any")
    overwrite: bool = option("replace a non-empty `out` that holds an earlier export", False)

    def __post_init__(self) -> None:
        coerce_fields(self)
        for name in ("run", "out"):
            if not getattr(self, name):
                raise ConfigError(name, "is required")
        names = self.formats()
        if not names:
            raise ConfigError("format", f"no format named in {self.format!r}; choose from {', '.join(FORMATS)}")
        for name in names:
            if name not in FORMATS:
                raise ConfigError("format", f"unknown format {name!r}; choose from {', '.join(FORMATS)}")
        check_no_repeats(self, "format", names)
        check_choice(self, "gguf_type", GGUF_TYPES)
        check_choice(self, "hf_dtype", HF_DTYPES)
        check_choice(self, "tier", TIER_CHOICES)

    def formats(self) -> list[str]:
        """The formats of `format` (comma-separated), in order."""
        return [x.strip() for x in self.format.split(",") if x.strip()]
