"""`vrp bench <what>`: bounded benchmarks. `vrp bench serve` is the loopback load check of `vrp serve`, `vrp bench
train` the training-throughput comparison.

Each benchmark is one function `add_<name>_parser(bench_subparsers)` that registers its sub-subcommand (the fields
of its config dataclass as flags, plus `--config YAML` and its output flags) and sets `_bench_run` to its run
function; to add one, write that function and append it to `BENCH_PARSERS`. Knows the default data of `vrp bench
train` (the seed dataset next to the repository, read only) and where results are written (`results_path`: where
the flags say, else the current directory; never the installed package's directory). Does not know what the
benchmarks measure (see `vrp.bench.serve`, `vrp.bench.train`).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Callable

HISTORY = Path("docs") / "benchmarks-history.md"   # relative: the history log of a vrp checkout, from its root
OUTPUT_HELP = ("Markdown file to append the section to (default: docs/benchmarks-history.md when it exists under the "
               "current directory, as in a vrp checkout, else BENCHMARKS.md in the current directory)")


def results_path(output: str | None) -> Path:
    """The Markdown file a `vrp bench train` / `vrp bench generate` section is appended to: `output` (`--output`)
    when given; else `docs/benchmarks-history.md` when that file exists under the current directory (run from the
    root of a vrp checkout: its history log, see BENCHMARKS.md); else `BENCHMARKS.md` in the current directory.
    Relative paths are relative to the current directory; the result never depends on where vrp is installed."""
    if output:
        return Path(output)
    return HISTORY if HISTORY.is_file() else Path("BENCHMARKS.md")


def _command(name: str) -> str:
    """The command line as typed, for the BENCHMARKS.md section."""
    given = sys.argv[3:] if sys.argv[1:3] == ["bench", name] else []
    return " ".join([f"vrp bench {name}", *(shlex.quote(a) for a in given)])


def add_serve_parser(bsub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp bench serve`."""
    from vrp.bench.config import BenchServeConfig
    from vrp.options import add_config_args

    p = bsub.add_parser("serve", help="load check of the prediction server on 127.0.0.1",
                        description="Send N POST /v1/predict requests at concurrency C to a loopback server (started "
                                    "here with --model/--run, or a running one with --url) and report latency "
                                    "percentiles, statuses and the server's RSS before/after.")
    out = p.add_argument_group("output")
    out.add_argument("--json-out", help="also write the result as JSON to this file")
    out.add_argument("--append-md", help="append a result section to this Markdown file (e.g. "
                                         "docs/benchmarks-history.md); nothing is appended without it")
    add_config_args(p, BenchServeConfig, "load check options")
    p.set_defaults(_bench_run=run_serve, _parser=p)
    return p


def run_serve(args: argparse.Namespace) -> int:
    """Run `vrp bench serve`; exit status 1 when a status other than 200/503 was seen."""
    import contextlib

    from vrp.bench.config import BenchServeConfig
    from vrp.bench.serve import format_result, markdown_section, run_load, started_server
    from vrp.bench.train_report import append_section
    from vrp.files import write_json_atomic
    from vrp.options import config_from_args

    cfg = config_from_args(BenchServeConfig, args)
    if cfg.url:
        target = contextlib.nullcontext((cfg.url, cfg.server_pid))
        model = f"server at {cfg.url}"
    else:
        target = started_server(cfg.model, cfg.run, cfg.checkpoint, cfg.server_args())
        model = " ".join(x for x in (cfg.model, f"run {cfg.run}" if cfg.run else "") if x)
        print(f"starting vrp serve ({model}) on 127.0.0.1 ...", file=sys.stderr, flush=True)
    with target as (url, pid):
        res = run_load(cfg, url, server_pid=pid, progress=True)
    print(format_result(res))
    if args.json_out:
        write_json_atomic(args.json_out, res.to_json())
    if args.append_md:
        append_section(Path(args.append_md), markdown_section(res, _command("serve"), model).lstrip("\n"))
    unexpected = {k: v for k, v in res.statuses.items() if k not in ("200", "503")}
    if unexpected:
        print(f"unexpected statuses: {unexpected}", file=sys.stderr)
        return 1
    return 0


