"""Real-world caption files (issue 9, items 1-5): ASS override tags, invisible format characters, every Unicode
byte-order mark and legacy encodings, YouTube Studio's `.sbv`, and output piped into a reader that stops early.
Each kind is tested with the issue's example and at least one more member."""
from __future__ import annotations

import json
import logging
import os
import re
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
    from vrp.generate.run import load_inputs

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


# --- malformed timing lines are errors naming file, line and the line ------------------------------------------
SRT_OK = "1\n00:00:01,000 --> 00:00:02,000\nfirst\n\n2\n00:00:02,000 --> 00:00:02,500\nsecond\n\n"


@pytest.mark.parametrize("name, text, line, shown", [
    ("a.sbv", "0:00:01.000,0:00:03.000\nhello\n\nbad,line\nworld\n", 4, "bad,line"),
    ("b.sbv", "0:00:01.000,0:00:03.000\nhello\n\n0:00:04.000-0:00:05.000\nworld\n", 4, "0:00:04.000-0:00:05.000"),
    ("a.vtt", "WEBVTT\n\n00:00:00.500 --> 00:00:01.000\nok\n\n00:00:01.000 --> 00:00:0x.000\nlost\n", 6,
     "00:00:01.000 --> 00:00:0x.000"),
    ("b.vtt", "WEBVTT\n\n00:00:01.000 --> garbage\nonly\n", 3, "00:00:01.000 --> garbage"),
    ("c.vtt", "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nhello\n\nworld\n", 6, "world"),  # text outside any cue
    ("d.vtt", "WEBVTT\n\n00:00:01.000 --> 00:01:70.000\nseventy seconds\n", 3, "00:00:01.000 --> 00:01:70.000"),
    ("a.srt", SRT_OK + "3\n00:00:02,000 -> 00:00:03,000\nthird\n", 10, "00:00:02,000 -> 00:00:03,000"),
    ("b.srt", "1\n00:00:05,000 --> 00:00:02,000\nbackwards\n", 2, "00:00:05,000 --> 00:00:02,000"),
    ("c.srt", "1\n-00:00:01,000 --> 00:00:02,000\nnegative\n", 2, "-00:00:01,000 --> 00:00:02,000"),
    ("d.srt", "\ufeff\n1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:03,000 ---> 00:00:04,000\nx\n", 7,
     "00:00:03,000 ---> 00:00:04,000"),  # a blank line before the first cue still counts
])
def test_a_malformed_timing_line_names_file_line_and_the_line(name, text, line, shown):
    with pytest.raises(VrpError) as e:
        parse_transcript_bytes(text.encode(), name)
    assert str(e.value).startswith(f"{name}:{line}: ") and repr(shown) in str(e.value)


def test_valid_captions_around_the_timing_checks_still_parse():
    srt = "1\n00:00:01,000 --> 00:00:02,000\nhello\n\nsame cue after a blank line\n\n2\n00:00:03.000 --> 00:00:04,000\nbye\n"
    assert text_of(srt.encode(), "ok.srt") == "hello same cue after a blank line bye"
    vtt = ("WEBVTT\nKind: captions\n\nNOTE a --> inside a note\n\nSTYLE\n::cue { color: red }\n\n"
           "intro\n00:01.000 --> 00:02.000 align:start\nhi\n")
    assert text_of(vtt.encode(), "ok.vtt") == "hi"


@pytest.mark.parametrize("event, message", [
    ({"tStartMs": "1000", "segs": [{"utf8": "a"}]}, "events[0].tStartMs must be a number"),
    ({"tStartMs": 0, "dDurationMs": True, "segs": [{"utf8": "a"}]}, "events[0].dDurationMs must be a number"),
    ({"tStartMs": -5, "segs": [{"utf8": "a"}]}, "events[0].tStartMs must be a number of milliseconds >= 0"),
    ({"tStartMs": 0, "segs": [{"utf8": "a"}, {"utf8": 5}]}, "events[0].segs[1].utf8 must be text, got 5"),
])
def test_json3_with_bad_types_names_the_event(event, message):
    with pytest.raises(VrpError, match=r"^y\.json3: " + message.replace("[", r"\[").replace("]", r"\]")):
        parse_transcript_bytes(json.dumps({"events": [event]}).encode(), "y.json3")


# --- deeply nested JSON ----------------------------------------------------------------------------------------
def test_deeply_nested_json_is_one_line_error_in_transcript_and_generate(tmp_path, capsys):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert main(["transcript", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {path}: invalid JSON (nested too deeply to read)"
    from vrp.generate.run import load_inputs

    with pytest.raises(VrpError, match="deep.json: invalid JSON"):
        load_inputs(str(path))
    with pytest.raises(VrpError, match=r"deep\.json3: invalid JSON \(nested"):
        parse_transcript_bytes(b'{"events": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "deep.json3")


# --- NUL bytes and mostly-UTF-8 files ----------------------------------------------------------------------------
def test_a_nul_byte_in_utf8_keeps_utf8_and_is_removed_with_a_note():
    notes: list[str] = []
    data = b"WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nh\xc3\xa9llo caf\xc3\xa9 \x00\n"
    assert " ".join(s.text for s in parse_transcript_bytes(data, "nul2.vtt", notes)) == "héllo café"
    assert len(notes) == 1 and "nul2.vtt: removed 1 NUL" in notes[0] and "UTF-16" not in notes[0]
    srt = "1\n00:00:01,000 --> 00:00:02,000\nna\x00ïve\x00\n".encode()
    assert text_of(srt, "n.srt") == "naïve"


def test_utf8_with_one_windows_1252_byte_is_an_error_naming_the_line():
    data = "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nhéllo\n".encode() + b"caf\xe9\n"
    with pytest.raises(VrpError, match=r"^m\.vtt: line 5 \(byte offset 48\): byte 0xE9 is not UTF-8"):
        parse_transcript_bytes(data, "m.vtt")
    legacy = "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nhéllo café\n".encode("cp1252")  # no UTF-8 at all: a guess
    notes: list[str] = []
    assert " ".join(s.text for s in parse_transcript_bytes(legacy, "l.vtt", notes)) == "héllo café"
    assert "cp1252" in notes[0]


@pytest.mark.parametrize(("timing", "why"), [
    ("99999999999999999999:00:00.000 --> 99999999999999999999:00:01.000", "invalid timing (hours must have at most 5"),
    ("00:00:01.000 --> 00:00:0\uff15.000", "malformed timing line"),  # a full-width digit
])
def test_timing_lines_webvtt_py_would_drop_are_errors(tmp_path, timing, why):
    """A huge hour field and non-ASCII digits: webvtt-py skipped such a cue without a word (its text was lost)."""
    path = tmp_path / "c.vtt"
    path.write_text(f"WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nhello\n\n{timing}\nbody\n", encoding="utf-8")
    with pytest.raises(VrpError, match=rf"c.vtt:6: {re.escape(why)}"):
        read_transcript(path)
