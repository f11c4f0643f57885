"""Bytes of caption and transcript files to text (`vrp.charsets`, through `vrp.transcripts` and the commands):
every Unicode byte-order mark, UTF-16 without one, legacy encodings guessed and reported, NUL bytes, and bytes that
fit no encoding (an error naming the file and line)."""
from __future__ import annotations

import logging
import subprocess

import pytest
from helpers import VRP_COMMAND, one_line_error

from vrp.errors import VrpError
from vrp.transcripts import Segment, parse_transcript_bytes

ISSUE_SRT = ("1\n00:00:01,000 --> 00:00:03,000\n{\\an8}Welcome back to the channel\n\n"
             "2\n00:00:03,000 --> 00:00:05,000\n{\\i1}today{\\i0} we bake bread\n")
ISSUE_TEXT = "Welcome back to the channel today we bake bread"


def text_of(data: bytes, name: str) -> str:
    return " ".join(s.text for s in parse_transcript_bytes(data, name))


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
    r = subprocess.run([*VRP_COMMAND, "transcript", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == "Éclair, it’s easy\n"
    assert "w.srt" in r.stderr and "read as cp1252" in r.stderr


# --- NUL bytes and mostly-UTF-8 files ---------------------------------------------------------------------------
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


@pytest.mark.parametrize("data, name", [(b"\xff\xfeA", "a.txt"), (b"\xff\xfe\x00\xd8", "b.vtt")])
def test_transcript_bad_utf16(tmp_path, capsys, data, name) -> None:
    (tmp_path / name).write_bytes(data)
    one_line_error(capsys, ["transcript", str(tmp_path / name)], name, "UTF-16")


def test_generate_non_utf8_txt_transcript_is_an_error(tmp_path, capsys) -> None:
    # Windows-1252 text is read (test_windows_1252_srt_is_read_and_the_guess_is_reported); bytes that fit no encoding are an error
    (tmp_path / "talk.txt").write_bytes(b"caf\xe9 au lait \x00\x81\xff")
    one_line_error(capsys, ["generate", "--model", "m", "--input", str(tmp_path / "talk.txt"), "--out",
                            str(tmp_path / "p.csv")], "talk.txt", "UTF-8")