def add_train_parser(bsub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp bench train` (training throughput: TRL per example vs vrp none vs shared_prefix; see
    `vrp.bench.train`)."""
    from vrp.bench.config import BenchTrainConfig
    from vrp.options import add_config_args

    p = bsub.add_parser("train", help="training throughput: TRL SFTTrainer vs vrp packing none / shared_prefix",
                        description="Time LoRA training of the same comments with (a) TRL SFTTrainer, one example "
                                    "per row, (b) vrp --packing none, (c) vrp shared-prefix packing, each in its own "
                                    "process, at several comment counts per video; print comments/s, tokens/s, peak "
                                    "RSS and MFU and append a section to the benchmark history (--output). Run it "
                                    "on an idle machine: the default run takes about 13 minutes on 2 idle cores, "
                                    "--quick about 2. (a) "
                                    "needs TRL: pip install 'vrp[bench]'. --data: any table `vrp prepare` reads (`make bench-train` "
                                    "passes the original project's train_dataset.xlsx)")
    _add_output_args(p)
    add_config_args(p, BenchTrainConfig, "benchmark options")
    p.set_defaults(_bench_run=run_train, _parser=p)
    return p


def run_train(args: argparse.Namespace) -> int:
    """`vrp bench train`: run, print the table and summary (the last stdout line is the (c)/(a) comments/s
    ratio), append the section to `results_path(--output)` unless `--no-write`, optionally write the raw results as
    JSON."""

    from vrp.bench.config import bench_train_config
    from vrp.bench.train import run_bench
    from vrp.bench.train_report import (
        append_section,
        busy,
        format_table,
        markdown_section,
        memory_section,
        summary_lines,
    )
    from vrp.files import write_json_atomic

    cfg = bench_train_config(args.config, vars(args))
    if cfg.nproc > 1:  # 1 vs N processes of `vrp train` instead of the configurations
        from vrp.bench.scaling import format_scaling, run_scaling, scaling_busy, scaling_section

        bench = run_scaling(cfg)
        section, why = scaling_section(bench, _command("train")), scaling_busy(bench)
        print(format_scaling(bench), flush=True)
    elif "memory" in (bench := run_bench(cfg)):
        section, why = memory_section(bench, _command("train")), None   # memory figures do not depend on the load
        print(section, flush=True)
    else:
        section, why = markdown_section(bench, _command("train")), busy(bench)
        print(format_table(bench))
        print()
        print("\n".join(summary_lines(bench)), flush=True)
    if args.json_out:
        write_json_atomic(args.json_out, bench)
    if not args.no_write:
        path = results_path(args.output)
        if why and not cfg.write_when_busy:
            print(f"not appended to {path}: {why} Rerun on an idle machine, or pass --write-when-busy.",
                  file=sys.stderr)
            return 1
        append_section(path, section)
        print(f"appended a section to {path}", file=sys.stderr)
    return 0


def _add_output_args(p: argparse.ArgumentParser) -> None:
    """The output flags every `vrp bench` subcommand shares: --output, --no-write, --json-out."""
    out = p.add_argument_group("output")
    out.add_argument("--output", help=OUTPUT_HELP)
    out.add_argument("--no-write", action="store_true", help="print only; do not append to the Markdown file")
    out.add_argument("--json-out", help="also write the raw results as JSON to this file")


def add_generate_parser(bsub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp bench generate` (comment generation: vrp in PyTorch vs llama.cpp on the exported GGUF; see
    `vrp.bench.generate`)."""
    from vrp.bench.config import BenchGenerateConfig
    from vrp.options import add_config_args

    p = bsub.add_parser("generate", help="generation speed: vrp (PyTorch) vs llama.cpp on the run's exported GGUF",
                        description="Generate K comments for the same prompts with vrp (one prefill for K samples) "
                                    "and with llama.cpp on the run's GGUF (`vrp export`; exported here when --gguf is "
                                    "not given) and print comments/s and the time to the first comment; appends a "
                                    "section to the benchmark history (--output). llama.cpp needs "
                                    "llama-cpp-python: pip install 'vrp[llamacpp]' (without it only vrp is timed).")
    _add_output_args(p)
    add_config_args(p, BenchGenerateConfig, "benchmark options")
    p.set_defaults(_bench_run=run_generate, _parser=p)
    return p


def run_generate(args: argparse.Namespace) -> int:
    """`vrp bench generate`: run, print the table, append the section unless `--no-write` (and not on a busy machine
    unless `--write-when-busy`), optionally write the raw results as JSON."""
    from vrp.bench.config import BenchGenerateConfig
    from vrp.bench.generate import busy, format_table, markdown_section, run_bench
    from vrp.options import config_from_args

    cfg = config_from_args(BenchGenerateConfig, args)
    bench = run_bench(cfg)
    print(format_table(bench), flush=True)
    return _write_results(args, bench, markdown_section(bench, _command("generate")), busy(bench),
                          cfg.write_when_busy)


def _write_results(args: argparse.Namespace, bench: dict, section: str, why: str | None, when_busy: bool) -> int:
    """The raw results as JSON (`--json-out`), then `section` appended to `results_path(--output)` unless
    `--no-write`, or refused (exit 1) when the machine was busy (`why`) and not `--write-when-busy`."""
    from vrp.bench.train_report import append_section
    from vrp.files import write_json_atomic

    if args.json_out:
        write_json_atomic(args.json_out, bench)
    if not args.no_write:
        path = results_path(args.output)
        if why and not when_busy:
            print(f"not appended to {path}: {why} Rerun on an idle machine, or pass --write-when-busy.",
                  file=sys.stderr)
            return 1
        append_section(path, section)
        print(f"appended a section to {path}", file=sys.stderr)
    return 0


def add_data_parser(bsub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp bench data` (how `vrp prepare` and `vrp train`'s start-up grow with the number of videos; see
    `vrp.bench.data`)."""
    from vrp.bench.config import BenchDataConfig
    from vrp.options import add_config_args

    p = bsub.add_parser("data", help="scale: vrp prepare and vrp train start-up at 10^3..10^5 synthetic videos",
                        description="Write synthetic JSONL tables of N videos (one row per comment, ~5 KB "
                                    "transcripts) into a temporary directory and measure, for each N, `vrp prepare` "
                                    "(time, peak RSS, dataset size per video) and, when vrp has a token cache, "
                                    "`vrp train --max-steps 1` to its first optimizer step (cold: building the "
                                    "cache, warm: reusing it, in 1 and 2 processes); print the table with 10^6 "
                                    "extrapolated and append a section to the benchmark history (--output). 10^5 "
                                    "videos need about 9 GB of temporary disk (--work-dir).")
    _add_output_args(p)
    add_config_args(p, BenchDataConfig, "benchmark options")
    p.set_defaults(_bench_run=run_data, _parser=p)
    return p


def run_data(args: argparse.Namespace) -> int:
    """`vrp bench data`: run, print the table and growth lines, append the section to `results_path(--output)`
    unless `--no-write` (and not on a busy machine unless `--write-when-busy`), optionally write the raw JSON."""
    from vrp.bench.config import BenchDataConfig
    from vrp.bench.data import run_bench
    from vrp.bench.data_report import busy, format_table, growth_lines, markdown_section
    from vrp.options import config_from_args

    cfg = config_from_args(BenchDataConfig, args)
    bench = run_bench(cfg)
    print(format_table(bench))
    print("\n".join(growth_lines(bench)), flush=True)
    return _write_results(args, bench, markdown_section(bench, _command("data")), busy(bench), cfg.write_when_busy)


# One function per benchmark.
BENCH_PARSERS: list[Callable[[argparse._SubParsersAction], argparse.ArgumentParser]] = [add_serve_parser,
                                                                                       add_train_parser,
                                                                                       add_generate_parser,
                                                                                       add_data_parser]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp bench` and its sub-subcommands."""
    p = sub.add_parser("bench", help="bounded benchmarks (serve: loopback load check; train: training throughput; "
                                     "generate: vrp vs llama.cpp generation speed; data: scale of prepare and "
                                     "training start-up)",
                       description="Bounded benchmarks. Run `vrp bench <name> --help` for each.")
    bsub = p.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    for add in BENCH_PARSERS:
        add(bsub)
    return p


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen benchmark."""
    return int(args._bench_run(args) or 0)
