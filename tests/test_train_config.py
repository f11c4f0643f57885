"""The training configuration (`vrp.train.config.TrainConfig`): each flag's range is checked before anything runs,
and the error names the flag."""
from __future__ import annotations

import pytest
from helpers import one_line_error


@pytest.mark.parametrize("flags, needle", [
    (["--max-steps", "0"], "error: --max-steps: must be >= 1, or -1 to run --epochs epochs; got 0"),
    (["--max-steps", "-5"], "error: --max-steps: must be >= 1"),
    (["--learning-rate", "-1"], "error: --learning-rate: must be > 0, got -1.0"),
    (["--learning-rate", "nan"], "error: --learning-rate: must be a finite number, got 'nan'"),
    (["--lora-r", "abc"], "error: --lora-r: must be an integer, got 'abc'"),
    (["--max-grad-norm", "-1"], "error: --max-grad-norm: must be > 0"),
    (["--lora-dropout", "1.5"], "error: --lora-dropout: must be in [0, 1)"),
    (["--warmup-steps", "-3"], "error: --warmup-steps: must be >= 0, got -3"),
    (["--lr-scheduler", "bogus"], "error: --lr-scheduler: choose from"),
    (["--optimizer", "sgd"], "error: --optimizer: choose"),
    (["--target-modules", "[]"], "error: --target-modules: give all-linear"),
])
def test_train_flag_ranges_are_checked_up_front(tmp_path, capsys, flags, needle) -> None:
    one_line_error(capsys, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), *flags], needle)
    assert not (tmp_path / "r").exists()
