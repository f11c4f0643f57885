"""`vrp export --run RUN --out DIR`: a fine-tuned run as merged Hugging Face weights, a GGUF file and an Ollama
Modelfile (docs/export.md)."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp export`; every `ExportConfig` field is a flag."""
    from vrp.export.config import ExportConfig
    from vrp.options import add_dataclass_args

    p = sub.add_parser("export", help="export a run as merged HF weights, GGUF (llama.cpp) and an Ollama Modelfile",
                       description="Merge a run's LoRA adapter into its base model and write it where other tools "
                                   "run it: hf/ (safetensors + tokenizer + generation_config.json with vrp's stop "
                                   "ids: transformers, vLLM, TGI), model-TYPE.gguf (llama.cpp, LM Studio), Modelfile "
                                   "(ollama create NAME -f DIR/Modelfile) and export.json. See docs/export.md.")
    add_dataclass_args(p, ExportConfig)
    return p


def run(args: argparse.Namespace) -> int:
    """Run `vrp export` and print what was written."""
    from vrp.export.config import ExportConfig
    from vrp.export.run import export
    from vrp.options import build_config

    m = export(build_config(ExportConfig, None, vars(args)))
    print(f"exported run {m['run']} ({m['checkpoint']}) as {', '.join(m['formats'])} to {args.out}:")
    for name in m["files"]:
        print(f"  {name}")
    print(f"  export.json\nbase weights: {m['base_weights']}")
    stops = ", ".join(s["text"] for s in m["prompt"]["stop_tokens"])
    print(f"prompt format {m['prompt']['format']}, stop tokens {stops}")
    if "ollama" in m["formats"]:
        print(f"run it with Ollama: ollama create NAME -f {args.out}/Modelfile && ollama run NAME")
    return 0
