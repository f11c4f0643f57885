"""`vrp generate --out FILE.jsonl`: rows written as they come, a rerun resumes after the videos already written, a
rerun with other options is refused (vrp.generate.stream)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import one_line_error, write_csv_table

import vrp.generate.run
import vrp.generate.stream
from vrp.cli import main
from vrp.generate.stream import meta_path


def _table(tmp_path: Path, n: int = 4) -> Path:
    return write_csv_table(tmp_path / "videos.csv", video_id=[f"v{i}" for i in range(n)],
                           title=[f"title {i}" for i in range(n)],
                           transcript=[f"we talk about thing number {i} today" for i in range(n)])


def _argv(model: Path, table: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", "--model", str(model), "--input", str(table), "--out", str(out), "--precision", "fp32",
            "--preset", "greedy,nucleus", "--num-comments", "2", "--max-new-tokens", "4", "--seed", "3", *extra]


def _rows(path: Path) -> list[dict]:
    """The file's rows without `seconds` (the wall time of each generation, which no rerun repeats)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.fixture
def reference(tmp_path: Path, tiny_model_dir: Path) -> tuple[Path, list[dict]]:
    """The table and the rows of an uninterrupted run."""
    table = _table(tmp_path)
    out = tmp_path / "whole.jsonl"
    assert main(_argv(tiny_model_dir, table, out)) == 0
    rows = _rows(out)
    assert [(r["video_id"], r["preset"], r["comment_index"]) for r in rows[:3]] == [
        ("v0", "greedy", 1), ("v0", "nucleus", 1), ("v0", "nucleus", 2)]
    assert len(rows) == 4 * 3 and json.loads(meta_path(out).read_text())["complete"] is True
    return table, rows


def _count_generated(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Video ids of every generation call from now on."""
    seen: list[str] = []
    real = vrp.generate.run.comments_for_prompt

    def counting(*args, **kwargs):
        seen.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(vrp.generate.run, "comments_for_prompt", counting)
    return seen


def test_an_interrupted_file_resumes_to_the_uninterrupted_rows(tmp_path, tiny_model_dir, reference, monkeypatch,
                                                               capsys) -> None:
    table, whole = reference
    out = tmp_path / "p.jsonl"
    real_append, appended = vrp.generate.stream.append_jsonl_line, []

    def dying_append(path, obj):  # the process dies after 7 rows: in the middle of the third video's rows
        if len(appended) == 7:
            raise RuntimeError("killed")
        appended.append(obj)
        real_append(path, obj)

    monkeypatch.setattr(vrp.generate.stream, "append_jsonl_line", dying_append)
    with pytest.raises(RuntimeError, match="killed"):
        main(_argv(tiny_model_dir, table, out))
    assert _rows(out) == whole[:7] and json.loads(meta_path(out).read_text())["complete"] is False
    monkeypatch.setattr(vrp.generate.stream, "append_jsonl_line", real_append)
    prompts = _count_generated(monkeypatch)
    capsys.readouterr()
    assert main(_argv(tiny_model_dir, table, out)) == 0
    assert _rows(out) == whole  # the cut third video was generated again, whole, after the first two
    assert len(prompts) == 2 * 2  # videos v2 and v3, two presets each: v0 and v1 were skipped
    assert "6 comments for 2 videos written to" in capsys.readouterr().out
    prompts.clear()
    assert main(_argv(tiny_model_dir, table, out)) == 0 and prompts == []  # complete: nothing to do
    assert _rows(out) == whole


def test_a_torn_last_line_is_repaired_and_its_video_generated_again(tmp_path, tiny_model_dir, reference) -> None:
    table, whole = reference
    out = tmp_path / "p.jsonl"
    real_predict = vrp.generate.run.predict_videos

    def two_videos(videos, cfg, start=0, **kwargs):  # a kill after two videos, then half a row of the third
        for i, rows in enumerate(real_predict(videos, cfg, start=start, **kwargs)):
            if i == 2:
                raise KeyboardInterrupt
            yield rows

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vrp.generate.run, "predict_videos", two_videos)
        assert main(_argv(tiny_model_dir, table, out)) == 130
    assert _rows(out) == whole[:6]
    with open(out, "ab") as f:
        f.write(b'{"video_id": "v2", "title": "tit')
    assert main(_argv(tiny_model_dir, table, out)) == 0
    assert _rows(out) == whole


def test_a_rerun_with_other_options_is_refused_naming_the_flag(tmp_path, tiny_model_dir, reference, capsys) -> None:
    table, _ = reference
    out = tmp_path / "whole.jsonl"
    before = out.read_bytes()
    one_line_error(capsys, _argv(tiny_model_dir, table, out, "--max-new-tokens", "5"),
                   "error: --max-new-tokens: ", "was started with --max-new-tokens 4, this run asks for 5",
                   "--overwrite")
    one_line_error(capsys, _argv(tiny_model_dir, table, out, "--max-videos", "2"), "error: --max-videos: ")
    (tmp_path / "other").mkdir()
    other = _table(tmp_path / "other")
    one_line_error(capsys, _argv(tiny_model_dir, other, out), "error: --input: ", "was started with --input")
    assert out.read_bytes() == before
    assert main(_argv(tiny_model_dir, table, out, "--max-new-tokens", "5", "--overwrite")) == 0
    assert json.loads(meta_path(out).read_text())["options"]["max_new_tokens"] == 5


def test_a_jsonl_file_that_vrp_did_not_stream_is_not_resumed(tmp_path, tiny_model_dir, capsys) -> None:
    table, out = _table(tmp_path, 2), tmp_path / "mine.jsonl"
    out.write_text('{"a": 1}\n')
    one_line_error(capsys, _argv(tiny_model_dir, table, out), "error: --out: ", "is not a streamed", "--overwrite")
    assert out.read_text() == '{"a": 1}\n' and not meta_path(out).exists()
    assert main(_argv(tiny_model_dir, table, out, "--overwrite")) == 0
    assert [r["video_id"] for r in _rows(out)] == ["v0"] * 3 + ["v1"] * 3


def test_a_file_with_other_videos_is_refused(tmp_path, tiny_model_dir, capsys) -> None:
    table, out = _table(tmp_path, 2), tmp_path / "p.jsonl"
    assert main(_argv(tiny_model_dir, table, out)) == 0
    text = out.read_text().replace('"v0"', '"elsewhere"')
    out.write_text(text)
    one_line_error(capsys, _argv(tiny_model_dir, table, out), "error: --input: ",
                   "holds predictions for other videos than the first 2 of this input")
    assert out.read_text() == text
