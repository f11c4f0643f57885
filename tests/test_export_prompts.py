"""`vrp generate --print-prompt` with flags it cannot honour: an `--out` (the prompts go to stdout, so the file would
silently stay unwritten) and a `--checkpoint` that the run does not have (refused, as generation refuses it, although
the prompt needs no weights)."""
from __future__ import annotations

from pathlib import Path

from helpers import one_line_error

from vrp.cli import main


def hand_run(root: Path, model: Path) -> Path:
    """A run dir holding what `--print-prompt` reads: config.yaml and one complete checkpoint, step-000001."""
    run = root / "run"
    (run / "checkpoints" / "step-000001" / "adapter").mkdir(parents=True)
    (run / "checkpoints" / "step-000001" / "state.json").write_text('{"step": 1}\n')
    (run / "config.yaml").write_text(f"model: {model}\nmax_prompt_tokens: 64\nprompt_format: plain\n")
    return run


def test_print_prompt_refuses_out_and_a_missing_checkpoint(tmp_path, tiny_model_dir, capsys) -> None:
    run = hand_run(tmp_path, tiny_model_dir)
    base = ["generate", "--run", str(run), "--title", "T", "--transcript", "x", "--print-prompt", "user"]
    one_line_error(capsys, [*base, "--out", str(tmp_path / "p.csv")],
                   f"--out: {tmp_path / 'p.csv'} would not be written: --print-prompt prints to stdout")
    assert not (tmp_path / "p.csv").exists()
    one_line_error(capsys, [*base, "--checkpoint", "step-7"],
                   "--checkpoint: step-7 not found in", "available: ['step-000001', 'latest']")
    assert main(base) == 0
    plain = capsys.readouterr().out
    assert plain.startswith("Title: T\nTranscript: x")
    assert main([*base, "--checkpoint", "step-000001"]) == 0  # a checkpoint the run has: the same prompt
    assert capsys.readouterr().out == plain
