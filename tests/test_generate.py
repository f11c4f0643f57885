"""`vrp generate` (`vrp.generate.run`): the accepted inputs, the prediction rows of several presets, the output file
formats, and the checks that fail before anything runs (counts, presets, an output over an input)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import one_line_error, prepared_dataset, write_csv_table

from vrp.cli import main
from vrp.errors import ConfigError, VrpError
from vrp.generate.config import GenerateConfig
from vrp.generate.run import load_inputs, predict, write_predictions
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
    # JSONL: paths without `\/` escapes, a missing cell as null, numpy scalars as plain JSON values
    write_predictions(pd.DataFrame([{"adapter": "runs/a/adapter", "pmi": 1.5}, {"adapter": "", "pmi": None}])
                      .to_dict("records"), tmp_path / "q.jsonl")
    assert (tmp_path / "q.jsonl").read_text().splitlines() == ['{"adapter": "runs/a/adapter", "pmi": 1.5}',
                                                               '{"adapter": "", "pmi": null}']
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


def test_a_table_without_comments_is_a_generation_input(tmp_path: Path) -> None:
    path = tmp_path / "videos.csv"
    path.write_text("title,transcript\nBread,we bake bread\nTea,we brew tea\n", encoding="utf-8")
    videos = load_inputs(str(path))
    assert [(v.title, v.transcript, v.comments) for v in videos] == [("Bread", "we bake bread", []),
                                                                   ("Tea", "we brew tea", [])]
    from vrp.sources import load_source

    with pytest.raises(VrpError, match=r"missing column\(s\) \['comment'\]"):  # prepare still needs comments
        load_source(path)


def test_title_with_a_table_input_is_an_error_not_ignored(tmp_path: Path, capsys) -> None:
    path = tmp_path / "videos.csv"
    path.write_text("title,transcript\nBread,we bake bread\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^title: goes with a transcript text or a transcript file .*; the videos of "
                                          r".*videos\.csv have their own titles$") as e:
        load_inputs(str(path), title="Other")
    assert e.value.field == "title"
    from vrp.cli import main

    assert main(["generate", "--input", str(path), "--title", "X", "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert "--title" in err and "own titles" in err and not (tmp_path / "o.csv").exists()
    (tmp_path / "t.txt").write_text("a transcript")
    assert load_inputs(str(tmp_path / "t.txt"), title="Kept")[0].title == "Kept"  # a transcript file takes one


def test_a_preset_named_twice_is_refused() -> None:
    from vrp.errors import ConfigError
    from vrp.evaluate.config import EvaluateConfig

    with pytest.raises(ConfigError, match="greedy named twice in 'greedy, nucleus,greedy'") as e:
        GenerateConfig(preset="greedy, nucleus,greedy")
    assert e.value.field == "preset"
    with pytest.raises(ConfigError, match="nucleus named twice") as e:
        EvaluateConfig(presets="nucleus,nucleus")
    assert e.value.field == "presets"


def test_generate_bad_counts_fail_before_anything_runs(tmp_path, capsys) -> None:
    ds = prepared_dataset(tmp_path)
    out = str(tmp_path / "p.csv")
    gen = ["generate", "--model", "no-such-model-needed", "--precision", "fp32", "--out", out]
    one_line_error(capsys, [*gen, "--input", str(ds), "--max-videos", "-1"], "error: --max-videos: must be >= 0")
    one_line_error(capsys, [*gen, "--transcript", "hi", "--num-comments", "0"], "error: --num-comments: must be >= 1")
    one_line_error(capsys, [*gen, "--transcript", "hi", "--max-new-tokens", "0"],
                   "error: --max-new-tokens: must be >= 1")
    one_line_error(capsys, [*gen, "--transcript", "hi", "--preset", ","], "error: --preset: no preset named in ','")
    one_line_error(capsys, [*gen, "--transcript", "hi", "--preset", "fast"], "error: --preset: unknown preset 'fast'")
    one_line_error(capsys, [*gen, "--transcript", "hi", "--checkpoint", "latest"],
                   "error: --checkpoint: needs a --run")
    (tmp_path / "d.csv").mkdir()
    one_line_error(capsys, [*gen[:-1], str(tmp_path / "d.csv"), "--transcript", "hi", "--overwrite"],
                   "d.csv is a directory")
    assert not (tmp_path / "p.csv").exists()


def test_generate_never_writes_over_its_input(tmp_path, capsys) -> None:
    """`--out` equal to the input table, or inside the input dataset dir, is refused even with --overwrite."""
    src = write_csv_table(tmp_path / "mine.csv", title=["a"], transcript=["x"], comment=["c"])
    before = src.read_bytes()
    one_line_error(capsys, ["generate", "--model", "m", "--input", str(src), "--out", str(src), "--overwrite"],
                   "mine.csv is or lies in an input of the command, --input")
    ds = prepared_dataset(tmp_path)
    val = ds / "validation.jsonl"
    kept = val.read_bytes()
    one_line_error(capsys, ["generate", "--model", "m", "--input", str(ds), "--out", str(val), "--overwrite"],
                   "lies in an input of the command, --input")
    assert src.read_bytes() == before and val.read_bytes() == kept


def test_generate_dataset_dir_without_validation_videos(tmp_path, capsys) -> None:
    src = write_csv_table(tmp_path / "t.csv", title=["a"], transcript=["x"], comment=["c"])
    assert main(["prepare", str(src), "--out", str(tmp_path / "ds"), "--val-fraction", "0"]) == 0
    one_line_error(capsys, ["generate", "--model", "m", "--input", str(tmp_path / "ds"), "--out",
                            str(tmp_path / "p.csv")], "validation.jsonl: no videos")
    assert not (tmp_path / "p.csv").exists()


def test_video_jsonl_without_comments_is_read_as_videos(tmp_path) -> None:
    from vrp.generate.run import load_inputs

    src = tmp_path / "v.jsonl"
    src.write_text(json.dumps({"video_id": "a", "title": "t", "transcript": "x"}) + "\n")
    videos = load_inputs(str(src))  # was read as a table and failed with "missing column(s) ['comment']"
    assert [(v.video_id, v.title, v.transcript, v.comments) for v in videos] == [("a", "t", "x", [])]
