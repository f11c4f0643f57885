"""Batch prediction: the accepted inputs, the prediction rows of several presets and the output file formats."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from vrp.errors import ConfigError, VrpError
from vrp.predict import GenerateConfig, load_inputs, predict, write_predictions
from vrp.records import Video


@pytest.fixture(scope="module")
def model(tokenizer):
    from helpers import tiny_llama

    return tiny_llama(tokenizer, seed=1)


def test_predict_rows_and_output_formats(model, tokenizer, tmp_path: Path) -> None:
    videos = [Video("a", "t1", "one two"), Video("b", "", "three four")]
    rows = predict(videos, GenerateConfig(preset="greedy,nucleus", num_comments=2, max_new_tokens=6), progress=False,
                   loaded=(model, tokenizer, {"model": "tiny", "adapter": None}))
    assert [(r["video_id"], r["preset"], r["comment_index"]) for r in rows] == [
        ("a", "greedy", 1), ("a", "nucleus", 1), ("a", "nucleus", 2),
        ("b", "greedy", 1), ("b", "nucleus", 1), ("b", "nucleus", 2)]
    for ext in (".csv", ".xlsx", ".jsonl"):
        write_predictions(rows, tmp_path / f"p{ext}")
    df = pd.read_json(tmp_path / "p.jsonl", lines=True)
    assert list(df.columns[:7]) == ["video_id", "title", "model", "adapter", "preset", "comment_index", "comment"]
    assert len(pd.read_csv(tmp_path / "p.csv")) == len(pd.read_excel(tmp_path / "p.xlsx")) == 6
    with pytest.raises(VrpError, match="unknown extension"):
        write_predictions(rows, tmp_path / "p.txt")
    assert not (tmp_path / "p.txt").exists()


def test_load_inputs(tmp_path: Path) -> None:
    assert load_inputs(None, "T", "some words")[0].title == "T"
    (tmp_path / "t.txt").write_text("a transcript")
    assert load_inputs(str(tmp_path / "t.txt"))[0].transcript == "a transcript"
    with pytest.raises(ConfigError, match="input: give exactly one of"):
        load_inputs(str(tmp_path / "t.txt"), transcript="x")
    with pytest.raises(ConfigError, match="input: give exactly one of"):
        load_inputs(None)
    (tmp_path / "e.txt").write_text("  ")
    with pytest.raises(VrpError, match="empty transcript"):
        load_inputs(str(tmp_path / "e.txt"))
