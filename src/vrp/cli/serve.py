"""`vrp serve`: load a model (+ a run's LoRA adapter) once and serve predictions over HTTP with a web page.

Knows: the flags (the fields of `vrp.serve.config.ServeConfig`, plus `--config YAML`), the run's prompt settings
(`RunDir.prompt_config`, as `vrp generate` uses them) and whether it was trained with like tiers, the default thread
count, the loopback-only default (binding elsewhere prints a warning: the server has no authentication), and that the
address is bound before the model is loaded (a port in use or a bad host fails at once; uvicorn serves on that
socket). Does not know: routes or scheduling (see `vrp.serve.app`).
"""
from __future__ import annotations

import argparse
import socket
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


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host`:`port` (the first address `getaddrinfo` gives, SO_REUSEADDR as uvicorn sets it),
    made before the model is loaded so that a bad address fails at once; uvicorn then listens on it. Raises
    ConfigError('host') for a name or address that cannot be used here, ConfigError('port') for a port in use or
    not allowed."""
    import errno

    from vrp.errors import ConfigError

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError("host", f"cannot use {host!r} as an address ({getattr(e, 'strerror', None) or e})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        field = "port" if e.errno in (errno.EADDRINUSE, errno.EACCES) else "host"
        raise ConfigError(field, f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    """Bind the address, load the model, build the app and run uvicorn on the bound socket until interrupted."""
    import logging

    import torch
    import uvicorn

    from vrp.errors import ConfigError, VrpError
    from vrp.model import load_for_inference
    from vrp.options import config_from_args
    from vrp.rundir import RunDir, prompt_settings
    from vrp.serve.app import create_app, is_loopback
    from vrp.serve.config import ServeConfig
    from vrp.tiers import run_tier_source

    cfg = config_from_args(ServeConfig, args)
    if not cfg.model and not cfg.run:
        raise ConfigError("model", "give a `model` or a `run`")
    run_dir = RunDir(cfg.run) if cfg.run else None
    prompt = prompt_settings(run_dir, cfg.max_prompt_tokens)
    threads = default_threads() if cfg.threads is None else cfg.threads
    sock = bind_socket(cfg.host, cfg.port)  # before the model: a port in use or a bad host fails at once
    torch.set_num_threads(threads)
    if not is_loopback(cfg.host):
        print(f"warning: binding to {cfg.host}: anyone who can reach this address can use the model; the "
              "server has no authentication. Use the default 127.0.0.1 unless you mean it.", file=sys.stderr)
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"loading model {cfg.model or '(from run)'}{' with run ' + cfg.run if cfg.run else ''} ...",
          file=sys.stderr, flush=True)
    try:
        loaded = load_for_inference(cfg.model, run_dir, cfg.checkpoint, cfg.precision)
    except BaseException:
        sock.close()
        raise
    info = loaded[2]
    print(f"loaded {info['model']} (adapter: {info['adapter'] or 'none'}, {info['precision']}, "
          f"torch threads: {threads}); "
          f"serving on http://{cfg.host}:{cfg.port}/", file=sys.stderr, flush=True)
    app = create_app(cfg, loaded, prompt, tiers=run_tier_source(run_dir) is not None)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level,
                                           server_header=False, timeout_graceful_shutdown=5))
    with sock:
        server.run(sockets=[sock])
    if not server.started:  # uvicorn logged why
        raise VrpError(f"the server on {cfg.host}:{cfg.port} did not start")
    return 0
