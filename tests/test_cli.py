"""The real `vrp` entry point (`vrp.cli`) on a tiny model: prepare -> train -> generate, help texts, errors, shipped
configs, and output piped into a reader that stops early."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import VRP_COMMAND, one_line_error, prepared_dataset, write_seed_xlsx

from vrp.cli import main
from vrp.options import build_config
from vrp.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_prepare_train_generate_end_to_end(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    write_seed_xlsx(tmp_path / "seed.xlsx", 6)
    assert main(["prepare", str(tmp_path / "seed.xlsx"), "--out", str(tmp_path / "ds"), "--val-fraction", "0.34"]) == 0
    assert "6 videos -> train 4 (12 comments), validation 2 (6 comments)" in capsys.readouterr().out
    (tmp_path / "cfg.yaml").write_text("max_prompt_tokens: 64\nmax_row_tokens: 256\nlora_r: 4\nbatch_size: 2\n")
    args = ["train", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "run"), "--config",
            str(tmp_path / "cfg.yaml"), "--model", str(tiny_model_dir), "--max-steps", "3", "--precision", "fp32",
            "--save-every", "2"]
    assert main(args) == 0
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "lora_r: 4" in saved and "max_steps: 3" in saved and f"model: {tiny_model_dir}" in saved
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["comments_seen"] == 18  # 2 videos x 3 comments per step
    assert main(args) == 2  # refuses to overwrite the run dir
    assert "pass --resume to continue it or --overwrite to start over" in capsys.readouterr().err
    pd.DataFrame({"text": ["<s>[INST] a video about cats [/INST] ", "<s>[INST] one about dogs [/INST] "]}).to_excel(
        tmp_path / "test.xlsx")
    out = tmp_path / "pred.csv"
    assert main(["generate", "--run", str(tmp_path / "run"), "--input", str(tmp_path / "test.xlsx"), "--preset",
                 "greedy,beam", "--num-comments", "2", "--max-new-tokens", "5", "--precision", "fp32",
                 "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert len(df) == 2 * (1 + 2) and set(df["preset"]) == {"greedy", "beam"}
    assert df["adapter"].str.endswith("adapter").all()
    assert main(["generate", "--run", str(tmp_path / "run"), "--checkpoint", "step-000002", "--title", "t",
                 "--transcript", "words", "--preset", "greedy", "--max-new-tokens", "3", "--precision", "fp32",
                 "--out", str(tmp_path / "one.jsonl")]) == 0
    one = pd.read_json(tmp_path / "one.jsonl", lines=True)
    assert len(one) == 1 and one["adapter"][0].endswith("step-000002/adapter")


def test_errors_are_one_line_without_traceback(tmp_path: Path, capsys) -> None:
    assert main(["prepare", str(tmp_path / "none.xlsx"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "none.xlsx: file not found" in err and "Traceback" not in err
    assert main(["generate", "--model", "smollm2-135m", "--transcript", "x", "--out", str(tmp_path / "x.txt")]) == 2
    assert "unknown extension '.txt'" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--lora-r", "0"]) == 2
    assert "error: --lora-r: must be >= 1, got 0" in capsys.readouterr().err


def test_help_lists_every_option_with_defaults() -> None:
    out = subprocess.run([sys.executable, "-m", "vrp", "train", "--help"], capture_output=True, text=True).stdout
    for flag in ("--lora-r", "--packing", "--max-prompt-tokens", "--resume", "--grad-accum", "--precision"):
        assert flag in out
    assert "(default: 16)" in out and "(default: 'shared_prefix')" in out
    top = subprocess.run([sys.executable, "-m", "vrp", "--help"], capture_output=True, text=True).stdout
    for cmd in ("prepare", "train", "generate"):
        assert cmd in top


def test_every_parser_builds_without_importing_heavy_packages() -> None:
    """The one lazy-import rule (docs/architecture.md): `cli/` imports a stage only when its command runs, and the
    configs behind every `--help` import no torch, transformers, peft, numpy or pandas; in a fresh interpreter, so
    nothing imported by other tests counts."""
    code = ("import sys; from vrp.cli import build_parser; p = build_parser(); "
            "[a.choices[c].format_help() for a in p._subparsers._group_actions for c in a.choices]; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'numpy', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = build_config(TrainConfig, path)
    assert cfg.model
    if path.name == "llama2-7b-qlora-seed.yaml":
        assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.learning_rate) == (64, 16, 0.1, 2e-4)
        assert (cfg.quantization, cfg.optimizer, cfg.batch_size, cfg.max_grad_norm) == ("4bit", "paged_adamw_32bit", 2, 0.3)


def test_unknown_yaml_key_is_named(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("lora_rank: 8\n")
    from vrp.errors import VrpError

    with pytest.raises(VrpError, match=r"unknown option\(s\) \['lora_rank'\]"):
        build_config(TrainConfig, tmp_path / "c.yaml")


@pytest.mark.slow
def test_resume_with_the_same_relative_model_of_a_finished_run_rewrites_nothing(tmp_path: Path, tiny_model_dir: Path,
                                                                                   capsys, monkeypatch) -> None:
    write_seed_xlsx(tmp_path / "seed.xlsx", 4)
    assert main(["prepare", str(tmp_path / "seed.xlsx"), "--out", str(tmp_path / "ds"), "--val-fraction", "0.5"]) == 0
    monkeypatch.chdir(tiny_model_dir.parent)
    args = ["train", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "run"), "--model",
            f"./{tiny_model_dir.name}", "--max-steps", "2", "--precision", "fp32", "--max-prompt-tokens", "64",
            "--max-row-tokens", "256", "--lora-r", "2", "--curve-videos", "0", "--lr-scheduler", "constant"]
    assert main(args) == 0
    metrics = tmp_path / "run" / "metrics.json"
    before = (metrics.read_bytes(), metrics.stat().st_mtime_ns)
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2  # the same relative --model is not a change
    err = capsys.readouterr().err
    assert "cannot change" not in err and "already at step 2 of 2: nothing to resume" in err, err
    assert main([*args, "--resume", "--max-steps", "1"]) == 2
    assert "error: --max-steps: " in capsys.readouterr().err
    assert (metrics.read_bytes(), metrics.stat().st_mtime_ns) == before
    assert main([*args[:-2], "--lr-scheduler", "cosine", "--resume"]) == 2
    assert "--lr-scheduler 'cosine' (run: 'constant')" in capsys.readouterr().err


def test_train_summary_says_there_is_no_validation_split_and_never_prints_none(tmp_path: Path, capsys,
                                                                               monkeypatch) -> None:
    import vrp.train.loop

    metrics = {"steps": 2, "comments_seen": 6, "tokens_per_s": 10.0, "base_val_nll": None, "final_val_nll": None,
               "peak_rss_bytes": None}
    monkeypatch.setattr(vrp.train.loop, "train", lambda *a, **k: metrics)
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "no validation split (no validation videos), so no validation NLL/token and no best checkpoint" in out
    assert "None" not in out and "best validation" not in out
    metrics.update(base_val_nll=3.21, final_val_nll=None)
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "validation NLL/token 3.2100 (base) -> - (fine-tuned)" in out and "None" not in out


def test_cli_runs_hugging_face_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Every command sets HF_HUB_OFFLINE=1 (unless the user set it), so a model id that is not cached is an error
    instead of a download; a value the user chose is kept."""
    import os

    vtt = tmp_path / "a.vtt"
    vtt.write_text("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nhello\n", encoding="utf-8")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert main(["transcript", str(vtt)]) == 0 and os.environ["HF_HUB_OFFLINE"] == "1"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert main(["transcript", str(vtt)]) == 0 and os.environ["HF_HUB_OFFLINE"] == "0"


