"""Flags of the `vrp` command line (`vrp.cli`): written in full or as a declared alias, never abbreviated."""
from __future__ import annotations

import argparse

import pytest

from vrp.cli import build_parser, main


def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("vrp",)):
    """Every parser under `parser` (subcommands and sub-subcommands), with its command path."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, path + (name,))


def test_no_parser_accepts_abbreviations():
    found = {path: p.allow_abbrev for path, p in parsers(build_parser())}
    assert ("vrp", "bench", "train") in found and ("vrp", "train") in found and len(found) >= 10
    assert not any(found.values()), [p for p, on in found.items() if on]


def test_lr_is_learning_rate_not_the_scheduler():
    """The handed member: `--lr 1e-3` was taken as `--lr-scheduler 1e-3`."""
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--lr", "1e-3"])
    assert args.learning_rate == "1e-3" and not hasattr(args, "lr_scheduler")
    args = build_parser().parse_args(["bench", "train", "--lr", "5e-4"])   # bench train reuses the field
    assert args.learning_rate == "5e-4"


@pytest.mark.parametrize("argv, prefix", [
    (["train", "--data", "d", "--out", "o", "--lr-sched", "cosine"], "--lr-sched"),
    (["train", "--data", "d", "--out", "o", "--learning", "1e-3"], "--learning"),
    (["generate", "--transcript", "x", "--out", "o.csv", "--num-com", "3"], "--num-com"),
    (["evaluate", "--data", "d", "--out", "o", "--num-cand", "5"], "--num-cand"),
    (["serve", "--max-num", "3"], "--max-num"),
    (["collect", "dQw4w9WgXcQ", "--out", "o", "--comments", "5"], "--comments"),
    (["prepare", "in.csv", "--out", "o", "--val", "0.2"], "--val"),
    (["bench", "train", "--ste", "2"], "--ste"),
    (["bench", "serve", "--req", "2"], "--req"),
    (["transcript", "x.vtt", "--keep", ], "--keep"),
])
def test_an_abbreviated_flag_is_refused_naming_what_was_typed(capsys, argv, prefix):
    with pytest.raises(SystemExit, match="^2$"):  # the exit status of a usage error
        main(argv)
    err = capsys.readouterr().err
    assert f"unrecognized arguments: {prefix}" in err, err


def test_help_shows_the_alias_next_to_the_flag(capsys):
    with pytest.raises(SystemExit, match="^0$"):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--learning-rate LEARNING_RATE, --lr LEARNING_RATE" in out


def test_a_config_error_names_the_full_flag_even_when_the_alias_was_typed(capsys):
    from helpers import one_line_error

    one_line_error(capsys, ["train", "--data", "d", "--out", "o", "--lr", "0"], "error: --learning-rate: must be > 0")
