"""`vrp serve`: load a model (+ a run's LoRA adapter) once and serve predictions over HTTP with a web page.

Knows: the flags, how they map to `vrp.serve.app.ServeSettings`, the run's prompt settings (`max_prompt_tokens`,
`truncation` from RUN/config.yaml, as `vrp generate` uses them), and the loopback-only default (binding elsewhere
prints a warning: the server has no authentication). Does not know: routes or scheduling (see `vrp.serve.app`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp serve`."""
    p = sub.add_parser("serve", help="serve predictions over HTTP (API + web page)",
                       description="Load the model once and serve POST /v1/predict, POST /v1/predict/file, "
                                   "GET /v1/info, GET /healthz, /openapi.json and a web page at /.")
    src = p.add_argument_group("model (one of --run / --model)")
    src.add_argument("--run", help="run dir from `vrp train` (its base model + adapter)")
    src.add_argument("--checkpoint", help="use RUN/checkpoints/<name>/adapter instead of RUN/adapter ('latest' ok)")
    src.add_argument("--model", help="base model (smollm2-135m, .gguf, HF dir or id); alone: serve the base model")
    src.add_argument("--precision", default="auto", help="auto, bf16 or fp32 (default: auto)")
    src.add_argument("--threads", type=int, default=None,
                     help="torch CPU threads for generation (default: CPU cores - 1, at least 1, leaving a core "
                          "for the event loop, tokenization and clients; on a busy 2-core machine 2 threads "
                          "were 6-20x slower than 1)")
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1, loopback only)")
    net.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-body-mb", type=float, default=2.0, help="request body limit in MB (default: 2)")
    lim.add_argument("--max-prompt-tokens", type=int, default=None,
                     help="prompt token budget; the transcript is cut to fit (default: the run's, else 1024)")
    lim.add_argument("--max-num-comments", type=int, default=20, help="most comments per request (default: 20)")
    lim.add_argument("--max-new-tokens", type=int, default=256, help="most new tokens per comment a request may "
                                                                     "ask for (default: 256)")
    lim.add_argument("--default-max-new-tokens", type=int, default=None,
                     help="new tokens per comment when a request does not say (default: 150)")
    lim.add_argument("--queue-size", type=int, default=8,
                     help="requests that may wait while one generates; more get 503 (default: 8)")
    lim.add_argument("--timeout-s", type=float, default=120.0, help="per-request time limit incl. waiting; "
                                                                     "then 504 (default: 120)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def prompt_config_for(run: str | None, max_prompt_tokens: int | None) -> Any:
    """The PromptConfig the server uses: the run's `max_prompt_tokens` / `truncation` (RUN/config.yaml) when
    given, overridden by `--max-prompt-tokens`; defaults otherwise."""
    from vrp.options import load_yaml
    from vrp.prompts import PromptConfig

    kw: dict[str, Any] = {}
    if run and (Path(run) / "config.yaml").is_file():
        saved = load_yaml(Path(run) / "config.yaml") or {}
        kw = {k: saved[k] for k in ("max_prompt_tokens", "truncation") if k in saved}
    if max_prompt_tokens:
        kw["max_prompt_tokens"] = max_prompt_tokens
    return PromptConfig(**kw)


def default_threads() -> int:
    """Generation threads when `--threads` is not given: the usable CPU cores minus one, at least 1."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def build_settings(args: argparse.Namespace) -> Any:
    """ServeSettings from parsed flags. Raises VrpError on inconsistent limits."""
    from vrp.decoding import MAX_NEW_TOKENS
    from vrp.errors import VrpError
    from vrp.serve.app import ServeSettings

    if not 0 < args.port < 65536:
        raise VrpError(f"--port must be in 1..65535, got {args.port}")
    default_tokens = args.default_max_new_tokens or min(MAX_NEW_TOKENS, args.max_new_tokens)
    return ServeSettings(host=args.host, port=args.port, max_body_bytes=int(args.max_body_mb * 1_000_000),
                         prompt=prompt_config_for(args.run, args.max_prompt_tokens),
                         max_num_comments=args.max_num_comments,
                         default_num_comments=min(5, args.max_num_comments),
                         max_new_tokens_limit=args.max_new_tokens, default_max_new_tokens=default_tokens,
                         queue_size=args.queue_size, request_timeout_s=args.timeout_s)


def run(args: argparse.Namespace) -> int:
    """Load the model, build the app and run uvicorn until interrupted."""
    import logging

    import torch
    import uvicorn

    from vrp.errors import VrpError
    from vrp.model import load_for_inference
    from vrp.serve.app import create_app, is_loopback

    settings = build_settings(args)
    threads = default_threads() if args.threads is None else args.threads
    if threads < 1:
        raise VrpError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    if not is_loopback(settings.host):
        print(f"warning: binding to {settings.host}: anyone who can reach this address can use the model; the "
              "server has no authentication. Use the default 127.0.0.1 unless you mean it.", file=sys.stderr)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"loading model {args.model or '(from run)'}{' with run ' + args.run if args.run else ''} ...",
          file=sys.stderr, flush=True)
    loaded = load_for_inference(args.model, args.run, args.checkpoint, args.precision)
    info = loaded[2]
    print(f"loaded {info['model']} (adapter: {info['adapter'] or 'none'}, {info['precision']}, "
          f"torch threads: {threads}); "
          f"serving on http://{settings.host}:{settings.port}/", file=sys.stderr, flush=True)
    app = create_app(settings, loaded)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, server_header=False,
                timeout_graceful_shutdown=5)
    return 0
