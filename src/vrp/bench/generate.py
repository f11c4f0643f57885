"""`vrp bench generate`: comment generation speed of vrp (PyTorch) and of llama.cpp on the run's exported GGUF, for
the same prompts, preset and budget, in one run.

Knows: the options (`BenchGenerateConfig`), how each engine is timed and what is reported. vrp: the run's model as
`vrp generate` loads it (base + merged adapter, `precision`), K comments per prompt from one prefill
(`vrp.decoding.generate_comments`), so all K arrive together. llama.cpp (llama-cpp-python, the `llamacpp` extra):
the GGUF of `vrp export` (`gguf`, or exported here into a temporary directory), the same prompt token ids, K
comments one after another; the prompt's KV cache is kept between them (llama-cpp-python reuses the longest common
prefix), so it is also prefilled once. Both use `threads` CPU threads and stop at vrp's stop tokens
(`vrp.prompts.stop_token_ids`) or after `max_new_tokens`. Reported per engine: comments per second (all comments /
wall time), time to first comment (median over prompts, from the call to the first finished comment), new tokens per
second, mean new tokens per comment, the share of comments that ended with a stop token, and for a deterministic
preset (`greedy`) how many prompts got the same comment from both engines.
Does not know: the sampling internals of either engine. The sampling presets match only in their parameters:
`nucleus` is temperature 0.8 and top-p 0.9 in both, but llama.cpp applies the temperature after top-p and has no
counterpart of vrp's repetition guard over the comment's own tokens (it runs with repeat_penalty 1, off), so sampled
comments differ in distribution; `greedy` is the same decision rule. Presets with beam search or a second prompt
(`cad`) have no llama.cpp counterpart and are refused (`vrp.bench.config.engine_presets`).
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vrp.bench.config import DEFAULT_TITLE, DEFAULT_TRANSCRIPT, BenchGenerateConfig
from vrp.bench.train_report import cpu_model
from vrp.decoding import generate_comments
from vrp.export.config import ExportConfig
from vrp.export.run import ExportDir, export
from vrp.generate.run import load_inputs
from vrp.model import load_for_inference, load_tokenizer
from vrp.presets import get_preset
from vrp.prompt_format import resolve_prompt_config
from vrp.prompts import stop_token_ids, video_prompt_ids
from vrp.rundir import RunDir


def _videos(cfg: BenchGenerateConfig) -> list[Any]:
    if cfg.input:
        return load_inputs(cfg.input, max_videos=cfg.max_videos)
    return load_inputs(None, DEFAULT_TITLE, DEFAULT_TRANSCRIPT)


def _summary(times: list[float], first: list[float], comments: list[tuple[int, bool]]) -> dict[str, Any]:
    wall = sum(times)
    tokens = sum(n for n, _ in comments)
    return {"wall_s": round(wall, 3), "comments": len(comments),
            "comments_per_s": round(len(comments) / wall, 3) if wall else None,
            "first_comment_s": round(statistics.median(first), 3),
            "new_tokens_per_s": round(tokens / wall, 1) if wall else None,
            "mean_new_tokens": round(tokens / len(comments), 1),
            "finished": round(sum(f for _, f in comments) / len(comments), 3)}


def _bench_vrp(cfg: BenchGenerateConfig, prompts: list[list[int]], fmt: str) -> tuple[dict[str, Any], list,
                                                                                      list[int]]:
    import torch

    torch.set_num_threads(cfg.threads)
    model, tok, info = load_for_inference(run=cfg.run, checkpoint=cfg.checkpoint, precision=cfg.precision)
    generate_comments(model, tok, prompts[0], cfg.preset, 1, 4, cfg.seed, prompt_format=fmt)  # warm-up
    times, got, texts = [], [], []
    for i, ids in enumerate(prompts):
        t0 = time.perf_counter()
        out = generate_comments(model, tok, ids, cfg.preset, cfg.num_comments, cfg.max_new_tokens, cfg.seed + i,
                                prompt_format=fmt)
        times.append(time.perf_counter() - t0)
        got += [(c.tokens, c.finished) for c in out]
        texts.append([c.token_ids for c in out])
    stops = stop_token_ids(tok, getattr(model, "generation_config", None), fmt)
    return {**_summary(times, times, got), "precision": info["precision"],
            "example": tok.decode(texts[0][0], skip_special_tokens=True)}, texts, stops


def _bench_llama_cpp(cfg: BenchGenerateConfig, gguf: str, prompts: list[list[int]], stops: list[int],
                     n_ctx: int) -> tuple[dict[str, Any], list]:
    import llama_cpp

    preset = get_preset(cfg.preset)
    kw = preset.kwargs  # without sampling: the most likely token, as vrp's greedy search
    sample = ({"temp": float(kw["temperature"]), "top_p": float(kw["top_p"]), "top_k": int(kw["top_k"])}
              if preset.samples else {"temp": 0.0, "top_k": 1, "top_p": 1.0})
    llm = llama_cpp.Llama(model_path=gguf, n_ctx=n_ctx, n_threads=cfg.threads, n_threads_batch=cfg.threads,
                          seed=cfg.seed, verbose=False)
    stop_set = set(stops)

    def one(ids: list[int]) -> tuple[list[int], bool]:
        toks: list[int] = []
        for t in llm.generate(ids, min_p=0.0, typical_p=1.0, repeat_penalty=1.0, reset=True, **sample):
            toks.append(int(t))
            if t in stop_set or len(toks) >= cfg.max_new_tokens:
                break
        return toks, toks[-1] in stop_set

    times, first, got, texts = [], [], [], []
    try:
        one(prompts[0][:8])  # warm-up
        for ids in prompts:
            llm.reset()  # a new prompt: nothing of the previous one is reused
            t0 = time.perf_counter()
            row = []
            for k in range(cfg.num_comments):
                toks, finished = one(ids)
                if k == 0:
                    first.append(time.perf_counter() - t0)
                got.append((len(toks), finished))
                row.append(toks)
            times.append(time.perf_counter() - t0)
            texts.append(row)
        example = llm.detokenize([t for t in texts[0][0] if t not in stop_set]).decode("utf-8", errors="replace")
    finally:
        llm.close()  # free the model now, not in a finalizer at interpreter exit
    return {**_summary(times, first, got), "example": example, "llama_cpp_python": llama_cpp.__version__}, texts


def run_bench(cfg: BenchGenerateConfig) -> dict[str, Any]:
    """Time both engines on the same prompts; return the result mapping (`env`, `config`, `engines`, `agreement`).
    llama.cpp is skipped, with the reason, when llama-cpp-python is not installed. Raises ConfigError / VrpError as
    `vrp export` and `vrp generate` do for a bad run, checkpoint or input."""
    import importlib.util
    import tempfile

    run = RunDir(cfg.run)
    pcfg = run.prompt_config(cfg.max_prompt_tokens)
    run.adapter(cfg.checkpoint)
    tok = load_tokenizer(run.model_spec())
    pcfg = resolve_prompt_config(tok, pcfg, announce=False)
    prompts = [video_prompt_ids(tok, v, pcfg) for v in _videos(cfg)]
    env = {"machine": f"{_cpu()}, {os.cpu_count()} cores", "python": platform.python_version(),
           "load_start": list(os.getloadavg()), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    metrics = run.metrics() or {}
    bench: dict[str, Any] = {"env": env, "config": asdict(cfg), "prompts": len(prompts),
                             "run": {"path": str(run.path), "base_model": run.model_spec(),
                                     "steps": metrics.get("steps"), "prompt_format": pcfg.prompt_format},
                             "prompt_tokens": [len(p) for p in prompts], "engines": {}}
    vrp_result, vrp_ids, stops = _bench_vrp(cfg, prompts, pcfg.prompt_format)
    bench["engines"]["vrp"] = vrp_result
    if importlib.util.find_spec("llama_cpp") is None:
        bench["engines"]["llama.cpp"] = {"skipped": "llama-cpp-python is not installed (pip install 'vrp[llamacpp]')"}
        return bench
    n_ctx = pcfg.max_prompt_tokens + cfg.max_new_tokens + 8
    with tempfile.TemporaryDirectory(prefix="vrp-bench-gguf-") as tmp:
        gguf = cfg.gguf
        if gguf is None:
            export(ExportConfig(run=cfg.run, out=str(Path(tmp) / "export"), checkpoint=cfg.checkpoint,
                                format="gguf", gguf_type=cfg.gguf_type))
            gguf = str(Path(tmp) / "export" / ExportDir.gguf_name(cfg.gguf_type))
        bench["gguf"] = cfg.gguf or ExportDir.gguf_name(cfg.gguf_type)  # a bare name: exported for the run
        result, llama_ids = _bench_llama_cpp(cfg, gguf, prompts, stops, n_ctx)
    bench["engines"]["llama.cpp"] = result
    if get_preset(cfg.preset).deterministic:  # the same decision rule in both engines: comparable comments
        bench["agreement"] = sum(a[0] == b[0] for a, b in zip(vrp_ids, llama_ids))
    return bench


def _cpu() -> str:
    return cpu_model()


def busy(bench: dict[str, Any]) -> str | None:
    """Why the timings cannot be trusted (the 1-minute load average before the run exceeded the core count), or
    None."""
    load, cores = bench["env"]["load_start"][0], bench["env"]["cores"] or 1
    return (f"The 1-minute load average before the run was {load:.2f} on {cores} cores: other processes used the "
            f"CPU." if load > cores else None)


def format_table(bench: dict[str, Any]) -> str:
    """The result as a Markdown table plus one line per engine's example comment."""
    head = ("| engine | comments/s | first comment (s, median) | new tokens/s | mean new tokens | finished |\n"
            "|---|---|---|---|---|---|")
    rows, examples = [], []
    for name, r in bench["engines"].items():
        if "skipped" in r:
            rows.append(f"| {name} | skipped: {r['skipped']} | | | | |")
            continue
        label = f"{name} ({r['precision']})" if "precision" in r else f"{name} ({Path(bench['gguf']).name})"
        rows.append(f"| {label} | {r['comments_per_s']} | {r['first_comment_s']} | {r['new_tokens_per_s']} | "
                    f"{r['mean_new_tokens']} | {r['finished']:.0%} |")
        examples.append(f"- {name}, first comment of the first prompt: {r['example'][:160]!r}")
    lines = [head, *rows, "", *examples]
    if "agreement" in bench:
        lines.append(f"- {bench['config']['preset']}: the same comment from both engines for {bench['agreement']} of "
                     f"{bench['prompts']} prompts")
    return "\n".join(lines)


def markdown_section(bench: dict[str, Any], command: str) -> str:
    """A BENCHMARKS.md section: machine, date, command, setup and the table."""
    c, e = bench["config"], bench["env"]
    lo, hi = min(bench["prompt_tokens"]), max(bench["prompt_tokens"])

    def n(k: int, what: str) -> str:
        return f"{k} {what}{'s' * (k != 1)}"

    return (f"## vrp bench generate ({e['date']})\n\n"
            f"- machine: {e['machine']}, Python {e['python']}, 1-minute load before the run "
            f"{e['load_start'][0]:.2f}\n- command: `{command}`\n"
            f"- run: {bench['run']['path']} (base {bench['run']['base_model']}, {bench['run']['steps']} optimizer "
            f"steps, prompt format {bench['run']['prompt_format']})\n"
            f"- {n(bench['prompts'], 'prompt')} of {lo if lo == hi else f'{lo}-{hi}'} tokens, preset {c['preset']}, "
            f"{n(c['num_comments'], 'comment')} per prompt, at most {c['max_new_tokens']} new tokens, "
            f"{n(c['threads'], 'thread')} per engine\n\n{format_table(bench)}\n")
