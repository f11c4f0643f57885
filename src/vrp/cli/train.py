"""`vrp train --data DATASET_DIR --out RUN_DIR [--config YAML] [flags]`: LoRA fine-tuning."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp train`; every `TrainConfig` field is a flag (flags override the YAML)."""
    from vrp.options import add_config_args
    from vrp.train.config import TrainConfig

    p = sub.add_parser("train", help="fine-tune a causal LM with LoRA on a dataset dir",
                       description="Fine-tune with LoRA. Options come from the dataclass defaults, then --config "
                                   "YAML, then flags. The resolved config is saved as RUN_DIR/config.yaml.")
    p.add_argument("--data", required=True, help="dataset dir from `vrp prepare` (train.jsonl, validation.jsonl)")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete a non-empty --out and start over")
    add_config_args(p, TrainConfig, "training options")
    return p


def resumed_config(args: argparse.Namespace) -> object:
    """The config of the run in `--out` (its config.yaml), with only `RESUMABLE` options taken from the flags.
    Raises ConfigError / VrpError when the flags ask for anything else."""
    import dataclasses

    from vrp.errors import ConfigError, VrpError
    from vrp.options import build_config, coerce_values
    from vrp.rundir import RunDir
    from vrp.train.config import PATH_OPTIONS, RESUMABLE, TrainConfig, resolve_path_option

    run = RunDir(args.out)
    if not run.exists():
        raise ConfigError("resume", f"{args.out} has no {run.CONFIG}")
    if args.config:
        raise ConfigError("config", f"`resume` continues with {run.config_path}; do not pass a config file")
    if args.overwrite:
        raise ConfigError("resume", "`resume` and `overwrite` exclude each other")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = coerce_values(TrainConfig, {k: v for k, v in vars(args).items() if k in names})
    # config.yaml holds path options resolved as at the start, so the same relative path must compare equal
    given.update({k: resolve_path_option(given[k]) for k in PATH_OPTIONS if isinstance(given.get(k), str)})
    cfg = build_config(TrainConfig, run.config(), {k: v for k, v in given.items() if k in RESUMABLE},
                       where=str(run.config_path))
    changed = {k: v for k, v in given.items() if k not in RESUMABLE and v != getattr(cfg, k)}
    if changed:
        flags = ", ".join(f"--{k.replace('_', '-')} {v!r} (run: {getattr(cfg, k)!r})" for k, v in changed.items())
        raise VrpError(f"--resume cannot change the run's options ({flags}); only --grad-accum, "
                       f"--distributed-strategy and --max-memory may differ (and the number of processes), and "
                       f"--max-steps / --epochs with a constant learning-rate schedule. Start a new run with --out, "
                       f"or --overwrite this one")
    return cfg


def validation_summary(m: dict) -> str:
    """The validation part of the summary line of `metrics.json` values `m`: the base and final NLL per token (`-`
    for one that is missing), or that there was no validation split, never Python's `None`."""
    base, final = m.get("base_val_nll"), m.get("final_val_nll")
    if base is None and final is None:
        return "no validation split (no validation videos), so no validation NLL/token and no best checkpoint"
    show = ["-" if x is None else f"{x:.4f}" for x in (base, final)]
    return f"validation NLL/token {show[0]} (base) -> {show[1]} (fine-tuned)"


def run(args: argparse.Namespace) -> int:
    """Run `vrp train`; on --resume the run dir's config.yaml is used and flags are not allowed to change it. Under
    torchrun / accelerate launch every process runs it (`vrp.train.distributed`) and rank 0 prints the summary."""
    import os

    from vrp.options import config_from_args
    from vrp.train.config import TrainConfig
    from vrp.train.loop import train

    cfg = resumed_config(args) if args.resume else config_from_args(TrainConfig, args)
    m = train(cfg, args.data, args.out, resume=args.resume, overwrite=args.overwrite)
    if m.get("world_size", 1) > 1 and os.environ.get("RANK", "0") != "0":
        return 0  # in a launched run rank 0 reports
    print(f"done: {m['steps']} steps, {m['comments_seen']} comments, {m['tokens_per_s']} tokens/s, "
          f"{validation_summary(m)}, peak memory {(m.get('peak_rss_bytes') or 0) / 1e9:.2f} GB RSS; run dir {args.out}")
    if m.get("best_step") is not None:
        print(f"best validation NLL/token {m['best_val_nll']:.4f} at step {m['best_step']} ({m['best_checkpoint']}, "
              f"--checkpoint best); adapter/ is the last step's; learning curve: {args.out}/curve.png")
    return 0
