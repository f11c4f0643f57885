"""The start of a training run (`vrp.train.setup`): optional capabilities are checked before the model is loaded
or anything is written (`vrp.train.compile.check_compiler` for `--compile-layers`, CUDA for `--device cuda` in
`vrp.precision.resolve_precision`), and a run dir that a failed start left with only its config.yaml does not block the
rerun (`vrp.rundir.RunDir.never_trained`)."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import SMALL_RUN_FLAGS, one_line_error, prepared_dataset, tiny_llama, write_splits

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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_train_failed_start_leaves_no_run_dir(tmp_path, capsys, tiny_model_dir) -> None:
    ds = prepared_dataset(tmp_path)
    model = ["--model", str(tiny_model_dir), *SMALL_RUN_FLAGS, "--max-steps", "1"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.jsonl").write_text("")
    one_line_error(capsys, ["train", "--data", str(empty), "--out", str(tmp_path / "r1"), *model], "empty dataset")
    one_line_error(capsys, ["train", "--data", str(ds), "--out", str(tmp_path / "r2"), *model,
                            "--target-modules", '["nope"]'], "error: --target-modules: no module named ['nope']")
    one_line_error(capsys, ["train", "--data", str(ds), "--out", str(tmp_path / "r3"), *model,
                            "--attn-implementation", "bogus"], "attn_implementation")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text((ds / "train.jsonl").read_text()[:30])
    one_line_error(capsys, ["train", "--data", str(bad), "--out", str(tmp_path / "r4"), *model],
                   "train.jsonl:1: invalid JSON")
    assert not any((tmp_path / f"r{i}").exists() for i in range(1, 5))


def test_train_prompt_longer_than_the_model_context_names_the_flags(tmp_path, capsys, tokenizer) -> None:
    short = tmp_path / "short"
    tiny_llama(tokenizer, max_position_embeddings=128).save_pretrained(short)
    tokenizer.save_pretrained(short)
    ds = prepared_dataset(tmp_path)
    one_line_error(capsys, ["train", "--data", str(ds), "--out", str(tmp_path / "r"), "--model", str(short),
                            "--precision", "fp32", "--max-prompt-tokens", "200", "--max-row-tokens", "512"],
                   "error: --max-prompt-tokens: --max-prompt-tokens + --max-comment-tokens + 1 = 329 tokens",
                   "(128 tokens)")
    assert not (tmp_path / "r").exists()
    one_line_error(capsys, ["generate", "--model", str(short), "--transcript", "hi", "--precision", "fp32",
                            "--max-prompt-tokens", "100", "--max-new-tokens", "50", "--out",
                            str(tmp_path / "p.csv")], "--max-prompt-tokens + --max-new-tokens = 150")
    assert not (tmp_path / "p.csv").exists()


def test_resume_refuses_changed_options_and_config(tmp_path, capsys, tiny_model_dir) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"model: {tiny_model_dir}\nmax_prompt_tokens: 64\nmax_row_tokens: 256\n")
    ds = tmp_path / "ds"
    one_line_error(capsys, ["train", "--data", str(ds), "--out", str(run), "--resume", "--lora-r", "8"],
                   "--resume cannot change", "--lora-r 8 (run: 16)")
    (tmp_path / "c.yaml").write_text("lora_r: 4\n")
    one_line_error(capsys, ["train", "--data", str(ds), "--out", str(run), "--resume", "--config",
                            str(tmp_path / "c.yaml")], "error: --config: --resume continues with")