def test_generate_names_the_prompt_budget_flag(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    from helpers import one_line_error

    one_line_error(capsys, ["generate", "--model", str(tiny_model_dir), "--title", "a title " * 20, "--transcript",
                            "words", "--max-prompt-tokens", "16", "--precision", "fp32", "--out",
                            str(tmp_path / "o.jsonl")],
                   "error: --max-prompt-tokens: ", "more than the prompt budget of 16")
    assert not (tmp_path / "o.jsonl").exists()


def test_warnings_are_one_line_without_source_location(tmp_path: Path) -> None:
    """A library warning (a video skipped for having no usable comment) reaches the user as one `warning:` line,
    not Python's `file.py:123: UserWarning:` form with the source line (a real process: pytest records warnings)."""
    src = tmp_path / "w.csv"
    src.write_text("title,transcript,comment\nA,talk one,\nB,talk two,nice\nC,talk three,cool\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "vrp", "prepare", str(src), "--out", str(tmp_path / "ds")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"warning: {src}: skipped 1 video(s) with zero usable comments" in proc.stderr
    assert "UserWarning" not in proc.stderr and ".py:" not in proc.stderr


def test_version(capsys) -> None:
    from vrp import __version__

    with pytest.raises(SystemExit, match="^0$"):  # the exit status
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"vrp {__version__}"


def test_unwritable_out_fails_before_any_work(tmp_path, capsys) -> None:
    ds = prepared_dataset(tmp_path)
    (tmp_path / "file").write_text("x")
    blocked = tmp_path / "file"
    one_line_error(capsys, ["generate", "--model", "no-such-model", "--transcript", "hi", "--out",
                            str(blocked / "p.csv")], "error: --out: cannot write", "is a file")
    one_line_error(capsys, ["train", "--data", str(ds), "--out", str(blocked / "run"), "--model", "no-such-model"],
                   "error: --out: cannot write", "is a file")


# --- output piped into a reader that stops early (the guard in `vrp.cli.main`) -----------------------------------
@pytest.fixture()
def long_vtt(tmp_path: Path) -> Path:
    cues = [f"00:{i // 60:02d}:{i % 60:02d}.000 --> 00:{i // 60:02d}:{i % 60:02d}.500\ncaption {i} " + "word " * 60
            for i in range(3000)]  # about 1 MB of text: far more than a pipe buffer holds
    path = tmp_path / "long.vtt"
    path.write_text("WEBVTT\n\n" + "\n\n".join(cues) + "\n", encoding="utf-8")
    return path


def test_reader_that_stops_after_the_first_line(long_vtt):
    # `vrp transcript long.vtt --format json | head -1`
    p = subprocess.Popen([*VRP_COMMAND, "transcript", str(long_vtt), "--format", "json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"[\n"
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err


def test_reader_gone_before_any_output(long_vtt):
    # `vrp transcript long.vtt | true`: the one long line is still buffered when stdout is flushed at exit
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([*VRP_COMMAND, "transcript", str(long_vtt)], stdout=w, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(w)
    err = p.stderr.decode()
    assert p.returncode == 141
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err


def test_another_command_writing_to_a_closed_pipe(tmp_path):
    # the guard is in `main`, around every subcommand: `vrp prepare ... | true` ends as quietly
    # (argparse's --help output needs no guard: argparse ignores write errors itself)
    (tmp_path / "t.csv").write_text("title,transcript,comment\na,one two,c1\n", encoding="utf-8")
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([*VRP_COMMAND, "prepare", str(tmp_path / "t.csv"), "--out", str(tmp_path / "ds"),
                            "--val-fraction", "0"], stdout=w, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(w)
    err = p.stderr.decode()
    assert p.returncode == 141 and "Traceback" not in err and "BrokenPipe" not in err, err
    assert (tmp_path / "ds" / "manifest.json").is_file()  # the work was done before the summary line
