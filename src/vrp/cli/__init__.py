"""The `vrp` command line: one small module per subcommand under `vrp.cli`.

Each subcommand module defines `add_parser(subparsers) -> argparse.ArgumentParser` and `run(args) -> int`.
Heavy imports (torch, transformers) happen inside `run`, so `vrp --help` is fast. A `VrpError` is printed as
`error: <message>` with exit status 2 and no traceback; a `ConfigError` names the subcommand's flag for its field
(`error: --max-steps: must be >= 1, got 0`), and so do the fields its message names in backticks.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys
from typing import Any

# Subcommands in the order the pipeline runs them: collect -> prepare -> train -> generate -> evaluate -> serve
# (-> export).
SUBCOMMANDS = ["collect", "transcript", "prepare", "train", "generate", "evaluate", "serve", "export", "bench"]


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="vrp",
        description="Video response prediction: fine-tune a causal LM with LoRA to predict viewers' comments.",
        allow_abbrev=False,
    )
    from vrp import __version__

    parser.add_argument("--version", action="version", version=f"vrp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            mod = importlib.import_module(f"vrp.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"vrp.cli.{name}":
                continue
            raise
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run, _parser=p)
    no_abbreviations(parser)
    return parser


def no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Turn off argparse's prefix matching in `parser` and every subcommand parser below it (`vrp bench train`
    too): with it, `vrp train --lr 1e-3` was taken as `--lr-scheduler 1e-3`, and a flag added later would change
    what an abbreviation means. A flag must be written in full (or as one of its declared aliases)."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                no_abbreviations(sub)


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Field (argparse dest) -> how the user writes it: its first long flag, or the metavar of a positional."""
    names: dict[str, str] = {}
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction) or a.dest in (argparse.SUPPRESS, "help"):
            continue
        longs = [o for o in a.option_strings if o.startswith("--")]
        names.setdefault(a.dest, longs[0] if longs else (a.option_strings or [str(a.metavar or a.dest)])[0])
    return names


def config_error_message(e: Any, parser: argparse.ArgumentParser | None) -> str:
    """`--flag: message` for a ConfigError: the field and the backticked fields in the message as flags."""
    names = flag_names(parser) if parser is not None else {}
    message = re.sub(r"`([a-z][a-z0-9_]*)`", lambda m: names.get(m.group(1), m.group(0)), e.message)
    return f"{names.get(e.field, e.field)}: {message}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vrp` console script. Returns the process exit status.

    Output piped into a reader that stops early (`vrp transcript long.vtt | head -1`) ends the command quietly:
    as in the Python docs' "Note on SIGPIPE" (library/signal), stdout is flushed inside the `try` (so a closed
    pipe raises here, not at interpreter exit) and then pointed at /dev/null. The status is then 141, what a
    shell reports for a process ended by SIGPIPE (128 + 13)."""
    import warnings

    formatwarning = warnings.formatwarning
    warnings.formatwarning = _one_line_warning  # warnings as one line; only the format: recorders still see them
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
            try:
                return _main(argv)
            finally:  # also after argparse's --help or usage error (SystemExit)
                sys.stdout.flush()
    except BrokenPipeError:
        import os

        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # a stdout without a file descriptor (captured in tests): nothing to redirect
            pass
        return 141
    finally:
        warnings.formatwarning = formatwarning


def _one_line_warning(message: Any, category: Any, filename: str, lineno: int, line: Any = None) -> str:
    """`warnings.formatwarning` for the CLI: `warning: <message>` (no source file, line or category)."""
    return f"warning: {message}\n"


def _main(argv: list[str] | None) -> int:
    """Parse `argv` and run the subcommand; VrpError and Ctrl-C become a message and a status. Hugging Face
    libraries run offline (HF_HUB_OFFLINE=1 unless set otherwise): nothing is downloaded at run time."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vrp.errors import ConfigError, VrpError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except ConfigError as e:
        print(f"error: {config_error_message(e, getattr(args, '_parser', None))}", file=sys.stderr)
        return 2
    except VrpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
