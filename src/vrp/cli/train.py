"""`vrp train --data DATASET_DIR --out RUN_DIR [--config YAML] [flags]`: LoRA fine-tuning."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp train`; every `TrainConfig` field is a flag (flags override the YAML)."""
    from vrp.options import add_dataclass_args
    from vrp.train.config import TrainConfig

    p = sub.add_parser("train", help="fine-tune a causal LM with LoRA on a dataset dir",
                       description="Fine-tune with LoRA. Options come from the dataclass defaults, then --config "
                                   "YAML, then flags. The resolved config is saved as RUN_DIR/config.yaml.")
    p.add_argument("--data", required=True, help="dataset dir from `vrp prepare` (train.jsonl, validation.jsonl)")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--config", help="YAML file of options (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete a non-empty --out and start over")
    add_dataclass_args(p, TrainConfig, "training options")
    return p


def run(args: argparse.Namespace) -> int:
    """Run `vrp train`; on --resume the run dir's config.yaml is used and flags are not allowed to change it."""
    import dataclasses
    from pathlib import Path

    from vrp.errors import VrpError
    from vrp.options import build_config, coerce_values
    from vrp.train.config import TrainConfig
    from vrp.train.loop import train

    overrides = {k: v for k, v in vars(args).items() if k not in ("data", "out", "config", "resume", "overwrite")}
    if args.resume:
        saved = Path(args.out) / "config.yaml"
        if not saved.is_file():
            raise VrpError(f"--resume: {args.out} has no config.yaml")
        if args.config:
            raise VrpError(f"--resume continues with {saved}; do not pass --config")
        if args.overwrite:
            raise VrpError("--resume and --overwrite exclude each other")
        resumable = ("max_steps", "epochs")
        cfg = build_config(TrainConfig, saved, {k: v for k, v in overrides.items() if k in resumable})
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        given = coerce_values(TrainConfig, {k: v for k, v in overrides.items() if k in names})
        changed = {k: v for k, v in given.items() if k not in resumable and v != getattr(cfg, k)}
        if changed:
            flags = ", ".join(f"--{k.replace('_', '-')} {v!r} (run: {getattr(cfg, k)!r})" for k, v in changed.items())
            raise VrpError(f"--resume cannot change the run's options ({flags}); only --max-steps and --epochs "
                           f"may differ. Start a new run with --out, or --overwrite this one")
    else:
        cfg = build_config(TrainConfig, args.config, overrides)
    m = train(cfg, args.data, args.out, resume=args.resume, overwrite=args.overwrite)
    base, final = m["base_val_nll"], m["final_val_nll"]
    print(f"done: {m['steps']} steps, {m['comments_seen']} comments, {m['tokens_per_s']} tokens/s, "
          f"validation NLL/token {base if base is None else round(base, 4)} (base) -> "
          f"{final if final is None else round(final, 4)} (fine-tuned); run dir {args.out}")
    return 0
