"""The `vrp` command line: one small module per subcommand under `vrp.cli`.

Each subcommand module defines `add_parser(subparsers) -> argparse.ArgumentParser` and `run(args) -> int`.
Heavy imports (torch, transformers) happen inside `run`, so `vrp --help` is fast. A `VrpError` is printed as
`error: <message>` with exit status 2 and no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Subcommands in the order the pipeline runs them: collect -> prepare -> train -> generate -> evaluate -> serve.
SUBCOMMANDS = ["collect", "transcript", "prepare", "train", "generate", "evaluate", "serve", "bench"]


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="vrp",
        description="Video response prediction: fine-tune a causal LM with LoRA to predict viewers' comments.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            mod = importlib.import_module(f"vrp.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"vrp.cli.{name}":
                continue
            raise
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vrp` console script. Returns the process exit status."""
    from vrp.errors import VrpError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except VrpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
