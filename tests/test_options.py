"""The one dataclass <-> argparse <-> YAML path (`vrp.options`) and the CLI's mapping of config fields to flags."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import one_line_error

from vrp.errors import ConfigError, VrpError
from vrp.options import add_config_args, build_config, check_range, coerce_fields, config_from_args, option, option_like


@dataclass
class Demo:
    """A config with one field of each supported kind."""

    steps: int = option("optimizer steps (see `rate`)", 3)
    rate: float = option("learning rate", 0.5)
    name: str = option("a name", "x")
    fast: bool = option("go fast", False)
    limit: int | None = option("a limit (None: none)", None, "N")
    sizes: list[int] = option("sizes", [1, 2])

    def __post_init__(self) -> None:
        coerce_fields(self)
        check_range(self, "steps", low=1)


@dataclass
class Other:
    steps: int = option_like(Demo, "steps")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demo")
    add_config_args(p, Demo)
    return p


def test_flags_yaml_and_defaults_in_that_order(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("steps: 7\nrate: 2e-4\nsizes: 4,5\n")
    args = parser().parse_args(["--config", str(tmp_path / "c.yaml"), "--rate", "0.25", "--fast", "--limit", "9"])
    cfg = config_from_args(Demo, args)
    assert (cfg.steps, cfg.rate, cfg.name, cfg.fast, cfg.limit, cfg.sizes) == (7, 0.25, "x", True, 9, [4, 5])
    assert config_from_args(Demo, parser().parse_args(["--sizes", "3,1", "--no-fast"])).sizes == [3, 1]
    assert Demo(steps="8").steps == 8 and Demo(sizes="6").sizes == [6]     # also in Python, not only from flags
    assert Other().steps == 3                                                # a default defined once


def test_bad_values_name_the_field_or_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="steps: must be an integer, got 'many'"):
        config_from_args(Demo, parser().parse_args(["--steps", "many"]))
    with pytest.raises(ConfigError, match="rate: must be a finite number"):
        Demo(rate=float("inf"))
    (tmp_path / "c.yaml").write_text("sizes: [1, x]\n")
    with pytest.raises(VrpError, match=r"c.yaml: option 'sizes' must be a comma-separated list of integers"):
        build_config(Demo, tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("steps: 0\n")
    with pytest.raises(ConfigError, match=r"steps: must be >= 1, got 0 \(options from .*c.yaml and the command"):
        build_config(Demo, tmp_path / "c.yaml")
    with pytest.raises(VrpError, match="missing.yaml: config file not found"):
        build_config(Demo, tmp_path / "missing.yaml")


def test_help_shows_defaults_metavars_and_flags_of_other_fields() -> None:
    text = " ".join(parser().format_help().split())
    for part in ("--steps STEPS optimizer steps (see --rate) (default: 3)", "--limit N a limit (None: none) "
                 "(default: None)", "--fast, --no-fast go fast (default: False)", "--sizes SIZES sizes (default: 1,2)",
                 "--config YAML"):
        assert part in text, part


def test_cli_prints_config_errors_with_the_subcommands_flags() -> None:
    from vrp.cli import build_parser, config_error_message

    p = build_parser()
    train = p.parse_args(["train", "--data", "d", "--out", "o"])._parser
    e = ConfigError("max_row_tokens", "(10) must exceed `max_prompt_tokens` (64), see `nothing_like_this`")
    assert config_error_message(e, train) == ("--max-row-tokens: (10) must exceed --max-prompt-tokens (64), see "
                                              "`nothing_like_this`")
    prepare = p.parse_args(["prepare", "src.csv", "--out", "o"])._parser
    assert config_error_message(ConfigError("input", "is empty"), prepare) == "input: is empty"
    serve = p.parse_args(["bench", "serve", "--url", "http://127.0.0.1:1"])._parser
    assert config_error_message(ConfigError("warmup", "x"), serve) == "--warmup: x"


def test_every_config_with_a_seed_bounds_it() -> None:
    from vrp.bench.config import BenchServeConfig, BenchTrainConfig
    from vrp.evaluate.config import EvaluateConfig
    from vrp.generate.config import GenerateConfig
    from vrp.options import SEED_MAX
    from vrp.prepare.config import PrepareConfig
    from vrp.train.config import TrainConfig

    configs = [c for c in (PrepareConfig, EvaluateConfig, GenerateConfig, TrainConfig, BenchServeConfig,
                           BenchTrainConfig) if "seed" in c.__dataclass_fields__]
    assert {PrepareConfig, EvaluateConfig, GenerateConfig, TrainConfig} <= set(configs)
    for cls in configs:
        assert cls(seed=SEED_MAX).seed == 2**32 - 1
        for bad in (99999999999999999999, 2**32, -1):
            with pytest.raises(ConfigError, match=rf"^seed: must be (<= 4294967295|>= 0), got {bad}$"):
                cls(seed=bad)


def test_a_yaml_key_given_twice_is_an_error_naming_the_line(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys; a config file with `lora_r` twice is refused instead."""
    from vrp.options import load_yaml

    (tmp_path / "c.yaml").write_text("lora_r: 8\nlearning_rate: 0.1\nlora_r: 16\n")
    with pytest.raises(VrpError, match=r"c.yaml:3: invalid YAML \(key 'lora_r' given twice\)"):
        load_yaml(tmp_path / "c.yaml")
    (tmp_path / "n.yaml").write_text("lora: {r: 8, alpha: 16}\nlora_r: 8\n")   # the same key in two mappings: fine
    assert load_yaml(tmp_path / "n.yaml") == {"lora": {"r": 8, "alpha": 16}, "lora_r": 8}


@pytest.mark.parametrize("yaml_text, needle", [
    ('lora_r: "abc"\n', "option 'lora_r' must be an integer, got 'abc'"),
    ("learning_rate: fast\n", "option 'learning_rate' must be a number, got 'fast'"),
    ("learning_rate: .nan\n", "option 'learning_rate' must be a finite number"),
    ("group_by_length: 1\n", "option 'group_by_length' must be true or false"),
    ("lora_r: [1, 2\n", "c.yaml:2: invalid YAML"),
])
def test_yaml_config_wrong_types_name_file_and_option(tmp_path, capsys, yaml_text, needle) -> None:
    (tmp_path / "c.yaml").write_text(yaml_text)
    one_line_error(capsys, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--config",
                            str(tmp_path / "c.yaml")], needle)
    assert not (tmp_path / "r").exists()


def test_yaml_exponent_learning_rate_is_a_number(tmp_path) -> None:
    from vrp.options import build_config
    from vrp.train.config import TrainConfig

    (tmp_path / "c.yaml").write_text("learning_rate: 2e-4\nlora_r: 8.0\n")  # YAML 1.1 reads 2e-4 as a string
    cfg = build_config(TrainConfig, tmp_path / "c.yaml")
    assert cfg.learning_rate == 2e-4 and cfg.lora_r == 8 and isinstance(cfg.lora_r, int)


def test_target_modules_flag_takes_the_documented_json_list() -> None:
    from vrp.cli import build_parser
    from vrp.options import build_config
    from vrp.train.config import TrainConfig

    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--target-modules", '["q_proj","v_proj"]'])
    cfg = build_config(TrainConfig, None, vars(args))
    assert cfg.target_modules == ["q_proj", "v_proj"]  # was the string '["q_proj","v_proj"]' (a regex to PEFT)
