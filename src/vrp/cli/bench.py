"""`vrp bench <what>`: bounded benchmarks. `vrp bench serve` is the loopback load check of `vrp serve`, `vrp bench
train` the training-throughput comparison.

Each benchmark is one function `add_<name>_parser(bench_subparsers)` that registers its sub-subcommand (the fields
of its config dataclass as flags, plus `--config YAML` and its output flags) and sets `_bench_run` to its run
function; to add one, write that function and append it to `BENCH_PARSERS`. Knows the default data of `vrp bench
train` (the seed dataset next to the repository) and where results are appended (BENCHMARKS.md at the repository
root). Does not know what the benchmarks measure (see `vrp.bench.serve`, `vrp.bench.train`).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[3]
SEED_TRAIN = REPO_ROOT.parent / "shared" / "data" / "uos2023" / "train_dataset.xlsx"


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
    out.add_argument("--append-md", help="append a result section to this Markdown file (e.g. BENCHMARKS.md)")
    add_config_args(p, BenchServeConfig, "load check options")
    p.set_defaults(_bench_run=run_serve, _parser=p)
    return p


def run_serve(args: argparse.Namespace) -> int:
    """Run `vrp bench serve`; exit status 1 when a status other than 200/503 was seen."""
    import contextlib

    from vrp.bench.config import BenchServeConfig
    from vrp.bench.serve import format_result, markdown_section, run_load, started_server
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
        with open(args.append_md, "a", encoding="utf-8") as f:
            f.write(markdown_section(res, _command("serve"), model))
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
                                    "RSS and MFU and append a section to BENCHMARKS.md. Run it on an idle machine: "
                                    "the default run takes about 13 minutes on 2 idle cores, --quick about 2. (a) "
                                    "needs TRL: pip install 'vrp[bench]'. Default --data: " + str(SEED_TRAIN))
    out = p.add_argument_group("output")
    out.add_argument("--output", help="Markdown file to append to (default: BENCHMARKS.md at the repository root)")
    out.add_argument("--no-write", action="store_true", help="print only; do not append to the Markdown file")
    out.add_argument("--json-out", help="also write the raw results as JSON to this file")
    add_config_args(p, BenchTrainConfig, "benchmark options")
    p.set_defaults(_bench_run=run_train, _parser=p)
    return p


def run_train(args: argparse.Namespace) -> int:
    """`vrp bench train`: run, print the table and summary (the last stdout line is the (c)/(a) comments/s
    ratio), append the section to BENCHMARKS.md unless `--no-write`, optionally write the raw results as JSON."""
    import dataclasses

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
    if cfg.data is None and SEED_TRAIN.is_file():
        cfg = dataclasses.replace(cfg, data=str(SEED_TRAIN))
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
        path = Path(args.output) if args.output else (REPO_ROOT / "BENCHMARKS.md" if (
            REPO_ROOT / "pyproject.toml").is_file() else Path("BENCHMARKS.md"))
        if why and not cfg.write_when_busy:
            print(f"not appended to {path}: {why} Rerun on an idle machine, or pass --write-when-busy.",
                  file=sys.stderr)
            return 1
        append_section(path, section)
        print(f"appended a section to {path}", file=sys.stderr)
    return 0


def add_generate_parser(bsub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp bench generate` (comment generation: vrp in PyTorch vs llama.cpp on the exported GGUF; see
    `vrp.bench.generate`)."""
    from vrp.bench.config import BenchGenerateConfig
    from vrp.options import add_config_args

    p = bsub.add_parser("generate", help="generation speed: vrp (PyTorch) vs llama.cpp on the run's exported GGUF",
                        description="Generate K comments for the same prompts with vrp (one prefill for K samples) "
                                    "and with llama.cpp on the run's GGUF (`vrp export`; exported here when --gguf is "
                                    "not given) and print comments/s and the time to the first comment; appends a "
                                    "section to BENCHMARKS.md. llama.cpp needs llama-cpp-python: pip install "
                                    "'vrp[llamacpp]' (without it only vrp is timed).")
    out = p.add_argument_group("output")
    out.add_argument("--output", help="Markdown file to append to (default: BENCHMARKS.md at the repository root)")
    out.add_argument("--no-write", action="store_true", help="print only; do not append to the Markdown file")
    out.add_argument("--json-out", help="also write the raw results as JSON to this file")
    add_config_args(p, BenchGenerateConfig, "benchmark options")
    p.set_defaults(_bench_run=run_generate, _parser=p)
    return p


def run_generate(args: argparse.Namespace) -> int:
    """`vrp bench generate`: run, print the table, append the section unless `--no-write` (and not on a busy machine
    unless `--write-when-busy`), optionally write the raw results as JSON."""
    from vrp.bench.config import BenchGenerateConfig
    from vrp.bench.generate import busy, format_table, markdown_section, run_bench
    from vrp.bench.train_report import append_section
    from vrp.files import write_json_atomic
    from vrp.options import config_from_args

    cfg = config_from_args(BenchGenerateConfig, args)
    bench = run_bench(cfg)
    print(format_table(bench), flush=True)
    if args.json_out:
        write_json_atomic(args.json_out, bench)
    if not args.no_write:
        path = Path(args.output) if args.output else (REPO_ROOT / "BENCHMARKS.md" if (
            REPO_ROOT / "pyproject.toml").is_file() else Path("BENCHMARKS.md"))
        why = busy(bench)
        if why and not cfg.write_when_busy:
            print(f"not appended to {path}: {why} Rerun on an idle machine, or pass --write-when-busy.",
                  file=sys.stderr)
            return 1
        append_section(path, markdown_section(bench, _command("generate")))
        print(f"appended a section to {path}", file=sys.stderr)
    return 0


# One function per benchmark.
BENCH_PARSERS: list[Callable[[argparse._SubParsersAction], argparse.ArgumentParser]] = [add_serve_parser,
                                                                                       add_train_parser,
                                                                                       add_generate_parser]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp bench` and its sub-subcommands."""
    p = sub.add_parser("bench", help="bounded benchmarks (serve: loopback load check; train: training throughput; "
                                     "generate: vrp vs llama.cpp generation speed)",
                       description="Bounded benchmarks. Run `vrp bench <name> --help` for each.")
    bsub = p.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    for add in BENCH_PARSERS:
        add(bsub)
    return p


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen benchmark."""
    return int(args._bench_run(args) or 0)
