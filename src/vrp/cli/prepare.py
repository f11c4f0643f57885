"""`vrp prepare INPUT --out DATASET_DIR`: import a source and write train/validation splits + manifest."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `vrp prepare`; every `PrepareConfig` field is a flag."""
    from vrp.options import add_dataclass_args
    from vrp.prepare.config import PrepareConfig

    p = sub.add_parser("prepare", help="import videos and comments into a dataset dir (train/validation split)",
                       description="Read the seed xlsx (comments/titles/text), a CSV/JSONL/Parquet/xlsx table with "
                                   "title, transcript, comment [, video_id, like_count], or a `vrp collect` dir, "
                                   "group rows into videos and split by video.")
    p.add_argument("input", help="source file (.xlsx, .csv, .jsonl, .parquet) or collect dir")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    add_dataclass_args(p, PrepareConfig)
    return p


def run(args: argparse.Namespace) -> int:
    """Run `vrp prepare`; prints the counts."""
    from vrp.artifacts import DatasetDir
    from vrp.options import build_config
    from vrp.prepare.config import PrepareConfig
    from vrp.prepare.run import prepare

    DatasetDir(args.out).check_new(args.overwrite, inputs=[("input", args.input)])  # never replace its own input
    m = prepare(args.input, args.out, build_config(PrepareConfig, None, vars(args)), overwrite=args.overwrite)
    print(f"{m['format']}: {m['videos']['total']} videos -> train {m['videos']['train']} "
          f"({m['comments']['train']} comments), validation {m['videos']['validation']} "
          f"({m['comments']['validation']} comments); written to {args.out}")
    return 0
