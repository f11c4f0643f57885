"""`vrp export`: a fine-tuned run as files other tools run: merged Hugging Face weights, a GGUF file, an Ollama
Modelfile, and `export.json` saying what they are.

Knows: the options (`ExportConfig`), the export directory (`ExportDir`: `hf/`, `model-<type>.gguf`, `Modelfile`,
`export.json`), the order of the work (every check that needs no weights first: the run and its checkpoint, the tier,
the output directory, the GGUF writer's support of the architecture and tokenizer, the Modelfile's template; then
the merge, then the files), and how the directory appears: everything is written into a temporary directory beside
`out` and renamed into place, so a failure (a full disk, a kill) leaves no half-written file under the final name,
and a non-empty `out` is replaced only with `overwrite` and only when it is an export (it holds export.json).
Does not know: how each format is written (`vrp.export.hf`, `vrp.export.gguf`, `vrp.export.ollama`) or how prompts
are rendered (`vrp.prompts`, whose text, stop ids and prompt format every format takes).
Errors: a bad option is a `ConfigError` naming it (`run`, `checkpoint`, `out`, `format`, ...); an unsupported model or
a failed write is one `VrpError` line.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from vrp import __version__
from vrp.artifacts import _Dir
from vrp.errors import VrpError
from vrp.export.config import ExportConfig
from vrp.export.gguf import GgufMeta, check_supported, write_gguf
from vrp.export.hf import base_weights_note, merged_model, resolve_dtype, write_hf
from vrp.export.ollama import modelfile, prompt_layout
from vrp.files import current_umask, sha256_file
from vrp.model import load_tokenizer, model_location
from vrp.presets import DEFAULT_PRESET, MAX_NEW_TOKENS, get_preset
from vrp.prompt_format import resolve_prompt_config
from vrp.prompts import end_of_turn_id, stop_token_ids, user_message
from vrp.rundir import RunDir, check_adapter
from vrp.tiers import MARKERS, check_tier, run_tier_source


class ExportDir(_Dir):
    """What `vrp export` writes: `hf/` (format hf), `model-<type>.gguf` (gguf, ollama), `Modelfile` (ollama) and
    `export.json` (always: what was exported, the prompt layout, sha256 of every file)."""

    HF, MODELFILE, MANIFEST = "hf", "Modelfile", "export.json"
    KIND, MARKERS = "vrp export", (MANIFEST,)

    @staticmethod
    def gguf_name(gguf_type: str) -> str:
        """The GGUF file's name for a tensor type: `model-f16.gguf`."""
        return f"model-{gguf_type}.gguf"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _prepare(cfg: ExportConfig) -> dict[str, Any]:
    """Every check that needs no weights; returns what the writing needs (run, prompt config, tokenizer, ...)."""
    from transformers import AutoConfig

    run = RunDir(cfg.run)
    pcfg = run.prompt_config()  # ConfigError('run') when it is not a run
    adapter = run.adapter(cfg.checkpoint)  # ConfigError('run' / 'checkpoint') when missing
    check_adapter(adapter)  # VrpError naming a damaged adapter file, before any weights are loaded
    check_tier(cfg.tier, run_tier_source(run) is not None)
    ExportDir(cfg.out).check_new(cfg.overwrite, inputs=[("run", cfg.run)])
    spec = run.model_spec()
    location = model_location(spec)
    tok = load_tokenizer(spec, location)
    pcfg = resolve_prompt_config(tok, pcfg, announce=False)
    base_config = AutoConfig.from_pretrained(location, local_files_only=True)
    pre = None
    if {"gguf", "ollama"} & set(cfg.formats()):
        pre = check_supported(base_config, tok)
    return {"run": run, "pcfg": pcfg, "adapter": adapter, "spec": spec, "location": location,
            "base_config": base_config, "pre": pre, "tokenizer": tok}


