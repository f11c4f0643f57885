"""The real `vrp` entry point on a tiny model: prepare -> train -> generate, help texts, errors, shipped configs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import write_seed_xlsx

from vrp.cli import main
from vrp.options import build_config
from vrp.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


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
