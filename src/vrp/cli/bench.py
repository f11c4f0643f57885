"""`vrp bench <what>`: bounded benchmarks. `vrp bench serve` is the loopback load check of `vrp serve`.

Each benchmark is one function `add_<name>_parser(bench_subparsers)` that registers its sub-subcommand and sets
`_bench_run` to its run function; to add one (e.g. `vrp bench train`), write that function and append it to
`BENCH_PARSERS`. Does not know what the benchmarks measure (see `vrp.bench.serve`).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from typing import Callable


def add_serve_parser(bsub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp bench serve`."""
    p = bsub.add_parser("serve", help="load check of the prediction server on 127.0.0.1",
                        description="Send N POST /v1/predict requests at concurrency C to a loopback server (started "
                                    "here with --model/--run, or a running one with --url) and report latency "
                                    "percentiles, statuses and the server's RSS before/after.")
    tgt = p.add_argument_group("target (one of --url / --model / --run)")
    tgt.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000 (loopback only)")
    tgt.add_argument("--server-pid", type=int, help="pid of the --url server, to read its RSS")
    tgt.add_argument("--model", help="start `vrp serve --model MODEL` for the check")
    tgt.add_argument("--run", help="start `vrp serve --run RUN` for the check")
    tgt.add_argument("--checkpoint", help="with --run: serve this checkpoint")
    tgt.add_argument("--queue-size", type=int, default=8, help="queue size of the started server (default: 8)")
    tgt.add_argument("--threads", type=int, default=None, help="--threads of the started server (default: its own)")
    load = p.add_argument_group("load")
    load.add_argument("--requests", type=int, default=50, help="requests to send (default: 50)")
    load.add_argument("--concurrency", type=int, default=4, help="requests in flight (default: 4)")
    load.add_argument("--max-seconds", type=float, default=900.0, help="start no request after this (default: 900)")
    load.add_argument("--request-timeout-s", type=float, default=300.0, help="client timeout per request (300)")
    load.add_argument("--no-warmup", action="store_true", help="skip the uncounted warm-up request")
    req = p.add_argument_group("request body")
    req.add_argument("--title", default=None, help="video title (default: a short built-in one)")
    req.add_argument("--transcript", default=None, help="transcript text (default: a short built-in one)")
    req.add_argument("--num-comments", type=int, default=1, help="comments per request (default: 1)")
    req.add_argument("--max-new-tokens", type=int, default=40, help="new tokens per comment (default: 40)")
    req.add_argument("--preset", default="nucleus", help="decoding preset (default: nucleus)")
    out = p.add_argument_group("output")
    out.add_argument("--json-out", help="also write the result as JSON to this file")
    out.add_argument("--append-md", help="append a result section to this Markdown file (e.g. BENCHMARKS.md)")
    p.set_defaults(_bench_run=run_serve)
    return p


def run_serve(args: argparse.Namespace) -> int:
    """Run `vrp bench serve`; exit status 1 when a status other than 200/503 was seen."""
    import contextlib

    from vrp.bench.serve import (
        DEFAULT_TITLE,
        DEFAULT_TRANSCRIPT,
        format_result,
        markdown_section,
        run_load,
        started_server,
    )
    from vrp.errors import VrpError
    from vrp.io import write_json_atomic

    if bool(args.url) == bool(args.model or args.run):
        raise VrpError("give either --url (a running server) or --model/--run (start one)")
    payload = {"title": DEFAULT_TITLE if args.title is None else args.title,
               "transcript": args.transcript or DEFAULT_TRANSCRIPT, "num_comments": args.num_comments,
               "max_new_tokens": args.max_new_tokens, "preset": args.preset}
    if args.url:
        target = contextlib.nullcontext((args.url, args.server_pid))
        model = f"server at {args.url}"
    else:
        extra = ["--queue-size", str(args.queue_size)] + (["--threads", str(args.threads)] if args.threads else [])
        target = started_server(args.model, args.run, args.checkpoint, extra)
        model = " ".join(x for x in (args.model, f"run {args.run}" if args.run else "") if x)
        print(f"starting vrp serve ({model}) on 127.0.0.1 ...", file=sys.stderr, flush=True)
    with target as (url, pid):
        res = run_load(url, args.requests, args.concurrency, payload, server_pid=pid,
                       request_timeout_s=args.request_timeout_s, max_seconds=args.max_seconds,
                       warmup=not args.no_warmup, progress=True)
    print(format_result(res))
    if args.json_out:
        write_json_atomic(args.json_out, res.to_json())
    if args.append_md:
        given = sys.argv[3:] if sys.argv[1:3] == ["bench", "serve"] else []
        command = " ".join(["vrp bench serve", *(shlex.quote(a) for a in given)])
        with open(args.append_md, "a", encoding="utf-8") as f:
            f.write(markdown_section(res, command, model))
    unexpected = {k: v for k, v in res.statuses.items() if k not in ("200", "503")}
    if unexpected:
        print(f"unexpected statuses: {unexpected}", file=sys.stderr)
        return 1
    return 0


