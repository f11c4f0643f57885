"""Like counts (`vrp.likes`) as people, spreadsheets and YouTube write them, read from every source: the
spellings that are counts, and the values that are not (named with file, row and value) and never read as 0."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import one_line_error, write_csv_table

from vrp.cli import main
from vrp.errors import VrpError
from vrp.sources import load_source


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


@pytest.mark.parametrize("bad, why", [("many", "no digits"), ("-5", "a count cannot be negative"),
                                      ("12.5", "not a whole number"), ("inf", "no digits"),
                                      ("12 apples", "extra text around the number")])
def test_a_value_that_is_not_a_count_names_file_row_and_value(tmp_path, capsys, bad, why):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"title": ["t", "t"], "transcript": ["x", "x"], "comment": ["a", "b"],
                  "like_count": ["3", bad]}).to_csv(path, index=False)
    assert main(["prepare", str(path), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (f"error: {path}: row 3: like_count '{bad}' is not a like count: {why}; write it "
                                       "as a whole number such as 1234, 1,234, 1.2K or 2.3M\n")


@pytest.mark.parametrize("ext", [".csv", ".jsonl"])
@pytest.mark.parametrize("bad", ["1e5000", "1e10000000", "1e400", "2000000000000"])
def test_a_huge_like_count_is_an_error_naming_file_row_and_value(tmp_path, ext, bad):
    path = tmp_path / f"huge{ext}"
    if ext == ".csv":
        path.write_text(f"title,transcript,comment,like_count\nt,x,a,3\nt,x,b,{bad}\n", encoding="utf-8")
    else:  # a JSON number literal, not a string
        path.write_text('{"title": "t", "transcript": "x", "comment": "a", "like_count": 3}\n'
                        f'{{"title": "t", "transcript": "x", "comment": "b", "like_count": {bad}}}\n')
    row = 3 if ext == ".csv" else 2
    want = rf"huge\{ext}: row {row}: like_count '{bad}' is not a like count: larger than 10\^12"
    with pytest.raises(VrpError, match=want):
        load_source(path)


def test_a_huge_like_count_in_parquet_and_video_jsonl(tmp_path):
    path = tmp_path / "huge.parquet"
    pd.DataFrame({"title": ["t"], "transcript": ["x"], "comment": ["a"], "like_count": [1e300]}).to_parquet(path)
    with pytest.raises(VrpError, match=r"huge\.parquet: row 1: like_count .* is not a like count"):
        load_source(path)
    vj = tmp_path / "videos.jsonl"
    vj.write_text('{"video_id": "v", "transcript": "x", "comments": [{"text": "a", "like_count": 1' + "0" * 5000
                  + "}]}\n")
    with pytest.raises(VrpError, match=r"videos\.jsonl:1: invalid JSON \(Exceeds the limit"):
        load_source(vj)


def test_prepare_like_count_infinity_names_the_row(tmp_path, capsys) -> None:
    src = write_csv_table(tmp_path / "inf.csv", title=["a", "a"], transcript=["x", "x"], comment=["c", "d"],
                like_count=["3", "inf"])
    one_line_error(capsys, ["prepare", str(src), "--out", str(tmp_path / "o")], "inf.csv: row 3", "like_count")
    assert not (tmp_path / "o").exists()


def test_collect_dir_like_count_infinity(tmp_path, capsys) -> None:
    d = tmp_path / "collect"
    d.mkdir()
    (d / "videos.jsonl").write_text(json.dumps({"id": "a", "transcript": "hello", "comments": [
        {"text": "ok", "like_count": float("inf")}, {"text": "nan", "like_count": float("nan")}]}) + "\n")
    assert main(["prepare", str(d), "--out", str(tmp_path / "o"), "--val-fraction", "0"]) == 0
    v = json.loads((tmp_path / "o/train.jsonl").read_text())
    assert [c.get("like_count", "unknown") for c in v["comments"]] == ["unknown", "unknown"]  # never 0 ("low")
