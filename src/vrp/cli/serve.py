"""`vrp serve`: load a model (+ a run's LoRA adapter) once and serve predictions over HTTP with a web page.

Knows: the flags (the fields of `vrp.serve.config.ServeConfig`, plus `--config YAML`), the run's prompt settings
(`RunDir.prompt_config`, as `vrp generate` uses them) and whether it was trained with like tiers, the default thread count, and the loopback-only default
(binding elsewhere prints a warning: the server has no authentication). Does not know: routes or scheduling (see
`vrp.serve.app`).
"""
from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp serve`; every `ServeConfig` field is a flag (flags override the --config YAML)."""
    from vrp.options import add_config_args
    from vrp.serve.config import ServeConfig

    p = sub.add_parser("serve", help="serve predictions over HTTP (API + web page)",
                       description="Load the model (one of --run / --model) once and serve POST /v1/predict, "
                                   "POST /v1/predict/file, GET /v1/info, GET /healthz, /openapi.json and a web page "
                                   "at /.")
    add_config_args(p, ServeConfig, "server options")
    return p


def default_threads() -> int:
    """Generation threads when `threads` is not given: the usable CPU cores minus one, at least 1."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def run(args: argparse.Namespace) -> int:
    """Load the model, build the app and run uvicorn until interrupted."""
    import logging

    import torch
    import uvicorn

    from vrp.artifacts import RunDir
    from vrp.errors import ConfigError
    from vrp.model import load_for_inference
    from vrp.options import config_from_args
    from vrp.predict import prompt_settings
    from vrp.serve.app import create_app, is_loopback
    from vrp.serve.config import ServeConfig
    from vrp.tiers import run_tier_source

    cfg = config_from_args(ServeConfig, args)
    if not cfg.model and not cfg.run:
        raise ConfigError("model", "give a `model` or a `run`")
    run_dir = RunDir(cfg.run) if cfg.run else None
    prompt = prompt_settings(run_dir, cfg.max_prompt_tokens)
    threads = default_threads() if cfg.threads is None else cfg.threads
    torch.set_num_threads(threads)
    if not is_loopback(cfg.host):
        print(f"warning: binding to {cfg.host}: anyone who can reach this address can use the model; the "
              "server has no authentication. Use the default 127.0.0.1 unless you mean it.", file=sys.stderr)
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"loading model {cfg.model or '(from run)'}{' with run ' + cfg.run if cfg.run else ''} ...",
          file=sys.stderr, flush=True)
    loaded = load_for_inference(cfg.model, run_dir, cfg.checkpoint, cfg.precision)
    info = loaded[2]
    print(f"loaded {info['model']} (adapter: {info['adapter'] or 'none'}, {info['precision']}, "
          f"torch threads: {threads}); "
          f"serving on http://{cfg.host}:{cfg.port}/", file=sys.stderr, flush=True)
    app = create_app(cfg, loaded, prompt, tiers=run_tier_source(run_dir) is not None)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, server_header=False,
                timeout_graceful_shutdown=5)
    return 0
