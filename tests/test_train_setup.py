"""The start of a training run (`vrp.train.setup`): optional capabilities are checked before the model is loaded
or anything is written (`vrp.train.compile.check_compiler` for `--compile-layers`, CUDA for `--device cuda` in
`vrp.precision.resolve_precision`), and a run dir that a failed start left with only its config.yaml does not block the
rerun (`vrp.rundir.RunDir.never_trained`)."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import one_line_error, write_splits

from vrp.cli import main
from vrp.errors import ConfigError
from vrp.records import Comment, Video


def data_dir(path: Path) -> Path:
    videos = [Video(f"v{i}", f"title {i}", f"transcript number {i} " * 5, [Comment(f"comment {i}")]) for i in range(3)]
    return write_splits(path, videos[:2], videos[2:])


def args(data: Path, run: Path, model_dir: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(run), "--model", str(model_dir), "--precision", "fp32",
            "--max-prompt-tokens", "64", "--max-row-tokens", "256", "--lora-r", "2", "--curve-videos", "0",
            "--max-steps", "1", *extra]


def test_compile_layers_without_a_compiler_fails_before_anything_is_written(tmp_path, tiny_model_dir, capsys,
                                                                            monkeypatch) -> None:
    import torch
    from torch._inductor import config as inductor_config

    from vrp.train.compile import check_compiler

    torch.set_num_threads(1)
    check_compiler("cpu")  # this machine has one: the check passes (it compiles and runs a probe)
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))  # as on a machine without g++
    with pytest.raises(ConfigError, match=r"compile_layers: torch.compile cannot build code on this machine "
                                          r"\(InductorError: InvalidCxxCompiler"):
        check_compiler("cpu")
    run = tmp_path / "run"
    one_line_error(capsys, args(data_dir(tmp_path / "data"), run, tiny_model_dir, "--compile-layers"),
                   "error: --compile-layers: torch.compile cannot build code on this machine",
                   "train without --compile-layers")
    assert not run.exists()
    # the same check before `vrp bench train` starts any worker process
    bench_json = tmp_path / "bench.json"
    one_line_error(capsys, ["bench", "train", "--data", str(data_dir(tmp_path / "data2")), "--model",
                            str(tiny_model_dir), "--configs", "none", "--no-write", "--compile-layers", "--json-out",
                            str(bench_json)],
                   "error: --compile-layers: torch.compile cannot build code on this machine")
    assert not bench_json.exists()


def test_device_cuda_without_cuda_fails_before_anything_is_written(tmp_path, tiny_model_dir, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run = tmp_path / "run"
    one_line_error(capsys, args(data_dir(tmp_path / "data"), run, tiny_model_dir, "--device", "cuda"),
                   "error: --device: cuda: no CUDA device is available")
    assert not run.exists()


def test_a_run_dir_left_by_a_failed_start_does_not_block_the_rerun(tmp_path, tiny_model_dir, capsys) -> None:
    data, run = data_dir(tmp_path / "data"), tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"model: {tiny_model_dir}\ncompile_layers: true\n")  # what the failure left
    (run / "logs").mkdir()
    assert main(args(data, run, tiny_model_dir)) == 0
    err = capsys.readouterr().err
    assert f"note: {run} holds a run that never reached a checkpoint" in err and "starting over" in err
    assert (run / "adapter").is_dir() and "compile_layers: false" in (run / "config.yaml").read_text()
    one_line_error(capsys, args(data, run, tiny_model_dir),  # a run with checkpoints is never replaced unasked
                   "error: --out: ", "is a run directory that is not empty; pass --resume")
