"""Table files as people and spreadsheets write them (`vrp.tables`, read through `vrp.sources`): text columns stay
text as written in every format, JSONL with a byte-order mark or in a legacy encoding, rows of another field count,
duplicated and clashing columns, missing values and bytes in cells, and CSV delimiters of other locales. Like counts
are tests/test_likes.py."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import write_csv_table

from vrp.cli import main
from vrp.errors import VrpError
from vrp.records import read_videos
from vrp.sources import load_source

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


# --- text columns are text, as written, in every format --------------------------------------------------------
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


# --- JSONL with a byte-order mark, and tables in other encodings -----------------------------------------------
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


# --- rows whose field count differs from the header, duplicated columns ----------------------------------------
@pytest.mark.parametrize("body, line, found", [
    ("Cooking show,pasta talk,wow, amazing\nGarden tour,plants,love it\n", 2, 4),  # the first data row
    ("Garden tour,plants,love it\nCooking show,pasta talk,wow, amazing\n", 3, 4),  # a later row
    ('"Two\nlines",plants,ok\n\nGarden tour,plants\n', 5, 2),  # too few, after a quoted newline and a blank line
])
def test_csv_row_with_another_field_count_is_one_line_error(tmp_path, capsys, body, line, found):
    path = tmp_path / "shift.csv"
    path.write_text("title,transcript,comment\n" + body, encoding="utf-8")
    assert main(["prepare", str(path), "--out", str(tmp_path / "o"), "--val-fraction", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"shift.csv:{line}: expected 3 fields" in err and f"found {found}" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("ext", [".csv", ".xlsx", ".jsonl"])
def test_a_duplicated_column_is_an_error_naming_it(tmp_path, ext):
    path = tmp_path / f"dup{ext}"
    if ext == ".csv":
        path.write_text("title,transcript,comment,comment\nt,x,first,second\n", encoding="utf-8")
    elif ext == ".xlsx":
        pd.DataFrame([["t", "x", "first", "second"]], columns=["title", "transcript", "comment", "c2"]).rename(
            columns={"c2": "comment"}).to_excel(path, index=False)
    else:
        path.write_text('{"title": "t", "transcript": "x", "comment": "first", "comment": "second"}\n')
    with pytest.raises(VrpError, match=r"dup\.\w+.*'comment' appears twice"):
        load_source(path)


# --- missing values, bytes, booleans and NULs in cells ---------------------------------------------------------
def test_parquet_missing_values_are_unknown_in_every_column_type(tmp_path):
    path = tmp_path / "na.parquet"
    pd.DataFrame({"video_id": pd.array(["v", "v", "v"], dtype="string"),
                  "title": pd.array(["t", "t", "t"], dtype="string"),
                  "transcript": ["x", "x", "x"], "comment": ["a", "b", "c"],
                  "like_count": pd.array([5, pd.NA, 9], dtype="Int64")}).to_parquet(path)
    videos, _ = load_source(path)
    assert [(c.text, c.like_count) for c in videos[0].comments] == [("c", 9), ("a", 5), ("b", None)]
    nas = tmp_path / "na_title.parquet"
    pd.DataFrame({"title": pd.array([pd.NA], dtype="string"), "transcript": ["x"], "comment": ["a"],
                  "like_count": pd.array([pd.NA], dtype="Float64")}).to_parquet(nas)
    v = load_source(nas)[0][0]
    assert (v.title, v.comments[0].like_count) == ("", None)


def test_parquet_bytes_are_decoded_or_rejected_naming_the_cell(tmp_path):
    good = tmp_path / "b.parquet"
    pd.DataFrame({"title": [b"A \xc3\xa9"], "transcript": [b"talk"], "comment": [b"nice"]}).to_parquet(good)
    v = load_source(good)[0][0]
    assert (v.title, v.transcript, v.comments[0].text) == ("A é", "talk", "nice")
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"title": [b"ok", b"\xff\xfe"], "transcript": ["x", "y"], "comment": ["a", "b"]}).to_parquet(bad)
    with pytest.raises(VrpError, match=r"bad\.parquet: row 2: column 'title' must be text \(bytes that are not UTF-8"):
        load_source(bad)


@pytest.mark.parametrize("value", ["true", "false"])
def test_a_jsonl_boolean_in_a_text_column_is_an_error(tmp_path, value):
    path = tmp_path / "b.jsonl"
    path.write_text('{"title": "t", "transcript": "x", "comment": "a"}\n'
                    f'{{"title": {value}, "transcript": "x", "comment": "b"}}\n')
    with pytest.raises(VrpError, match=r"b\.jsonl: row 2: column 'title' must be text \(the boolean"):
        load_source(path)


def test_nul_characters_are_removed_from_csv_jsonl_and_parquet_cells(tmp_path):
    csv_path = tmp_path / "n.csv"
    csv_path.write_bytes(b"title,transcript,comment\nt\x00,tr\x00ans,c\x00x\n")
    videos, stats = load_source(csv_path)
    assert (videos[0].title, videos[0].transcript, videos[0].comments[0].text) == ("t", "trans", "cx")
    assert stats["nul_characters_removed"] == 3
    jl = tmp_path / "n.jsonl"
    jl.write_text('{"title": "t", "transcript": "tr\\u0000ans", "comment": "c"}\n')
    videos, stats = load_source(jl)
    assert videos[0].transcript == "trans" and stats["nul_characters_removed"] == 1
    pq = tmp_path / "n.parquet"
    pd.DataFrame({"title": ["t"], "transcript": ["x\x00y"], "comment": ["c"]}).to_parquet(pq)
    assert load_source(pq)[0][0].transcript == "xy"


def test_a_utf8_csv_with_one_windows_1252_byte_names_the_line(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_bytes("title,transcript,comment\nCafé,we bake,très bien\n".encode() + b"Tea,brew,caf\xe9\n")
    with pytest.raises(VrpError, match=r"mixed\.csv: line 3 \(byte offset \d+\): byte 0xE9 is not UTF-8"):
        load_source(path)


@pytest.mark.parametrize(("column", "escape"), [("transcript", "\\ud800"), ("comment", "\\udc80")])
def test_an_unpaired_surrogate_escape_in_jsonl_is_an_error_naming_the_cell(tmp_path, column, escape):
    """JSON lets `\\ud800` stand alone, but it is no character and cannot be written as UTF-8: one error naming the
    file, row and column, instead of a UnicodeEncodeError when the dataset is hashed or written."""
    row = {"title": "T1", "transcript": "a", "comment": "b", "video_id": "v1"}
    row[column] += "@"
    lines = [json.dumps(row).replace("@", escape), json.dumps({"title": "T2", "transcript": "a", "comment": "c"})]
    src = tmp_path / "esc.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(VrpError, match=rf"esc.jsonl: row 1: column '{column}' holds an unpaired surrogate U\+D"):
        load_source(src)


# --- CSV as Excel writes it in other locales ---------------------------------------------------------------------
@pytest.mark.parametrize("first_line, sep", [("sep=;", ";"), ("sep=,", ","), ("", ";"), ("", "\t"),
                                             ("sep=|", "|")])
def test_csv_delimiter_from_excel_sep_line_or_header(tmp_path, first_line, sep):
    lines = ([first_line] if first_line else []) + [sep.join(["video_id", "title", "transcript", "comment"])]
    lines += [sep.join([r["video_id"], r["title"], r["transcript"], f'"{r["comment"]}{sep} really"'])
              for r in ROWS]
    path = tmp_path / "excel.csv"
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    want = {v: [f"{c}{sep} really" for c in cs] for v, cs in WANT.items()}
    assert comments_by_video(path) == want


def test_semicolon_csv_row_error_names_the_semicolon_and_the_file_line(tmp_path, capsys):
    path = tmp_path / "eu.csv"
    path.write_text("sep=;\nvideo_id;title;transcript;comment\nv1;t;tr;wow; amazing\n", encoding="utf-8")
    assert main(["prepare", str(path), "--out", str(tmp_path / "d")]) != 0
    err = capsys.readouterr().err
    assert f"{path}:3: expected 4 fields" in err and 'quote a cell that holds a semicolon ("wow; amazing")' in err


@pytest.mark.parametrize("text", [
    "title,transcript,comment\rt,so; we start; then; we go; ok,wow\rt2,a; b; c; d,nice\r",   # old Mac Excel: CR only
    "\n\ntitle;transcript;comment\nt;so, we start, then, we go, ok;wow\nt2;a, b, c, d;nice\n",  # blank lines first
])
def test_csv_delimiter_from_the_header_whatever_the_line_ends(tmp_path, text):
    path = tmp_path / "mac.csv"
    path.write_text(text, encoding="utf-8", newline="")
    videos, _ = load_source(path)
    assert [(v.title, [c.text for c in v.comments]) for v in videos] == [("t", ["wow"]), ("t2", ["nice"])]
    assert "we start" in videos[0].transcript


@pytest.mark.parametrize("first, why", [("sep=", "must name one delimiter"), ('sep="', "must name one delimiter"),
                                        ("sep=ab", "must name one delimiter")])
def test_a_bad_sep_line_is_named(tmp_path, capsys, first, why):
    path = tmp_path / "bad.csv"
    path.write_text(first + "\ntitle,transcript,comment\nt,tr,c\n", encoding="utf-8")
    assert main(["prepare", str(path), "--out", str(tmp_path / "d")]) == 2
    assert f"bad.csv:1: the first line {first!r} {why}" in capsys.readouterr().err


def test_an_unusual_delimiter_in_a_row_error(tmp_path, capsys):
    path = tmp_path / "pipe.csv"
    path.write_text("sep=|\ntitle|transcript|comment\nt|tr|wow| amazing\n", encoding="utf-8")
    assert main(["prepare", str(path), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "pipe.csv:3: expected 3 fields" in err and "found 4 separated by '|'" in err


def test_tsv_is_read_and_a_sep_line_that_contradicts_the_header_is_named(tmp_path, capsys):
    tsv = tmp_path / "excel.tsv"
    tsv.write_text("title\ttranscript\tcomment\nt\tso, we; start\twow\n", encoding="utf-8")
    videos, _ = load_source(tsv)
    assert [(v.title, v.transcript, [c.text for c in v.comments]) for v in videos] == [("t", "so, we; start", ["wow"])]
    bad = tmp_path / "bad.csv"
    bad.write_text("sep=;\ntitle,transcript,comment\nt,tr,c\n", encoding="utf-8")
    assert main(["prepare", str(bad), "--out", str(tmp_path / "d")]) == 2
    assert "bad.csv:1: the first line 'sep=;' names ';' as the delimiter, but the header has no ';' (it has ',')" \
        in capsys.readouterr().err


def test_column_names_in_any_case_and_names_that_clash(tmp_path, capsys):
    path = tmp_path / "caps.csv"
    path.write_text("Title;Transcript ; COMMENT\nt;so we start;wow\n", encoding="utf-8")
    videos, _ = load_source(path)
    assert [(v.title, v.transcript, [c.text for c in v.comments]) for v in videos] == [("t", "so we start", ["wow"])]
    clash = tmp_path / "clash.csv"
    clash.write_text("title,Title,transcript,comment\na,b,c,d\n", encoding="utf-8")
    assert main(["prepare", str(clash), "--out", str(tmp_path / "d")]) == 2
    assert "clash.csv: columns ['title', 'Title'] differ only in case or spaces" in capsys.readouterr().err


@pytest.mark.parametrize("first", ["sep=;;;", '"sep=;"'])
def test_sep_line_saved_back_by_a_spreadsheet(tmp_path, first):
    path = tmp_path / "s.csv"
    path.write_text(first + "\ntitle;transcript;comment\na;b, c;d\n", encoding="utf-8")
    videos, _ = load_source(path)
    assert [(v.title, v.transcript, [c.text for c in v.comments]) for v in videos] == [("a", "b, c", ["d"])]


def test_a_row_of_only_delimiters_is_a_shape_error_on_its_own_line(tmp_path, capsys):
    path = tmp_path / "ml.csv"
    path.write_text('title,transcript,comment\na,"b\nc\nd",e\n,,,,\nx,y,z\n', encoding="utf-8")
    assert main(["prepare", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "ml.csv:5: expected 3 fields like the header (title, transcript, comment), found 5" in \
        capsys.readouterr().err


def test_prepare_takes_a_csv_transcript_longer_than_the_csv_module_limit(tmp_path) -> None:
    """A 300,000-character transcript cell (a long talk) is read, not refused as a field over csv's 131,072 limit."""
    from vrp.artifacts import DatasetDir

    long = " ".join(["word"] * 60_000)
    src = write_csv_table(tmp_path / "long.csv", title=["a", "b"], transcript=[long, "short one"], comment=["c1", "c2"])
    assert main(["prepare", str(src), "--out", str(tmp_path / "ds"), "--val-fraction", "0.5"]) == 0
    d = DatasetDir(tmp_path / "ds")
    videos = d.train_videos() + d.validation_videos()
    assert sorted(len(v.transcript) for v in videos) == [len("short one"), len(long)]