def add_train_parser(bsub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp bench train` (training throughput: TRL per example vs vrp none vs shared_prefix; see
    `vrp.bench.train`)."""
    p = bsub.add_parser("train", help="training throughput: TRL SFTTrainer vs vrp packing none / shared_prefix",
                        description="Time LoRA training of the same comments with (a) TRL SFTTrainer, one example "
                                    "per row, (b) vrp --packing none, (c) vrp shared-prefix packing, each in its own "
                                    "process, at several comment counts per video; print comments/s, tokens/s, peak "
                                    "RSS and MFU and append a section to BENCHMARKS.md. Run it on an idle machine: "
                                    "the default run takes roughly 40 minutes on 2 cores, --quick about 2.")
    p.add_argument("--quick", action="store_true", help="small smoke run (3 comments/video, 256-token prompts, "
                                                         "batch 2; about 2 minutes on an idle 2-core machine)")
    p.add_argument("--comments-per-video", help="comma-separated comment counts K (default: 3,10,30); above a "
                                                "video's own count, real comments of the following videos are added")
    p.add_argument("--configs", help="comma-separated subset of trl,none,shared_prefix (default: all)")
    p.add_argument("--videos", type=int, help="videos per comment count (default 0 = automatic: the fewest with "
                                              ">= 24 comments whose shared-prefix rows fill --steps batches)")
    p.add_argument("--steps", type=int, help="timed optimizer steps of shared_prefix at least (default: 1); the other "
                                             "configurations learn the same comments")
    p.add_argument("--batch-size", type=int, help="rows per optimizer step, all configurations (default: 4)")
    p.add_argument("--max-prompt-tokens", type=int, help="prompt budget in tokens (default: 1024)")
    p.add_argument("--max-row-tokens", type=int, help="longest shared-prefix row in tokens; longer videos "
                                                      "are split into rows (default: 1.5 x --max-prompt-tokens)")
    p.add_argument("--model", help="base model (default: smollm2-135m)")
    p.add_argument("--data", help="source of videos (default: ../shared/data/uos2023/train_dataset.xlsx)")
    p.add_argument("--precision", help="auto (default), bf16 or fp32")
    p.add_argument("--threads", type=int, help="torch CPU threads in every configuration (default: torch's own, "
                                               "one per core; on a busy machine 1 thread can be much faster)")
    p.add_argument("--peak-size", type=int, help="matrix size of the matmul-peak measurement (default: 4096)")
    p.add_argument("--no-val-check", action="store_true", help="skip the validation-NLL check none vs shared_prefix")
    p.add_argument("--output", help="Markdown file to append to (default: BENCHMARKS.md at the repository root)")
    p.add_argument("--no-write", action="store_true", help="print only; do not append to the Markdown file")
    p.add_argument("--json-out", help="also write the raw results as JSON to this file")

    def run_train(args: argparse.Namespace) -> int:
        from vrp.bench.train import run_cli

        given = sys.argv[3:] if sys.argv[1:3] == ["bench", "train"] else []
        return run_cli(args, " ".join(["vrp bench train", *(shlex.quote(a) for a in given)]))

    p.set_defaults(_bench_run=run_train)
    return p


# One function per benchmark; `vrp bench train` is added by appending its `add_train_parser` here.
BENCH_PARSERS: list[Callable[[argparse._SubParsersAction], argparse.ArgumentParser]] = [add_serve_parser,
                                                                                       add_train_parser]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp bench` and its sub-subcommands."""
    p = sub.add_parser("bench", help="bounded benchmarks (serve: loopback load check)",
                       description="Bounded benchmarks. Run `vrp bench <name> --help` for each.")
    bsub = p.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    for add in BENCH_PARSERS:
        add(bsub)
    return p


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen benchmark."""
    return int(args._bench_run(args) or 0)
