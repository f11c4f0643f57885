"""Reading the supported sources into `Video` records (`vrp.sources`): seed xlsx and user tables grouped into
videos and ranked by likes, video JSON Lines, collect dirs and prepared dataset dirs as input; the bad-input errors
name the file, row and field."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import one_line_error, write_csv_table

from vrp.cli import main
from vrp.errors import VrpError
from vrp.sources import load_source


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet", ".xlsx"])
def test_user_table_groups_by_video_and_ranks_by_likes(tmp_path: Path, ext: str) -> None:
    df = pd.DataFrame({"video_id": ["a", "a", "b", "a"], "title": ["A", "A", "B", "A"],
                       "transcript": ["ta", "ta", "tb", "ta"], "comment": ["low", "high", "only", "mid"],
                       "like_count": [1, 100, 5, 10]})
    path = tmp_path / f"t{ext}"
    {".csv": lambda: df.to_csv(path, index=False), ".jsonl": lambda: df.to_json(path, orient="records", lines=True),
     ".parquet": lambda: df.to_parquet(path), ".xlsx": lambda: df.to_excel(path, index=False)}[ext]()
    videos, stats = load_source(path)
    by = {v.video_id: v for v in videos}
    assert [c.text for c in by["a"].comments] == ["high", "mid", "low"]
    assert [c.like_count for c in by["a"].comments] == [100, 10, 1]
    assert [c.rank for c in by["a"].comments] == [1, 2, 3]
    assert by["b"].title == "B" and by["b"].transcript == "tb"


def test_test_xlsx_without_comments(tmp_path: Path) -> None:
    pd.DataFrame({"text": [f"<s>[INST] title {i} transcript words [/INST] " for i in range(3)],
                  "length": [10, 10, 10]}).to_excel(tmp_path / "test.xlsx")
    videos, _ = load_source(tmp_path / "test.xlsx", require_comments=False)
    assert len(videos) == 3 and all(not v.comments for v in videos)
    with pytest.raises(VrpError, match="no usable videos"):
        load_source(tmp_path / "test.xlsx", require_comments=True)


def test_bad_inputs_name_file_and_row(tmp_path: Path) -> None:
    with pytest.raises(VrpError, match="file not found"):
        load_source(tmp_path / "missing.csv")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(VrpError, match="unknown extension"):
        load_source(tmp_path / "x.txt")
    pd.DataFrame({"title": ["t"], "comment": ["c"]}).to_csv(tmp_path / "nocol.csv", index=False)
    with pytest.raises(VrpError, match=r"nocol.csv: missing column\(s\) \['transcript'\]"):
        load_source(tmp_path / "nocol.csv")
    pd.DataFrame({"title": ["t", "t"], "transcript": ["x", None], "comment": ["c", "d"]}).to_csv(
        tmp_path / "nan.csv", index=False)
    with pytest.raises(VrpError, match=r"nan.csv: row 3: empty or missing 'transcript'"):
        load_source(tmp_path / "nan.csv")
    pd.DataFrame({"comments": ["c"], "titles": ["p"], "text": ["<s> no marker </s>"], "length": [1]}).to_excel(
        tmp_path / "noinst.xlsx", index=False)
    with pytest.raises(VrpError, match=r"noinst.xlsx: row 2: .*\[/INST\]"):
        load_source(tmp_path / "noinst.xlsx")
    pd.DataFrame({"title": [], "transcript": [], "comment": []}).to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(VrpError, match="no rows"):
        load_source(tmp_path / "empty.csv")


def test_video_with_zero_usable_comments_is_skipped_and_counted(tmp_path: Path) -> None:
    pd.DataFrame({"title": ["a", "b", "b"], "transcript": ["ta", "tb", "tb"], "comment": [" ", "x", None]}).to_csv(
        tmp_path / "t.csv", index=False)
    with pytest.warns(UserWarning, match="skipped 1 video"):
        videos, stats = load_source(tmp_path / "t.csv")
    assert [v.title for v in videos] == ["b"]
    assert stats["videos_skipped_no_comments"] == 1 and stats["comments_skipped_empty"] == 2


@pytest.mark.parametrize("kind", ["table", "videos", "collect"])
def test_deeply_nested_json_in_any_jsonl_source_is_one_line_error(tmp_path, kind):
    deep = "[" * 100_000 + "]" * 100_000
    line = {"table": '{"title": "t", "transcript": "x", "comment": %s}',
            "videos": '{"video_id": "v", "transcript": "x", "comments": %s}',
            "collect": '{"id": "AAAAAAAAAAA", "transcript": %s, "comments": []}'}[kind] % deep
    path = tmp_path / ("c" if kind == "collect" else "in.jsonl")
    if kind == "collect":
        path.mkdir()
        (path / "videos.jsonl").write_text('{"id": "BBBBBBBBBBB", "transcript": "ok", "comments": []}\n'
                                           + line + "\n")
        want = r"videos\.jsonl:2: invalid JSON \(nested too deeply to read\)"
    else:
        path.write_text(line + "\n")
        want = r"in\.jsonl:1: invalid JSON \(nested too deeply to read\)"
    with pytest.raises(VrpError, match=want):
        load_source(path)


def test_prepare_same_video_id_with_different_transcripts_is_an_error(tmp_path, capsys) -> None:
    src = write_csv_table(tmp_path / "dup.csv", video_id=["v1", "v1"], title=["a", "a"], transcript=["x", "other"],
                comment=["c", "d"])
    one_line_error(capsys, ["prepare", str(src), "--out", str(tmp_path / "o")],
                   "dup.csv: row 3", "'v1'", "different transcript than row 2")


def test_prepare_skips_comments_of_only_invisible_characters(tmp_path, capsys) -> None:
    src = write_csv_table(tmp_path / "zw.csv", title=["a", "a", "b"], transcript=["x", "x", "y"],
                comment=["\u200b\u200b", "real one", "\ufeff \u200b"])
    with pytest.warns(UserWarning, match="skipped 1 video"):
        m = main(["prepare", str(src), "--out", str(tmp_path / "o"), "--val-fraction", "0"])
    assert m == 0
    videos = [json.loads(line) for line in (tmp_path / "o/train.jsonl").read_text().splitlines()]
    assert [[c["text"] for c in v["comments"]] for v in videos] == [["real one"]]
    manifest = json.loads((tmp_path / "o/manifest.json").read_text())
    assert manifest["stats"]["comments_skipped_empty"] == 2


def test_prepare_non_utf8_jsonl_is_a_one_line_error(tmp_path, capsys) -> None:
    (tmp_path / "lat.jsonl").write_bytes(b'{"video_id": "caf\xe9", "transcript": "x", "comments": []}\n')
    one_line_error(capsys, ["prepare", str(tmp_path / "lat.jsonl"), "--out", str(tmp_path / "o")],
                   "lat.jsonl", "not UTF-8")
    # a table JSONL in a legacy encoding is read (tests/test_tables.py); binary bytes fit no encoding
    (tmp_path / "t.jsonl").write_bytes(b'{"title": "caf\x00\xff\x81", "transcript": "x", "comment": "c"}\n')
    one_line_error(capsys, ["prepare", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "o")], "t.jsonl", "UTF-8")
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "train.jsonl").write_text('{"video_id": "a", "transcript": "x", "comments": [{"text": "c"}]}\n')
    (ds / "validation.jsonl").write_bytes(b"\xff\n")
    one_line_error(capsys, ["prepare", str(ds), "--out", str(tmp_path / "o")], "validation.jsonl:1", "UTF-8")


def test_prepare_keeps_numeric_looking_text_columns_as_text(tmp_path) -> None:
    (tmp_path / "n.csv").write_text("video_id,title,transcript,comment\n123,t,x,5\n,t2,y,6\n")
    assert main(["prepare", str(tmp_path / "n.csv"), "--out", str(tmp_path / "o"), "--val-fraction", "0"]) == 0
    videos = [json.loads(line) for line in (tmp_path / "o/train.jsonl").read_text().splitlines()]
    assert videos[0]["video_id"] == "123" and videos[0]["comments"][0]["text"] == "5"


# --- tables read in chunks, rows grouped on disk ---------------------------------------------------------------
def _cells(chunks) -> tuple[dict[str, list[str]], list[int]]:
    from vrp.tables import cell

    cols: dict[str, list[str]] = {}
    rows: list[int] = []
    for c in chunks:
        for k, v in c.columns.items():
            cols.setdefault(k, []).extend(cell(x) for x in v)
        rows += c.rows
    return cols, rows


@pytest.mark.parametrize("name", ["sep.csv", "crlf.tsv", "keys.jsonl", "utf16.jsonl", "cp1252.csv", "index.parquet",
                                  "t.xlsx"])
def test_a_table_read_in_chunks_has_the_cells_of_a_whole_read(tmp_path: Path, name: str) -> None:
    from vrp.table_chunks import iter_table_chunks
    from vrp.tables import cell, decode_table_bytes, read_table

    path = tmp_path / name
    rows = [{"title": f"t{i}", "transcript": f"x;{i}\tz", "comment": f"c{i}, ok"} for i in range(7)]
    df = pd.DataFrame(rows)
    if name == "sep.csv":  # Excel's `sep=` line, a quoted cell with a line break, a blank line
        path.write_text('sep=;\ntitle;transcript;comment\n"t\n0";x;c\n\nt1;"y;1";c1\n' + "t2;z;c2\n" * 5)
    elif name == "crlf.tsv":
        df.to_csv(path, sep="\t", index=False, lineterminator="\r\n")
    elif name == "keys.jsonl":  # `like_count` first appears in the 5th object; blank lines between objects
        path.write_text("\n\n".join(json.dumps({**r, **({"like_count": 3} if i >= 4 else {})})
                                    for i, r in enumerate(rows)) + "\n")
    elif name == "utf16.jsonl":  # not plain UTF-8: decoded whole, then cut into chunks
        path.write_bytes(("\ufeff" + "\r\n".join(json.dumps(r) for r in rows)).encode("utf-16-le"))
    elif name == "cp1252.csv":
        path.write_bytes(df.assign(title=[f"Café {i}" for i in range(7)]).to_csv(index=False).encode("cp1252"))
    elif name == "index.parquet":  # a non-range index is stored as a column and restored as the index
        df.iloc[[6, 2, 4, 0, 1, 3, 5]].to_parquet(path)
    else:
        df.to_excel(path, index=False)
    whole = read_table(path)  # the whole-file read
    first = 1 if path.suffix == ".parquet" else 2
    lines = ([i for i, line in enumerate(decode_table_bytes(path).split("\n"), 1) if line.strip()]
             if path.suffix == ".jsonl" else [])  # JSONL rows are numbered by their line in the file
    want = ({str(k): [cell(x) for x in whole[k].tolist()] for k in whole.columns},
            lines if path.suffix == ".jsonl" else list(range(first, first + len(whole))))  # JSONL: the file's lines
    for chunk_rows in (1, 2, 1000):
        got = _cells(iter_table_chunks(path, chunk_rows=chunk_rows))
        assert got == want, chunk_rows
    if name == "keys.jsonl":
        assert got[0]["like_count"] == ["", "", "", "", "3", "3", "3"] and got[1] == [1, 3, 5, 7, 9, 11, 13]
    if name == "sep.csv":
        assert got[0]["title"][:2] == ["t\n0", "t1"] and got[1][:2] == [2, 3]


def test_rows_of_one_video_far_apart_are_grouped_and_checked(tmp_path: Path) -> None:
    from vrp.sources import iter_source

    rows = [{"video_id": "a", "title": "A", "transcript": "ta", "comment": "first", "like_count": "1"}]
    rows += [{"video_id": f"o{i}", "title": "O", "transcript": f"t{i}", "comment": "c", "like_count": "0"}
             for i in range(40)]
    rows += [{"video_id": "a", "title": "A", "transcript": "ta", "comment": "last", "like_count": "1.2K"}]
    path = tmp_path / "far.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for chunk_rows in (1, 7, 100):
        videos = list(iter_source(path, chunk_rows=chunk_rows))
        assert [v.video_id for v in videos] == ["a"] + [f"o{i}" for i in range(40)]
        assert [(c.text, c.like_count) for c in videos[0].comments] == [("last", 1200), ("first", 1)]
    rows[-1]["transcript"] = "another transcript"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(VrpError, match=r"far\.jsonl: row 42: video_id 'a' has a different transcript than row 1;"):
        list(iter_source(path, chunk_rows=3))
    rows[-1].update(transcript="ta", title="B")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(VrpError, match=r"far\.jsonl: row 42: video_id 'a' has a different title than row 1;"):
        list(iter_source(path, chunk_rows=3))
