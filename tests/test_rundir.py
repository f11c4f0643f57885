"""Damaged files of a run dir (`vrp.rundir`, `vrp.train.checkpoint`) and of a dataset dir: each is named in one
line, never read as defaults, and a resume falls back to the newest sound checkpoint and says so."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import one_line_error, write_splits

from vrp.cli import main
from vrp.errors import VrpError
from vrp.records import Comment, Video
from vrp.rundir import RunDir
from vrp.train.checkpoint import checkpoint_problem, resume_checkpoint


def write_data(path: Path) -> Path:
    """Three videos of three comments each (ranks 1-3, so the seed-style tiers apply), two for training."""
    videos = [Video(f"v{i}", f"title {i}", f"transcript number {i} " * 5,
                    [Comment(f"comment {i}-{k}", rank=k + 1) for k in range(3)]) for i in range(3)]
    return write_splits(path, videos[:2], videos[2:])


def train_args(data: Path, run: Path, model_dir: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(run), "--model", str(model_dir), "--precision", "fp32",
            "--max-prompt-tokens", "64", "--max-row-tokens", "256", "--lora-r", "2", "--curve-videos", "0",
            "--lr-scheduler", "constant", "--save-every", "1", "--save-total-limit", "0", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path]:
    """A finished 2-step run (checkpoints step-000001, step-000002 and best-*) and its data; tests copy it."""
    root = tmp_path_factory.mktemp("trained")
    data = write_data(root / "data")
    assert main(train_args(data, root / "run", tiny_model_dir, "--max-steps", "2")) == 0
    return data, root / "run"


def copy_run(src: Path, dest: Path) -> RunDir:
    import shutil

    shutil.copytree(src, dest)
    return RunDir(dest)


@pytest.mark.slow
def test_resume_passes_over_a_damaged_checkpoint_and_says_so(trained, tmp_path: Path, tiny_model_dir, capsys) -> None:
    data, src = trained
    run = copy_run(src, tmp_path / "run")
    (run.checkpoint_dir(2) / "state.json").write_text("garbage\n")  # the handed case: step-000001 is intact
    ckpt, skipped = resume_checkpoint(run)
    assert ckpt == run.checkpoint_dir(1) and len(skipped) == 1
    assert skipped[0].startswith(f"{run.checkpoint_dir(2) / 'state.json'}:1: invalid JSON")
    capsys.readouterr()
    assert main(train_args(data, run.path, tiny_model_dir)[:5] + ["--resume", "--max-steps", "3"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {run.checkpoint_dir(2) / 'state.json'}:1: invalid JSON" in err and "Traceback" not in err
    assert f"resuming {run.path} from checkpoint step-000001, the newest sound one" in err
    assert [json.loads(x)["step"] for x in run.history_path.read_text().splitlines()] == [0, 1, 2, 3]
    assert run.checkpoint_state(run.checkpoint_dir(2))["step"] == 2  # the damaged checkpoint was written again


@pytest.mark.parametrize("damage, words", [
    (lambda c: (c / "adapter" / "adapter_model.safetensors").write_bytes(
        (c / "adapter" / "adapter_model.safetensors").read_bytes()[:-100]),
     "adapter_model.safetensors: damaged adapter weights (Error while deserializing header"),
    (lambda c: (c / "optimizer.pt").write_bytes((c / "optimizer.pt").read_bytes()[:-40]),
     "optimizer.pt: damaged (File is not a zip file)"),
    (lambda c: (c / "rng.pt").unlink(), "rng.pt: missing"),
    (lambda c: (c / "state.json").write_text(json.dumps({"step": 7, "history": []})),
     "state.json: damaged checkpoint state (step 7 in the checkpoint of step 2)"),
    (lambda c: (c / "state.json").write_text(json.dumps({"step": 2})),
     "state.json: damaged checkpoint state (no 'comments_seen', 'tokens_seen', 'train_seconds', 'history')"),
])
def test_each_damaged_checkpoint_file_is_named(trained, tmp_path: Path, damage, words) -> None:
    run = copy_run(trained[1], tmp_path / "run")
    assert checkpoint_problem(run, run.checkpoint_dir(2)) is None
    damage(run.checkpoint_dir(2))
    problem = checkpoint_problem(run, run.checkpoint_dir(2))
    assert problem is not None and words in problem and str(run.checkpoint_dir(2)) in problem
    assert resume_checkpoint(run) == (run.checkpoint_dir(1), [problem])


@pytest.mark.slow
def test_a_damaged_best_checkpoint_does_not_stop_a_resume(trained, tmp_path, tiny_model_dir, capsys) -> None:
    data, src = trained
    run = copy_run(src, tmp_path / "run")
    best = run.best_checkpoint()
    assert best is not None
    (best / "state.json").write_text("{")
    capsys.readouterr()
    assert main(train_args(data, run.path, tiny_model_dir)[:5] + ["--resume", "--max-steps", "3"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {best / 'state.json'}:1: invalid JSON" in err and "the resumed checkpoint's record" in err


@pytest.mark.parametrize("text, words", [
    ("", "damaged run config (the file holds no options"),
    ("lora_r: 8\n", "damaged run config (option 'model', the base model the adapter belongs to, is missing)"),
    ("model: [1, 2]\n", "damaged run config (option 'model', the base model the adapter belongs to, is not a model "
                        "name: [1, 2]"),
])
def test_an_empty_or_modelless_config_yaml_is_not_read_as_defaults(trained, tmp_path, capsys, text, words) -> None:
    run = copy_run(trained[1], tmp_path / "run")
    run.config_path.write_text(text)
    # the handed case: generation with a tier would say the run "was trained without" tiers and load the adapter
    # onto the default base model
    one_line_error(capsys, ["generate", "--run", str(run.path), "--tier", "top", "--transcript", "hello there",
                            "--out", str(tmp_path / "p.csv")], f"error: {run.config_path}: {words}")
    with pytest.raises(VrpError, match="damaged run config"):
        RunDir(run.path).model_spec()
    assert not (tmp_path / "p.csv").exists()


def test_a_truncated_adapter_is_named_when_generating(trained, tmp_path, capsys) -> None:
    run = copy_run(trained[1], tmp_path / "run")
    weights = run.adapter_dir / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    one_line_error(capsys, ["generate", "--run", str(run.path), "--transcript", "hello there", "--max-new-tokens",
                            "2", "--out", str(tmp_path / "p.csv")], f"error: {weights}: damaged adapter weights")
    (run.adapter_dir / "adapter_config.json").write_text("[]")
    one_line_error(capsys, ["generate", "--run", str(run.path), "--transcript", "hello there", "--max-new-tokens",
                            "2", "--out", str(tmp_path / "p.csv")],
                   "adapter_config.json: damaged adapter config (expected a JSON object, got list)")


def test_a_damaged_metrics_json_and_history_lines_are_named(trained, tmp_path) -> None:
    run = copy_run(trained[1], tmp_path / "run")
    assert run.metrics()["steps"] == 2
    run.metrics_path.write_text("[1]")
    with pytest.raises(VrpError, match=r"metrics.json: damaged \(expected a JSON object, got list\)"):
        run.metrics()
    run.metrics_path.write_bytes(b"\x00garbage")
    with pytest.raises(VrpError, match=r"metrics.json:1: invalid JSON"):
        run.metrics()
    lines = run.history_path.read_text().splitlines()
    run.history_path.write_text("\n".join(lines) + '\n{"step": 3, "lo')  # a kill while appending: left out
    assert [h["step"] for h in run.history()] == [0, 1, 2]
    run.history_path.write_text(lines[0] + "\nnot json\n" + "\n".join(lines[1:]) + "\n")  # damage inside: named
    with pytest.raises(VrpError, match=r"metrics.jsonl:2: invalid JSON"):
        run.history()


def test_a_garbage_dataset_manifest_is_named(tmp_path, tiny_model_dir, capsys) -> None:
    data = write_data(tmp_path / "data")
    (data / "manifest.json").write_text("garbage")
    one_line_error(capsys, train_args(data, tmp_path / "run", tiny_model_dir, "--tiers", "--max-steps", "1"),
                   f"error: {data / 'manifest.json'}:1: invalid JSON")
    (data / "manifest.json").write_text('"seed xlsx"')
    one_line_error(capsys, train_args(data, tmp_path / "run", tiny_model_dir, "--tiers", "--max-steps", "1"),
                   "manifest.json: damaged dataset manifest (expected a JSON object, got str)")
    assert not (tmp_path / "run").exists()  # refused before the run dir was written


@pytest.mark.parametrize("line, option, says", [
    ("max_prompt_tokens: 5", "max_prompt_tokens", "must be at least 16, got 5"),
    ("prompt_format: weird", "prompt_format", "got 'weird'"),
    ("truncation: middle", "truncation", "unknown strategy 'middle'"),
])
def test_a_saved_prompt_setting_that_is_refused_names_config_yaml_not_a_flag(tmp_path, capsys, line, option,
                                                                              says) -> None:
    """A run's `config.yaml` value that `PromptConfig` refuses is the file's fault: the error names the file and the
    option, not the command's flag (`--max-prompt-tokens`), which the user did not pass."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"model: smollm2-135m\n{line}\n")
    with pytest.raises(VrpError, match=rf"config\.yaml: option '{option}': .*{says}"):
        RunDir(run).prompt_config()
    err = one_line_error(capsys, ["generate", "--run", str(run), "--title", "T", "--transcript", "x",
                                  "--print-prompt", "user"], f"{run / 'config.yaml'}: option '{option}': ", says)
    assert not any(flag in err for flag in ("--max-prompt-tokens", "--prompt-format", "--truncation")), err


@pytest.mark.parametrize("config_text, needle", [
    ("- a list\n", "expected a mapping"),
    ("model: [unclosed\n", "invalid YAML"),
    ("model: m\nmax_prompt_tokens: abc\n", "option 'max_prompt_tokens' must be an integer"),
])
def test_generate_run_with_broken_config_yaml(tmp_path, capsys, config_text, needle) -> None:
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text(config_text)
    one_line_error(capsys, ["generate", "--run", str(run), "--transcript", "hi", "--out", str(tmp_path / "p.csv")],
                   "config.yaml", needle)
