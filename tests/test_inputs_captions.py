"""Real-world caption files (issue 9, items 1-5): ASS override tags, invisible format characters, every Unicode
byte-order mark and legacy encodings, YouTube Studio's `.sbv`, and output piped into a reader that stops early.
Each kind is tested with the issue's example and at least one more member."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vrp.cli import main
from vrp.errors import VrpError
from vrp.transcripts import Segment, parse_transcript_bytes, read_transcript

ISSUE_SRT = ("1\n00:00:01,000 --> 00:00:03,000\n{\\an8}Welcome back to the channel\n\n"
             "2\n00:00:03,000 --> 00:00:05,000\n{\\i1}today{\\i0} we bake bread\n")
ISSUE_TEXT = "Welcome back to the channel today we bake bread"
VRP = [sys.executable, "-c", "import sys; from vrp.cli import main; sys.exit(main())"]


def text_of(data: bytes, name: str) -> str:
    return " ".join(s.text for s in parse_transcript_bytes(data, name))


# --- 1. ASS/SSA override tags -------------------------------------------------------------------------------------
def test_ass_override_tags_are_stripped_from_srt():
    assert text_of(ISSUE_SRT.encode(), "a.srt") == ISSUE_TEXT


@pytest.mark.parametrize("name, data", [
    # WebVTT exported by a subtitle editor: position + colour overrides in one block, \N hard line break, \h space
    ("b.vtt", "WEBVTT\n\n00:00:01.000 --> 00:00:03.000\n{\\pos(320,50)\\c&H00FFFF&}first line\\Nsecond\\hline\n"),
    # YouTube json3 whose text came from an ASS upload
    ("c.json3", json.dumps({"events": [{"tStartMs": 0, "dDurationMs": 900,
                                        "segs": [{"utf8": "{\\b1}first line{\\b0} second"}, {"utf8": " line"}]}]})),
    ("d.sbv", "0:00:01.000,0:00:03.000\n{\\fad(200,200)}first line\nsecond line\n"),
])
def test_ass_overrides_and_escapes_in_other_caption_formats(name, data):
    assert text_of(data.encode(), name) == "first line second line"


def test_braces_without_an_override_code_are_text():
    srt = "1\n00:00:01,000 --> 00:00:02,000\nthe set {a, b} is small\n"
    assert text_of(srt.encode(), "e.srt") == "the set {a, b} is small"


# --- 2. invisible format characters at the start of a file or line --------------------------------------------
def test_left_to_right_mark_before_the_first_cue_number():
    assert text_of(("\u200e" + ISSUE_SRT).encode(), "lrm.srt") == ISSUE_TEXT


@pytest.mark.parametrize("name, data", [
    # RLM before a timing line, a second BOM from concatenated files before a cue number, a ZWSP before a timing
    ("rtl.srt", "\u200f1\n\u200f00:00:01,000 --> 00:00:02,000\n\u200fhello\n\n\ufeff2\n"
                "\u200b00:00:02,000 --> 00:00:03,000\nwor\u200bld\n"),
    ("hdr.vtt", "\u200eWEBVTT\n\n\u206600:00:01.000 --> 00:00:02.000\u2069\nhello\n\n00:00:02.000 --> "
                "00:00:03.000\nworld\n"),
    ("lrm.sbv", "\u200e0:00:01.000,0:00:02.000\nhello\n\n\u200e0:00:02.000,0:00:03.000\nworld\n"),
    ("lrm.json3", "\u200e\ufeff" + json.dumps({"events": [{"tStartMs": 1000, "dDurationMs": 2000,
                                                         "segs": [{"utf8": "hello world"}]}]})),
])
def test_format_characters_in_other_positions_and_formats(name, data):
    segments = parse_transcript_bytes(data.encode(), name)
    assert " ".join(s.text for s in segments) == "hello world"
    assert segments[0].start == 1.0


def test_a_line_of_format_characters_inside_rolling_captions_keeps_the_cue():
    # YouTube's rolling captions hold a " " line inside a cue; a ZWSP line must behave the same way
    vtt = "WEBVTT\n\n00:00:00.000 --> 00:00:02.000\n\u200b\ngood morning\n"
    assert parse_transcript_bytes(vtt.encode(), "z.vtt") == [Segment(0.0, 2.0, "good morning")]


# --- 3. encodings: every BOM, and files that are not UTF-8 -----------------------------------------------------
@pytest.mark.parametrize("encoding", ["utf-32-le", "utf-32-be", "utf-16-le", "utf-16-be", "utf-8"])
def test_every_unicode_byte_order_mark(encoding):
    data = ("\ufeff" + ISSUE_SRT.replace("bread", "bread – très bon")).encode(encoding)
    assert text_of(data, "bom.srt") == ISSUE_TEXT + " – très bon"


def test_windows_1252_srt_is_read_and_the_guess_is_reported(caplog):
    data = "1\n00:00:01,000 --> 00:00:03,000\nÉclair recipes, it’s easy\n".encode("cp1252")
    notes: list[str] = []
    with caplog.at_level(logging.WARNING, logger="vrp.charsets"):
        segments = parse_transcript_bytes(data, "w.srt", notes)
    assert segments == [Segment(1.0, 3.0, "Éclair recipes, it’s easy")]
    assert len(notes) == 1 and "w.srt" in notes[0] and "cp1252" in notes[0]
    assert notes[0] in caplog.text


@pytest.mark.parametrize("text, encoding", [
    ("1\n00:00:01,000 --> 00:00:03,000\nПривет, сегодня мы печём хлеб.\n", "cp1251"),  # Cyrillic Windows
    ("1\n00:00:01,000 --> 00:00:03,000\nhello there, we bake bread\n", "utf-16-le"),  # UTF-16 without a BOM
])
def test_other_legacy_encodings_are_detected(text, encoding):
    notes: list[str] = []
    segments = parse_transcript_bytes(text.encode(encoding), "x.srt", notes)
    assert segments[0].text == text.splitlines()[2]
    assert encoding.replace("-", "_") in notes[0].replace("-", "_")


def test_bytes_that_fit_no_encoding_are_still_an_error():
    with pytest.raises(VrpError, match=r"b\.srt: not UTF-8 text .*no other encoding fits"):
        parse_transcript_bytes(b"1\n\x00\x81\xff\x00\x8d", "b.srt")


def test_cli_prints_which_encoding_it_assumed(tmp_path):
    path = tmp_path / "w.srt"
    path.write_bytes("1\n00:00:01,000 --> 00:00:03,000\nÉclair, it’s easy\n".encode("cp1252"))
    r = subprocess.run([*VRP, "transcript", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == "Éclair, it’s easy\n"
    assert "w.srt" in r.stderr and "read as cp1252" in r.stderr


# --- 4. YouTube Studio's .sbv --------------------------------------------------------------------------------------
SBV = "0:00:01.000,0:00:03.000\nhello from\nYouTube Studio\n\n1:02:03.500,1:02:05.000\nsee you\n"


def test_sbv_is_read_by_transcript_and_generate_input(tmp_path, capsys):
    path = tmp_path / "studio.sbv"
    path.write_text(SBV, encoding="utf-8")
    assert read_transcript(path) == [Segment(1.0, 3.0, "hello from YouTube Studio"),
                                     Segment(3723.5, 3725.0, "see you")]
    assert main(["transcript", str(path)]) == 0
    assert capsys.readouterr().out == "hello from YouTube Studio see you\n"
    from vrp.predict import load_inputs

    videos = load_inputs(str(path), title="Studio export")
    assert [(v.video_id, v.title, v.transcript) for v in videos] == [
        ("studio", "Studio export", "hello from YouTube Studio see you")]


def test_sbv_with_upper_case_suffix_bom_and_crlf():
    data = ("\ufeff" + SBV).replace("\n", "\r\n").encode("utf-8")
    assert text_of(data, "EXPORT.SBV") == "hello from YouTube Studio see you"


# --- 5. output piped into a reader that stops early ----------------------------------------------------------------
@pytest.fixture()
def long_vtt(tmp_path: Path) -> Path:
    cues = [f"00:{i // 60:02d}:{i % 60:02d}.000 --> 00:{i // 60:02d}:{i % 60:02d}.500\ncaption {i} " + "word " * 60
            for i in range(3000)]  # about 1 MB of text: far more than a pipe buffer holds
    path = tmp_path / "long.vtt"
    path.write_text("WEBVTT\n\n" + "\n\n".join(cues) + "\n", encoding="utf-8")
    return path


def test_reader_that_stops_after_the_first_line(long_vtt):
    # `vrp transcript long.vtt --format json | head -1`
    p = subprocess.Popen([*VRP, "transcript", str(long_vtt), "--format", "json"], stdout=subprocess.PIPE,
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
        p = subprocess.run([*VRP, "transcript", str(long_vtt)], stdout=w, stderr=subprocess.PIPE, timeout=120)
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
        p = subprocess.run([*VRP, "prepare", str(tmp_path / "t.csv"), "--out", str(tmp_path / "ds"), "--val-fraction",
                            "0"], stdout=w, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(w)
    err = p.stderr.decode()
    assert p.returncode == 141 and "Traceback" not in err and "BrokenPipe" not in err, err
    assert (tmp_path / "ds" / "manifest.json").is_file()  # the work was done before the summary line