def export(cfg: ExportConfig) -> dict[str, Any]:
    """Export the run of `cfg` in its formats into `cfg.out`; return the export.json mapping (see `ExportDir`).

    Checks everything that needs no weights before loading them (ConfigError naming the option; VrpError for a model
    the GGUF writer does not support), then merges the adapter (`vrp.export.hf.merged_model`) and writes each format
    into a temporary directory beside `out`, renamed into place at the end. Raises VrpError naming `out` when the
    files cannot be written (a full disk: nothing is left under `out`'s name, and an earlier export there stays)."""

    p = _prepare(cfg)
    run, pcfg, tok, formats = p["run"], p["pcfg"], p["tokenizer"], cfg.formats()
    marker = MARKERS[cfg.tier] + "\n" if cfg.tier in MARKERS else ""
    layout = prompt_layout(tok, pcfg, marker) if "ollama" in formats else None
    preset = get_preset(DEFAULT_PRESET)
    sampling = {k: preset.kwargs[k] for k in ("do_sample", "temperature", "top_p", "top_k")}
    _log(f"merging {p['adapter']} into {p['spec']} (fp32) ...")
    model, tok, _ = merged_model(run, cfg.checkpoint)
    stops = stop_token_ids(tok, getattr(model, "generation_config", None), pcfg.prompt_format)
    stop_texts = [tok.decode([i], skip_special_tokens=False) for i in stops]
    chat = pcfg.prompt_format == "chat"
    out = Path(cfg.out)
    gguf_name = ExportDir.gguf_name(cfg.gguf_type)
    manifest: dict[str, Any] = {
        "vrp_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run": str(run.path.resolve()), "checkpoint": cfg.checkpoint or "adapter (the last step's)",
        "adapter": str(p["adapter"].resolve()), "base_model": p["spec"], "base_model_path": p["location"],
        "base_weights": base_weights_note(run), "formats": formats,
        "gguf": gguf_name if {"gguf", "ollama"} & set(formats) else None,
        "gguf_type": cfg.gguf_type if {"gguf", "ollama"} & set(formats) else None,
        "prompt": {"format": pcfg.prompt_format, "system_prompt": pcfg.system_prompt if chat else None,
                   "user_message": user_message("<title>", "<transcript>"),
                   "max_prompt_tokens": pcfg.max_prompt_tokens, "truncation": pcfg.truncation,
                   "tier": cfg.tier, "tier_marker": marker,
                   "stop_tokens": [{"id": int(i), "text": t} for i, t in zip(stops, stop_texts)]},
        "sampling": {"preset": DEFAULT_PRESET, **sampling, "max_new_tokens": MAX_NEW_TOKENS},
    }
    modelfile_text = None
    if layout is not None:  # before anything is written: a text a Modelfile cannot hold is an error
        header = [f"Made by vrp export from {run.path} ({manifest['checkpoint']}); see docs/export.md.",
                  "The prompt is vrp's user message for a video: `vrp generate --print-prompt user` prints it."]
        n_marker = len(tok(marker, add_special_tokens=False)["input_ids"]) if marker else 0
        modelfile_text = modelfile(gguf_name, layout, stop_texts, sampling, MAX_NEW_TOKENS,
                                   pcfg.max_prompt_tokens + n_marker + MAX_NEW_TOKENS, header)
    stage = _stage_dir(out)
    try:
        if manifest["gguf"]:
            _log(f"writing {gguf_name} ...")
            meta = GgufMeta(name=f"{p['spec']} + vrp run {run.path.name}",
                            chat_template=tok.chat_template if chat else None,
                            end_of_turn_id=end_of_turn_id(tok) if chat else stops[0], sampling=sampling)
            write_gguf(model, tok, stage / gguf_name, cfg.gguf_type, meta, p["pre"])
        if modelfile_text is not None:
            (stage / ExportDir.MODELFILE).write_text(modelfile_text, encoding="utf-8")
        if "hf" in formats:
            _log("writing hf/ ...")
            dtype = resolve_dtype(cfg.hf_dtype, p["base_config"])
            manifest["hf_dtype"] = str(dtype).replace("torch.", "")
            write_hf(model, tok, stage / ExportDir.HF, stops, sampling, MAX_NEW_TOKENS, dtype, chat)
        manifest["files"] = {f.relative_to(stage).as_posix(): sha256_file(f)
                             for f in sorted(stage.rglob("*")) if f.is_file()}
        (stage / ExportDir.MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
        _usual_modes(stage)
        _swap_into_place(stage, out)
    except OSError as e:
        raise VrpError(f"{out}: cannot write the export ({e.strerror or e}); nothing was written there") from None
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return manifest


def _stage_dir(out: Path) -> Path:
    """A new temporary directory beside `out` (same file system, so the final rename is atomic)."""
    try:
        out.absolute().parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.absolute().parent))
    except OSError as e:
        raise VrpError(f"{out}: cannot write the export ({e.strerror or e})") from None


def _usual_modes(stage: Path) -> None:
    """Give the staged directory and its files the modes of new ones (0777 / 0666 minus the umask), not the private
    modes of `mkdtemp` and of the temporary files some writers rename into place."""

    mask = current_umask()
    for p in [stage, *stage.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def _swap_into_place(stage: Path, out: Path) -> None:
    """Rename `stage` to `out`; an existing `out` (empty, or an export `overwrite` may replace) is first renamed
    aside and deleted only once the new one is in place (if the rename fails, the old one is put back)."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        os.replace(stage, out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.absolute().parent))
    os.replace(out, aside / out.name)
    try:
        os.replace(stage, out)
    except OSError:
        os.replace(aside / out.name, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)
