"""Every size a user gives has a documented range, checked before any model is loaded (`vrp.limits`)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from helpers import one_line_error

from vrp.cli.limits_doc import command_configs, limits_markdown
from vrp.errors import ConfigError
from vrp.limits import COMMENTS, LIMITS, field_limits, num
from vrp.options import field_kind

BASE = {"BenchServeConfig": {"model": "m"}, "BenchGenerateConfig": {"run": "r"}}  # what a config needs besides defaults
DOCS = Path(__file__).resolve().parents[1] / "docs" / "limits.md"


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load fails the test: the size must be refused first."""
    import vrp.model

    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(vrp.model, "load_for_inference", refuse)
    monkeypatch.setattr(vrp.model, "load_model", refuse, raising=False)


def test_generate_with_a_million_comments_is_one_line_before_any_model(tmp_path, capsys, no_model_load):
    """The handed member: it used to end in an allocator traceback (34 GB asked for)."""
    out = tmp_path / "c.csv"
    one_line_error(capsys, ["generate", "--transcript", "a talk", "--num-comments", "1000000", "--out", str(out)],
                   "error: --num-comments: must be <= 100 (vrp's bound for comments generated per video or request; "
                   "docs/limits.md), got 1000000")
    assert not out.exists()


@pytest.mark.parametrize("argv, needle", [
    (["generate", "--transcript", "x", "--rerank", "100000", "--num-comments", "2", "--out", "{t}/c.csv"],
     "error: --rerank: must be <= 200"),
    (["generate", "--transcript", "x", "--max-new-tokens", "99999", "--out", "{t}/c.csv"],
     "error: --max-new-tokens: must be <= 2048"),
    (["generate", "--transcript", "x", "--max-prompt-tokens", "10000000", "--out", "{t}/c.csv"],
     "error: --max-prompt-tokens: must be <= 131072"),
    (["evaluate", "--data", "{t}", "--model", "m", "--out", "{t}/r", "--num-candidates", "50000"],
     "error: --num-candidates: must be <= 1000"),
    (["evaluate", "--data", "{t}", "--model", "m", "--out", "{t}/r", "--rerank", "0,5000"],
     "error: --rerank: must be <= 200"),
    (["evaluate", "--data", "{t}", "--model", "m", "--out", "{t}/r", "--score-rows-per-batch", "100000"],
     "error: --score-rows-per-batch: must be <= 1024"),
    (["train", "--data", "{t}", "--out", "{t}/run", "--batch-size", "100000"], "error: --batch-size: must be <= 1024"),
    (["train", "--data", "{t}", "--out", "{t}/run", "--max-row-tokens", "999999999"],
     "error: --max-row-tokens: must be <= 131072"),
    (["train", "--data", "{t}", "--out", "{t}/run", "--max-steps", "100000000000"],
     "error: --max-steps: must be <= 10000000"),
    (["serve", "--model", "m", "--max-num-comments", "1000"], "error: --max-num-comments: must be <= 100"),
    (["serve", "--model", "m", "--max-rerank", "1000"], "error: --max-rerank: must be <= 200"),
    (["serve", "--model", "m", "--queue-size", "1000000"], "error: --queue-size: must be <= 1000"),
    (["bench", "serve", "--model", "m", "--max-new-tokens", "100000"], "error: --max-new-tokens: must be <= 2048"),
    (["bench", "generate", "--run", "{t}/run", "--num-comments", "1000000", "--no-write"],
     "error: --num-comments: must be <= 100"),
    (["bench", "generate", "--run", "{t}/run", "--threads", "100000", "--no-write"],
     "error: --threads: must be <= 1024"),
    (["bench", "train", "--peak-size", "1000000"], "error: --peak-size: must be <= 16384"),
    (["bench", "train", "--nproc", "100000"], "error: --nproc: must be <= 64"),
    (["collect", "dQw4w9WgXcQ", "--out", "{t}/c", "--comments-per-video", "10000000"],
     "error: --comments-per-video: must be <= 10000"),
])
def test_other_sizes_of_every_command_are_refused_naming_the_flag(tmp_path, capsys, no_model_load, argv, needle):
    one_line_error(capsys, [a.replace("{t}", str(tmp_path)) for a in argv], needle)
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_size_from_a_yaml_config_names_the_flag_and_the_file(tmp_path, capsys, no_model_load):
    (tmp_path / "g.yaml").write_text("num_comments: 500\n")
    one_line_error(capsys, ["generate", "--transcript", "x", "--config", str(tmp_path / "g.yaml"), "--out",
                            str(tmp_path / "c.csv")], "error: --num-comments: must be <= 100", "g.yaml")


CASES = [(cls, name, lim) for _, cls in command_configs() for name, lim in field_limits(cls).items()]


@pytest.mark.parametrize("cls, name, lim", CASES, ids=[f"{c.__name__}.{n}" for c, n, _ in CASES])
def test_each_limited_field_refuses_both_sides_of_its_documented_range(cls, name, lim):
    """The upper bound comes from `vrp.limits`; the lower one is each config's own check: both must agree with the
    range that `--help` and docs/limits.md show."""
    base = BASE.get(cls.__name__, {})
    is_list = field_kind(cls, next(f for f in dataclasses.fields(cls) if f.name == name))[2]
    step = 1 if float(lim.high).is_integer() else lim.high / 10
    # the upper bound's message is vrp.limits' own; each config words its lower bound its own way
    for bad, why in ((lim.high + step, rf"must be <= {re.escape(num(lim.high))} "),
                     (lim.low - (1 if float(lim.low).is_integer() else lim.low / 2), "")):
        value = [type(bad)(bad)] if is_list else bad
        with pytest.raises(ConfigError, match=rf"^{re.escape(name)}: {why}") as e:
            cls(**{**base, name: value})
        assert e.value.field == name, (name, bad, e.value)


def test_limits_are_shown_in_help(capsys):
    from vrp.cli import main

    with pytest.raises(SystemExit, match="^0$"):
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"(default: 1) [range {COMMENTS.span()}]" in out and "(default: 0) [range 0..200]" in out


def test_the_docs_page_holds_the_table_written_from_the_code():
    page = DOCS.read_text(encoding="utf-8")
    assert limits_markdown() in page
    assert all(f"| {lim.span()} | {lim.what} |" in page for lim in LIMITS)


def test_the_server_caps_and_generate_share_one_range():
    from vrp.generate.config import GenerateConfig
    from vrp.serve.config import ServeConfig

    serve, gen = field_limits(ServeConfig), field_limits(GenerateConfig)
    assert serve["max_num_comments"] == gen["num_comments"] == COMMENTS
    assert serve["max_new_tokens"] == gen["max_new_tokens"] and serve["max_rerank"] == gen["rerank"]
    ServeConfig(max_num_comments=COMMENTS.high)        # the bound itself is allowed
    with pytest.raises(ConfigError, match="max_num_comments: must be <= 100"):
        ServeConfig(max_num_comments=COMMENTS.high + 1)
