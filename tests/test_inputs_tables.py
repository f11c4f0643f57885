"""Real-world tables for `vrp prepare` (issue 9, items 6-8 and the table side of 3): text columns stay text as
written in every format, JSONL files with a byte-order mark or in a legacy encoding, and like counts as people
and spreadsheets type them. Each kind is tested with the issue's example and at least one more member."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from vrp.cli import main
from vrp.dataset import load_source
from vrp.errors import VrpError
from vrp.records import read_videos

ROWS = [  # comments and ids that look like numbers or NA words, as a person typed them
    {"video_id": "1e5", "title": "t1", "transcript": "first video", "comment": "1.10"},
    {"video_id": "1e5", "title": "t1", "transcript": "first video", "comment": "007"},
    {"video_id": "100000", "title": "t2", "transcript": "second video", "comment": "1e3"},
    {"video_id": "100000", "title": "t2", "transcript": "second video", "comment": "NA"},
    {"video_id": "007", "title": "None", "transcript": "third video", "comment": "null"},
]


def comments_by_video(path: Path) -> dict[str, list[str]]:
    videos, _ = load_source(path)
    return {v.video_id: [c.text for c in v.comments] for v in videos}


WANT = {"1e5": ["1.10", "007"], "100000": ["1e3", "NA"], "007": ["null"]}


# --- 6. text columns are text, as written, in every format -----------------------------------------------------
def test_jsonl_strings_that_look_like_numbers_stay_as_written(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    assert comments_by_video(path) == WANT  # "1e5" and "100000" are two videos


@pytest.mark.parametrize("ext", [".csv", ".xlsx", ".parquet"])
def test_every_table_format_agrees(tmp_path, ext):
    df = pd.DataFrame(ROWS, dtype=str)
    path = tmp_path / f"t{ext}"
    {".csv": lambda: df.to_csv(path, index=False), ".xlsx": lambda: df.to_excel(path, index=False),
     ".parquet": lambda: df.to_parquet(path)}[ext]()
    assert comments_by_video(path) == WANT
    videos, _ = load_source(path)
    assert {v.video_id: v.title for v in videos}["007"] == "None"  # an NA word in a title is a title


def test_numbers_in_text_columns_are_their_literal_text(tmp_path):
    # a JSON number keeps its literal (1.10 stays "1.10"); a Parquet int/float column becomes its shortest text
    (tmp_path / "n.jsonl").write_text('{"video_id": 100000, "title": 1.10, "transcript": "x", "comment": 1e3}\n'
                                      '{"video_id": 1e5, "title": 2, "transcript": "y", "comment": 007.5}\n'
                                      .replace("007.5", "7.50"), encoding="utf-8")
    videos, _ = load_source(tmp_path / "n.jsonl")
    assert [(v.video_id, v.title, v.comments[0].text) for v in videos] == [("100000", "1.10", "1e3"),
                                                                          ("1e5", "2", "7.50")]
    pd.DataFrame({"video_id": [100000, 7], "title": ["a", "b"], "transcript": ["x", "y"],
                  "comment": [1.5, 3.0]}).to_parquet(tmp_path / "n.parquet")
    videos, _ = load_source(tmp_path / "n.parquet")
    assert [(v.video_id, v.comments[0].text) for v in videos] == [("100000", "1.5"), ("7", "3")]


def test_a_list_in_a_text_column_is_an_error_naming_the_line(tmp_path):
    (tmp_path / "l.jsonl").write_text('{"title": "a", "transcript": "x", "comment": "ok"}\n\n'
                                      '{"title": "a", "transcript": "x", "comment": ["not", "text"]}\n')
    with pytest.raises(VrpError, match=r"l\.jsonl: row 3: column 'comment' must be text"):
        load_source(tmp_path / "l.jsonl")


# --- 7. JSONL with a byte-order mark, and tables in other encodings --------------------------------------------
def test_jsonl_with_utf8_bom_is_read(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"title": "a", "transcript": "x", "comment": "c"}).encode() + b"\n")
    assert comments_by_video(path) == {next(iter(comments_by_video(path))): ["c"]}
    assert len(comments_by_video(path)) == 1


def test_jsonl_in_utf16_with_bom_as_powershell_writes_it(tmp_path):
    # Windows PowerShell 5.1 `... | Out-File t.jsonl` (and `>`) writes UTF-16 LE with a BOM and CRLF line ends
    lines = [json.dumps({"video_id": "v1", "title": "Café", "transcript": "x", "comment": "très bien"})] * 2
    (tmp_path / "ps.jsonl").write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-16-le"))
    assert comments_by_video(tmp_path / "ps.jsonl") == {"v1": ["très bien", "très bien"]}


def test_video_jsonl_and_collect_dir_with_utf8_bom(tmp_path):
    rec = {"video_id": "v1", "title": "a", "transcript": "hello", "comments": [{"text": "c", "like_count": "1,234"}]}
    (tmp_path / "v.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(rec).encode() + b"\n")
    videos, stats = load_source(tmp_path / "v.jsonl")
    assert stats["format"] == "video jsonl" and videos[0].comments[0].like_count == 1234
    d = tmp_path / "collect"
    d.mkdir()
    row = {"id": "AAAAAAAAAAA", "title": "a", "transcript": [{"start": 0, "end": 1, "text": "hi"}],
           "comments": [{"id": "c1", "text": "nice", "like_count": "1.2K"}]}
    (d / "videos.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(row).encode() + b"\n")
    videos, _ = load_source(d)
    assert videos[0].video_id == "AAAAAAAAAAA" and videos[0].comments[0].like_count == 1200


def test_windows_1252_csv_is_read_and_the_guess_is_recorded(tmp_path):
    (tmp_path / "w.csv").write_bytes("title,transcript,comment\nÉclair,we bake,it’s great\n".encode("cp1252"))
    assert main(["prepare", str(tmp_path / "w.csv"), "--out", str(tmp_path / "ds"), "--val-fraction", "0"]) == 0
    v = read_videos(tmp_path / "ds" / "train.jsonl")[0]
    assert (v.title, v.comments[0].text) == ("Éclair", "it’s great")
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["stats"]["source_encoding"] == "cp1252 (guessed)"


# --- 8. like counts as people and spreadsheets write them -----------------------------------------------------
def likes_of(tmp_path: Path, counts: list, ext: str = ".csv") -> list[int | None]:
    df = pd.DataFrame({"video_id": ["v"] * len(counts), "title": ["t"] * len(counts),
                       "transcript": ["x"] * len(counts), "comment": [f"c{i}" for i in range(len(counts))],
                       "like_count": counts})
    path = tmp_path / f"likes{ext}"
    if ext == ".csv":
        df.to_csv(path, index=False)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in df.to_dict("records")), encoding="utf-8")
    videos, _ = load_source(path)
    return [c.like_count for c in videos[0].comments]


def test_like_counts_typed_by_people(tmp_path):
    assert likes_of(tmp_path, ["1,234", "1.2K", "7"]) == [1234, 1200, 7]  # ranked by likes


@pytest.mark.parametrize("counts, ext, want", [
    (["1.23E+06", "1'234", "3,1K"], ".csv", [1_230_000, 3100, 1234]),  # Excel's scientific display, Swiss, comma
    (["2.3M", "1 234 likes", ""], ".csv", [2_300_000, 1234, None]),
    ([1234.0, "45", None], ".jsonl", [1234, 45, None]),  # a spreadsheet's float, a string, a null
])
def test_other_like_count_spellings(tmp_path, counts, ext, want):
    assert likes_of(tmp_path, counts, ext) == want


@pytest.mark.parametrize("bad, why", [("many", "no digits"), ("-5", "negative"), ("12.5", "not a whole number"),
                                      ("inf", "no digits"), ("12 apples", "extra text")])
def test_a_value_that_is_not_a_count_names_file_row_and_value(tmp_path, capsys, bad, why):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"title": ["t", "t"], "transcript": ["x", "x"], "comment": ["a", "b"],
                  "like_count": ["3", bad]}).to_csv(path, index=False)
    assert main(["prepare", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"bad.csv: row 3: like_count '{bad}' is not a like count" in err and why in err
    assert "finite" not in err or bad == "inf"
